"""What a manager left in the store: stale and duplicate memories, against an episode's known slots.

Needs the `slot` and `value` of each fact (the generated benchmark has them). A memory is *stale* when
it mentions an outdated value of a slot (an earlier value of a changed slot, the value of a retracted one)
and not the slot's current value; a *duplicate* when an earlier memory of the store mentions exactly the
same current values. Memories that mention no known value (a retraction kept as text) are neither.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from latentmem.agent_memory.episodes import Episode
from latentmem.memory.base import MemoryRecord


@dataclass(frozen=True)
class Audit:
    size: int
    stale: int
    duplicate: int


def _mentions(text: str, value: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(value.casefold())}(?!\w)", text.casefold()) is not None


def audit_store(episode: Episode, records: Sequence[MemoryRecord]) -> Audit | None:
    """Count the stale and duplicate memories among `records` (the episode's store, oldest first); None
    when the episode's facts carry no slots (a public dataset)."""
    seen: dict[str, set[str]] = {}
    final: dict[str, str | None] = {}
    for _, turn in episode.fact_turns():
        if turn.slot is None:
            continue
        final[turn.slot] = turn.value
        if turn.value is not None:
            seen.setdefault(turn.slot, set()).add(turn.value)
    if not final:
        return None
    stale = duplicate = 0
    current_sets: set[frozenset[tuple[str, str]]] = set()
    for record in records:
        mentioned = {(s, v) for s, vs in seen.items() for v in vs if _mentions(record.text, v)}
        current = frozenset((s, v) for s, v in mentioned if final[s] == v)
        outdated = {s for s, v in mentioned if final[s] != v}
        if outdated - {s for s, _ in current}:
            stale += 1
        elif current:
            duplicate += current in current_sets
            current_sets.add(current)
    return Audit(len(records), stale, duplicate)
