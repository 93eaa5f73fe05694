"""The recipe config every trained method shares, and the record of what a recipe run trained.

Every trained method starts from scratch and runs `budget.steps` optimiser steps of one recipe config
(`recipe_dict`); the GRPO arms add the task's reward (`grpo_recipe`). `recipe_training` reads back what a
`training.loop.Trainer` run did, for `Method.training`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from latentmem.eval.method import Context
from latentmem.runs import RunDir

SFT_LOSS = "token-mean NLL of the target (over the step's answer tokens)"


def recipe_dict(ctx: Context, rows: Path, name: str) -> dict[str, Any]:
    """The recipe config every trained method of the harness shares (before its own sections): the budget
    on top of `TrainConfig`'s defaults, rows at `rows` with the gold answer in `answer` (for rewards) and
    the SFT target in `target`, a run folder `workdir/<name>`, and no resume (every arm starts fresh, or
    from `ctx.init_from` in continual learning)."""
    return {
        "model": ctx.model,
        "seed": ctx.seed,
        "output_dir": str(ctx.workdir / name),
        "init_from": str(ctx.init_from) if ctx.init_from else None,
        "memgen": ctx.memgen.to_dict(),
        "data": {
            "path": str(rows),
            "answer_column": "answer",
            "target_column": "target",
            "system": ctx.task.system,
        },
        "train": {
            "steps": ctx.budget.steps,
            "batch_size": ctx.budget.batch_size,
            "lr": ctx.budget.lr,
            "resume": False,
        },
    }


def grpo_recipe(ctx: Context, rows: Path, name: str) -> Any:
    """The weaver-GRPO config of the harness (`training.config.GRPOConfig`), whose `train` and `grpo`
    sections the TRL arm copies too: the task's reward, `budget.num_generations` completions per prompt."""
    from latentmem.training.config import GRPOConfig

    cfg = recipe_dict(ctx, rows, name)
    cfg["grpo"] = {
        "num_generations": ctx.budget.num_generations,
        "max_new_tokens": ctx.task.max_new_tokens,
        "reward": "latentmem.eval.task:task_reward",
        "reward_args": {"task": ctx.task_name, "task_args": json.dumps(ctx.task_args, sort_keys=True)},
    }
    return GRPOConfig.from_dict(cfg)


def recipe_training(
    cfg: Any, run_dir: Path, *, algorithm: str, loss_type: str, start: str, rows_per_step: int
) -> dict[str, Any]:
    """A `Method.training` record of a `training.loop.Trainer` run: the settings from its config, the steps
    from its metrics (what ran, not what was asked)."""
    t = cfg.train
    logged = [m["step"] for m in RunDir(run_dir).metrics() if "step" in m]
    steps = max(logged, default=0)
    return {
        "algorithm": algorithm,
        "loss_type": loss_type,
        "schedule": t.schedule,
        "lr": t.lr,
        "warmup_steps": t.warmup_steps,
        "weight_decay": t.weight_decay,
        "max_grad_norm": t.max_grad_norm,
        "steps": steps,
        "rows_per_step": rows_per_step,
        "rows_seen": steps * rows_per_step,
        "start": start,
        "run": str(run_dir),
    }


def sft_training(cfg: Any, run_dir: Path, start: str) -> dict[str, Any]:
    """The `Method.training` record of an SFT arm (weaver or LoRA: the same loop and loss), `start` naming
    what it starts from."""
    return recipe_training(
        cfg,
        run_dir,
        algorithm="SFT (latentmem Trainer)",
        loss_type=SFT_LOSS,
        start=start,
        rows_per_step=cfg.train.batch_size,
    )
