"""The memory interface agent builders know (mem0-like): add, search, get, update, delete, list.

Every record lives in a *scope*: a user, an agent, a session, or any combination of them. Writes store the
scope exactly as given; reads (`search`, `list`) match every record whose scope agrees on the fields they
name, so `search(..., user="alice")` sees alice's records from every agent and session, while
`search(..., user="alice", session="s1")` sees only that session's. At least one scope field is required
everywhere, `get`, `update` and `delete` by id included: a store shared by many users must never answer
an unscoped query by accident, and ids are sequential, so an id alone must not reach another user's record
(one outside the scope given is "not found", exactly like an id that does not exist).

Metadata is a JSON object per record, its top-level keys written like filter keys (letters, digits, `_`,
`-`; up to 128) so that every stored key can be filtered on, and its JSON form capped in size like texts;
`filters={"key": value}` keeps the records whose metadata has exactly that value (same JSON type) under
that key, for every key given.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from latentmem.errors import LatentMemError

SCOPE_FIELDS = ("user", "agent", "session")
# Filter keys become JSON paths (SQLite) and dotted payload keys (Qdrant); keep them plain.
_FILTER_KEY = re.compile(r"^[A-Za-z0-9_\-]{1,128}$")
_MAX_SCOPE_CHARS = 256

FilterValue = str | int | float | bool | None
AddEvent = Literal["added", "duplicate", "near_duplicate"]


class MemoryStoreError(LatentMemError):
    """A memory store cannot be opened or written (wrong embedder, a lock timeout, corrupt files...)."""


class MemoryInputError(MemoryStoreError, ValueError):
    """A bad argument to a memory call: empty or oversized text, wrong vector dimension, bad metadata."""


class ScopeError(MemoryInputError):
    """No scope, or an unknown scope field, was given. The message lists the valid fields."""


class MemoryNotFoundError(MemoryStoreError, KeyError):
    """No record has this id (in this store)."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0]) if self.args else ""


@dataclasses.dataclass(frozen=True)
class Scope:
    """Who a memory belongs to. At least one field is set; each is a non-empty string."""

    user: str | None = None
    agent: str | None = None
    session: str | None = None

    def __post_init__(self) -> None:
        for name in SCOPE_FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, str) or not value.strip():
                raise ScopeError(f"scope field {name!r} must be a non-empty string, got {value!r}")
            if len(value) > _MAX_SCOPE_CHARS:
                raise ScopeError(f"scope field {name!r} is longer than {_MAX_SCOPE_CHARS} characters")
        if all(getattr(self, name) is None for name in SCOPE_FIELDS):
            raise ScopeError(
                "a scope is required: pass at least one of user=, agent=, session= "
                "(on the command line --user, --agent or --session)"
            )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Scope:
        """`{"user": "alice"}` -> `Scope(user="alice")`; unknown keys are a `ScopeError` naming the valid ones."""
        unknown = [k for k in data if k not in SCOPE_FIELDS]
        if unknown:
            raise ScopeError(
                f"unknown scope field {unknown[0]!r}; valid scope fields are {', '.join(SCOPE_FIELDS)}"
            )
        return cls(**{k: v for k, v in data.items() if v is not None})

    def fields(self) -> dict[str, str]:
        """The fields that are set, e.g. `{"user": "alice"}`."""
        return {n: getattr(self, n) for n in SCOPE_FIELDS if getattr(self, n) is not None}

    def sees(self, other: Scope) -> bool:
        """Whether a read in this scope sees a record stored in `other`: they agree on every field set here."""
        return all(getattr(other, name) == value for name, value in self.fields().items())


ScopeLike = Scope | Mapping[str, Any]


def resolve_scope(scope: ScopeLike | None, user: str | None, agent: str | None, session: str | None) -> Scope:
    """One `Scope` from either a `scope` argument or the `user=/agent=/session=` keywords, not both."""
    keywords = {"user": user, "agent": agent, "session": session}
    if scope is None:
        return Scope(**keywords)
    if any(v is not None for v in keywords.values()):
        raise ScopeError("pass the scope either as scope= or as user=/agent=/session= keywords, not both")
    return scope if isinstance(scope, Scope) else Scope.from_mapping(scope)


@dataclasses.dataclass
class MemoryRecord:
    """One stored memory. Timestamps are Unix seconds; `vector` is the L2-normalised embedding."""

    id: int
    text: str
    scope: Scope
    metadata: dict[str, Any]
    created_at: float
    updated_at: float
    vector: np.ndarray | None = None

    def to_dict(self, *, with_vector: bool = False) -> dict[str, Any]:
        """A JSON-ready dict (the vector as a list only when asked for)."""
        out = {
            "id": self.id,
            "text": self.text,
            **self.scope.fields(),
            "metadata": self.metadata,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }
        if with_vector and self.vector is not None:
            out["vector"] = [float(x) for x in self.vector]
        return out


@dataclasses.dataclass
class MemoryVersion:
    """An earlier state of a record, kept when `update` replaced it (a delete forgets them with it).

    `updated_at` is when this version was written (its record's `created_at` for the first one),
    `replaced_at` when an update superseded it.
    """

    memory_id: int
    version: int  # 0 = the text as first added, then 1, 2, ... in update order
    text: str
    metadata: dict[str, Any]
    updated_at: float
    replaced_at: float


@dataclasses.dataclass
class AddResult:
    """What `add` did: stored a new record, or found an exact / near duplicate and returned it."""

    record: MemoryRecord
    event: AddEvent

    @property
    def id(self) -> int:
        return self.record.id


