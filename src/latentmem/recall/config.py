"""Recall memory's training configuration: the two steps' settings (`Step1Config`, `Step2Config`), the
optional LoRA (`LoraSettings`), the whole recipe (`RecallTrainConfig`, what `latentmem train recall
--config FILE` reads) and one step as a run of the shared loop (`RecallStep`). `latentmem.recall.train`
runs them; its docstring says what each step trains and why the loop settings are what they are."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from peft import LoraConfig

from latentmem.config import Config, require
from latentmem.recall.memory import PARTS
from latentmem.training.config import TrainConfig


def _loop(
    steps: int, batch_size: int, lr: float, grad_accum: int, save_every: int, eval_every: int = 0
) -> TrainConfig:
    """The loop settings of one recall step: constant learning rate, no clipping, no weight decay (the
    module docstring says why)."""
    return TrainConfig(
        steps=steps,
        batch_size=batch_size,
        grad_accum=grad_accum,
        lr=lr,
        schedule="constant_with_warmup",  # with no warmup: constant
        max_grad_norm=0.0,
        save_every=save_every,
        eval_every=eval_every,
    )


@dataclass
class Step1Config(Config):
    objective: Literal["contrastive", "mse"] = "contrastive"
    steps: int = 100
    batch_size: int = 16  # facts per step (all of them when there are fewer)
    lr: float = 1e-3
    # False: train only the head, on `<recall>` hidden states computed once without gradients (no backward
    # through the reasoner: the cheap choice on CPU); the `<recall>` row and LoRA then learn in step 2.
    train_model: bool = True
    # facts the head also learns from here, beyond the trained ones (`auxiliary_facts`: never in the bank,
    # never a new fact of the evaluation; step 2 decodes the first step2.extra_facts of the same stream):
    # a head fitted to 12 facts found the memory of only 0.17 of 12 facts written after training
    # (SmolLM2, issue 14); more subjects, a query that generalises to new ones
    extra_facts: int = 0
    grad_accum: int = 1  # micro-steps per optimiser step (per process)
    save_every: int = 0  # checkpoint every this many steps; 0 = only at the end

    def validate(self) -> None:
        require(self.steps >= 0, "step1.steps", f"must be >= 0 (0 skips step 1), got {self.steps}")
        require(self.extra_facts >= 0, "step1.extra_facts", f"must be >= 0, got {self.extra_facts}")
        require(self.batch_size > 0, "step1.batch_size", f"must be > 0, got {self.batch_size}")
        require(self.lr > 0, "step1.lr", f"must be > 0, got {self.lr}")
        require(self.grad_accum >= 1, "step1.grad_accum", f"must be >= 1, got {self.grad_accum}")
        require(self.save_every >= 0, "step1.save_every", f"must be >= 0, got {self.save_every}")

    def loop(self, num_facts: int) -> TrainConfig:
        """This step's loop settings (`steps` > 0)."""
        batch = min(self.batch_size, num_facts)
        return _loop(self.steps, batch, self.lr, self.grad_accum, self.save_every)


