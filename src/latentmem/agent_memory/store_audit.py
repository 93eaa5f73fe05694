"""What a manager left in the store: stale and duplicate memories, against an episode's known slots.

Needs the `slot` and `value` of each fact (the generated benchmark has them). A memory is *stale* when
it mentions an outdated value of a slot (an earlier value of a changed slot, the value of a retracted one)
and not the slot's current value; a *duplicate* when an earlier memory of the store mentions exactly the
same current values. Memories that mention no known value (a retraction kept as text) are neither.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from latentmem.agent_memory.episodes import Episode, Turn
from latentmem.memory.base import MemoryRecord


@dataclass(frozen=True)
class Audit:
    size: int
    stale: int
    duplicate: int


def _mentions(text: str, value: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(value.casefold())}(?!\w)", text.casefold()) is not None


@dataclass(frozen=True)
class SlotState:
    """The slots of an episode as far as some turn: every value each slot has had (`seen`) and its value
    now (`current`; None: retracted). It is what tells a stale memory from a current one, for the final
    audit and for manager training's optional stale penalty (`train.RewardScorer`) alike."""

    seen: tuple[tuple[str, str], ...] = ()  # (slot, value) pairs, in order of statement
    current: tuple[tuple[str, str | None], ...] = ()

    @classmethod
    def of(cls, turns: Iterable[Turn]) -> SlotState:
        """The state after `turns` (in conversation order); turns without a slot are skipped."""
        seen: dict[tuple[str, str], None] = {}
        current: dict[str, str | None] = {}
        for turn in turns:
            if turn.slot is None:
                continue
            current[turn.slot] = turn.value
            if turn.value is not None:
                seen[(turn.slot, turn.value)] = None
        return cls(tuple(seen), tuple(current.items()))

    def mentioned(self, text: str) -> tuple[frozenset[tuple[str, str]], set[str]]:
        """The current (slot, value) pairs `text` mentions, and the slots of the outdated values it
        mentions."""
        now = dict(self.current)
        pairs = {(s, v) for s, v in self.seen if _mentions(text, v)}
        return frozenset((s, v) for s, v in pairs if now[s] == v), {s for s, v in pairs if now[s] != v}

    def is_stale(self, text: str) -> bool:
        """Whether `text` states an outdated value of a slot and not that slot's current value."""
        current, outdated = self.mentioned(text)
        return bool(outdated - {s for s, _ in current})


def audit_store(episode: Episode, records: Sequence[MemoryRecord]) -> Audit | None:
    """Count the stale and duplicate memories among `records` (the episode's store, oldest first); None
    when the episode's facts carry no slots (a public dataset)."""
    state = SlotState.of(turn for _, turn in episode.fact_turns())
    if not state.current:
        return None
    stale = duplicate = 0
    current_sets: set[frozenset[tuple[str, str]]] = set()
    for record in records:
        current, outdated = state.mentioned(record.text)
        if outdated - {s for s, _ in current}:
            stale += 1
        elif current:
            duplicate += current in current_sets
            current_sets.add(current)
    return Audit(len(records), stale, duplicate)