@dataclasses.dataclass
class SearchHit:
    """A search result: the record and its cosine similarity to the query."""

    record: MemoryRecord
    score: float


class Memory(abc.ABC):
    """The interface every text memory implements (vector stores now; the evaluation baselines later)."""

    @abc.abstractmethod
    def add(
        self,
        text: str,
        scope: ScopeLike | None = None,
        *,
        user: str | None = None,
        agent: str | None = None,
        session: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> AddResult:
        """Store `text` in the scope; a duplicate returns the existing record instead of a new one."""

    @abc.abstractmethod
    def search(
        self,
        query: str,
        scope: ScopeLike | None = None,
        *,
        user: str | None = None,
        agent: str | None = None,
        session: str | None = None,
        filters: Mapping[str, FilterValue] | None = None,
        k: int = 5,
    ) -> list[SearchHit]:
        """The `k` records in the scope most similar to `query`, best first."""

    @abc.abstractmethod
    def get(
        self,
        memory_id: int,
        scope: ScopeLike | None = None,
        *,
        user: str | None = None,
        agent: str | None = None,
        session: str | None = None,
    ) -> MemoryRecord:
        """The record with this id in the scope; `MemoryNotFoundError` when there is none there."""

    @abc.abstractmethod
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
        """Replace the text (re-embedded) and/or the metadata of a record in the scope; returns the new
        record. `MemoryNotFoundError` when the scope has no record with this id."""

    @abc.abstractmethod
    def delete(
        self,
        memory_id: int,
        scope: ScopeLike | None = None,
        *,
        user: str | None = None,
        agent: str | None = None,
        session: str | None = None,
    ) -> None:
        """Remove a record of the scope; `MemoryNotFoundError` when the scope has none with this id."""

    @abc.abstractmethod
    def list(
        self,
        scope: ScopeLike | None = None,
        *,
        user: str | None = None,
        agent: str | None = None,
        session: str | None = None,
        filters: Mapping[str, FilterValue] | None = None,
        limit: int | None = None,
    ) -> list[MemoryRecord]:
        """The records in the scope, oldest first (at most `limit`)."""


# ---- input checks shared by every implementation ---------------------------------------------------
def normalize_text(text: str) -> str:
    """The form duplicates are compared in: case-folded, whitespace collapsed, trimmed."""
    return " ".join(text.split()).casefold()


def check_text(text: Any, max_chars: int) -> str:
    """Return `text` unchanged if it is a storable memory, else raise `MemoryInputError`."""
    if not isinstance(text, str):
        raise MemoryInputError(f"a memory text must be a string, got {type(text).__name__}")
    if not text.strip():
        raise MemoryInputError("a memory text must not be empty or only whitespace")
    if len(text) > max_chars:
        raise MemoryInputError(
            f"a memory text of {len(text)} characters is longer than max_chars={max_chars}; split it into "
            "smaller memories (the embedder reads only its first few hundred tokens) or raise max_chars"
        )
    return text


def check_metadata(metadata: Mapping[str, Any] | None, max_chars: int) -> dict[str, Any]:
    """A JSON-serialisable dict (a copy) whose top-level keys are valid filter keys and whose JSON form has
    at most `max_chars` characters, or `MemoryInputError`."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise MemoryInputError(f"metadata must be a mapping, got {type(metadata).__name__}")
    for key in metadata:
        _check_key(key, "metadata")
    try:
        encoded = json.dumps(dict(metadata), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise MemoryInputError(f"metadata must be JSON-serialisable: {exc}") from None
    if len(encoded) > max_chars:
        raise MemoryInputError(
            f"metadata of {len(encoded)} characters (as JSON) is longer than max_metadata_chars={max_chars}; "
            "keep large payloads elsewhere and store a reference, or raise max_metadata_chars"
        )
    return json.loads(encoded)


def _check_key(key: Any, what: str) -> None:
    """Metadata keys and filter keys follow one rule, so every stored key can be filtered on."""
    if not isinstance(key, str) or not _FILTER_KEY.match(key):
        raise MemoryInputError(
            f"{what} key {key!r} is not allowed; use letters, digits, '_' and '-' (up to 128)"
        )


def check_filters(filters: Mapping[str, Any] | None) -> dict[str, FilterValue]:
    """Equality filters: plain keys, scalar values (str, int, float, bool or None)."""
    if not filters:
        return {}
    out: dict[str, FilterValue] = {}
    for key, value in filters.items():
        _check_key(key, "filter")
        if value is not None and not isinstance(value, str | int | float | bool):
            raise MemoryInputError(
                f"filter {key!r}: only str, int, float, bool or None values can be matched, got "
                f"{type(value).__name__}"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise MemoryInputError(f"filter {key!r}: {value} cannot be matched")
        out[key] = value
    return out


def check_k(k: int) -> int:
    if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
        raise MemoryInputError(f"k must be a positive int, got {k!r}")
    return k


def as_query_batch(vectors: np.ndarray | Sequence[Sequence[float]], dim: int) -> np.ndarray:
    """`vectors` as a float32 (N, dim) array of unit rows; a wrong dimension or a zero row is an error."""
    arr = np.asarray(vectors, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise MemoryInputError(
            f"expected vectors of dimension {dim} (the store's embedder), got shape {tuple(arr.shape)}"
        )
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        raise MemoryInputError("vectors must be finite and non-zero")
    return arr / norms
