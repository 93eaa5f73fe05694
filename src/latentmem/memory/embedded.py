"""The embedded vector-memory backend: SQLite + `VectorIndex` in one directory, safe across processes.

Layout of a store directory::

    memory.sqlite          records (text, scope, metadata, timestamps, vector), their earlier versions,
                           the change log, meta
                           (including the store's random id and the settings of clients such as a recall
                           bank, `write_setting`)
    index-<SEQ>.npz        a snapshot of the vector index as of write number SEQ, tagged with the store id
                           (a cache)
    write.lock             the inter-process write lock (fcntl)

Why it survives kills and concurrent writers:

- **SQLite is the source of truth.** Every write is one `BEGIN IMMEDIATE ... COMMIT` transaction (WAL
  journal) that stores the rows *with their vectors*, bumps the write sequence number `seq` and logs the
  touched ids in `changes`. A process killed mid-write leaves the last committed state, nothing half-done.
- **The index is derived.** A snapshot file is named by the `seq` it reflects and written atomically
  (`VectorIndex.save`). On open, and whenever `seq` moved on (another process wrote), the newest snapshot
  not ahead of `seq` is loaded and the logged changes after it are replayed from SQLite; with no usable
  snapshot the index is rebuilt from the stored vectors (and a fresh snapshot written). A stale, missing,
  damaged (unreadable, truncated, empty) or foreign index file is thus detected and repaired, never
  trusted: a snapshot counts only if it loads and carries this store's id.
- **A snapshot belongs to one database.** Sequence numbers alone would let a snapshot of an earlier
  database (memory.sqlite deleted, or replaced by a copy) pass for this one's. So every snapshot carries
  the store id of its database; one with another id is ignored, one ahead of the database's `seq` (a
  restored older copy) is deleted. Opening a *new or empty* database beside existing snapshots is refused
  (`MemoryStoreError`) rather than silently starting an empty store where a store was: that is most likely
  a lost or misplaced memory.sqlite, and refusing keeps every file as it is until a person decides.
- **One writer at a time.** Writers (and index refreshes) hold an exclusive `flock` on `write.lock`, so the
  duplicate check and the insert of one `add` are atomic; SQLite's busy timeout covers readers meeting
  a commit.
- **Snapshots are amortised.** The index file is rewritten only after `snapshot_min_changes` changes (and a
  quarter of the index), so a single `add` costs one small transaction, not a rewrite of the whole index.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import sqlite3
import time
import uuid
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from latentmem.memory.backend import NewRow, VectorBackend, Where
from latentmem.memory.base import MemoryRecord, MemoryStoreError, MemoryVersion, Scope
from latentmem.memory.config import VectorMemoryConfig
from latentmem.vector_index import VectorIndex, VectorIndexError

DB_NAME = "memory.sqlite"
LOCK_NAME = "write.lock"
_SNAPSHOT_GLOB = "index-*.npz"
_SETTING_PREFIX = "setting:"  # clients' keys in `meta`, apart from the store's own (seq, dim, embedder...)
_CHUNK = 10_000  # ids per `IN (...)` query, well under SQLite's parameter limit
_COLUMNS = "id, user, agent, session, text, metadata, created_at, updated_at, vector"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS memories (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user TEXT NOT NULL, agent TEXT NOT NULL, session TEXT NOT NULL,
    text TEXT NOT NULL, text_key TEXT NOT NULL, metadata TEXT NOT NULL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL, vector BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS memories_user ON memories (user, agent, session, text_key);
CREATE INDEX IF NOT EXISTS memories_agent ON memories (agent, session);
CREATE INDEX IF NOT EXISTS memories_session ON memories (session);
CREATE TABLE IF NOT EXISTS changes (seq INTEGER NOT NULL, memory_id INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS changes_seq ON changes (seq);
CREATE TABLE IF NOT EXISTS memory_versions (
    memory_id INTEGER NOT NULL, text TEXT NOT NULL, metadata TEXT NOT NULL,
    updated_at REAL NOT NULL, replaced_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS memory_versions_id ON memory_versions (memory_id);
"""


