"""The manager's constrained operation format, its validating parser, and applying operations to a store.

One line, one operation:

    ADD [text]          store a new memory (the new fact when no text follows)
    UPDATE id [text]    replace memory `id` (its previous version stays in `VectorMemory.history`)
    DELETE id           remove memory `id`
    NOOP                change nothing

A model's output is parsed from its first non-empty line, case-insensitively, tolerating an id written
`[3]` or `#3`. Anything else (an unknown operation, a missing or non-numeric id, an id that was not
among the memories shown, text the store would refuse) becomes NOOP, logged with the reason: a bad
output can neither crash the caller nor change or remove a memory it was not shown.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from latentmem.memory.base import MemoryNotFoundError, ScopeLike, check_text
from latentmem.memory.vector import VectorMemory

log = logging.getLogger(__name__)

OpKind = Literal["ADD", "UPDATE", "DELETE", "NOOP"]
_LINE = re.compile(r"^\W*(ADD|UPDATE|DELETE|NOOP)\b\s*(.*)$", re.IGNORECASE | re.DOTALL)
_ID = re.compile(r"^[\[#(]?(\d+)[\])]?[:.,]?(?:\s+|$)(.*)$", re.DOTALL)


@dataclass(frozen=True)
class Operation:
    """A valid operation: `memory_id` for UPDATE / DELETE, `text` for ADD / UPDATE."""

    kind: OpKind
    memory_id: int | None = None
    text: str | None = None

    def format(self) -> str:
        """The operation in the constrained format (what `parse_operation` reads back)."""
        parts = [self.kind, *([str(self.memory_id)] if self.memory_id is not None else [])]
        return " ".join([*parts, *([self.text] if self.text else [])])


NOOP = Operation("NOOP")


@dataclass(frozen=True)
class Parsed:
    """A parse: the operation to apply (NOOP when rejected) and, when rejected, why."""

    operation: Operation
    raw: str
    rejected: str | None = None


def parse_operation(raw: str, fact: str, shown_ids: Collection[int], *, max_chars: int = 10_000) -> Parsed:
    """Read one operation from `raw` (a model's output); `fact` is the text ADD / UPDATE store when the
    output gives none, `shown_ids` the memories the manager was shown (the only ones it may touch)."""
    line = next((ln.strip() for ln in raw.splitlines() if ln.strip()), "")
    match = _LINE.match(line)
    if match is None:
        return _reject(raw, "not one of ADD, UPDATE id, DELETE id, NOOP")
    kind = match.group(1).upper()
    rest = match.group(2).strip()
    if kind == "NOOP":
        return Parsed(NOOP, raw)
    if kind == "ADD":
        text = _clean(rest) or fact
        return _checked(Operation("ADD", None, text), raw, max_chars)
    id_match = _ID.match(rest)
    if id_match is None:
        return _reject(raw, f"{kind} needs the id of a memory shown")
    memory_id = int(id_match.group(1))
    if memory_id not in shown_ids:
        return _reject(raw, f"{kind} {memory_id}: no memory with this id was shown")
    if kind == "DELETE":
        return Parsed(Operation("DELETE", memory_id), raw)
    return _checked(Operation("UPDATE", memory_id, _clean(id_match.group(2)) or fact), raw, max_chars)


def _clean(text: str) -> str:
    """The operation's text: its first line, without the quotes or brackets a model may add."""
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first.strip().strip("\"'`[]<>").strip()


def _checked(op: Operation, raw: str, max_chars: int) -> Parsed:
    try:
        check_text(op.text, max_chars)
    except ValueError as exc:  # MemoryInputError: the store would refuse it
        return _reject(raw, f"{op.kind}: {exc}")
    return Parsed(op, raw)


def _reject(raw: str, reason: str) -> Parsed:
    log.info("manager output %r rejected as NOOP: %s", raw[:200], reason)
    return Parsed(NOOP, raw, reason)


@dataclass
class Applied:
    """What applying one operation did: the memory it added / changed / removed (None for NOOP) and
    whether it was skipped (a memory removed meanwhile, or an earlier operation of the batch)."""

    operation: Operation
    memory_id: int | None = None
    skipped: str | None = None


def apply_operations(
    store: VectorMemory,
    operations: Sequence[Operation],
    scope: ScopeLike,
    *,
    metadata: Mapping[str, Any] | None = None,
    id_map: Mapping[int, int] | None = None,
) -> list[Applied]:
    """Apply `operations` in order to `store` in one transaction; `metadata` goes with every text written
    (e.g. the turn it came from). `id_map` translates the ids the manager was shown into store ids (a
    training copy of a store has new ids). An operation on a memory an earlier one of the batch deleted is
    skipped; if the store refuses the batch anyway (another writer removed a memory in the meantime), it
    is applied again one operation at a time, skipping those that fail, so nothing valid is lost."""
    ops = [_translated(op, id_map) for op in operations]
    try:
        with store.transaction():
            return _apply(store, ops, scope, metadata)
    except MemoryNotFoundError:
        out: list[Applied] = []
        for op in ops:
            try:
                with store.transaction():
                    out += _apply(store, [op], scope, metadata)
            except MemoryNotFoundError as exc:
                log.info("operation %s skipped: %s", op.format(), exc)
                out.append(Applied(op, op.memory_id, skipped=str(exc)))
        return out


def _translated(op: Operation, id_map: Mapping[int, int] | None) -> Operation:
    if id_map is None or op.memory_id is None:
        return op
    return Operation(op.kind, id_map[op.memory_id], op.text)


def _apply(
    store: VectorMemory, ops: Sequence[Operation], scope: ScopeLike, metadata: Mapping[str, Any] | None
) -> list[Applied]:
    deleted: set[int] = set()
    out = []
    for op in ops:
        if op.memory_id in deleted:
            out.append(Applied(op, op.memory_id, skipped="deleted by an earlier operation of the batch"))
        elif op.kind == "ADD":
            out.append(Applied(op, store.add(op.text, scope, metadata=metadata).id))
        elif op.kind == "UPDATE":
            store.update(op.memory_id, op.text, scope, metadata=metadata)
            out.append(Applied(op, op.memory_id))
        elif op.kind == "DELETE":
            store.delete(op.memory_id, scope)
            deleted.add(op.memory_id)
            out.append(Applied(op, op.memory_id))
        else:
            out.append(Applied(op))
    return out
