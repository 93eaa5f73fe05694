"""Ablations: re-run generation with some latents removed or replaced, and measure what changes.

Per cluster (the paper's functional study): the cluster's latents removed (their slots skipped, as if the
weaver had written fewer), replaced by the mean latent, or zeroed. Whole memory: every latent removed
(the plain reasoner), latents shuffled between examples (right kind of latent, wrong example), random
vectors of the same norm. Each ablation is a `LatentHook` applied inside `generate`, so it acts on the
latents generation really writes, including those at insertion points that only exist once an earlier
ablation has changed the completion; cluster membership of a new latent is its nearest centroid.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from latentmem.analyze.capture import Trace, capture
from latentmem.analyze.clusters import Clustering
from latentmem.analyze.config import AblationMode
from latentmem.analyze.taxonomy import ERROR_TYPES, classify
from latentmem.eval.task import Example, Task
from latentmem.memgen import LatentHook, LatentMemoryModel

Change = tuple[torch.Tensor, torch.Tensor] | None  # (latents (B, K, D), keep (B, K)), or None: unchanged


class Ablation(ABC):
    """A rule for changing the latents of a batch. `hook_for(indices)` turns it into a `LatentHook` for a
    batch whose rows are the examples `indices`; the rule sees each row's example and block number."""

    name: str = ""

    def hook_for(self, indices: list[int]) -> LatentHook:
        seen = [0] * len(indices)  # blocks each row has had so far

        def hook(step: int, latents: torch.Tensor, rows: torch.Tensor) -> Change:
            change = self.apply(step, latents, rows, indices, list(seen))
            for b in rows.nonzero().flatten().tolist():
                seen[b] += 1
            return change

        return hook

    @abstractmethod
    def apply(
        self, step: int, latents: torch.Tensor, rows: torch.Tensor, examples: list[int], blocks: list[int]
    ) -> Change:
        """The change to one block: `latents` (B, K, D) for rows `rows` (B,) bool, row b being example
        `examples[b]` at its block `blocks[b]` (0-based, prompt block first); `step` as in `LatentHook`."""


class ClusterAblation(Ablation):
    """The latents nearest to centroid `cluster`: removed, replaced by `mean` (D,), or zeroed."""

    def __init__(self, clustering: Clustering, cluster: int, mode: AblationMode, mean: torch.Tensor) -> None:
        self.clustering, self.cluster, self.mode, self.mean = clustering, cluster, mode, mean
        self.name = f"cluster {cluster}: {mode}"

    def apply(self, step, latents, rows, examples, blocks) -> Change:
        hit = self.clustering.assign(latents) == self.cluster  # (B, K)
        if self.mode == "remove":
            return latents, ~hit
        fill = self.mean.to(latents) if self.mode == "mean" else torch.zeros_like(latents[0, 0])
        return torch.where(hit[..., None], fill, latents), torch.ones_like(hit)


class RemoveAll(Ablation):
    """No latents at all: generation is the plain reasoner's."""

    name = "all removed"

    def apply(self, step, latents, rows, examples, blocks) -> Change:
        return latents, torch.zeros_like(latents[..., 0], dtype=torch.bool)


class ShuffleExamples(Ablation):
    """Each row reads another example's latents of the same kind and block order (from `trace`), so the
    latents are of the right kind and written for the wrong context. Donors follow a random cycle over
    the examples, drawn under `seed`; a row keeps its own latents only where no other example has any."""

    name = "shuffled between examples"

    def __init__(self, trace: Trace, seed: int) -> None:
        n = len(trace.examples)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
        position = {e: i for i, e in enumerate(order)}
        self.donors = {e: [order[(position[e] + d) % n] for d in range(1, n)] for e in range(n)}
        self.blocks = {
            kind: {e.index: [b.woven for b in e.blocks if b.kind == kind] for e in trace.examples}
            for kind in ("prompt", "inference")
        }

    def apply(self, step, latents, rows, examples, blocks) -> Change:
        kind = "prompt" if step < 0 else "inference"
        out = latents.clone()
        for b in rows.nonzero().flatten().tolist():
            # the row's j-th block of this kind: its inference blocks follow its prompt block, if any
            j = blocks[b] - bool(self.blocks["prompt"][examples[b]]) if kind == "inference" else 0
            for donor in self.donors[examples[b]]:
                pool = self.blocks[kind][donor]
                if pool:
                    out[b] = pool[j % len(pool)].to(latents)
                    break
        return out, torch.ones_like(latents[..., 0], dtype=torch.bool)


