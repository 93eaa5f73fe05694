"""The Qdrant backend, for deployments beyond one machine (`pip install 'latentmem[rag]'`).

One collection holds one store: cosine distance, the embedder's spec (and clients' `write_setting` values)
in the collection's metadata, and per
point the payload `user`, `agent`, `session` (unset fields as ""), `text`, `text_key`, `metadata`,
`created_at`, `updated_at` and `versions` (the states `replace` superseded, oldest first, kept in the
point so that a delete forgets them with it). Qdrant has no auto-increment, so point ids are made increasing like SQLite's:
the microsecond clock shifted left 12 bits, plus random low bits (two processes writing in the same
microsecond still differ) and a per-process counter (a batch gets consecutive ids).

Atomicity: Qdrant has no multi-operation transactions. `transaction()` serialises the writers of this
process, so an `add`'s duplicate check and insert do not interleave with another `add` here; writers in
other processes can race on duplicates (not on data integrity: each point write is atomic on the server).
The client's local mode (`path=`) takes an exclusive lock on its directory, so it is one process anyway.
"""

from __future__ import annotations

import contextlib
import functools
import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from latentmem.memory.backend import NewRow, VectorBackend, Where
from latentmem.memory.base import MemoryRecord, MemoryStoreError, MemoryVersion, Scope

_PAGE = 1024
_SETTING_PREFIX = "setting:"  # clients' keys in the collection metadata, apart from "embedder"


def _models():
    try:
        from qdrant_client import models
    except ImportError:
        raise MemoryStoreError(
            "the Qdrant backend needs qdrant-client: pip install 'latentmem[rag]'"
        ) from None
    return models


def _store_errors(cls: type) -> type:
    """Wrap the public methods of `cls` (but `transaction`, a context manager with no client call) so that
    the client's errors — the server unreachable or gone, a 4xx/5xx answer — reach callers as
    `MemoryStoreError`, the store's one error family, naming the operation and the collection. The
    client is imported at the first error, so that importing this module never needs it (`_models` says
    how to install it)."""

    def wrap(name: str, fn: Any) -> Any:
        @functools.wraps(fn)
        def call(self: QdrantBackend, *args: Any, **kwargs: Any) -> Any:
            try:
                return fn(self, *args, **kwargs)
            except Exception as exc:
                from qdrant_client.http.exceptions import ApiException

                if not isinstance(exc, ApiException):
                    raise
                raise MemoryStoreError(
                    f"Qdrant {name} on collection {self.collection!r} failed: {exc}"
                ) from exc

        return call

    for name, fn in list(vars(cls).items()):
        if not name.startswith("_") and name != "transaction" and callable(fn):
            setattr(cls, name, wrap(name, fn))
    return cls


