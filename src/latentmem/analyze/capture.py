"""Run a MemGen model on a task's prompts and record what its memory did: where the trigger was asked and
what it said, where latents went in, the latents themselves, the completion and its score.

Greedy decoding, so a trace is a deterministic function of the model and the examples. Latents are
recorded through `generate`'s `latent_hook`, which sees every block exactly as the reasoner would read it,
so a trace's insertions are `GenerationResult.insertions` by construction (a test checks it).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from latentmem.analyze.config import AnalysisError
from latentmem.chat import render_chat
from latentmem.eval.task import Example, Task
from latentmem.memgen import GenerationConfig, LatentHook, LatentMemoryModel

# Given the dataset indices of a batch's rows, the hook generation runs that batch with (an ablation).
HookFactory = Callable[[list[int]], LatentHook]


@dataclass
class Candidate:
    """A delimiter where the trigger was asked. `step`: index of the delimiter among the generated tokens."""

    step: int
    token: str
    probability: float
    inserted: bool


@dataclass
class Block:
    """One block of latents as generation inserted it.

    step: the generated token it follows (-1 = the prompt block, after the last prompt token).
    woven (K, D) float32: what the weaver wrote. inserted (K, D) and kept (K,) bool: what the reasoner
    read, after any ablation (equal to `woven` and all True without one).
    """

    step: int
    woven: torch.Tensor
    inserted: torch.Tensor
    kept: torch.Tensor

    @property
    def kind(self) -> str:
        return "prompt" if self.step < 0 else "inference"


@dataclass
class ExampleTrace:
    """One example's run: its completion and score, the trigger's candidates, the blocks of latents."""

    index: int  # position in the analysed example list
    prompt: str
    answer: Any
    completion: str
    token_ids: list[int]  # the generated tokens, up to and including EOS
    score: float
    stopped: bool  # ended with EOS (False: cut at max_new_tokens)
    candidates: list[Candidate]
    blocks: list[Block]

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def insertion_steps(self) -> list[int]:
        """Generated-token indices after which inference latents went in (`GenerationResult.insertions`)."""
        return [b.step for b in self.blocks if b.step >= 0]


@dataclass(frozen=True)
class SlotRef:
    """Where one latent of a trace sits: example, block within the example, slot within the block."""

    example: int
    block: int
    slot: int


@dataclass
class Trace:
    """Every example's `ExampleTrace`, in example order."""

    examples: list[ExampleTrace] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return sum(e.score for e in self.examples) / max(len(self.examples), 1)

    def slots(self) -> Iterator[tuple[SlotRef, Block]]:
        for e in self.examples:
            for j, block in enumerate(e.blocks):
                for k in range(block.woven.shape[0]):
                    yield SlotRef(e.index, j, k), block

    def latents(self) -> tuple[torch.Tensor, list[SlotRef]]:
        """Every woven latent as one matrix (N, D), with where each row came from."""
        refs = [ref for ref, _ in self.slots()]
        if not refs:
            raise AnalysisError(
                "the trace holds no latents: the model has prompt_latents = 0 and never inserted; "
                "analyse a model with prompt latents, or run more examples"
            )
        rows = [self.examples[r.example].blocks[r.block].woven[r.slot] for r in refs]
        return torch.stack(rows), refs

    def kinds(self, refs: Sequence[SlotRef]) -> list[str]:
        """The kind of each slot of `refs`: "prompt" or "inference"."""
        return [self.examples[r.example].blocks[r.block].kind for r in refs]

    def write_jsonl(self, path: Path, extra: Callable[[ExampleTrace], dict[str, Any]] | None = None) -> None:
        """One JSON line per example: completion, score, candidates, insertions (latents left out; `extra`
        adds fields, e.g. what each latent is near)."""
        with path.open("w") as f:
            for e in self.examples:
                row = {
                    "index": e.index,
                    "prompt": e.prompt,
                    "answer": e.answer,
                    "completion": e.completion,
                    "score": e.score,
                    "n_tokens": e.n_tokens,
                    "stopped": e.stopped,
                    "candidates": [vars(c) for c in e.candidates],
                    "insertions": [
                        {
                            "step": b.step,
                            "kind": b.kind,
                            "latents": b.woven.shape[0],
                            "kept": int(b.kept.sum()),
                        }
                        for b in e.blocks
                    ],
                }
                f.write(json.dumps({**row, **(extra(e) if extra else {})}, default=str) + "\n")