class RandomSameNorm(Ablation):
    """Every latent replaced by a random direction with the latent's own norm; example e's block j
    draws from its own seed, so results do not depend on how examples are batched."""

    name = "random, same norm"

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def apply(self, step, latents, rows, examples, blocks) -> Change:
        out = latents.clone()
        for b in rows.nonzero().flatten().tolist():
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + examples[b] * 1009 + blocks[b])
            noise = torch.randn(latents.shape[1:], generator=g)
            noise = (
                noise / noise.norm(dim=-1, keepdim=True) * latents[b].float().norm(dim=-1, keepdim=True).cpu()
            )
            out[b] = noise.to(latents)
        return out, torch.ones_like(latents[..., 0], dtype=torch.bool)


@dataclass
class AblationResult:
    """An ablation's effect against the unablated trace of the same examples.

    accuracy, delta (accuracy - the plain trace's); changed: completions that differ from the plain ones;
    slots: latents the ablation removed or replaced; errors: count per `ErrorType`.
    """

    name: str
    accuracy: float
    delta: float
    changed: int
    slots: int
    errors: dict[str, int]

    def to_dict(self) -> dict:
        return {**vars(self), "accuracy": round(self.accuracy, 4), "delta": round(self.delta, 4)}


def error_counts(task: Task, examples: Sequence[Example], trace: Trace) -> dict[str, int]:
    """Count of each `ErrorType` over a trace of `examples`."""
    counts = Counter(classify(task, examples[e.index], e.completion, e.score) for e in trace.examples)
    return {t: counts.get(t, 0) for t in ERROR_TYPES}


def ablated_slots(trace: Trace) -> int:
    """Latents of a trace that the reasoner did not read as woven (removed, or replaced)."""
    n = 0
    for e in trace.examples:
        for b in e.blocks:
            same = (b.inserted == b.woven).all(-1)  # (K,)
            n += int((~b.kept | ~same).sum())
    return n


def run_ablation(
    model: LatentMemoryModel,
    task: Task,
    examples: Sequence[Example],
    plain: Trace,
    ablation: Ablation,
    *,
    batch_size: int = 16,
    max_new_tokens: int | None = None,
) -> tuple[AblationResult, Trace]:
    """Generate on `examples` under `ablation`; its result against `plain` (their unablated trace)."""
    trace = capture(
        model,
        task,
        examples,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        hook_for=ablation.hook_for,
    )
    changed = sum(a.completion != p.completion for a, p in zip(trace.examples, plain.examples, strict=True))
    result = AblationResult(
        name=ablation.name,
        accuracy=trace.accuracy,
        delta=trace.accuracy - plain.accuracy,
        changed=changed,
        slots=ablated_slots(trace),
        errors=error_counts(task, examples, trace),
    )
    return result, trace


def standard_ablations(
    plain: Trace, clustering: Clustering | None, modes: Sequence[AblationMode], seed: int
) -> list[Ablation]:
    """Every cluster under every mode (when there is a clustering), then the three whole-memory ablations."""
    out: list[Ablation] = []
    if clustering is not None:
        mean = plain.latents()[0].mean(0)
        out += [ClusterAblation(clustering, c, m, mean) for c in range(clustering.k) for m in modes]
    return [*out, RemoveAll(), ShuffleExamples(plain, seed), RandomSameNorm(seed)]