@_store_errors
class QdrantBackend(VectorBackend):
    """A Qdrant collection as a vector-memory backend. Give exactly one of `url`, `path`, `location`."""

    def __init__(
        self,
        *,
        url: str | None = None,
        path: str | Path | None = None,
        location: str | None = None,
        collection: str = "latentmem",
    ) -> None:
        if sum(x is not None for x in (url, path, location)) != 1:
            raise MemoryStoreError(
                "give the Qdrant backend exactly one of url= (a server), path= (local mode on disk) or "
                "location=':memory:'"
            )
        _models()
        from qdrant_client import QdrantClient

        try:
            if url is not None:
                self.client = QdrantClient(url=url)
            elif path is not None:
                self.client = QdrantClient(path=str(Path(path).expanduser()))
            else:
                self.client = QdrantClient(location=location)
        except RuntimeError as exc:  # local mode: another process holds the directory
            raise MemoryStoreError(f"cannot open Qdrant at {url or path or location}: {exc}") from exc
        self.collection = collection
        self._lock = threading.RLock()
        self._last_id = 0

    # ---- meta --------------------------------------------------------------------------------------
    def embedder_info(self) -> tuple[str | None, int | None]:
        if not self.client.collection_exists(self.collection):
            return None, None
        config = self.client.get_collection(self.collection).config
        vectors = config.params.vectors
        dim = vectors.size if hasattr(vectors, "size") else None
        return (config.metadata or {}).get("embedder"), dim

    def set_embedder_info(self, spec: str, dim: int) -> None:
        models = _models()
        with self._lock:
            if self.client.collection_exists(self.collection):
                return
            self.client.create_collection(
                self.collection,
                vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE),
                metadata={"embedder": spec},
            )

    def read_setting(self, key: str) -> str | None:
        if not self.client.collection_exists(self.collection):
            return None
        metadata = self.client.get_collection(self.collection).config.metadata or {}
        return metadata.get(_SETTING_PREFIX + key)

    def write_setting(self, key: str, value: str) -> None:
        if not self.client.collection_exists(self.collection):
            raise MemoryStoreError(
                f"Qdrant collection {self.collection!r} does not exist yet; set the embedder before writing"
            )
        # Collection metadata merges key by key, so clients' settings and the embedder spec coexist.
        self.client.update_collection(self.collection, metadata={_SETTING_PREFIX + key: value})

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        with self._lock:
            yield

    # ---- filters -----------------------------------------------------------------------------------
    def _filter(self, where: Where, extra: Sequence[Any] = ()):
        models = _models()
        must: list[Any] = [
            models.FieldCondition(key=k, match=models.MatchValue(value=v))
            for k, v in where.scope_values().items()
        ]
        for key, value in where.filters.items():
            field = f"metadata.{key}"
            if value is None:
                must.append(models.IsNullCondition(is_null=models.PayloadField(key=field)))
            elif isinstance(value, bool | str):
                must.append(models.FieldCondition(key=field, match=models.MatchValue(value=value)))
            else:  # numbers compare by value (1 == 1.0), as in the embedded store
                must.append(models.FieldCondition(key=field, range=models.Range(gte=value, lte=value)))
        return models.Filter(must=[*must, *extra])

    def _scroll(self, flt, *, with_vectors: bool) -> Iterator[Any]:
        offset = None
        while True:
            points, offset = self.client.scroll(
                self.collection, scroll_filter=flt, limit=_PAGE, offset=offset, with_vectors=with_vectors
            )
            yield from points
            if offset is None:
                return

    @staticmethod
    def _record(point) -> MemoryRecord:
        p = point.payload
        return MemoryRecord(
            id=int(point.id),
            text=p["text"],
            scope=Scope(p["user"] or None, p["agent"] or None, p["session"] or None),
            metadata=p["metadata"],
            created_at=p["created_at"],
            updated_at=p["updated_at"],
            vector=None if point.vector is None else np.asarray(point.vector, dtype=np.float32),
        )

    # ---- rows --------------------------------------------------------------------------------------
    def insert(self, rows: Sequence[NewRow]) -> list[int]:
        models = _models()
        start = max(self._last_id + 1, (time.time_ns() // 1000) << 12 | secrets.randbits(11))
        ids = list(range(start, start + len(rows)))
        self._last_id = start + len(rows) - 1
        points = [
            models.PointStruct(
                id=id_,
                vector=row.vector.tolist(),
                payload={
                    "user": row.scope.user or "",
                    "agent": row.scope.agent or "",
                    "session": row.scope.session or "",
                    "text": row.text,
                    "text_key": row.text_key,
                    "metadata": row.metadata,
                    "created_at": row.created_at,
                    "updated_at": row.created_at,
                },
            )
            for id_, row in zip(ids, rows, strict=True)
        ]
        for start in range(0, len(points), _PAGE):
            self.client.upsert(self.collection, points=points[start : start + _PAGE], wait=True)
        return ids

    def replace(
        self,
        memory_id: int,
        text: str,
        text_key: str,
        metadata: dict[str, Any],
        vector: np.ndarray,
        at: float,
    ) -> None:
        models = _models()
        (point,) = self.client.retrieve(self.collection, ids=[memory_id], with_payload=True)
        old = point.payload
        versions = [
            *old.get("versions", []),
            {
                "text": old["text"],
                "metadata": old["metadata"],
                "updated_at": old["updated_at"],
                "replaced_at": at,
            },
        ]
        self.client.set_payload(
            self.collection,
            payload={
                "text": text,
                "text_key": text_key,
                "metadata": metadata,
                "updated_at": at,
                "versions": versions,
            },
            points=[memory_id],
            wait=True,
        )
        self.client.update_vectors(
            self.collection, points=[models.PointVectors(id=memory_id, vector=vector.tolist())], wait=True
        )

    def remove(self, ids: Sequence[int]) -> None:
        models = _models()
        self.client.delete(self.collection, points_selector=models.PointIdsList(points=list(ids)), wait=True)

    def find_text_keys(self, scope: Scope, text_keys: Sequence[str]) -> dict[str, int]:
        models = _models()
        if not text_keys:
            return {}
        by_key = models.FieldCondition(key="text_key", match=models.MatchAny(any=sorted(set(text_keys))))
        out: dict[str, int] = {}
        for point in self._scroll(self._filter(Where(scope, exact_scope=True), [by_key]), with_vectors=False):
            key = point.payload["text_key"]
            out[key] = min(out.get(key, int(point.id)), int(point.id))  # the oldest record wins
        return out

    def fetch(self, ids: Sequence[int]) -> dict[int, MemoryRecord]:
        if not ids:
            return {}
        points = self.client.retrieve(self.collection, ids=list(ids), with_payload=True, with_vectors=True)
        return {int(p.id): self._record(p) for p in points}

    def versions(self, memory_id: int) -> list[MemoryVersion]:
        points = self.client.retrieve(self.collection, ids=[memory_id], with_payload=True)
        stored = points[0].payload.get("versions", []) if points else []
        return [
            MemoryVersion(memory_id, n, v["text"], v["metadata"], v["updated_at"], v["replaced_at"])
            for n, v in enumerate(stored)
        ]

    def select(self, where: Where, limit: int | None, after: int | None = None) -> list[MemoryRecord]:
        records = [self._record(p) for p in self._scroll(self._filter(where), with_vectors=True)]
        records.sort(key=lambda r: r.id)  # ids increase with insertion time
        if after is not None:
            records = [r for r in records if r.id > after]
        return records if limit is None else records[:limit]

    def count(self, where: Where | None = None) -> int:
        if not self.client.collection_exists(self.collection):
            return 0
        flt = None if where is None else self._filter(where)
        return int(self.client.count(self.collection, count_filter=flt, exact=True).count)

    def nearest(self, vectors: np.ndarray, where: Where, k: int) -> list[list[tuple[int, float]]]:
        models = _models()
        flt = self._filter(where)
        requests = [
            models.QueryRequest(query=vector.tolist(), filter=flt, limit=k, with_payload=False)
            for vector in vectors
        ]
        out = []
        for start in range(0, len(requests), _PAGE):  # one round trip per page of queries
            responses = self.client.query_batch_points(
                self.collection, requests=requests[start : start + _PAGE]
            )
            out += [[(int(p.id), float(p.score)) for p in r.points] for r in responses]
        return out

    def close(self) -> None:
        self.client.close()