class _Recorder:
    """A `LatentHook` that records every block, before and after an optional inner hook (an ablation)."""

    def __init__(self, inner: LatentHook | None) -> None:
        self.inner = inner
        # per call: (step, rows (B,), woven (B, K, D), inserted (B, K, D), kept (B, K))
        self.events: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def __call__(self, step: int, latents: torch.Tensor, rows: torch.Tensor):
        changed = self.inner(step, latents, rows) if self.inner is not None else None
        inserted, kept = (
            changed if changed is not None else (latents, torch.ones_like(latents[..., 0]).bool())
        )
        self.events.append(
            (
                step,
                rows.cpu(),
                latents.float().cpu(),
                inserted.float().cpu(),
                kept.bool().cpu() & rows.cpu()[:, None],
            )
        )
        return changed

    def blocks(self, row: int) -> list[Block]:
        return [
            Block(step, woven[row], inserted[row], kept[row])
            for step, rows, woven, inserted, kept in self.events
            if rows[row]
        ]


def encode_prompts(model: LatentMemoryModel, task: Task, prompts: list[str]) -> dict[str, torch.Tensor]:
    """The chat-templated prompts as a left-padded batch: input_ids, attention_mask (B, T)."""
    tok = model.tokenizer
    texts = [render_chat(tok, p, system=task.system) for p in prompts]
    return tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)


@torch.no_grad()
def capture(
    model: LatentMemoryModel,
    task: Task,
    examples: Sequence[Example],
    *,
    batch_size: int = 16,
    max_new_tokens: int | None = None,
    hook_for: HookFactory | None = None,
) -> Trace:
    """Greedy generation on every example's prompt, recorded (see the module docstring).

    `hook_for(indices)`: a `LatentHook` for the batch of examples `indices` (e.g. an ablation); the trace
    then holds both what the weaver wrote and what the reasoner read.
    """
    tok = model.tokenizer
    cfg = GenerationConfig(max_new_tokens=max_new_tokens or task.max_new_tokens)
    trace = Trace()
    for start in range(0, len(examples), batch_size):
        batch = list(examples[start : start + batch_size])
        indices = list(range(start, start + len(batch)))
        recorder = _Recorder(hook_for(indices) if hook_for is not None else None)
        enc = encode_prompts(model, task, [ex.prompt for ex in batch])
        res = model.generate(enc["input_ids"], enc["attention_mask"], cfg, latent_hook=recorder)
        T = enc["input_ids"].shape[1]
        sequences = res.sequences.cpu()
        candidates, decisions = res.plan.candidates.cpu(), res.plan.decisions.cpu()
        probs = res.trigger_probs.cpu()
        for b, ex in enumerate(batch):
            n = int(res.lengths[b])
            ids = sequences[b, :n].tolist()
            completion = tok.decode(ids, skip_special_tokens=True)
            cands = [
                Candidate(
                    step=int(c) - T,
                    token=tok.decode([ids[int(c) - T]]),
                    probability=float(probs[b, j]),
                    inserted=bool(decisions[b, j]),
                )
                for j, c in enumerate(candidates[b].tolist())
                if c >= T  # -1 pads the rows with fewer candidates
            ]
            trace.examples.append(
                ExampleTrace(
                    index=indices[b],
                    prompt=ex.prompt,
                    answer=ex.answer,
                    completion=completion,
                    token_ids=ids,
                    score=float(task.score(ex, completion)),
                    stopped=n < cfg.max_new_tokens or ids[-1] == tok.eos_token_id,
                    candidates=cands,
                    blocks=recorder.blocks(b),
                )
            )
    return trace
