"""`AnswerAgent`: retrieve the top-k memories for a question, keep the relevant ones ("memory
distillation"), answer from those.

With a chat model, both the selection and the answer are prompted (greedy). Without one, the agent is
extractive: it keeps the memories at least `min_score` similar to the question and answers with the text
of the best of them, or "unknown" when none is left. The extractive agent is cheap enough to score every
rollout of manager training, and it is strict about conflicts: with a stale memory beside the current one
it answers with whichever retrieval ranks first.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from latentmem.agent_memory.episodes import ABSTAIN
from latentmem.agent_memory.generation import ChatGenerator
from latentmem.memory.base import ScopeLike, SearchHit, normalize_text
from latentmem.memory.vector import VectorMemory

_ABSTENTIONS = ("unknown", "don't know", "do not know", "not known", "no information", "not mentioned")
_PUNCT = re.compile(r"[^\w\s]")
_INT = re.compile(r"\d+")


def normalize_answer(text: str) -> str:
    """Lower-cased, punctuation and articles removed, whitespace collapsed (SQuAD's normalisation)."""
    words = _PUNCT.sub(" ", normalize_text(text)).split()
    return " ".join(w for w in words if w not in ("a", "an", "the"))


def answer_match(prediction: str, gold: str) -> bool:
    """Exact match after normalisation, counting a gold answer that appears in the prediction as whole
    words (chat models answer in sentences); for an abstention, any way of saying "unknown"."""
    pred = normalize_answer(prediction)
    if normalize_answer(gold) == ABSTAIN:
        return any(normalize_answer(a) in pred for a in _ABSTENTIONS)
    g = normalize_answer(gold)
    return bool(g) and f" {g} " in f" {pred} "


@dataclass(frozen=True)
class Answer:
    text: str
    retrieved: tuple[SearchHit, ...]  # the top-k, best first
    selected: tuple[SearchHit, ...]  # what the answer was written from


def selection_prompt(question: str, hits: Sequence[SearchHit]) -> str:
    listed = "\n".join(f"{i}. {h.record.text}" for i, h in enumerate(hits, 1))
    return (
        f"Memories:\n{listed}\nQuestion: {question}\n"
        "Which memories help answer the question? Reply with their numbers, separated by commas, "
        "or NONE.\nNumbers:"
    )


def answer_prompt(question: str, hits: Sequence[SearchHit]) -> str:
    listed = "\n".join(f"- {h.record.text}" for h in hits) or "- (none)"
    return (
        f"Memories about the user:\n{listed}\nQuestion: {question}\n"
        "Answer in a few words using only the memories. If they do not say, answer unknown.\nAnswer:"
    )


class AnswerAgent:
    """Answers questions from a store (module docstring). `k`: memories retrieved; `max_selected`: the
    most kept after distillation (the best-ranked ones when the model's selection cannot be read)."""

    def __init__(
        self,
        store: VectorMemory,
        generator: ChatGenerator | None = None,
        *,
        k: int = 20,
        max_selected: int = 5,
        min_score: float = 0.5,
        max_new_tokens: int = 16,
    ) -> None:
        self.store, self.generator = store, generator
        self.k, self.max_selected, self.min_score, self.max_new_tokens = (
            k,
            max_selected,
            min_score,
            max_new_tokens,
        )

    def retrieve(self, question: str, scope: ScopeLike) -> tuple[SearchHit, ...]:
        return tuple(self.store.search(question, scope, k=self.k))

    def answer(self, question: str, scope: ScopeLike) -> Answer:
        return self.answer_many([(question, scope)])[0]

    def answer_many(self, items: Sequence[tuple[str, ScopeLike]]) -> list[Answer]:
        """Answer several questions (their model calls batched)."""
        retrieved = [self.retrieve(q, scope) for q, scope in items]
        questions = [q for q, _ in items]
        if self.generator is None:
            out = []
            for hits in retrieved:
                kept = tuple(h for h in hits if h.score >= self.min_score)[: self.max_selected]
                out.append(Answer(kept[0].record.text if kept else ABSTAIN, hits, kept))
            return out
        picks = self.generator.greedy(
            [selection_prompt(q, hits) for q, hits in zip(questions, retrieved, strict=True)], 12
        )
        selected = [self._selected(pick, hits) for pick, hits in zip(picks, retrieved, strict=True)]
        texts = self.generator.greedy(
            [answer_prompt(q, sel) for q, sel in zip(questions, selected, strict=True)], self.max_new_tokens
        )
        return [Answer(t, hits, sel) for t, hits, sel in zip(texts, retrieved, selected, strict=True)]

    def _selected(self, pick: str, hits: Sequence[SearchHit]) -> tuple[SearchHit, ...]:
        """The memories the model named; NONE keeps none; unreadable output keeps the best-ranked."""
        if pick.strip().upper().startswith("NONE"):
            return ()
        numbers = [int(n) for n in _INT.findall(pick) if 1 <= int(n) <= len(hits)]
        chosen = list(dict.fromkeys(numbers))[: self.max_selected]
        if not chosen:
            return tuple(hits[: self.max_selected])
        return tuple(hits[i - 1] for i in chosen)
