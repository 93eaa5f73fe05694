"""The memory bank: entries of (id, text, L2-normalised vector, metadata) that a memory head scores.

Search goes through the shared `VectorIndex` (exact numpy search for small banks, FAISS for large ones,
chosen by `index_kind`, with `auto` switching by size). A bank persists to a directory:

    manifest.json              {"format": 1, "generation": g, "dim": D, "index_kind": ..., files...}
    vectors-<g>.safetensors    "ids" (N,) int64 and "vectors" (N, D) float32, exactly as stored
    memories-<g>.sqlite        table memories(id, text, metadata JSON)
    index-<g>.npz              the FAISS index, only when the backend is not exact (avoids a rebuild)

`save` writes generation g+1 beside g, fsyncs it, then swaps `manifest.json` by an atomic rename and only
then deletes generation g: a crash at any point leaves a directory that loads either the old or the new
bank, never a mixture.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from latentmem.recall.errors import BankDimensionError, BankStorageError, EmptyBankError
from latentmem.vector_index import IndexKind, VectorIndex

FORMAT = 1


@dataclass
class Memory:
    """One bank entry. `vector` is the stored, L2-normalised vector (D,)."""

    id: int
    text: str
    vector: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)


class MemoryBank:
    """A set of memories with unit vectors of dimension `dim`, searchable by cosine similarity."""

    def __init__(self, dim: int, *, index_kind: IndexKind = "auto", auto_threshold: int = 50_000) -> None:
        self.dim = dim
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
        return list(self._entries)

    def get(self, id_: int) -> Memory:
        if int(id_) not in self._entries:
            raise KeyError(f"no memory with id {id_}")
        text, meta = self._entries[int(id_)]
        return Memory(int(id_), text, self.index.vector(int(id_)), dict(meta))

    def text(self, id_: int) -> str:
        return self._entries[int(id_)][0]

    def search(self, queries: np.ndarray | torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k memories by cosine: queries (Q, D) -> (scores (Q, k), ids (Q, k)); -1 ids pad a short bank."""
        self.require_dim(queries.shape[-1], "query")
        self.require_nonempty()
        if isinstance(queries, torch.Tensor):
            queries = queries.detach().float().cpu().numpy()
        return self.index.search(queries, k)

    def matrix(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All memories as tensors: ids (N,) long and unit vectors (N, D) float32, cached until a write."""
        self.require_nonempty()
        if self._matrix is None:
            ids, vecs = self.index.matrix()
            self._matrix = (torch.from_numpy(ids), torch.from_numpy(vecs))
        return self._matrix

    def require_nonempty(self) -> None:
        if not self._entries:
            raise EmptyBankError(
                "the memory bank is empty; add memories first (MemoryBank.add or a MemoryWriter)"
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
        """Add memories: texts (N,), vectors (N, D) (normalised here), optional metadata and ids -> ids."""
        if isinstance(vectors, torch.Tensor):
            vectors = vectors.detach().float().cpu().numpy()
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2:
            raise BankDimensionError(f"expected vectors of shape (N, {self.dim}), got {vectors.shape}")
        self.require_dim(vectors.shape[1], "the vectors to add")
        if len(texts) != len(vectors):
            raise ValueError(f"{len(texts)} texts for {len(vectors)} vectors")
        metadata = [dict(m) for m in metadata] if metadata is not None else [{} for _ in texts]
        if len(metadata) != len(texts):
            raise ValueError(f"{len(metadata)} metadata entries for {len(texts)} texts")
        if ids is None:
            ids = list(range(self._next_id, self._next_id + len(texts)))
        ids = [int(i) for i in ids]
        for m in metadata:
            json.dumps(m)  # fail now, not at save time, on metadata SQLite cannot store
        self.index.add(np.asarray(ids, dtype=np.int64), vectors)
        self._entries.update({i: (str(t), m) for i, t, m in zip(ids, texts, metadata, strict=True)})
        self._next_id = max(self._next_id, max(ids, default=-1) + 1)
        self._matrix = None
        return ids

    def remove(self, ids: Sequence[int]) -> None:
        ids = [int(i) for i in ids]
        missing = [i for i in ids if i not in self._entries]
        if missing:
            raise KeyError(f"no memories with ids {missing[:5]}")
        self.index.remove(ids)
        for i in ids:
            del self._entries[i]
        self._matrix = None

    # ---- persistence ------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the bank to directory `path` atomically (see the module docstring)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        old = _read_manifest(path) if (path / "manifest.json").exists() else None
        gen = (old["generation"] + 1) if old else 0
        files = {"vectors": f"vectors-{gen}.safetensors", "db": f"memories-{gen}.sqlite"}
        ids = np.asarray(self.ids(), dtype=np.int64)
        vecs = (
            np.stack([self.index.vector(i) for i in ids])
            if len(ids)
            else np.empty((0, self.dim), dtype=np.float32)
        )
        save_file({"ids": ids, "vectors": vecs}, str(path / files["vectors"]))
        _fsync(path / files["vectors"])
        self._write_db(path / files["db"])
        if self.index.backend != "exact":
            files["index"] = f"index-{gen}.npz"
            self.index.save(path / files["index"])
        manifest = {
            "format": FORMAT,
            "generation": gen,
            "dim": self.dim,
            "index_kind": self.index.kind,
            "auto_threshold": self.index.auto_threshold,
            "next_id": self._next_id,
            "files": files,
        }
        tmp = path / f".manifest.json.tmp{os.getpid()}"
        tmp.write_text(json.dumps(manifest, indent=2))
        _fsync(tmp)
        os.replace(tmp, path / "manifest.json")
        for name in (old or {}).get("files", {}).values():
            (path / name).unlink(missing_ok=True)

    def _write_db(self, target: Path) -> None:
        tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
        tmp.unlink(missing_ok=True)
        con = sqlite3.connect(tmp)
        try:
            con.execute("CREATE TABLE memories (id INTEGER PRIMARY KEY, text TEXT NOT NULL, metadata TEXT)")
            con.executemany(
                "INSERT INTO memories VALUES (?, ?, ?)",
                [(i, t, json.dumps(m)) for i, (t, m) in self._entries.items()],
            )
            con.commit()
        finally:
            con.close()
        _fsync(tmp)
        os.replace(tmp, target)

    @classmethod
    def load(cls, path: str | Path) -> MemoryBank:
        """Load a bank saved by `save`; vectors, texts, metadata and ids come back exactly."""
        path = Path(path)
        manifest = _read_manifest(path)
        files = manifest["files"]
        for name in files.values():
            if not (path / name).exists():
                raise BankStorageError(f"{path}: the manifest names {name}, which is missing")
        bank = cls(
            manifest["dim"], index_kind=manifest["index_kind"], auto_threshold=manifest["auto_threshold"]
        )
        tensors = load_file(str(path / files["vectors"]))
        ids, vecs = tensors["ids"], tensors["vectors"]
        con = sqlite3.connect(f"file:{path / files['db']}?mode=ro", uri=True)
        try:
            rows = {
                i: (t, json.loads(m)) for i, t, m in con.execute("SELECT id, text, metadata FROM memories")
            }
        finally:
            con.close()
        if set(rows) != {int(i) for i in ids}:
            raise BankStorageError(
                f"{path}: the texts and the vectors hold different ids; the bank is corrupt"
            )
        if "index" in files:
            bank.index = VectorIndex.load(path / files["index"])
        elif len(ids):
            bank.index.add(ids, vecs, normalized=True)  # stored unit vectors: keep their bits
        bank._entries = {int(i): rows[int(i)] for i in ids}
        bank._next_id = int(manifest["next_id"])
        return bank


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except FileNotFoundError:
        raise BankStorageError(
            f"{path} is not a memory bank (no manifest.json); save one with MemoryBank.save"
        ) from None
    except json.JSONDecodeError as exc:
        raise BankStorageError(f"{path}/manifest.json is not valid JSON: {exc}") from None
    if manifest.get("format") != FORMAT:
        raise BankStorageError(f"{path}: bank format {manifest.get('format')!r}, expected {FORMAT}")
    return manifest


def _fsync(path: Path) -> None:
    with path.open("rb+") as f:
        os.fsync(f.fileno())
