"""Run the `syncd` CLI with benchmark instrumentation: ``python -m benchmarks.probe [syncd args]``.

The code path is the CLI's own (``syncd.cli.main``); this module only wraps a few methods with timers.

* ``BENCH_TRACE=FILE``: append one JSON line per watcher hint (``push``), per engine batch (``batch``:
  its documents, start and end, and the seconds spent looking up reusable vectors, embedding and
  committing) and per maintenance step run between batches (``maint``), so the harness can split each
  write's freshness into its stages.
* ``BENCH_STANDIN=1``: replace the embedding model with ``StandInEmbedder``, which reports the packaged
  model's id and dimension but derives vectors from a hash of the text. Used to build the large cached
  indexes (which would take hours to embed on a 2-CPU machine) and to measure the pipeline's own memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np


class StandInEmbedder:
    """Same id, dimension and tokenizer as the packaged model; vectors from a hash of each text.

    ``backend`` other than torch takes that backend's model id (``all-minilm-l6-v2+onnx-int8``): chunk
    content hashes and the index signature then match what the ONNX backend computes, so the real ONNX
    model opens the index without a rebuild and reuses its unchanged chunks."""

    def __init__(self, backend: str = "torch") -> None:
        from syncd.embedding import SentenceTransformerEmbedder

        self._real = SentenceTransformerEmbedder("all-MiniLM-L6-v2")
        self.model_id = self._real.model_id if backend == "torch" else f"{self._real.model_id}+{backend}"
        self.dim = self._real.dim
        self.texts = 0

    def token_counter(self) -> object:
        return self._real.token_counter()

    def load(self) -> None:
        """Nothing to load."""

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")
            v = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
            out[i] = v / np.linalg.norm(v)
        self.texts += len(texts)
        return out


class _Trace:
    def __init__(self, path: str) -> None:
        self._fh = open(path, "a", buffering=1)  # noqa: SIM115 - open for the process's lifetime
        self._lock = threading.Lock()

    def write(self, **record: Any) -> None:
        line = json.dumps(record)
        with self._lock:
            self._fh.write(line + "\n")


def install_trace(path: str) -> None:
    """Wrap the work queue, the engine's batch, embed and lookup steps, and the store's commit."""
    from syncd import pipeline, store
    from syncd.service import maintenance, queue

    trace = _Trace(path)
    local = threading.local()

    push = queue.WorkQueue.push

    def traced_push(self: Any, change: Any) -> None:
        trace.write(ev="push", t=time.time(), doc=change.doc_id, dest=change.dest_id, kind=change.kind)
        push(self, change)

    queue.WorkQueue.push = traced_push  # type: ignore[method-assign]

    def timed(cls: Any, name: str, key: str) -> None:
        original = getattr(cls, name)

        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            started = time.monotonic()
            try:
                return original(self, *args, **kwargs)
            finally:
                current = getattr(local, "batch", None)
                if current is not None:
                    current[key] = current.get(key, 0.0) + time.monotonic() - started

        setattr(cls, name, wrapper)

    timed(pipeline.Engine, "_embed", "embed_s")
    # Inline lookups run on the writer; overlapped ones (on the lookup thread, beside the embedding) count
    # only the writer's wait for them.
    timed(store.Store, "vectors_for", "lookup_s")
    timed(pipeline.Engine, "_lookup_result", "lookup_s")
    timed(store.Store, "apply", "commit_s")
    timed(maintenance.Maintenance, "run", "maintain_s")

    def traced_step(name: str) -> None:
        """Maintenance the writer runs between batches: one trace line each (``maint``), so the harness can
        tell a queue wait behind it from one behind other batches."""
        original = getattr(store.Store, name)

        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            t0 = time.time()
            result = None
            try:
                result = original(self, *args, **kwargs)
                return result
            finally:
                if getattr(local, "batch", None) is None:
                    trace.write(ev="maint", step=name, what=result if isinstance(result, str) else None, t0=t0,
                                t1=time.time())

        setattr(store.Store, name, wrapper)

    for step in ("fold_step", "maintain", "compact"):
        traced_step(step)

    apply_batch = pipeline.Engine._apply_batch

    def traced_batch(self: Any, name: str, doc_ids: list[str], *args: Any, **kwargs: Any) -> Any:
        local.batch = {}
        t0 = time.time()
        try:
            return apply_batch(self, name, doc_ids, *args, **kwargs)
        finally:
            rec = local.batch
            local.batch = None
            trace.write(ev="batch", t0=t0, t1=time.time(), docs=list(doc_ids), **rec)

    pipeline.Engine._apply_batch = traced_batch  # type: ignore[method-assign]


def main() -> int:
    if os.environ.get("BENCH_TRACE"):
        install_trace(os.environ["BENCH_TRACE"])
    if os.environ.get("BENCH_STANDIN") == "1":
        from syncd import runtime

        backend = os.environ.get("BENCH_STANDIN_BACKEND", "torch")
        runtime.build_embedder = lambda config, **_: StandInEmbedder(backend)  # type: ignore[assignment]
    from syncd.cli import main as cli_main

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
