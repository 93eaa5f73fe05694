"""What a vector memory needs from where it keeps records: the contract between `VectorMemory` and a backend.

`VectorMemory` owns everything a user sees (checks, embedding, deduplication, results); a backend only
stores and finds rows. So the embedded store (SQLite + `VectorIndex`) and the Qdrant server run exactly the
same code above this line, and one table of interface tests covers both.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from latentmem.memory.base import FilterValue, MemoryRecord, MemoryVersion, Scope


@dataclasses.dataclass(frozen=True)
class Where:
    """Which records a read sees.

    `exact_scope=False` (reads): the records whose scope agrees on the fields `scope` sets.
    `exact_scope=True` (duplicate checks): the records with exactly this scope, unset fields included.
    """

    scope: Scope
    filters: dict[str, FilterValue] = dataclasses.field(default_factory=dict)
    exact_scope: bool = False

    def scope_values(self) -> dict[str, str]:
        """Column -> value to match; unset fields are stored and matched as "" under `exact_scope`."""
        if self.exact_scope:
            return {name: value or "" for name, value in dataclasses.asdict(self.scope).items()}
        return self.scope.fields()


@dataclasses.dataclass
class NewRow:
    """A record about to be stored: `vector` is unit-norm float32 (D,), `text_key` its duplicate key."""

    text: str
    text_key: str
    scope: Scope
    metadata: dict[str, Any]
    vector: np.ndarray
    created_at: float


class VectorBackend(abc.ABC):
    """Row storage plus nearest-neighbour search. Writes happen inside `transaction()`."""

    @abc.abstractmethod
    def embedder_info(self) -> tuple[str | None, int | None]:
        """The (embedder spec, dimension) this store was created with; (None, None) when still empty."""

    @abc.abstractmethod
    def set_embedder_info(self, spec: str, dim: int) -> None:
        """Record the embedder of a new store (called once, before the first write)."""

    @abc.abstractmethod
    def read_setting(self, key: str) -> str | None:
        """The value a client of the store recorded under `key` with `write_setting`; None when unset."""

    @abc.abstractmethod
    def write_setting(self, key: str, value: str) -> None:
        """Record `value` under `key` beside the records, inside `transaction()`.

        For clients that keep rows in a scope and a little state of their own with them (a recall bank's
        next id and index kind); atomic with the transaction's row writes where the backend has
        transactions. Client keys live apart from the store's own settings (embedder, dimension).
        """

    @abc.abstractmethod
    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """Everything inside is one atomic write that no other writer interleaves with."""

    @abc.abstractmethod
    def insert(self, rows: Sequence[NewRow]) -> list[int]:
        """Store rows; return their new ids, in order."""

    @abc.abstractmethod
    def find_text_keys(self, scope: Scope, text_keys: Sequence[str]) -> dict[str, int]:
        """text_key -> id of an existing record with exactly this scope and that key."""

    @abc.abstractmethod
    def nearest(self, vectors: np.ndarray, where: Where, k: int) -> list[list[tuple[int, float]]]:
        """For each row of `vectors` (Q, D): up to k (id, cosine) pairs among the records `where` sees."""

    @abc.abstractmethod
    def fetch(self, ids: Sequence[int]) -> dict[int, MemoryRecord]:
        """The records with these ids (missing ids are left out), vectors included."""

    @abc.abstractmethod
    def replace(
        self,
        memory_id: int,
        text: str,
        text_key: str,
        metadata: dict[str, Any],
        vector: np.ndarray,
        at: float,
    ) -> None:
        """Overwrite a record's text, key, metadata and vector; `updated_at` becomes `at`. The state it
        replaces is kept as the record's next `MemoryVersion`, in the same write."""

    @abc.abstractmethod
    def remove(self, ids: Sequence[int]) -> None:
        """Delete records by id, their earlier versions with them (ids that do not exist are ignored)."""

    @abc.abstractmethod
    def versions(self, memory_id: int) -> list[MemoryVersion]:
        """The earlier versions of a record, oldest first (empty when it was never updated)."""

    @abc.abstractmethod
    def select(self, where: Where, limit: int | None, after: int | None = None) -> list[MemoryRecord]:
        """The records `where` sees, oldest first, at most `limit`; with `after`, only ids above it (ids
        increase with insertion, so paging by the last id seen is stable under concurrent writes)."""

    @abc.abstractmethod
    def count(self, where: Where | None = None) -> int:
        """How many records `where` sees (all records for None)."""

    def close(self) -> None:  # noqa: B027 - a backend with nothing to release needs no override
        """Release files, connections and locks."""
