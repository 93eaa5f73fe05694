"""`VectorMemory`: the memory interface over an embedder and a backend (embedded SQLite + FAISS, or Qdrant).

    mem = VectorMemory.open("~/.latentmem/agent")                 # embedded, MiniLM embeddings
    mem.add("Alice is allergic to peanuts", user="alice")
    hits = mem.search("what food should alice avoid?", user="alice", k=3)
    found = mem.retrieve("alice's allergies", user="alice", k=4)  # texts + vectors, e.g. for a weaver
    found.texts, found.vectors                                     # list[str], (n, D) float32

    mem = VectorMemory.qdrant(url="http://qdrant:6333")           # the same interface on a server

Deduplication happens on `add`: a text equal to an existing one in the same scope (after case-folding and
whitespace collapsing) is not stored again; the existing record comes back with event "duplicate". With
`VectorMemoryConfig(near_duplicate_threshold=t)` (off by default: a negation or a changed number scores
as similar as a rephrasing), a text whose embedding has cosine >= t with one is not stored either (event
"near_duplicate").
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from latentmem.memory.backend import NewRow, VectorBackend, Where
from latentmem.memory.base import (
    AddResult,
    FilterValue,
    Memory,
    MemoryInputError,
    MemoryNotFoundError,
    MemoryRecord,
    MemoryStoreError,
    MemoryVersion,
    ScopeLike,
    SearchHit,
    as_query_batch,
    check_filters,
    check_k,
    check_metadata,
    check_text,
    normalize_text,
    resolve_scope,
)
from latentmem.memory.config import VectorMemoryConfig
from latentmem.memory.embedders import DEFAULT_EMBEDDER, DeferredEmbedder, Embedder, load_embedder


def text_key(text: str) -> str:
    """The exact-duplicate key of a text: a hash of its normalised form."""
    return hashlib.sha256(normalize_text(text).encode()).hexdigest()


@dataclasses.dataclass
class Retrieved:
    """Top-k retrieval results as arrays, ready to feed a model: best first."""

    ids: list[int]
    texts: list[str]
    vectors: np.ndarray  # (n, D) float32, unit rows
    scores: np.ndarray  # (n,) float32 cosine similarities


class VectorMemory(Memory):
    """Texts with embeddings, searched by cosine similarity. See the module docstring."""

    def __init__(
        self,
        backend: VectorBackend,
        embedder: Embedder | str | None = None,
        config: VectorMemoryConfig | None = None,
    ) -> None:
        """Use `backend` with `embedder` (an `Embedder`, a spec for `load_embedder`, or None: the embedder
        the store was created with, MiniLM for a new store). A store refuses a different embedder than the
        one its vectors came from: mixing embedding spaces would make every search silently wrong."""
        self.backend = backend
        self.config = config or VectorMemoryConfig()
        self._tx_thread: int | None = None  # the thread inside `transaction()`, if any
        stored_spec, stored_dim = backend.embedder_info()
        if embedder is None:
            embedder = stored_spec or DEFAULT_EMBEDDER
        if stored_spec is not None and stored_dim is not None and embedder == stored_spec:
            embedder = DeferredEmbedder(stored_spec, stored_dim)  # loaded when first needed, if ever
        self.embedder: Embedder = load_embedder(embedder) if isinstance(embedder, str) else embedder
        if stored_spec is None:
            backend.set_embedder_info(self.embedder.spec, self.embedder.dim)
            stored_spec, stored_dim = backend.embedder_info()  # another process may have created it first
        if (stored_spec, stored_dim) != (self.embedder.spec, self.embedder.dim):
            backend.close()
            raise MemoryStoreError(
                f"this store holds vectors from embedder {stored_spec!r} (dim {stored_dim}), not "
                f"{self.embedder.spec!r} (dim {self.embedder.dim}); open it with that embedder "
                f"(--embedder {stored_spec}) or use a new store"
            )

    # ---- construction ------------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        directory: str | Path,
        *,
        embedder: Embedder | str | None = None,
        config: VectorMemoryConfig | None = None,
    ) -> VectorMemory:
        """The embedded store (SQLite + FAISS) in `directory`, created when missing."""
        from latentmem.memory.embedded import EmbeddedBackend

        config = config or VectorMemoryConfig()
        return cls(EmbeddedBackend(directory, config), embedder, config)

    @classmethod
    def qdrant(
        cls,
        *,
        url: str | None = None,
        path: str | Path | None = None,
        location: str | None = None,
        collection: str = "latentmem",
        embedder: Embedder | str | None = None,
        config: VectorMemoryConfig | None = None,
    ) -> VectorMemory:
        """A Qdrant collection: a server (`url`), the client's local mode (`path`, or `location=":memory:"`)."""
        from latentmem.memory.qdrant import QdrantBackend

        return cls(
            QdrantBackend(url=url, path=path, location=location, collection=collection), embedder, config
        )

    @property
    def dim(self) -> int:
        return self.embedder.dim

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> VectorMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- writes ------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Make the writes inside (`add`, `add_many`, `update`, `delete`, `delete_all`) one write: on the
        embedded store atomic (all of them, or on an error none); on Qdrant, which has no multi-point
        transactions, only serialised with this process's other writers. Transactions do not nest."""
        if self._tx_thread == threading.get_ident():
            raise MemoryStoreError("memory store transactions do not nest")
        with self.backend.transaction():
            self._tx_thread = threading.get_ident()
            try:
                yield
            finally:
                self._tx_thread = None

    def _write(self) -> contextlib.AbstractContextManager[None]:
        """The transaction of one write call; inside `transaction()`, the open one."""
        if self._tx_thread == threading.get_ident():
            return contextlib.nullcontext()
        return self.backend.transaction()

    def add(
        self,
        text: str,
        scope: ScopeLike | None = None,
        *,
        user: str | None = None,
        agent: str | None = None,
        session: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        vector: np.ndarray | None = None,
    ) -> AddResult:
        """Store one text (embedded here unless `vector` is given). See `add_many`."""
        vectors = None if vector is None else np.asarray(vector, dtype=np.float32).reshape(1, -1)
        metadatas = None if metadata is None else [metadata]
        return self.add_many(
            [text], scope, user=user, agent=agent, session=session, metadatas=metadatas, vectors=vectors
        )[0]

    def add_many(
        self,
        texts: Sequence[str],
        scope: ScopeLike | None = None,
        *,
        user: str | None = None,
        agent: str | None = None,
        session: str | None = None,
        metadatas: Sequence[Mapping[str, Any] | None] | None = None,
        vectors: np.ndarray | None = None,
    ) -> list[AddResult]:
        """Store texts in one scope, atomically: all of them or (on any error) none.

        Every input is checked before anything is written. Duplicates, of stored records or of earlier
        texts in the same batch, come back as the record they duplicate.
        """
        scope = resolve_scope(scope, user, agent, session)
        texts, metas, vecs = self._checked_batch(texts, metadatas, vectors)
        if not texts:
            return []
        keys = [text_key(t) for t in texts]
        threshold = self.config.near_duplicate_threshold
        now = time.time()
        with self._write():
            near = (
                self.backend.nearest(vecs, Where(scope, exact_scope=True), 1)
                if threshold is not None
                else None
            )
            plan = _BatchPlan.of(keys, vecs, self.backend.find_text_keys(scope, keys), near, threshold)
            rows = [NewRow(texts[i], keys[i], scope, metas[i], vecs[i], created_at=now) for i in plan.new]
            new_ids = self.backend.insert(rows)
            originals = self.backend.fetch([ref for event, ref in plan.outcome if event != "new"])
        added = [
            MemoryRecord(id_, row.text, scope, row.metadata, now, now, row.vector)
            for id_, row in zip(new_ids, rows, strict=True)
        ]
        return plan.results(keys, added, originals)

    def _checked_batch(
        self,
        texts: Sequence[str],
        metadatas: Sequence[Mapping[str, Any] | None] | None,
        vectors: np.ndarray | None,
    ) -> tuple[list[str], list[dict[str, Any]], np.ndarray]:
        """`add_many`'s inputs checked before any write: texts, metadata, and vectors (N, D), embedded when
        not given."""
        if isinstance(texts, str):
            raise MemoryInputError("add_many takes a list of texts; use add() for one text")
        texts = [check_text(t, self.config.max_chars) for t in texts]
        if metadatas is not None and len(metadatas) != len(texts):
            raise MemoryInputError(f"{len(metadatas)} metadata entries for {len(texts)} texts")
        metas = [
            check_metadata(m, self.config.max_metadata_chars) for m in (metadatas or [None] * len(texts))
        ]
        if vectors is None:
            return texts, metas, self.embedder.embed(texts)
        vecs = as_query_batch(vectors, self.dim)
        if len(vecs) != len(texts):
            raise MemoryInputError(f"{len(vecs)} vectors for {len(texts)} texts")
        return texts, metas, vecs

    def update(
        self,
        memory_id: int,
        text: str | None = None,
        scope: ScopeLike | None = None,
        *,
        user: str | None = None,
        agent: str | None = None,
        session: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> MemoryRecord:
        scope = resolve_scope(scope, user, agent, session)
        new_text = None if text is None else check_text(text, self.config.max_chars)
        new_meta = None if metadata is None else check_metadata(metadata, self.config.max_metadata_chars)
        vector = None if new_text is None else self.embedder.embed([new_text])[0]
        with self._write():
            old = self.get(memory_id, scope)
            record = dataclasses.replace(
                old,
                text=old.text if new_text is None else new_text,
                metadata=old.metadata if new_meta is None else new_meta,
                vector=old.vector if vector is None else vector,
                updated_at=time.time(),
            )
            self.backend.replace(
                record.id,
                record.text,
                text_key(record.text),
                record.metadata,
                record.vector,
                record.updated_at,
            )
        return record

    def delete(
        self,
        memory_id: int,
        scope: ScopeLike | None = None,
        *,
        user: str | None = None,
        agent: str | None = None,
        session: str | None = None,
    ) -> None:
        scope = resolve_scope(scope, user, agent, session)
        with self._write():
            self.get(memory_id, scope)
            self.backend.remove([memory_id])

    def delete_all(
        self,
        scope: ScopeLike | None = None,
        *,
        user: str | None = None,
        agent: str | None = None,
        session: str | None = None,
    ) -> int:
        """Remove every record the scope sees (as `list` would return them), atomically; returns how many."""
        where = Where(resolve_scope(scope, user, agent, session))
        with self._write():
            ids = [r.id for r in self.backend.select(where, None)]
            self.backend.remove(ids)
        return len(ids)

    # ---- reads -------------------------------------------------------------------------------------
    def get(
        self,
        memory_id: int,
        scope: ScopeLike | None = None,
        *,
        user: str | None = None,
        agent: str | None = None,
        session: str | None = None,
    ) -> MemoryRecord:
        scope = resolve_scope(scope, user, agent, session)
        if not isinstance(memory_id, int) or isinstance(memory_id, bool):
            raise MemoryInputError(f"memory ids are ints, got {memory_id!r}")
        found = self.backend.fetch([memory_id]).get(memory_id)
        # Another scope's record reads exactly like a missing one: the answer must not reveal that it exists.
        if found is None or not scope.sees(found.scope):
            raise MemoryNotFoundError(f"no memory with id {memory_id} in scope {scope.fields()}")
        return found

    def search(
        self,
        query: str | np.ndarray,
        scope: ScopeLike | None = None,
        *,
        user: str | None = None,
        agent: str | None = None,
        session: str | None = None,
        filters: Mapping[str, FilterValue] | None = None,
        k: int = 5,
    ) -> list[SearchHit]:
        """The `k` most similar records in scope, best first. `query` is a text or a (D,) vector."""
        where = Where(resolve_scope(scope, user, agent, session), check_filters(filters))
        check_k(k)
        if isinstance(query, str):
            q = self.embedder.embed([check_text(query, self.config.max_chars)])
        else:
            q = as_query_batch(query, self.dim)
            if len(q) != 1:
                raise MemoryInputError(f"search takes one query vector, got {len(q)}")
        hits = self.backend.nearest(q, where, k)[0]
        records = self.backend.fetch([i for i, _ in hits])
        # A record deleted by another process after the index answered is skipped, not an error.
        return [SearchHit(records[i], score) for i, score in hits if i in records]

    def retrieve(
        self,
        query: str | np.ndarray,
        scope: ScopeLike | None = None,
        *,
        user: str | None = None,
        agent: str | None = None,
        session: str | None = None,
        filters: Mapping[str, FilterValue] | None = None,
        k: int = 5,
    ) -> Retrieved:
        """`search` as arrays: the top-k texts and their stored vectors (what a retrieval-reading model eats)."""
        hits = self.search(query, scope, user=user, agent=agent, session=session, filters=filters, k=k)
        vectors = np.stack([h.record.vector for h in hits]) if hits else np.empty((0, self.dim), np.float32)
        return Retrieved(
            ids=[h.record.id for h in hits],
            texts=[h.record.text for h in hits],
            vectors=vectors.astype(np.float32),
            scores=np.array([h.score for h in hits], dtype=np.float32),
        )

    def list(
        self,
        scope: ScopeLike | None = None,
        *,
        user: str | None = None,
        agent: str | None = None,
        session: str | None = None,
        filters: Mapping[str, FilterValue] | None = None,
        limit: int | None = None,
        after: int | None = None,
    ) -> list[MemoryRecord]:
        """The records in the scope, oldest first, at most `limit`; `after`: only ids above it (a page
        after the last id of the previous one)."""
        if limit is not None:
            check_k(limit)
        if after is not None and (not isinstance(after, int) or isinstance(after, bool)):
            raise MemoryInputError(f"after must be a memory id (int), got {after!r}")
        where = Where(resolve_scope(scope, user, agent, session), check_filters(filters))
        return self.backend.select(where, limit, after)

    def history(
        self,
        memory_id: int,
        scope: ScopeLike | None = None,
        *,
        user: str | None = None,
        agent: str | None = None,
        session: str | None = None,
    ) -> list[MemoryVersion]:
        """The earlier versions of a record of the scope, oldest first (its current state is `get`)."""
        self.get(memory_id, scope, user=user, agent=agent, session=session)
        return self.backend.versions(memory_id)

    def count(
        self,
        scope: ScopeLike | None = None,
        *,
        user: str | None = None,
        agent: str | None = None,
        session: str | None = None,
    ) -> int:
        """How many records the scope holds."""
        return self.backend.count(Where(resolve_scope(scope, user, agent, session)))


@dataclasses.dataclass
class _BatchPlan:
    """What `add_many` does with each text of a batch: `outcome[i]` is ("new", position among the new rows)
    or (event, id of the stored original); `new` lists the text indices that become new rows."""

    outcome: list[tuple[str, int]]
    new: list[int]

    @classmethod
    def of(
        cls,
        keys: list[str],
        vecs: np.ndarray,
        existing: dict[str, int],
        near: list[list[tuple[int, float]]] | None,
        threshold: float | None,
    ) -> _BatchPlan:
        """Classify each text against the stored records (`existing` exact keys, `near` nearest stored
        record per text) and against the batch's earlier new rows."""
        plan, new_key = cls([], []), {}
        new_vecs = np.empty_like(vecs)  # the first len(plan.new) rows: vectors of the new rows
        for i, key in enumerate(keys):
            if key in existing:
                plan.outcome.append(("duplicate", existing[key]))
            elif key in new_key:
                plan.outcome.append(("new", new_key[key]))
            elif threshold is not None and near and near[i] and near[i][0][1] >= threshold:
                plan.outcome.append(("near_duplicate", near[i][0][0]))
            else:
                # against the batch's earlier new rows: O(rows so far) memory, not an (N, N) matrix
                sims = new_vecs[: len(plan.new)] @ vecs[i] if threshold is not None and plan.new else None
                if sims is not None and sims.max() >= threshold:
                    plan.outcome.append(("new", int(np.argmax(sims))))
                    continue
                new_key[key] = len(plan.new)
                plan.outcome.append(("new", len(plan.new)))
                new_vecs[len(plan.new)] = vecs[i]
                plan.new.append(i)
        return plan

    def results(
        self, keys: list[str], added: list[MemoryRecord], originals: dict[int, MemoryRecord]
    ) -> list[AddResult]:
        """One `AddResult` per text, given the new rows' records and the stored originals by id."""
        results = []
        for i, (event, ref) in enumerate(self.outcome):
            if event != "new":
                results.append(AddResult(originals[ref], event))
            elif self.new[ref] == i:
                results.append(AddResult(added[ref], "added"))
            else:  # an exact or near duplicate of an earlier text of this batch
                same = keys[self.new[ref]] == keys[i]
                results.append(AddResult(added[ref], "duplicate" if same else "near_duplicate"))
        return results
