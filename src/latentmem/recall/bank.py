"""The memory bank: entries of (id, text, L2-normalised vector, metadata) that a memory head scores.

A bank works in memory: search goes through the shared `VectorIndex` (exact numpy search for small banks,
FAISS for large ones, chosen by `index_kind`, with `auto` switching by size), and `matrix()` hands the memory
head every unit vector as one tensor. It persists as a client of the text-memory stores
(`latentmem.memory`), not as a store of its own:

- `save(directory)` / `load(directory)`: the embedded store (SQLite + vector index, `memory/embedded.py`).
  A bank directory *is* a memory store directory, so `VectorMemory.open(directory, embedder=...)` sees the
  bank's entries, and a bank can share a store with other memories.
- `save(backend)` / `load(backend)`: any `VectorBackend`, e.g. a Qdrant collection (`QdrantBackend`).

Layout in the store: the entries are the records of one exact scope, `BANK_SCOPE` (agent "recall-bank",
no user or session) unless `scope=` says otherwise, so several banks and other memories can live in one
store. Each record holds the entry's text and stored vector; its metadata is
`{"bank_id": id, "metadata": the entry's metadata}` (nested, so the entry's own keys never collide with
the bank's). The bank's own state (next id, index kind) is one store setting per scope
(`VectorBackend.write_setting`). The store's embedder spec and dimension are the bank's `embedder` and
`dim`: a store whose vectors come from another embedding space is refused, as `VectorMemory` refuses it.

Crash safety is the store's. `save` is one store transaction: it reads the scope, deletes the records that
are no longer entries (or changed), inserts the new entries and writes the setting. The embedded store
commits that as one SQLite transaction, so a save killed at any point leaves the old bank or the new one,
never a mixture. Qdrant has no multi-point transactions: a save killed midway there can leave part of it
applied (save again). Only what changed is written (an entry whose record has the same id, text, metadata
and vector is kept), so saving a large bank after a few additions is cheap.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from latentmem.memory.backend import NewRow, VectorBackend, Where
from latentmem.memory.base import MemoryRecord, MemoryStoreError, Scope
from latentmem.memory.embedded import DB_NAME, EmbeddedBackend
from latentmem.memory.vector import text_key
from latentmem.recall.errors import (
    BankDimensionError,
    BankEntryNotFoundError,
    BankInputError,
    BankStorageError,
    EmptyBankError,
)
from latentmem.vector_index import IndexKind, VectorIndex

FORMAT = 1  # of the bank's store setting
BANK_SCOPE = Scope(agent="recall-bank")
# Stored and bank vectors closer than this per component (a few float32 ulps of a unit vector) are the same
# vector to `save`, which then keeps the stored record instead of rewriting it.
_SAME_VECTOR = 1e-6


@dataclass
class BankEntry:
    """One bank entry. `vector` is the stored, L2-normalised vector (D,)."""

    id: int
    text: str
    vector: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)


class MemoryBank:
    """A set of entries with unit vectors of dimension `dim`, searchable by cosine similarity.

    `embedder` names the embedding space of the vectors (a `latentmem.memory` embedder spec such as
    "minilm" when they come from that model); it is recorded in the store on `save`, so that a
    `VectorMemory` opened on the store with that embedder can search the bank's entries by text. The
    default, "precomputed:<dim>", names no embedder: vectors given by the caller.
    """

    def __init__(
        self,
        dim: int,
        *,
        embedder: str | None = None,
        index_kind: IndexKind = "auto",
        auto_threshold: int = 50_000,
    ) -> None:
        self.dim = dim
        self.embedder = embedder or f"precomputed:{dim}"
        self.index = VectorIndex(dim, index_kind, auto_threshold=auto_threshold)
        self._entries: dict[int, tuple[str, dict[str, Any]]] = {}
        self._next_id = 0
        self._matrix: tuple[torch.Tensor, torch.Tensor] | None = None  # cache for `matrix()`

    # ---- reads ------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, id_: int) -> bool:
        return int(id_) in self._entries

    def ids(self) -> list[int]:
        """Entry ids in insertion order (id order for a loaded bank)."""
        return list(self._entries)

    def get(self, id_: int) -> BankEntry:
        text, meta = self._entry(id_)
        return BankEntry(int(id_), text, self.index.vector(int(id_)), dict(meta))

    def text(self, id_: int) -> str:
        return self._entry(id_)[0]

    def _entry(self, id_: int) -> tuple[str, dict[str, Any]]:
        try:
            return self._entries[int(id_)]
        except KeyError:
            raise BankEntryNotFoundError(f"the memory bank has no entry with id {id_}") from None

    def search(self, queries: np.ndarray | torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k entries by cosine: queries (Q, D) -> (scores (Q, k), ids (Q, k)); -1 ids pad a short bank."""
        self.require_dim(queries.shape[-1], "query")
        self.require_nonempty()
        if isinstance(queries, torch.Tensor):
            queries = queries.detach().float().cpu().numpy()
        return self.index.search(queries, k)

    def matrix(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All entries as tensors: ids (N,) long and unit vectors (N, D) float32, cached until a write."""
        self.require_nonempty()
        if self._matrix is None:
            ids, vecs = self.index.matrix()
            self._matrix = (torch.from_numpy(ids), torch.from_numpy(vecs))
        return self._matrix

    def require_nonempty(self) -> None:
        if not self._entries:
            raise EmptyBankError(
                "the memory bank is empty; add entries first (MemoryBank.add or write_memories)"
            )

    def require_dim(self, dim: int, what: str) -> None:
        if dim != self.dim:
            raise BankDimensionError(
                f"{what} has dimension {dim} but the memory bank holds {self.dim}-dimensional vectors; "
                "encode memories with the same encoder the memory head was trained for"
            )

    # ---- writes -----------------------------------------------------------------------------------
    def add(
        self,
        texts: Sequence[str],
        vectors: np.ndarray | torch.Tensor,
        metadata: Sequence[Mapping[str, Any]] | None = None,
        ids: Sequence[int] | None = None,
    ) -> list[int]:
        """Add entries: texts (N,), vectors (N, D) (normalised here), optional metadata and new ids -> ids."""
        if isinstance(vectors, torch.Tensor):
            vectors = vectors.detach().float().cpu().numpy()
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2:
            raise BankDimensionError(f"expected vectors of shape (N, {self.dim}), got {vectors.shape}")
        self.require_dim(vectors.shape[1], "the vectors to add")
        if len(texts) != len(vectors):
            raise BankInputError(f"{len(texts)} texts for {len(vectors)} vectors")
        metadata = [{} for _ in texts] if metadata is None else list(metadata)
        if len(metadata) != len(texts):
            raise BankInputError(f"{len(metadata)} metadata entries for {len(texts)} texts")
        # As the store will read it back: JSON now (a failure here, not at save time), so that a saved and
        # reloaded bank compares equal to this one.
        try:
            metadata = [json.loads(json.dumps(dict(m), allow_nan=False)) for m in metadata]
        except (TypeError, ValueError) as exc:
            raise BankInputError(f"bank metadata must be JSON-serialisable: {exc}") from None
        if ids is None:
            ids = list(range(self._next_id, self._next_id + len(texts)))
        ids = [int(i) for i in ids]
        if len(ids) != len(texts):
            raise BankInputError(f"{len(ids)} ids for {len(texts)} texts")
        # -1 pads short search results, and an id names one entry for as long as the bank lives.
        reused = [i for i in ids if i < 0 or i in self._entries]
        if reused or len(set(ids)) != len(ids):
            raise BankInputError(f"entry ids must be new, unique and non-negative; got {(reused or ids)[:5]}")
        self.index.add(np.asarray(ids, dtype=np.int64), vectors)
        self._entries.update({i: (str(t), m) for i, t, m in zip(ids, texts, metadata, strict=True)})
        self._next_id = max(self._next_id, max(ids, default=-1) + 1)
        self._matrix = None
        return ids

    def remove(self, ids: Sequence[int]) -> None:
        ids = [int(i) for i in ids]
        missing = [i for i in ids if i not in self._entries]
        if missing:
            raise BankEntryNotFoundError(f"the memory bank has no entries with ids {missing[:5]}")
        self.index.remove(ids)
        for i in ids:
            del self._entries[i]
        self._matrix = None

    # ---- persistence ------------------------------------------------------------------------------
    def save(self, target: str | Path | VectorBackend, *, scope: Scope = BANK_SCOPE) -> None:
        """Make `scope` of the store `target` (a directory, created when missing, or an open backend)
        hold exactly this bank, in one store transaction (see the module docstring)."""
        name = _describe(target)
        with _opened(target, create=True) as backend:
            self._claim(backend, name)
            ids, vecs = self.index.matrix()
            row_of = {int(i): row for row, i in enumerate(ids)}
            where = Where(scope, exact_scope=True)
            with backend.transaction():
                kept: set[int] = set()
                stale: list[int] = []
                for record in backend.select(where, None):
                    entry = _bank_entry(record, name)
                    same = (
                        entry.id in row_of
                        and entry.id not in kept
                        and (entry.text, entry.metadata) == self._entries[entry.id]
                        # Equal up to float32 rounding: Qdrant stores its own renormalised copy.
                        and np.allclose(entry.vector, vecs[row_of[entry.id]], rtol=0.0, atol=_SAME_VECTOR)
                    )
                    if same:
                        kept.add(entry.id)
                    else:
                        stale.append(record.id)
                if stale:
                    backend.remove(stale)
                now = time.time()
                rows = [
                    NewRow(
                        text=text,
                        text_key=text_key(text),
                        scope=scope,
                        metadata={"bank_id": i, "metadata": meta},
                        vector=vecs[row_of[i]],
                        created_at=now,
                    )
                    for i, (text, meta) in self._entries.items()
                    if i not in kept
                ]
                if rows:
                    backend.insert(rows)
                settings = {
                    "format": FORMAT,
                    "next_id": self._next_id,
                    "index_kind": self.index.kind,
                    "auto_threshold": self.index.auto_threshold,
                }
                backend.write_setting(_setting_key(scope), json.dumps(settings))

    def _claim(self, backend: VectorBackend, name: str) -> None:
        """Give a new store this bank's embedder and dimension; refuse a store of another space."""
        spec, dim = backend.embedder_info()
        if spec is None:
            backend.set_embedder_info(self.embedder, self.dim)
            spec, dim = backend.embedder_info()  # another process may have created it first
        if dim != self.dim:
            raise BankDimensionError(
                f"{name} holds {dim}-dimensional vectors (embedder {spec!r}) but this memory bank holds "
                f"{self.dim}-dimensional ones; save the bank to another store"
            )
        if spec != self.embedder:
            raise BankStorageError(
                f"{name} holds vectors of embedder {spec!r} but this memory bank's come from "
                f"{self.embedder!r}; save the bank to another store, or build it with "
                f"MemoryBank(..., embedder={spec!r}) if its vectors are in that space"
            )

    @classmethod
    def load(cls, source: str | Path | VectorBackend, *, scope: Scope = BANK_SCOPE) -> MemoryBank:
        """The bank saved by `save` in `scope` of `source` (a store directory or an open backend); texts,
        metadata and ids come back exactly, and vectors bit for bit from the embedded store."""
        name = _describe(source)
        with _opened(source, create=False) as backend:
            spec, dim = backend.embedder_info()
            raw = backend.read_setting(_setting_key(scope))
            if spec is None or dim is None or raw is None:
                raise BankStorageError(
                    f"{name} holds no memory bank in scope {scope.fields()}; save one there with "
                    "MemoryBank.save"
                )
            # Not one transaction with the setting: a save racing this load can only make `next_id`
            # lag the entries, and the max below covers that.
            records = backend.select(Where(scope, exact_scope=True), None)
        try:
            settings = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise BankStorageError(f"{name}: the bank's setting is not valid JSON: {exc}") from None
        if settings.get("format") != FORMAT:
            raise BankStorageError(f"{name}: bank format {settings.get('format')!r}, expected {FORMAT}")
        entries = sorted((_bank_entry(r, name) for r in records), key=lambda e: e.id)
        ids = [e.id for e in entries]
        if len(set(ids)) != len(ids):
            raise BankStorageError(f"{name}: two records hold the same bank entry id; the bank is corrupt")
        bank = cls(
            dim, embedder=spec, index_kind=settings["index_kind"], auto_threshold=settings["auto_threshold"]
        )
        if entries:
            # The stored unit vectors: keep their bits (normalising again can move the last one).
            bank.index.add(ids, np.stack([e.vector for e in entries]), normalized=True)
        bank._entries = {e.id: (e.text, e.metadata) for e in entries}
        bank._next_id = max(int(settings["next_id"]), max(ids, default=-1) + 1)
        return bank


def _setting_key(scope: Scope) -> str:
    """The store setting of the bank in exactly this scope."""
    return "recall-bank " + json.dumps(dataclasses.asdict(scope), sort_keys=True)


def _describe(target: str | Path | VectorBackend) -> str:
    if isinstance(target, VectorBackend):
        return f"the {type(target).__name__} store"
    return str(Path(target).expanduser())


@contextlib.contextmanager
def _opened(target: str | Path | VectorBackend, *, create: bool) -> Iterator[VectorBackend]:
    """`target` as a backend: an open one as it is (its owner closes it), a directory as the embedded store
    (closed afterwards; only created when `create`, so that a mistyped load path makes no store)."""
    if isinstance(target, VectorBackend):
        yield target
        return
    path = Path(target).expanduser()
    if not create and not (path / DB_NAME).is_file():
        raise BankStorageError(
            f"{path} is not a memory store (no {DB_NAME}); save a bank there with MemoryBank.save"
        )
    try:
        backend = EmbeddedBackend(path)
    except MemoryStoreError as exc:
        raise BankStorageError(f"cannot open the memory bank in {path}: {exc}") from exc
    try:
        yield backend
    finally:
        backend.close()


def _bank_entry(record: MemoryRecord, name: str) -> BankEntry:
    """The bank entry a store record holds; a record of the bank's scope that holds none is an error."""
    meta = record.metadata
    bank_id = meta.get("bank_id") if isinstance(meta, dict) else None
    if (
        not isinstance(bank_id, int)
        or isinstance(bank_id, bool)
        or bank_id < 0
        or not isinstance(meta.get("metadata"), dict)
        or record.vector is None
    ):
        raise BankStorageError(
            f"{name}: record {record.id} is in the bank's scope {record.scope.fields()} but holds no bank "
            "entry (its metadata has no bank_id); keep other memories in other scopes"
        )
    return BankEntry(bank_id, record.text, record.vector, meta["metadata"])
