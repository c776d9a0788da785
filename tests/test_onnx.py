"""The ONNX Runtime backend: exported once from the packaged model, same vectors (fp32) or close (int8)."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import pytest

from syncd.embedding import OnnxEmbedder
from tests.conftest import write_config
from tests.corpus import paragraph

pytestmark = pytest.mark.e2e

TEXTS = ["hello world", "How do I fail over the database?"] + [
    " ".join(paragraph(random.Random(i)) for _ in range(2)) for i in range(12)]


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


def test_fp32_export_gives_the_same_vectors_as_sentence_transformers(onnx_cache, real_embedder):
    emb = OnnxEmbedder("all-MiniLM-L6-v2", cache_dir=onnx_cache, quantize=False, threads=1)
    got, want = emb.encode(TEXTS), real_embedder.encode(TEXTS)
    assert got.shape == want.shape == (len(TEXTS), 384)
    assert float((got * want).sum(axis=1).min()) > 0.9999


def test_int8_stays_close_to_fp32_and_is_cached_for_later_starts(onnx_cache, real_embedder):
    emb = OnnxEmbedder("all-MiniLM-L6-v2", cache_dir=onnx_cache, quantize=True, threads=1)
    got, want = emb.encode(TEXTS), real_embedder.encode(TEXTS)
    cosines = (got * want).sum(axis=1)
    assert float(cosines.mean()) > 0.98 and float(cosines.min()) > 0.95
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    stamp = emb.onnx_path.stat().st_mtime_ns
    again = OnnxEmbedder("all-MiniLM-L6-v2", cache_dir=onnx_cache, quantize=True, threads=1)
    # Dynamic quantisation scales activations per batch, so another batch gives close, not identical, vectors.
    assert float((again.encode(TEXTS[:3]) * got[:3]).sum(axis=1).min()) > 0.95
    assert again.onnx_path.stat().st_mtime_ns == stamp, "the export is reused, not redone"


def test_a_later_start_on_the_onnx_backend_does_not_import_torch(onnx_cache):
    import subprocess

    OnnxEmbedder("all-MiniLM-L6-v2", cache_dir=onnx_cache, quantize=True).export()
    code = ("import sys; from pathlib import Path; from syncd.embedding import OnnxEmbedder; "
            f"e = OnnxEmbedder('all-MiniLM-L6-v2', cache_dir=Path({str(onnx_cache)!r}), quantize=True); "
            "e.encode(['x']); print('torch' in sys.modules, 'sentence_transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.split() == ["False", "False"], out.stderr


def test_changing_the_backend_is_a_model_change_that_rebuilds(tmp_path, docs):
    from syncd import config as config_mod
    from syncd.runtime import Runtime

    (docs / "a.md").write_text("# A\n\nsome text to embed\n")
    path = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}],
                        embedding={"backend": "torch"})
    rt = Runtime(config_mod.load(path))
    rt.open()
    rt.engine.reconcile("docs")
    rt.close()
    path = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}],
                        embedding={"backend": "onnx-int8"})
    rt = Runtime(config_mod.load(path))
    try:
        assert rt.embedder.model_id.endswith("+onnx-int8")
        assert rt.open() is True, "a different backend means a rebuild"
        summary = rt.engine.rebuild()
        assert summary.docs_added == 1 and rt.store.stored_signature() == rt.signature
    finally:
        rt.close()
