"""The untrained methods: the frozen model, alone (vanilla) or with the most similar solved training
examples, retrieved from a `VectorMemory` store, in its prompt (retrieval)."""

from __future__ import annotations

import time
from typing import Any

from latentmem.eval.method import Completions, Context, Method
from latentmem.eval.methods.generate import complete_with_hf
from latentmem.eval.task import Example
from latentmem.models import load_model


class Vanilla(Method):
    name = "vanilla"
    seed_free = True

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.model, self.tok = load_model(ctx.model, seed=ctx.seed)

    def complete(self, prompts: list[str]) -> Completions:
        return complete_with_hf(self.model, self.tok, prompts, self.ctx.task, self.ctx.eval_batch_size)

    @property
    def trainable_params(self) -> int:
        return 0


SOLVED = "solved-examples"


def solved_examples_store(ctx: Context):
    """A `VectorMemory` (MiniLM embeddings) of the solved training examples, scoped agent=solved-examples;
    each record's metadata holds its index in `ctx.train`. Near-duplicate merging is off: two different
    examples ("12 + 35", "12 + 36") can embed almost alike and must both stay."""
    from latentmem.memory import VectorMemory, VectorMemoryConfig

    store = VectorMemory.open(
        ctx.workdir / "retrieval_store", config=VectorMemoryConfig(near_duplicate_threshold=None)
    )
    if store.count(agent=SOLVED) == 0:
        texts = [solved_text(ctx, ex) for ex in ctx.train]
        store.add_many(texts, agent=SOLVED, metadatas=[{"index": i} for i in range(len(ctx.train))])
    return store


def solved_text(ctx: Context, example: Example) -> str:
    """A solved example as the retrieval store keeps it: the question and its target."""
    return f"Question: {example.prompt}\nAnswer: {ctx.task.target(example)}"


class RetrievalFewShot(Vanilla):
    """Solved training examples as memories; the `retrieval_k` most similar ones go into the prompt."""

    name = "retrieval"
    seed_free = False  # its store holds the seed's own training sample

    def fit(self) -> None:
        start = time.perf_counter()
        self.store = solved_examples_store(self.ctx)
        self.train_seconds = time.perf_counter() - start

    def add_memories(self, examples: list[Example]) -> None:
        self.store.add_many(
            [solved_text(self.ctx, ex) for ex in examples],
            agent=SOLVED,
            metadatas=[{"added": True}] * len(examples),
        )

    def with_examples(self, prompt: str) -> str:
        hits = self.store.search(prompt, agent=SOLVED, k=self.ctx.retrieval_k)
        shots = "\n\n".join(h.record.text for h in reversed(hits))  # most similar nearest the question
        return f"Here are solved examples of similar questions.\n\n{shots}\n\nQuestion: {prompt}\nAnswer:"

    def complete(self, prompts: list[str]) -> Completions:
        return super().complete([self.with_examples(p) for p in prompts])

    def training(self) -> dict[str, Any]:
        return {
            "algorithm": "retrieval of solved examples (no gradient steps)",
            "steps": 0,
            "rows_seen": len(self.ctx.train),
            "start": "the base model",
        }