@dataclass
class Step2Config(Config):
    """Step 2: `epochs` x `samples_per_epoch` samples, redrawn every epoch, none longer than `max_tokens`.

    `mix` weighs the three kinds of `latentmem.recall.data`: memory_front (decode a random memory after
    filler; `<recall>` unlabelled), memory_full (recall on a fact question, then answer) and sft_only (the
    negatives: general questions answered directly). sft_only must weigh > 0 whenever memory_full does:
    it is the only kind that teaches when not to recall. The head's InfoNCE, scaled by
    `head_loss_weight`, applies to memory_full rows only.

    `retention_kl` weighs a do-no-harm term: the token-mean KL(base || model) of the next-token
    distributions wherever the input is still base text (`base_positions`), the base being the frozen model
    with the LoRA disabled and the recall tokens removed from its vocabulary. The sft_only replies alone
    are hard labels on 8 questions (SmolLM2 retention fell 0.62 -> 0.38 with them, issue 14); the KL gives
    the whole distribution at every prompt and sft_only token as the target.
    """

    epochs: int = 2
    samples_per_epoch: int = 64
    batch_size: int = 8
    lr: float = 1e-3
    max_tokens: int = 160  # samples longer than this are skipped and redrawn
    mix: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])  # memory_front, memory_full, sft_only
    head_loss_weight: float = 1.0
    retention_kl: float = 0.0  # weight of the KL(base || model) on base text; 0 = off (no base forward)
    # facts decoded here beyond the trained ones (`auxiliary_facts`, the same stream as step1.extra_facts:
    # never in the bank, never a new fact of the evaluation), drawn with them for memory_front and
    # memory_full: trained on the 12 bank facts alone, step 2 learnt which of them a vector is nearest to
    # and answered 0.00 of 12 facts written after training (SmolLM2, issue 14); reading any vector needs
    # many more memories than are recalled
    extra_facts: int = 0
    grad_accum: int = 1  # micro-steps per optimiser step (per process)
    save_every: int = 0  # checkpoint every this many steps; 0 = only at the end
    # every this many steps (and before the first, and at the end), log `probe_answer_accuracy`: greedy
    # answers to the facts' held-out paraphrases with `<recall>` forced (the curve of decoding against
    # steps); 0 = no probe
    eval_every: int = 0

    @property
    def steps(self) -> int:
        """Optimiser steps: `batch_size` divides `samples_per_epoch`, so every epoch is whole steps."""
        return self.epochs * self.samples_per_epoch // self.batch_size

    def validate(self) -> None:
        require(self.epochs >= 0, "step2.epochs", f"must be >= 0 (0 skips step 2), got {self.epochs}")
        require(self.samples_per_epoch > 0, "step2.samples_per_epoch", "must be > 0")
        require(self.batch_size > 0, "step2.batch_size", f"must be > 0, got {self.batch_size}")
        require(
            self.samples_per_epoch % self.batch_size == 0,
            "step2.batch_size",
            f"must divide step2.samples_per_epoch ({self.samples_per_epoch}), got {self.batch_size}: every "
            "optimiser step then draws from one epoch's samples",
        )
        require(self.lr > 0, "step2.lr", f"must be > 0, got {self.lr}")
        require(self.max_tokens > 8, "step2.max_tokens", f"must be > 8, got {self.max_tokens}")
        require(
            len(self.mix) == 3 and min(self.mix) >= 0 and sum(self.mix) > 0,
            "step2.mix",
            f"needs three non-negative weights (memory_front, memory_full, sft_only), got {self.mix}",
        )
        require(
            self.mix[2] > 0 or self.mix[1] == 0,
            "step2.mix",
            f"sft_only (the third weight) must be > 0 when memory_full is: without these negatives step 2 "
            f"teaches recalling on every question; got {self.mix}",
        )
        require(self.head_loss_weight >= 0, "step2.head_loss_weight", "must be >= 0")
        require(self.extra_facts >= 0, "step2.extra_facts", f"must be >= 0, got {self.extra_facts}")
        require(
            self.retention_kl >= 0,
            "step2.retention_kl",
            f"must be >= 0 (0 turns the KL to the base model off), got {self.retention_kl}",
        )
        require(self.grad_accum >= 1, "step2.grad_accum", f"must be >= 1, got {self.grad_accum}")
        require(
            self.batch_size % self.grad_accum == 0,
            "step2.grad_accum",
            f"must divide step2.batch_size ({self.batch_size}), got {self.grad_accum}",
        )
        require(self.save_every >= 0, "step2.save_every", f"must be >= 0, got {self.save_every}")
        require(self.eval_every >= 0, "step2.eval_every", f"must be >= 0, got {self.eval_every}")

    def loop(self) -> TrainConfig:
        """This step's loop settings (`epochs` > 0)."""
        return _loop(self.steps, self.batch_size, self.lr, self.grad_accum, self.save_every, self.eval_every)


@dataclass
class LoraSettings(Config):
    r: int = 0  # 0 = no LoRA: only the token rows, head and projector train
    alpha: int = 16
    targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])

    def validate(self) -> None:
        require(self.r >= 0, "lora.r", f"must be >= 0 (0 disables LoRA), got {self.r}")
        require(bool(self.targets), "lora.targets", "name at least one module, e.g. [q_proj, v_proj]")

    def peft_config(self) -> LoraConfig:
        """PEFT's config of this adapter (`r` > 0), without dropout: training runs in eval mode."""
        return LoraConfig(
            r=self.r, lora_alpha=self.alpha, target_modules=list(self.targets), lora_dropout=0.0
        )


