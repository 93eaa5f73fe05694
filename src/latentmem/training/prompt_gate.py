"""Fitting the prompt gate (`latentmem.memgen.prompt_gate`) at the end of a MemGen recipe, on the prompts it
trained on, so that the saved weaver serves prompts like them and leaves the others to the plain reasoner.

Only at the end: while a recipe trains, its model's gate is unfitted (`init_from` loads no gate), so every
training prompt and rollout gets latents, whatever an earlier stage's gate would have said."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch

from latentmem.memgen.generate import prompt_gate_features
from latentmem.training.data import Encoded, collate
from latentmem.training.loop import Job
from latentmem.training.sharding import gathered


def fit_prompt_gate(job: Job, items: Sequence[Encoded]) -> None:
    """With `trigger.prompt: knn`, add the prompts of `items` to the model's gate, refit its threshold
    and save it into the run's `model/` (beside the weights `Trainer` saved). Every process computes
    the same features (the reasoner is frozen); the main one writes."""
    model, cfg = job.model, job.cfg
    if model.config.trigger.prompt != "knn":
        return
    if cfg.init_from:  # the gate of the weaver this run continued: its prompts stay served
        model.prompt_gate.load(cfg.init_from)
    pad, size = model.tokenizer.pad_token_id, cfg.train.batch_size
    features = []
    with torch.no_grad(), gathered(model):
        for start in range(0, len(items), size):
            ids, mask, _ = collate(items[start : start + size], pad, with_answer=False)
            features.append(prompt_gate_features(model, ids, mask))
    fitted = model.prompt_gate.fit(torch.cat(features), seed=cfg.seed)
    if job.dist.is_main:
        model.prompt_gate.save(job.run.path / "model")
        print(
            f"prompt gate: {int(fitted['prompt_gate_bank'])} prompts, threshold "
            f"{fitted['prompt_gate_threshold']:.4f} (cosine distance to the {model.config.trigger.prompt_k}-th "
            "nearest training prompt)",
            file=sys.stderr,
        )
    job.dist.barrier()
