"""Weaver SFT: next-token loss on the answer tokens with the reasoner frozen; prompt and latent positions
never count. `latentmem train sft --config configs/debug/sft.yaml` runs `run`.

The loss of a micro-step is its answer tokens' summed NLL divided by the number of answer tokens in the
whole optimiser step (all processes, all micro-steps), so accumulated gradients are those of the global
token-mean loss, however the batch is spread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from latentmem.memgen import LatentMemoryModel
from latentmem.training.config import SFTConfig
from latentmem.training.data import Encoded, Row, collate, collate_memory, encode_rows, load_rows
from latentmem.training.loop import Job, Metrics, StepContext, Trainer, launch
from latentmem.training.prompt_gate import fit_prompt_gate


def answer_tokens(item: Encoded) -> int:
    """Tokens of `item` that the loss scores: the answer and its EOS."""
    return len(item.answer_ids)


def summed_nll(
    model: LatentMemoryModel, items: Sequence[Encoded], pad_id: int, device: torch.device
) -> torch.Tensor:
    """() the summed NLL of the answer tokens of `items` under `model` (latents per its trigger policy)."""
    ids, mask, labels = (t.to(device) for t in collate(items, pad_id))
    memory = collate_memory(items)
    out = model(ids, mask, labels, memory=memory.to(device) if memory else None)
    return -out.token_logprobs[out.target_mask].sum()


# (model, items, pad id, device) -> () summed answer-token NLL: what differs between the SFT arms
SummedNLL = Callable[[Any, Sequence[Encoded], int, torch.device], torch.Tensor]


def fit_sft(job: Job, train_rows: list[Row], eval_rows: list[Row], nll: SummedNLL) -> list[Encoded]:
    """The SFT loop every SFT arm runs (the weaver here, the LoRA baseline in `training.lora`): the global
    token-mean loss of `nll`, evaluated as the eval rows' token-mean NLL. Returns the encoded train rows."""
    cfg, model, device = job.cfg, job.model, job.dist.device
    pad_id = model.tokenizer.pad_token_id
    _, train = encode_rows(train_rows, model, cfg, "train")
    _, evals = encode_rows(eval_rows, model, cfg, "eval")
    trainer = Trainer(job, n_rows=len(train))

    def micro_step(ctx: StepContext) -> Metrics:
        n_global = sum(answer_tokens(train[i]) for i in ctx.step_indices)
        loss = nll(model, [train[i] for i in ctx.indices], pad_id, device) / n_global
        loss.backward()
        return {"loss": loss.item()}

    n_eval_tokens = sum(answer_tokens(e) for e in evals)

    def evaluate(indices: list[int]) -> Metrics:
        total = 0.0
        for start in range(0, len(indices), cfg.train.batch_size):
            batch = [evals[i] for i in indices[start : start + cfg.train.batch_size]]
            total += float(nll(model, batch, pad_id, device))
        return {"eval_loss": total / n_eval_tokens}

    trainer.fit(micro_step, evaluate if evals else None, len(evals))
    return train


def train_sft(cfg: SFTConfig) -> Path:
    """Run weaver SFT per `cfg`; return the run folder (metrics.jsonl, checkpoints/, model/)."""
    train_rows, eval_rows = load_rows(cfg.data, cfg.seed)  # column errors before the model loads
    job = launch(cfg, cfg.train.batch_size)
    fit_prompt_gate(job, fit_sft(job, train_rows, eval_rows, summed_nll))
    return job.run.path


def run(config_path: str, overrides: list[str]) -> Path:
    """CLI entry: `latentmem train sft --config FILE [key.sub=value ...]`."""
    return train_sft(SFTConfig.from_yaml(config_path, overrides))
