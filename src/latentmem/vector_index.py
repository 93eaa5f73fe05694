"""Nearest-neighbour search over L2-normalised vectors, shared by every memory that searches vectors.

`VectorIndex` maps int64 ids to float32 vectors of one dimension and answers top-k inner-product queries
(cosine similarity, since vectors are normalised on the way in). Backends:

- `exact`: a numpy matrix; exact, no extra dependency; the default for small collections. It is held
  transposed, (D, N) with spare columns, so a query is one BLAS matrix-vector product over contiguous
  rows of length N (the fast gemv kernel, multi-threaded by BLAS): as fast as FAISS's flat scan on one
  thread, and it uses BLAS's threads where a flat FAISS search of one query uses one.
- `flat`: FAISS `IndexFlatIP` (exact, BLAS-fast) behind an id map.
- `hnsw`: FAISS HNSW graph; approximate, fast on large collections; removal is by tombstone.
- `ivf`: FAISS inverted lists (`IndexIVFFlat`): k-means cells trained on the first `add`, `ivf_nprobe`
  cells scanned per query; approximate, builds much faster than HNSW on millions of vectors. With the cell
  count left to the index (`ivf_nlist=0`) it is retrained on its own vectors whenever the collection has
  grown enough for that count to double, so cells stay near sqrt(N) vectors and a query's cost grows
  like sqrt(N), not N.
- `auto`: `exact` below `auto_threshold` vectors, otherwise `auto_kind` (`hnsw` or `ivf`), switching when
  the collection grows.

`save(path)` writes one file atomically (temporary file + rename); `load(path)` reads it back and raises
`VectorIndexError` for any file it cannot use (missing, empty, truncated, another format, inconsistent), so
a caller that treats the file as a cache has one error to catch.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from latentmem.errors import LatentMemError

IndexKind = Literal["auto", "exact", "flat", "hnsw", "ivf"]
ApproximateKind = Literal["hnsw", "ivf"]


class VectorIndexError(LatentMemError, ValueError):
    """Bad input to a vector index (wrong dimension, unknown id, empty index...)."""


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows of `x` (N, D) scaled to unit L2 norm, as float32. Zero rows are an error, not silent NaNs."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    if np.any(norms == 0) or not np.all(np.isfinite(norms)):
        raise VectorIndexError("cannot normalise a zero or non-finite vector")
    return x / norms


class VectorIndex:
    """Top-k cosine search over `(id, vector)` pairs. See the module docstring for the backends."""

    def __init__(
        self,
        dim: int,
        kind: IndexKind = "auto",
        *,
        auto_threshold: int = 50_000,
        auto_kind: ApproximateKind = "hnsw",
        hnsw_m: int = 32,
        ef_construction: int = 80,
        ef_search: int = 64,
        ivf_nlist: int = 0,
        ivf_nprobe: int = 16,
    ) -> None:
        if dim <= 0:
            raise VectorIndexError(f"dim must be positive, got {dim}")
        if kind not in ("auto", "exact", "flat", "hnsw", "ivf"):
            raise VectorIndexError(f"unknown index kind {kind!r}; choose auto, exact, flat, hnsw or ivf")
        if auto_kind not in ("hnsw", "ivf"):
            raise VectorIndexError(f"unknown auto_kind {auto_kind!r}; choose hnsw or ivf")
        if ivf_nlist < 0 or ivf_nprobe <= 0:
            raise VectorIndexError(
                f"ivf_nlist must be >= 0 (0 = chosen from the first add) and ivf_nprobe > 0, "
                f"got {ivf_nlist} and {ivf_nprobe}"
            )
        self.dim, self.kind, self.auto_threshold, self.auto_kind = dim, kind, auto_threshold, auto_kind
        self.hnsw_m, self.ef_construction, self.ef_search = hnsw_m, ef_construction, ef_search
        # `ivf_nlist` becomes the cell count in use once the index is trained; `_ivf_grows` remembers that
        # it was left to the index, which then retrains as the collection grows.
        self.ivf_nlist, self.ivf_nprobe, self._ivf_grows = ivf_nlist, ivf_nprobe, ivf_nlist == 0
        self._ids = np.empty(0, dtype=np.int64)  # row -> id, for every row of the backend
        # exact backend only: (D, capacity) float32; columns [0, rows) are the rows of `_ids`
        self._cols = np.empty((dim, 0), dtype=np.float32)
        self._row_of: dict[int, int] = {}  # id -> row (live rows only)
        self._faiss = None
        # An opaque label saved with the index and read back by `load`, for the owner to check that a
        # file is its own (the embedded memory store writes its store id here).
        self.tag = ""
        if self.backend not in ("exact", "ivf"):  # an IVF index is created by its first add (training)
            self._faiss = self._new_faiss(self.backend)

    # ---- properties -----------------------------------------------------------------------------
    @property
    def backend(self) -> str:
        if self.kind != "auto":
            return self.kind
        return self.auto_kind if self._faiss is not None else "exact"

    def __len__(self) -> int:
        return len(self._row_of)

    def __contains__(self, id_: int) -> bool:
        return int(id_) in self._row_of

    @property
    def rows(self) -> int:
        """Rows held, tombstones included (`len` counts live ids only): what compaction keeps bounded."""
        return len(self._ids)

    def ids(self) -> np.ndarray:
        return np.fromiter(self._row_of.keys(), dtype=np.int64, count=len(self._row_of))

    # ---- writes ---------------------------------------------------------------------------------
    def add(self, ids: np.ndarray | list[int], vectors: np.ndarray, *, normalized: bool = False) -> None:
        """Add vectors (N, D) under new int ids (N,). Vectors are L2-normalised here.

        `normalized=True` stores them as given (they must already be unit vectors, e.g. read back from an
        earlier `matrix()`): normalising twice can move the last bit, and a reload must be exact.
        """
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise VectorIndexError(f"expected vectors of shape (N, {self.dim}), got {tuple(vectors.shape)}")
        if len(ids) != len(vectors):
            raise VectorIndexError(f"{len(ids)} ids for {len(vectors)} vectors")
        if len(set(ids.tolist())) != len(ids) or any(int(i) in self._row_of for i in ids):
            raise VectorIndexError("ids must be new and unique")
        if not normalized:
            vectors = l2_normalize(vectors)
        if self.kind == "ivf" and self._faiss is None:
            self._faiss = self._new_faiss("ivf", vectors)
        start = len(self._ids)
        if self._faiss is None:
            self._append_columns(vectors)
        else:
            self._faiss.add(vectors)
        self._ids = np.concatenate([self._ids, ids])
        self._row_of.update({int(i): start + n for n, i in enumerate(ids)})
        # After the add, so that a new approximate index is trained on every vector, these included.
        if self.kind == "auto" and self._faiss is None and len(self) >= max(self.auto_threshold, 1):
            self._rebuild(self.auto_kind)
        elif self.backend == "ivf" and self._ivf_grows and _ivf_cells(len(self)) >= 2 * self.ivf_nlist:
            self._rebuild("ivf")

    def remove(self, ids: np.ndarray | list[int]) -> None:
        """Remove ids; unknown ids are an error (nothing is removed then)."""
        ids = [int(i) for i in np.asarray(ids, dtype=np.int64).reshape(-1)]
        missing = [i for i in ids if i not in self._row_of]
        if missing:
            raise VectorIndexError(f"unknown ids: {missing[:5]}")
        rows = [self._row_of.pop(i) for i in ids]
        self._ids[rows] = -1  # a tombstone; dead rows are filtered out of results
        if self._faiss is None and len(self._ids) > 2 * max(len(self), 1):
            self._compact()

    def vector(self, id_: int) -> np.ndarray:
        """The stored (normalised) vector of `id_`, (D,)."""
        if int(id_) not in self._row_of:
            raise VectorIndexError(f"unknown id {id_}")
        return self._columns(np.array([self._row_of[int(id_)]]))[:, 0].copy()

    # ---- search ---------------------------------------------------------------------------------
    def search(
        self, queries: np.ndarray, k: int, *, among: Sequence[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by cosine. `queries` (Q, D) -> (scores (Q, k) float32, ids (Q, k) int64).

        When fewer than k vectors exist, the tail is padded with score -inf and id -1. `among` searches
        only those ids (ids not in the index are ignored), exactly on every backend: their stored vectors
        are scored one by one, for a caller that picked a few ids itself (the records of one scope).
        """
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None]
        if queries.shape[-1] != self.dim:
            raise VectorIndexError(
                f"query dimension {queries.shape[-1]} does not match the index's {self.dim}"
            )
        if k <= 0:
            raise VectorIndexError(f"k must be positive, got {k}")
        queries = l2_normalize(queries)
        candidates = None  # the rows scored, when not all of them
        if among is not None:
            row_of = self._row_of
            candidates = np.array(sorted(row_of[i] for i in map(int, among) if i in row_of), dtype=np.int64)
            fetch = min(k, len(candidates))
        else:
            n_dead = len(self._ids) - len(self)
            fetch = min(k + n_dead, len(self._ids))
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        out_ids = np.full((len(queries), k), -1, dtype=np.int64)
        if fetch == 0:
            return scores, out_ids
        if candidates is not None or self._faiss is None:
            # Gathering a column of the exact matrix reads D scattered floats (~5 us at D=384), scanning
            # a row ~0.1 us: below 1/32 of the rows gather, above it scan every row and pick.
            if candidates is not None and (self._faiss is not None or 32 * len(candidates) < len(self._ids)):
                sims = queries @ self._columns(candidates)  # (Q, M)
            else:
                sims = queries @ self._cols[:, : len(self._ids)]  # (Q, N)
                if candidates is not None:
                    sims = sims[:, candidates]
                elif n_dead:
                    sims[:, self._ids < 0] = -np.inf
            n = sims.shape[1]
            rows = np.argpartition(sims, n - fetch, axis=1)[:, n - fetch :]
            row_scores = np.take_along_axis(sims, rows, axis=1)
            if candidates is not None:
                rows = candidates[rows]
        else:
            if self.backend == "hnsw":
                self._faiss.hnsw.efSearch = max(self.ef_search, fetch)
            elif self.backend == "ivf":
                self._faiss.nprobe = self.ivf_nprobe
            row_scores, rows = self._faiss.search(queries, fetch)
        order = np.argsort(-row_scores, axis=1, kind="stable")
        row_scores = np.take_along_axis(row_scores, order, axis=1)
        rows = np.take_along_axis(rows, order, axis=1)
        for q in range(len(queries)):
            keep = (rows[q] >= 0) & (self._ids[np.maximum(rows[q], 0)] >= 0) & np.isfinite(row_scores[q])
            got_rows, got_scores = rows[q][keep][:k], row_scores[q][keep][:k]
            scores[q, : len(got_rows)] = got_scores
            out_ids[q, : len(got_rows)] = self._ids[got_rows]
        return scores, out_ids

    def matrix(self) -> tuple[np.ndarray, np.ndarray]:
        """Every live entry at once: ids (N,) int64 and normalised vectors (N, D) float32, in insertion order."""
        live = np.flatnonzero(self._ids >= 0)
        if self._faiss is None:
            vecs = self._cols[:, live].T
        elif len(self._ids):
            vecs = self._faiss.reconstruct_n(0, len(self._ids))[live]
        else:
            vecs = np.empty((0, self.dim), np.float32)
        return self._ids[live].copy(), np.ascontiguousarray(vecs, dtype=np.float32)

    # ---- persistence ----------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the whole index (and its `tag`) to one file, atomically."""
        import faiss

        path = Path(path)
        payload = {
            "meta": np.array(
                [
                    self.dim,
                    self.auto_threshold,
                    self.hnsw_m,
                    self.ef_construction,
                    self.ef_search,
                    self.ivf_nlist,
                    self.ivf_nprobe,
                    self._ivf_grows,
                ]
            ),
            "kind": np.array(self.kind),
            "auto_kind": np.array(self.auto_kind),
            "tag": np.array(self.tag),
            "ids": self._ids,
            "vecs": np.ascontiguousarray(self._cols[:, : len(self._ids)].T),  # (N, D): the file's layout
        }
        if self._faiss is not None:
            payload["faiss"] = faiss.serialize_index(self._faiss)
        buf = io.BytesIO()
        np.savez(buf, **payload)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        with tmp.open("wb") as f:
            f.write(buf.getvalue())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> VectorIndex:
        """The index saved at `path`; `VectorIndexError` for a missing or unusable file (see module doc)."""
        path = Path(path)
        if not path.is_file():
            raise VectorIndexError(f"no index file at {path}")
        try:
            index = cls._read(path)
        except VectorIndexError as exc:
            raise VectorIndexError(f"{path} is not a usable index file: {exc}") from exc
        except Exception as exc:  # zipfile, numpy and faiss each fail in their own way
            raise VectorIndexError(
                f"{path} is not a usable index file (damaged or truncated?): {type(exc).__name__}: {exc}"
            ) from exc
        return index

    @classmethod
    def _read(cls, path: Path) -> VectorIndex:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):  # a plain .npy array
            raise VectorIndexError("not an .npz archive")
        with data:
            # files written before the IVF kind carry five settings, before IVF growth seven: the defaults
            # fill in (an older IVF index keeps its cell count)
            dim, threshold, m, efc, efs, nlist, nprobe, grows = [int(v) for v in data["meta"]] + [0, 16, 0][
                len(data["meta"]) - 5 :
            ]
            index = cls(
                dim,
                str(data["kind"]),
                auto_threshold=threshold,
                auto_kind=str(data["auto_kind"]) if "auto_kind" in data.files else "hnsw",
                hnsw_m=m,
                ef_construction=efc,
                ef_search=efs,
                ivf_nlist=nlist,
                ivf_nprobe=nprobe,
            )
            index.tag = str(data["tag"]) if "tag" in data.files else ""
            index._ivf_grows = bool(grows)
            index._ids = data["ids"].astype(np.int64).reshape(-1)
            vecs = data["vecs"].astype(np.float32)
            if vecs.ndim != 2 or vecs.shape[1] != dim:
                raise VectorIndexError(f"stored vectors of shape {vecs.shape}, not (N, {dim})")
            index._cols = np.ascontiguousarray(vecs.T)
            if "faiss" in data.files:
                import faiss

                index._faiss = faiss.deserialize_index(data["faiss"])
        rows = len(vecs) if index._faiss is None else index._faiss.ntotal
        if rows != len(index._ids):
            raise VectorIndexError(f"{len(index._ids)} ids for {rows} stored vectors of dimension {dim}")
        if index._faiss is not None and index._faiss.d != dim:
            raise VectorIndexError(f"the FAISS index has dimension {index._faiss.d}, the file says {dim}")
        index._row_of = {int(i): r for r, i in enumerate(index._ids) if i >= 0}
        return index

    # ---- internals ------------------------------------------------------------------------------
    def _new_faiss(self, backend: str, training: np.ndarray | None = None):
        """An empty FAISS index of `backend`; an IVF one is trained on `training` (N, D) first."""
        if backend == "ivf":
            return self._new_ivf(training)
        faiss = _import_faiss(backend)
        if backend == "flat":
            return faiss.IndexFlatIP(self.dim)
        index = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.ef_construction
        index.hnsw.efSearch = self.ef_search
        return index

    def _new_ivf(self, training: np.ndarray):
        """An IVF index trained (k-means) on `training` (N, D): the first vectors ever added, or every live
        vector when the index is rebuilt (see `_rebuild`).

        A cell count left to the index is `_ivf_cells(N)`, about sqrt(N). At most 64 points per cell train
        the k-means: enough for the cells' centres, and it keeps a 1M-vector build to seconds on two cores.
        """
        faiss = _import_faiss("ivf")
        n = len(training)
        nlist = _ivf_cells(n) if self._ivf_grows else self.ivf_nlist
        if n < nlist:
            raise VectorIndexError(
                f"an ivf index with ivf_nlist={nlist} needs at least {nlist} vectors in its first add, "
                f"got {n}; add more at once or lower ivf_nlist"
            )
        self.ivf_nlist = nlist
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(self.dim), self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.set_direct_map_type(faiss.DirectMap.Array)  # keeps `vector(id)` (reconstruct) working
        rng = np.random.default_rng(0)
        sample = training if n <= 64 * nlist else training[rng.choice(n, 64 * nlist, replace=False)]
        index.train(sample)
        return index

    def _columns(self, rows: np.ndarray) -> np.ndarray:
        """The stored vectors of these rows (ascending, for locality) as columns, (D, M)."""
        if self._faiss is None:
            return np.take(self._cols, rows, axis=1)
        return self._faiss.reconstruct_batch(rows).T

    def _rebuild(self, backend: str) -> None:
        """Move every live vector into a new FAISS index of `backend` (an IVF one trained on them all),
        dropping tombstones: `auto` leaving `exact`, or an IVF index that outgrew its cells."""
        ids, vecs = self.matrix()
        self._faiss = self._new_faiss(backend, vecs)
        self._faiss.add(vecs)
        self._ids = ids
        self._cols = np.empty((self.dim, 0), dtype=np.float32)
        self._row_of = {int(i): r for r, i in enumerate(self._ids)}

    def _append_columns(self, vectors: np.ndarray) -> None:
        """Write `vectors` (M, D) into the exact matrix after its rows, doubling its capacity when full (an
        amortised O(1) copy per vector, as a list appends)."""
        rows = len(self._ids)
        if rows + len(vectors) > self._cols.shape[1]:
            grown = np.empty((self.dim, max(2 * self._cols.shape[1], rows + len(vectors))), dtype=np.float32)
            grown[:, :rows] = self._cols[:, :rows]
            self._cols = grown
        self._cols[:, rows : rows + len(vectors)] = vectors.T

    def _compact(self) -> None:
        live = np.flatnonzero(self._ids >= 0)
        self._ids, self._cols = self._ids[live], np.ascontiguousarray(self._cols[:, live])
        self._row_of = {int(i): r for r, i in enumerate(self._ids)}


def _ivf_cells(n: int) -> int:
    """The IVF cell count for `n` vectors when left to the index: about sqrt(n), capped so that each cell
    gets >= 39 training points (FAISS's minimum for stable k-means)."""
    return max(1, min(int(np.sqrt(n)), n // 39))


def _import_faiss(backend: str):
    try:
        import faiss
    except ImportError:
        raise VectorIndexError(
            f"the {backend!r} index needs faiss: pip install 'latentmem[rag]' (or use kind='exact')"
        ) from None
    return faiss


def synthetic_bank(n: int, dim: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    """(n, dim) float32 unit vectors; built in chunks to keep peak memory near the output's size."""
    out = np.empty((n, dim), dtype=np.float32)
    centres = (
        l2_normalize(rng.standard_normal((max(1, int(np.sqrt(n))), dim))) if kind == "clustered" else None
    )
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        noise = rng.standard_normal((m, dim), dtype=np.float32)
        if centres is not None:  # noise of the centre's norm: cosine to the centre about 0.7
            noise = noise / np.sqrt(dim) + centres[rng.integers(0, len(centres), m)]
        out[start : start + m] = l2_normalize(noise)
    return out
