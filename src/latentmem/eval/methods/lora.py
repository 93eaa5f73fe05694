"""The LoRA baselines: a LoRA on the reasoner's own projections whose rank makes its parameter count the
weaver's, trained by SFT on the same `Trainer`, config and rows as memgen-sft (lora-sft), or by TRL's
`GRPOTrainer` configured as memgen-grpo (grpo)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model

from latentmem.eval.method import Completions, Context, Method, write_rows
from latentmem.eval.methods.generate import complete_with_hf
from latentmem.eval.methods.recipes import grpo_recipe, recipe_dict, sft_training
from latentmem.memgen import LatentMemoryModel
from latentmem.models import load_model
from latentmem.seeding import seed_everything


def weaver_trainable_params(ctx: Context) -> int:
    """The trainable-parameter count of a MemGen weaver for this model and config (the LoRA budget)."""
    model, tok = load_model(ctx.model, seed=ctx.seed)
    return LatentMemoryModel(model, tok, ctx.memgen).num_trainable()


def budget_matched_lora(ctx: Context) -> LoraConfig:
    """LoRA on the weaver's target modules with the rank whose parameter count is nearest the weaver's."""
    model = load_model(ctx.model, seed=ctx.seed)[0]
    targets = list(LatentMemoryModel.lora_targets(model, ctx.memgen))
    per_rank = get_peft_model(model, LoraConfig(r=1, target_modules=targets))
    rank = max(
        1,
        round(
            weaver_trainable_params(ctx) / sum(p.numel() for p in per_rank.parameters() if p.requires_grad)
        ),
    )
    return LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets)


class LoRASFT(Method):
    """LoRA on the reasoner's own projections, its rank chosen so that its parameters match the weaver's,
    trained by the same `Trainer`, config and rows as memgen-sft (`training.lora`)."""

    name = "lora-sft"
    continues = True

    def fit(self) -> None:
        from latentmem.training.config import SFTConfig
        from latentmem.training.lora import train_lora_sft

        ctx = self.ctx
        rows = write_rows(ctx.workdir / "train.jsonl", ctx.task, ctx.train)
        self.recipe = SFTConfig.from_dict(recipe_dict(ctx, rows, self.name))
        lora = budget_matched_lora(ctx)
        start = time.perf_counter()
        self.run_dir, trained = train_lora_sft(self.recipe, lora)
        self.train_seconds = time.perf_counter() - start
        self.model, self.tok = trained.peft.eval(), trained.tokenizer

    def complete(self, prompts: list[str]) -> Completions:
        return complete_with_hf(self.model, self.tok, prompts, self.ctx.task, self.ctx.eval_batch_size)

    @property
    def trainable_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    @property
    def state_dir(self) -> Path:
        return self.run_dir / "model"

    def training(self) -> dict[str, Any]:
        start = (
            f"LoRA of {self.ctx.init_from}" if self.ctx.init_from else "fresh LoRA (B = 0: the base model)"
        )
        return sft_training(self.recipe, self.run_dir, start)


class LoRAGRPO(LoRASFT):
    """The RL baseline: TRL's GRPOTrainer (the reference GRPO implementation) trains the budget-matched
    LoRA on the task's reward, configured from memgen-grpo's own config (`grpo_recipe`) so that the two
    arms run the same algorithm; `budget.batch_size` completions per step, `budget.num_generations` per
    prompt."""

    name = "grpo"
    continues = False  # TRL's trainer builds its own fresh adapter

    def fit(self) -> None:
        from datasets import Dataset
        from trl import GRPOConfig, GRPOTrainer

        ctx, task = self.ctx, self.ctx.task
        rows_path = write_rows(ctx.workdir / "train.jsonl", task, ctx.train)
        self.recipe = grpo_recipe(ctx, rows_path, "trl")
        t, s = self.recipe.train, self.recipe.grpo
        seed_everything(ctx.seed)
        model, self.tok = load_model(ctx.model, seed=ctx.seed)
        system = [{"role": "system", "content": task.system}] if task.system else []
        rows = [
            {**ex.columns, "prompt": [*system, {"role": "user", "content": ex.prompt}], "answer": ex.answer}
            for ex in ctx.train
        ]

        dataset_columns = set(rows[0]) - {"prompt"}

        def reward(prompts, completions, **kwargs):
            # TRL hands conversational completions as messages, and extra kwargs besides the dataset's columns
            texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
            columns = {k: v for k, v in kwargs.items() if k in dataset_columns}
            return task.reward([str(p) for p in prompts], texts, **columns)

        # every TRL default that differs from ours is set to ours (TRL 1.16: loss_type "dapo", a linear
        # schedule, bf16 and gradient checkpointing on, dropout on); the rest already agree
        args = GRPOConfig(
            output_dir=self.recipe.output_dir,
            use_cpu=not torch.cuda.is_available(),
            per_device_train_batch_size=t.batch_size // t.grad_accum,
            gradient_accumulation_steps=t.grad_accum,
            num_generations=s.num_generations,
            max_completion_length=s.max_new_tokens,
            max_steps=t.steps,
            learning_rate=t.lr,
            lr_scheduler_type=t.schedule,
            warmup_steps=t.warmup_steps,
            weight_decay=t.weight_decay,
            max_grad_norm=t.max_grad_norm,
            bf16=t.bf16,
            gradient_checkpointing=False,
            disable_dropout=True,  # ours trains in eval mode
            loss_type="grpo",  # token mean per completion, mean over completions: `training.grpo.grpo_loss`
            scale_rewards="group",  # (r - group mean) / (group std + 1e-4): `rollout.group_advantages`
            mask_truncated_completions=False,
            num_iterations=1,
            beta=s.beta,
            epsilon=s.epsilon,
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k,
            seed=ctx.seed,
            report_to=[],
            logging_steps=max(1, t.steps // 10),
            save_strategy="no",
        )
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=[reward],
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=self.tok,
            peft_config=budget_matched_lora(ctx),
        )
        start = time.perf_counter()
        trainer.train()
        self.train_seconds = time.perf_counter() - start
        self.model = trainer.model.eval()
        self.args, self.steps = args, trainer.state.global_step

    def training(self) -> dict[str, Any]:
        a, G = self.args, self.args.num_generations
        rows_per_step = a.per_device_train_batch_size * a.gradient_accumulation_steps * a.world_size // G
        return {
            "algorithm": f"GRPO (TRL {_version('trl')} GRPOTrainer)",
            "loss_type": a.loss_type,
            "schedule": str(getattr(a.lr_scheduler_type, "value", a.lr_scheduler_type)),
            "lr": a.learning_rate,
            "warmup_steps": a.warmup_steps,
            "weight_decay": a.weight_decay,
            "max_grad_norm": a.max_grad_norm,
            "steps": self.steps,
            "rows_per_step": rows_per_step,
            "rows_seen": self.steps * rows_per_step,
            "start": "fresh LoRA (B = 0: the base model)",
            "completions_per_prompt": G,
            "temperature": a.temperature,
            "top_k": a.top_k,
            "top_p": a.top_p,
            "beta": a.beta,
            "epsilon": a.epsilon,
            "updates_per_batch": a.num_iterations,
        }


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)
