"""The do-no-harm warm-up: distil the plain reasoner into the reasoner-with-latents on generic prompts.
`latentmem train warmup --config configs/debug/warmup.yaml` runs `run`.

A fresh weaver's latents raise the reasoner's answer NLL before any training (issue 13: 0.73 -> 2.02 on
SmolLM2), while a LoRA starts exactly at the base model. This recipe trains the weaver (LoRA, queries,
projections) so that the reasoner with latents predicts what the plain reasoner predicts: it minimises the
token-mean KL(plain || with latents) of the next-token distributions over the answer tokens. It knows no
task: the prompts are generic (`data.task: generic`, or any JSONL of prompts) and, with `warmup.targets:
reasoner`, the answers are the plain reasoner's own greedy completions, so the KL is taken on the text the
reasoner would write anyway. It runs once per base model and MemGen config; its `model/` folder seeds any
later recipe through `init_from`, and the budget a method reports must count its steps too.

The loss of a micro-step is its summed KL divided by the answer tokens of the whole optimiser step, as in
SFT (`training.sft`), so accumulation and data parallelism give the update of the global token mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from latentmem.config import Config, require
from latentmem.memgen import LatentMemoryModel
from latentmem.memgen.harm import kl_to_plain, plain_logprobs
from latentmem.training.config import DataConfig, RecipeConfig
from latentmem.training.data import Encoded, Row, collate, encode_rows, load_rows
from latentmem.training.loop import Metrics, StepContext, Trainer, launch


@dataclass
class WarmupSettings(Config):
    """reasoner: the answers are the plain reasoner's greedy completions of the prompts (at most
    `max_new_tokens` tokens); data: the rows' own SFT target column."""

    targets: Literal["reasoner", "data"] = "reasoner"
    max_new_tokens: int = 32

    def validate(self) -> None:
        require(self.max_new_tokens >= 1, "warmup.max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")


@dataclass
class WarmupConfig(RecipeConfig):
    """The do-no-harm warm-up (see the module docstring); by default on the built-in generic prompts."""

    data: DataConfig = field(default_factory=lambda: DataConfig(task="generic", train_size=256, eval_size=32))
    warmup: WarmupSettings = field(default_factory=WarmupSettings)


@torch.no_grad()
def reasoner_targets(
    model: LatentMemoryModel, items: Sequence[Encoded], max_new_tokens: int, batch_size: int
) -> list[str]:
    """The plain reasoner's greedy completion of each item's prompt (the weaver's LoRA off, no latents)."""
    tok = model.tokenizer
    texts: list[str] = []
    for start in range(0, len(items), batch_size):
        ids, mask, _ = (
            t.to(model.device)
            for t in collate(items[start : start + batch_size], tok.pad_token_id, with_answer=False)
        )
        with model.reasoner_mode() as reasoner:
            out = reasoner.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
            )
        texts += [t.strip() for t in tok.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)]
    return texts


def with_reasoner_targets(
    rows: list[Row], model: LatentMemoryModel, cfg: WarmupConfig, split: str
) -> list[Encoded]:
    """`rows` encoded with their SFT target replaced by the plain reasoner's completion."""
    _, items = encode_rows(rows, model, cfg, split)
    texts = reasoner_targets(model, items, cfg.warmup.max_new_tokens, cfg.train.batch_size)
    column = cfg.data.sft_column
    _, encoded = encode_rows([{**r, column: t} for r, t in zip(rows, texts, strict=True)], model, cfg, split)
    return encoded


def summed_kl(
    model: LatentMemoryModel, items: Sequence[Encoded], pad_id: int, device: torch.device
) -> torch.Tensor:
    """() the summed KL(plain || with latents) over the answer tokens of `items`."""
    ids, mask, labels = (t.to(device) for t in collate(items, pad_id))
    teacher = plain_logprobs(model, ids, mask, labels).detach()
    out = model(ids, mask, labels, distributions=True)
    return kl_to_plain(teacher, out.target_logprobs).sum()


def train_warmup(cfg: WarmupConfig) -> Path:
    """Run the warm-up per `cfg`; return the run folder (metrics.jsonl, checkpoints/, model/)."""
    train_rows, eval_rows = load_rows(cfg.data, cfg.seed)
    job = launch(cfg, cfg.train.batch_size)
    dist, run, model = job.dist, job.run, job.model
    pad = model.tokenizer.pad_token_id
    if cfg.warmup.targets == "reasoner":
        train = with_reasoner_targets(train_rows, model, cfg, "train")
        evals = with_reasoner_targets(eval_rows, model, cfg, "eval") if eval_rows else []
    else:
        _, train = encode_rows(train_rows, model, cfg, "train")
        _, evals = encode_rows(eval_rows, model, cfg, "eval")
    trainer = Trainer(job, n_rows=len(train))

    def micro_step(ctx: StepContext) -> Metrics:
        n_global = sum(len(train[i].answer_ids) for i in ctx.step_indices)
        loss = summed_kl(model, [train[i] for i in ctx.indices], pad, dist.device) / n_global
        loss.backward()
        return {"loss": loss.item()}

    n_eval_tokens = sum(len(e.answer_ids) for e in evals)

    def evaluate(indices: list[int]) -> Metrics:
        total = 0.0
        for start in range(0, len(indices), cfg.train.batch_size):
            batch = [evals[i] for i in indices[start : start + cfg.train.batch_size]]
            total += float(summed_kl(model, batch, pad, dist.device))
        return {"eval_kl": total / n_eval_tokens}

    trainer.fit(micro_step, evaluate if evals else None, len(evals))
    return run.path


def run(config_path: str, overrides: list[str]) -> Path:
    """CLI entry: `latentmem train warmup --config FILE [key.sub=value ...]`."""
    return train_warmup(WarmupConfig.from_yaml(config_path, overrides))