@dataclass
class RecallTrainConfig(Config):
    model: str = "tiny-qwen2"
    seed: int = 0
    output_dir: str = "runs/recall"
    encoder: Literal["hidden", "minilm"] = "hidden"
    num_facts: int = 16
    num_general: int = 32  # general-task questions: half for sft_only, half held out (`split_general`)
    # general questions after those `num_general` (`validation_general`): the split on which to choose
    # step-2 settings such as `step2.retention_kl`, never trained on and never the held-out test half
    num_val_general: int = 16
    reply_tokens: int = 24  # length of the base model's own replies used as sft_only targets
    eval_max_new_tokens: int = 48
    # `<|memory_pad|>` slots per memory: the projector maps one memory vector to this many input
    # embeddings (1: the seed's single injected vector)
    memory_slots: int = 1
    projector_width: int = 0  # the projector's hidden width; 0 = the model's hidden size
    step1: Step1Config = field(default_factory=Step1Config)
    step2: Step2Config = field(default_factory=Step2Config)
    lora: LoraSettings = field(default_factory=LoraSettings)

    def validate(self) -> None:
        require(self.num_facts >= 2, "num_facts", f"needs at least 2 facts to contrast, got {self.num_facts}")
        require(self.num_general >= 4, "num_general", f"must be >= 4, got {self.num_general}")
        require(self.num_val_general >= 0, "num_val_general", f"must be >= 0, got {self.num_val_general}")
        require(self.reply_tokens > 0, "reply_tokens", "must be > 0")
        require(self.eval_max_new_tokens > 0, "eval_max_new_tokens", "must be > 0")
        require(self.memory_slots >= 1, "memory_slots", f"must be >= 1, got {self.memory_slots}")
        require(self.projector_width >= 0, "projector_width", f"must be >= 0, got {self.projector_width}")
        require(
            self.step1.steps > 0 or self.step2.epochs > 0,
            "step1.steps",
            "and step2.epochs are both 0: nothing would train; give one of them a positive value",
        )
        batch = min(self.step1.batch_size, self.num_facts + self.step1.extra_facts)
        require(
            batch % self.step1.grad_accum == 0,
            "step1.grad_accum",
            f"must divide the {batch} facts of a step (step1.batch_size, at most num_facts + "
            f"step1.extra_facts); got "
            f"{self.step1.grad_accum}",
        )

    def steps(self) -> list[RecallStep]:
        """The steps that train (step 1 when `step1.steps` > 0, step 2 when `step2.epochs` > 0), in order."""
        counts = {"step1": self.step1.steps, "step2": self.step2.epochs}
        return [RecallStep(self, name) for name, n in counts.items() if n > 0]


@dataclass
class RecallStep(Config):
    """One step of recall training as a run of the shared loop (a `loop.LoopConfig`): its folder
    `<output_dir>/<step>` (config.yaml, checkpoints/, metrics.jsonl, model/), its loop settings and the
    parts of `RecallModel` it trains. Its config is the whole recall config, so that its checkpoints refuse
    a resume under any other recall setting."""

    recall: RecallTrainConfig
    step: Literal["step1", "step2"]

    @property
    def output_dir(self) -> str:
        return str(Path(self.recall.output_dir) / self.step)

    @property
    def seed(self) -> int:
        return self.recall.seed

    @property
    def resumable_fields(self) -> frozenset[str]:
        """`RESUMABLE_FIELDS` by this config's names: both steps' lengths and save/eval cadences (step 2's
        samples are a pure function of (seed, epoch), so more epochs continue the same sequence)."""
        return frozenset(
            {
                "recall.output_dir",
                "recall.step1.steps",
                "recall.step1.save_every",
                "recall.step2.epochs",
                "recall.step2.save_every",
                "recall.step2.eval_every",
            }
        )

    @functools.cached_property
    def train(self) -> TrainConfig:
        if self.step == "step1":
            return self.recall.step1.loop(self.recall.num_facts + self.recall.step1.extra_facts)
        return self.recall.step2.loop()

    @property
    def parts(self) -> tuple[str, ...]:
        """What this step's optimiser updates: step 1 no projector (no memory is injected), and only the
        head on frozen hidden states (`step1.train_model` false); step 2 everything."""
        if self.step == "step2":
            return PARTS
        return ("rows", "head", "lora") if self.recall.step1.train_model else ("head",)
