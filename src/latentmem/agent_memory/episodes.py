"""The form every long-conversation benchmark is read into: episodes of dated sessions, then questions.

An `Episode` is one user's history (LoCoMo: one conversation; LongMemEval: one haystack) and the questions
asked after it. Turns that carry a `fact` are what the memory manager sees, one at a time, in order;
`slot` and `value` are known only for the generated benchmark and let the bench count stale memories.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

CATEGORIES = ("single-fact", "updated-fact", "multi-hop", "temporal", "abstention")
ABSTAIN = "unknown"  # the gold answer of an abstention question


@dataclass(frozen=True)
class Turn:
    """One utterance. `key` names it for evidence (`session_id:index`); `fact` is the text to remember."""

    key: str
    speaker: str
    text: str
    fact: str | None = None
    slot: str | None = None
    value: str | None = None  # None with a slot: the fact retracts the slot


@dataclass(frozen=True)
class Session:
    id: str
    date: str | None
    turns: tuple[Turn, ...]


@dataclass(frozen=True)
class Question:
    """A question asked after every session; `evidence` are the keys of the turns that answer it."""

    id: str
    category: str
    question: str
    answer: str
    evidence: tuple[str, ...] = ()


@dataclass(frozen=True)
class Episode:
    id: str
    sessions: tuple[Session, ...]
    questions: tuple[Question, ...]

    def fact_turns(self) -> Iterator[tuple[Session, Turn]]:
        """The turns that carry a fact, in conversation order."""
        for session in self.sessions:
            for turn in session.turns:
                if turn.fact:
                    yield session, turn