def _chunks(items: Sequence[int], size: int = _CHUNK) -> Iterator[Sequence[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _blob(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


def _where_sql(where: Where) -> tuple[str, list[Any]]:
    """SQL condition + parameters for `where`. Filters compare JSON type as well as value."""
    clauses, params = [], []
    for column, value in where.scope_values().items():
        clauses.append(f"{column} = ?")  # column names come from SCOPE_FIELDS, never from users
        params.append(value)
    for key, value in where.filters.items():
        path = f'$."{key}"'  # keys were checked to be [A-Za-z0-9_-]
        if value is None:
            clauses.append("json_type(metadata, ?) = 'null'")
            params.append(path)
        elif isinstance(value, bool):
            clauses.append("json_type(metadata, ?) = ?")
            params += [path, "true" if value else "false"]
        elif isinstance(value, int | float):  # numbers compare by value, 1 == 1.0, as in Qdrant's ranges
            clauses.append("json_type(metadata, ?) IN ('integer', 'real') AND json_extract(metadata, ?) = ?")
            params += [path, path, value]
        else:
            clauses.append("json_type(metadata, ?) = 'text' AND json_extract(metadata, ?) = ?")
            params += [path, path, value]
    return " AND ".join(clauses) or "1", params


class EmbeddedBackend(VectorBackend):
    """SQLite + `VectorIndex` in `directory` (created when missing). Not shared between threads."""

    def __init__(self, directory: str | Path, config: VectorMemoryConfig | None = None) -> None:
        self.directory = Path(directory).expanduser()
        self.config = config or VectorMemoryConfig()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock_file = (self.directory / LOCK_NAME).open("a+")
        except OSError as exc:
            raise MemoryStoreError(f"cannot open a memory store in {self.directory}: {exc}") from exc
        self._lock_depth = 0
        self._index: VectorIndex | None = None
        self._seq = -1  # the write sequence number the in-memory index reflects
        # Ids removed from the in-memory index since it was built. FAISS removal only tombstones a row and
        # every search then fetches k + tombstones rows, so the index is rebuilt compact from SQLite when
        # they pile up (counted in this process only: a reopened snapshot starts the count again).
        self._removed = 0
        # Ids written by the open transaction -> their new vector (None: deleted). Applied to the in-memory
        # index after COMMIT without reading the vectors back.
        self._touched: dict[int, np.ndarray | None] | None = None
        # (scope SQL, params) -> records it sees, counted up to `exact_filter_limit + 1`, as of write
        # `_counted_at`: a chat request searches the scope the previous one did (see `_scope_size`).
        self._counts: dict[tuple[str, tuple[Any, ...]], int] = {}
        self._counted_at = -1
        try:
            # Autocommit mode: transactions are begun explicitly (BEGIN IMMEDIATE takes the write lock
            # up front, so a transaction never fails half-way on a lock upgrade).
            self._conn = sqlite3.connect(
                self.directory / DB_NAME, timeout=self.config.lock_timeout_s, isolation_level=None
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL is durable against a killed process (what WAL must survive here), not a power cut.
            self._conn.execute("PRAGMA synchronous=NORMAL")
            with self._locked():
                self._conn.executescript(_SCHEMA)
                self.store_id = self._claim_store_id()
        except sqlite3.DatabaseError as exc:
            raise MemoryStoreError(f"{self.directory / DB_NAME} is not a usable memory store: {exc}") from exc

    # ---- meta --------------------------------------------------------------------------------------
    def _meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def _set_meta(self, key: str, value: Any) -> None:
        self._conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, str(value)))

    def _claim_store_id(self) -> str:
        """The id of this database, created with it (caller holds the lock). See the module docstring."""
        store_id = self._meta("store_id")
        if store_id is not None:
            return store_id
        is_empty = self._db_seq() == 0 and self._conn.execute("SELECT 1 FROM memories").fetchone() is None
        if is_empty and self._snapshots():
            names = ", ".join(sorted(p.name for p in self._snapshots().values())[:3])
            raise MemoryStoreError(
                f"{self.directory} holds index snapshots ({names}) but {DB_NAME} is new or empty: the "
                f"database they were made from was deleted or replaced. Restore that {DB_NAME}; or, to start "
                f"a new store here, delete the index-*.npz files (they hold vectors only, no texts)"
            )
        # A store made before store ids existed gets one now; its untagged snapshots are then rebuilt once.
        store_id = uuid.uuid4().hex
        self._conn.execute("BEGIN IMMEDIATE")
        self._set_meta("store_id", store_id)
        self._conn.execute("COMMIT")
        return store_id

    def embedder_info(self) -> tuple[str | None, int | None]:
        dim = self._meta("dim")
        return self._meta("embedder"), None if dim is None else int(dim)

    def set_embedder_info(self, spec: str, dim: int) -> None:
        with self.transaction():
            if self._meta("embedder") is None:  # first come, first served: never overwrite
                self._set_meta("embedder", spec)
                self._set_meta("dim", dim)

    def read_setting(self, key: str) -> str | None:
        return self._meta(_SETTING_PREFIX + key)

    def write_setting(self, key: str, value: str) -> None:
        self._in_transaction()  # in the same SQLite transaction as the rows it describes
        self._set_meta(_SETTING_PREFIX + key, value)

    # ---- locking and transactions ------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The exclusive inter-process lock (re-entrant within this object)."""
        if self._lock_depth == 0:
            deadline = time.monotonic() + self.config.lock_timeout_s
            while True:
                try:
                    fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    if time.monotonic() > deadline:
                        raise MemoryStoreError(
                            f"another process has held the write lock of {self.directory} for more than "
                            f"lock_timeout_s={self.config.lock_timeout_s}; retry, or raise lock_timeout_s"
                        ) from None
                    time.sleep(0.005)
        self._lock_depth += 1
        try:
            yield
        finally:
            self._lock_depth -= 1
            if self._lock_depth == 0:
                fcntl.flock(self._lock_file, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        if self._touched is not None:
            raise MemoryStoreError("memory store transactions do not nest")
        with self._locked():
            self._sync()
            self._conn.execute("BEGIN IMMEDIATE")
            self._touched = {}
            try:
                yield
                touched, seq = self._touched, self._seq + 1
                if touched:
                    self._conn.executemany(
                        "INSERT INTO changes (seq, memory_id) VALUES (?, ?)",
                        [(seq, i) for i in sorted(touched)],
                    )
                    self._set_meta("seq", seq)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            finally:
                self._touched = None
            if touched:
                self._after_commit(touched, seq)

    def _after_commit(self, touched: dict[int, np.ndarray | None], seq: int) -> None:
        try:
            if self._index is None:
                self._sync()  # the first write that gave the store its dimension
            else:
                present = [i for i in touched if i in self._index]
                if present:
                    self._index.remove(present)
                    self._removed += len(present)
                kept = [i for i, v in touched.items() if v is not None]
                if kept:
                    self._index.add(kept, np.stack([touched[i] for i in kept]))
            self._seq = seq
            self._maybe_snapshot()
        except Exception as exc:
            # The write is committed, so the caller must not see it as failed; only this process's index
            # is unsure (e.g. a full disk while writing a snapshot). Rebuild it from SQLite on next use.
            self._index, self._seq = None, -1
            warnings.warn(
                f"memory store {self.directory}: the write was committed but updating the index failed "
                f"({exc}); the index will be rebuilt from SQLite",
                RuntimeWarning,
                stacklevel=3,
            )
        except BaseException:  # an interrupt: the same reset, and let it propagate
            self._index, self._seq = None, -1
            raise

    # ---- the index, kept in step with SQLite -------------------------------------------------------
    def _db_seq(self) -> int:
        return int(self._meta("seq") or 0)

    def _snapshots(self) -> dict[int, Path]:
        out = {}
        for path in self.directory.glob(_SNAPSHOT_GLOB):
            seq_text = path.stem.removeprefix("index-")
            if seq_text.isdigit():
                out[int(seq_text)] = path
        return out

    def _ensure_current(self) -> None:
        """Before a read: catch up with writes made by other processes (cheap when there were none)."""
        if self._touched is not None:  # inside our own transaction, synced at its start
            return
        if self._index is None or self._db_seq() != self._seq:
            with self._locked():
                self._sync()

    def _sync(self) -> None:
        """Make the in-memory index reflect SQLite as of the current `seq` (caller holds the lock)."""
        seq = self._db_seq()
        _, dim = self.embedder_info()
        if dim is None:  # an empty store without an embedder yet: nothing to index
            self._index, self._seq = None, seq
            return
        if self._index is not None and self._seq == seq:
            return
        index, base = None, -1
        if self._index is not None and self._seq < seq:
            index, base = self._index, self._seq
        snapshots = self._snapshots()
        for ahead in [s for s in snapshots if s > seq]:
            # Under the lock a snapshot is never written before its write commits, so one ahead of `seq`
            # reflects writes this database never had (it was restored from an older copy): never load it.
            path = snapshots.pop(ahead)
            self._warn(f"{path.name} is ahead of {DB_NAME} (at write {seq}); deleting it")
            path.unlink(missing_ok=True)
        unusable = False
        if snapshots and max(snapshots) > base:
            newest = max(snapshots)
            loaded = self._load_snapshot(snapshots[newest])
            unusable = loaded is None
            if loaded is not None and self._configured(loaded, dim):
                index, base, self._removed = loaded, newest, 0  # (another dim or kind: rebuild as configured)
        pruned = int(self._meta("pruned_upto") or 0)
        if index is None or base < pruned:
            index = self._build_index(dim)
        else:
            rows = self._conn.execute("SELECT DISTINCT memory_id FROM changes WHERE seq > ?", (base,))
            self._refresh(index, [r[0] for r in rows])
        self._index, self._seq = index, seq
        if unusable:
            try:  # replace the bad file now, so that the next open does not rebuild (and warn) again
                self._write_snapshot()
            except OSError as exc:
                self._warn(f"could not write a fresh index snapshot ({exc}); the index stays in memory")

    def _load_snapshot(self, path: Path) -> VectorIndex | None:
        """The index saved at `path`, or None (with a warning) when it cannot be used: any failure to load
        it, or another store's id, means there is no snapshot, and the index is rebuilt from SQLite."""
        try:
            loaded = VectorIndex.load(path)
        except (OSError, VectorIndexError) as exc:
            self._warn(f"ignoring index snapshot {path.name} ({exc}); rebuilding the index from SQLite")
            return None
        if loaded.tag != self.store_id:
            self._warn(
                f"ignoring index snapshot {path.name}: it belongs to store {loaded.tag or '(untagged)'!r}, "
                f"not this {DB_NAME} (store {self.store_id!r}); rebuilding the index from SQLite"
            )
            return None
        return loaded

    def _warn(self, message: str) -> None:
        warnings.warn(f"memory store {self.directory}: {message}", RuntimeWarning, stacklevel=4)

    def _new_index(self, dim: int) -> VectorIndex:
        """An empty index as the config asks: `auto` leaves exact search for IVF, which builds ~20x faster
        than HNSW (see `VectorMemoryConfig.index_kind`)."""
        return VectorIndex(
            dim, self.config.index_kind, auto_threshold=self.config.auto_threshold, auto_kind="ivf"
        )

    def _configured(self, index: VectorIndex, dim: int) -> bool:
        """Whether a loaded snapshot is the index `_new_index` would build (else it is rebuilt)."""
        want = self._new_index(dim)
        return (index.dim, index.kind, index.auto_threshold, index.auto_kind) == (
            want.dim,
            want.kind,
            want.auto_threshold,
            want.auto_kind,
        )

    def _build_index(self, dim: int) -> VectorIndex:
        """A compact index of every vector in SQLite."""
        index = self._new_index(dim)
        self._add_rows(index, self._conn.execute("SELECT id, vector FROM memories ORDER BY id"))
        self._removed = 0
        return index

    @staticmethod
    def _add_rows(index: VectorIndex, rows: Iterable[tuple[int, bytes]]) -> None:
        ids, vecs = [], []
        for memory_id, blob in rows:
            ids.append(memory_id)
            vecs.append(np.frombuffer(blob, dtype="<f4"))
            if len(ids) == _CHUNK:
                index.add(ids, np.stack(vecs))
                ids, vecs = [], []
        if ids:
            index.add(ids, np.stack(vecs))

    def _refresh(self, index: VectorIndex, ids: Sequence[int]) -> None:
        """Re-read these ids from SQLite into `index`: drop them, add back the ones that still exist."""
        present = [i for i in ids if i in index]
        if present:
            index.remove(present)
            self._removed += len(present)
        for chunk in _chunks(list(ids)):
            marks = ",".join("?" * len(chunk))
            self._add_rows(
                index,
                self._conn.execute(
                    f"SELECT id, vector FROM memories WHERE id IN ({marks}) ORDER BY id", chunk
                ),
            )

    def _maybe_snapshot(self) -> None:
        pending = self._conn.execute("SELECT COUNT(*) FROM changes").fetchone()[0]
        if self._index is None or pending < max(self.config.snapshot_min_changes, len(self._index) // 4):
            return
        if self._removed > len(self._index) // 4:
            self._index = self._build_index(self._index.dim)
        self._write_snapshot()

    def _write_snapshot(self) -> None:
        """Save the in-memory index as the snapshot of `self._seq`, drop the others and the replayed log."""
        self._index.tag = self.store_id
        self._index.save(self.directory / f"index-{self._seq:012d}.npz")
        for seq, path in self._snapshots().items():
            if seq != self._seq:
                path.unlink(missing_ok=True)
        # The log up to the snapshot is no longer needed to rebuild; `pruned_upto` tells `_sync` that an
        # older in-memory index must reload the snapshot rather than replay.
        self._conn.execute("BEGIN IMMEDIATE")
        self._conn.execute("DELETE FROM changes WHERE seq <= ?", (self._seq,))
        self._set_meta("pruned_upto", self._seq)
        self._conn.execute("COMMIT")

    # ---- rows --------------------------------------------------------------------------------------
    def _in_transaction(self) -> dict[int, np.ndarray | None]:
        if self._touched is None:
            raise MemoryStoreError("writes to a memory store must happen inside backend.transaction()")
        return self._touched

    def insert(self, rows: Sequence[NewRow]) -> list[int]:
        touched = self._in_transaction()
        ids = []
        for row in rows:
            cur = self._conn.execute(
                "INSERT INTO memories (user, agent, session, text, text_key, metadata, created_at, "
                "updated_at, vector) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    row.scope.user or "",
                    row.scope.agent or "",
                    row.scope.session or "",
                    row.text,
                    row.text_key,
                    json.dumps(row.metadata),
                    row.created_at,
                    row.created_at,
                    _blob(row.vector),
                ),
            )
            ids.append(int(cur.lastrowid))
            touched[ids[-1]] = row.vector
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
        self._in_transaction()[memory_id] = vector
        # The state being replaced becomes a version, in the same transaction as the update.
        self._conn.execute(
            "INSERT INTO memory_versions (memory_id, text, metadata, updated_at, replaced_at) "
            "SELECT id, text, metadata, updated_at, ? FROM memories WHERE id = ?",
            (at, memory_id),
        )
        self._conn.execute(
            "UPDATE memories SET text = ?, text_key = ?, metadata = ?, vector = ?, updated_at = ? WHERE id = ?",
            (text, text_key, json.dumps(metadata), _blob(vector), at, memory_id),
        )

    def remove(self, ids: Sequence[int]) -> None:
        self._in_transaction().update(dict.fromkeys(ids))
        for chunk in _chunks(list(ids)):
            marks = ",".join("?" * len(chunk))
            self._conn.execute(f"DELETE FROM memories WHERE id IN ({marks})", chunk)
            self._conn.execute(f"DELETE FROM memory_versions WHERE memory_id IN ({marks})", chunk)

    def versions(self, memory_id: int) -> list[MemoryVersion]:
        rows = self._conn.execute(
            "SELECT text, metadata, updated_at, replaced_at FROM memory_versions WHERE memory_id = ? "
            "ORDER BY rowid",
            (memory_id,),
        )
        return [
            MemoryVersion(memory_id, n, text, json.loads(meta), updated, replaced)
            for n, (text, meta, updated, replaced) in enumerate(rows)
        ]

    def find_text_keys(self, scope: Scope, text_keys: Sequence[str]) -> dict[str, int]:
        where = Where(scope, exact_scope=True)
        sql, params = _where_sql(where)
        out: dict[str, int] = {}
        keys = sorted(set(text_keys))
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            for memory_id, key in self._conn.execute(
                f"SELECT id, text_key FROM memories WHERE {sql} AND text_key IN ({marks})", [*params, *chunk]
            ):
                out[key] = min(out.get(key, memory_id), memory_id)  # the oldest record wins
        return out

    @staticmethod
    def _record(row: tuple) -> MemoryRecord:
        memory_id, user, agent, session, text, metadata, created, updated, blob = row
        return MemoryRecord(
            id=memory_id,
            text=text,
            scope=Scope(user or None, agent or None, session or None),
            metadata=json.loads(metadata),
            created_at=created,
            updated_at=updated,
            vector=np.frombuffer(blob, dtype="<f4").copy(),
        )

    def fetch(self, ids: Sequence[int]) -> dict[int, MemoryRecord]:
        out = {}
        for chunk in _chunks([int(i) for i in ids]):
            marks = ",".join("?" * len(chunk))
            for row in self._conn.execute(f"SELECT {_COLUMNS} FROM memories WHERE id IN ({marks})", chunk):
                out[row[0]] = self._record(row)
        return out

    def select(self, where: Where, limit: int | None, after: int | None = None) -> list[MemoryRecord]:
        sql, params = _where_sql(where)
        if after is not None:
            sql, params = f"{sql} AND id > ?", [*params, after]
        query = f"SELECT {_COLUMNS} FROM memories WHERE {sql} ORDER BY id"
        if limit is not None:
            query, params = query + " LIMIT ?", [*params, limit]
        return [self._record(row) for row in self._conn.execute(query, params)]

    def count(self, where: Where | None = None) -> int:
        sql, params = _where_sql(where) if where is not None else ("1", [])
        return int(self._conn.execute(f"SELECT COUNT(*) FROM memories WHERE {sql}", params).fetchone()[0])

    # ---- search ------------------------------------------------------------------------------------
    def nearest(self, vectors: np.ndarray, where: Where, k: int) -> list[list[tuple[int, float]]]:
        self._ensure_current()
        index = self._index
        if index is None or len(index) == 0:
            return [[] for _ in range(len(vectors))]
        if self._scope_size(where) <= self.config.exact_filter_limit:
            return self._prefiltered(index, vectors, where, k)
        return self._postfiltered(index, vectors, where, k)

    def _scope_size(self, where: Where) -> int:
        """How many records `where` sees, counted only up to `exact_filter_limit + 1` (O(limit), not
        O(store)); it chooses between pre- and post-filtering. Kept until the next write: the count cost
        ~0.3 ms of a 1 ms approximate search at 100k records. Inside a transaction it is counted afresh
        and not kept (its own uncommitted rows count, and may be rolled back)."""
        sql, params = _where_sql(where)
        key = (sql, tuple(params))
        if self._touched is None and self._counted_at == self._seq and key in self._counts:
            return self._counts[key]
        (count,) = self._conn.execute(
            f"SELECT COUNT(*) FROM (SELECT 1 FROM memories WHERE {sql} LIMIT ?)",
            [*params, self.config.exact_filter_limit + 1],
        ).fetchone()
        if self._touched is None:
            if self._counted_at != self._seq or len(self._counts) >= 1024:
                self._counts, self._counted_at = {}, self._seq
            self._counts[key] = count
        return count

    def _prefiltered(
        self, index: VectorIndex, vectors: np.ndarray, where: Where, k: int
    ) -> list[list[tuple[int, float]]]:
        """Exact scores over just the records in scope (few of them, by the caller's test): their ids from
        SQLite, their vectors from the index in memory (reading 2000 vector blobs from SQLite instead took
        ~3.5 ms a search). A record another process added since the index was synced is not seen, as in
        `_postfiltered`."""
        sql, params = _where_sql(where)
        ids = [r[0] for r in self._conn.execute(f"SELECT id FROM memories WHERE {sql}", params)]
        out = []
        for start in range(0, len(vectors), 1024):  # bounded (1024, n) score blocks for big batches
            scores, found = index.search(vectors[start : start + 1024], k, among=ids)
            out += [
                [(int(i), float(s)) for s, i in zip(sr, ir, strict=True) if i >= 0]
                for sr, ir in zip(scores, found, strict=True)
            ]
        return out

    def _postfiltered(
        self, index: VectorIndex, vectors: np.ndarray, where: Where, k: int
    ) -> list[list[tuple[int, float]]]:
        """Search the whole index and keep the hits in scope, fetching 4x more until k remain or the index
        has no more candidates (all were seen, or an approximate index returned fewer than asked: its
        probed cells or graph neighbourhood are exhausted, and a larger fetch finds nothing new). A store
        that is mostly one scope answers in one round."""
        sql, params = _where_sql(where)
        fetch = min(len(index), 4 * k)
        while True:
            scores, ids = index.search(vectors, fetch)
            candidates = sorted({int(i) for i in ids.ravel() if i >= 0})
            allowed: set[int] = set()
            for chunk in _chunks(candidates):
                marks = ",".join("?" * len(chunk))
                # NOT INDEXED: look the few candidates up by rowid. Left alone, SQLite prefers the scope
                # index and walks every record of the scope (34 ms instead of 0.1 at 100k records).
                allowed.update(
                    r[0]
                    for r in self._conn.execute(
                        f"SELECT id FROM memories NOT INDEXED WHERE {sql} AND id IN ({marks})",
                        [*params, *chunk],
                    )
                )
            out = [
                [(int(i), float(s)) for s, i in zip(sr, ir, strict=True) if int(i) in allowed][:k]
                for sr, ir in zip(scores, ids, strict=True)
            ]
            exhausted = fetch >= len(index) or bool(np.all((ids >= 0).sum(axis=1) < fetch))
            if exhausted or all(len(hits) == k for hits in out):
                return out
            fetch = min(len(index), fetch * 4)

    # ---- maintenance -------------------------------------------------------------------------------
    @property
    def index_backend(self) -> str | None:
        """The `VectorIndex` backend now in use ("exact", "flat", "hnsw", "ivf"); None before the first write."""
        self._ensure_current()
        return None if self._index is None else self._index.backend

    def consistency_report(self) -> dict[str, Any]:
        """Compare the index with SQLite: counts, the index's rows (tombstones included) and the ids only one
        side has (both empty when sound)."""
        self._ensure_current()
        db_ids = {r[0] for r in self._conn.execute("SELECT id FROM memories")}
        index_ids = set() if self._index is None else {int(i) for i in self._index.ids()}
        return {
            "records": len(db_ids),
            "indexed": len(index_ids),
            "index_rows": 0 if self._index is None else self._index.rows,
            "seq": self._seq,
            "missing_from_index": sorted(db_ids - index_ids),
            "stale_in_index": sorted(index_ids - db_ids),
        }

    def close(self) -> None:
        self._conn.close()
        self._lock_file.close()
