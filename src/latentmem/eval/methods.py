"""Methods the harness compares, in a registry: each trains what it needs on a task's train split, then
completes the test prompts. Later methods plug in with `@register_method(name)`.

vanilla      the frozen model as it is.
retrieval    few-shot memory (ExpeL/AWM-style): the most similar solved training examples, retrieved from a
             `VectorMemory` store (MiniLM embeddings), are put into the prompt.
lora-sft     LoRA fine-tuning of the reasoner with a trainable-parameter budget equal to the weaver's
             (`latentmem.training.lora`).
grpo         GRPO of the same budget-matched LoRA, with TRL's `GRPOTrainer` on the task's reward.
memgen-sft   MemGen: weaver SFT (`latentmem.training.sft`), reasoner frozen.
memgen-grpo  MemGen: weaver GRPO on the task's reward (`latentmem.training.grpo`).
memgen-rag   MemGen-SFT with a weaver that also reads the retrieved solved examples' vectors.

Same budget, same algorithm. Every trained method starts from scratch (a fresh LoRA, B = 0, or a fresh
weaver) and runs `budget.steps` optimiser steps of one recipe config (`recipe_dict`). The two SFT arms run
the same `training.loop.Trainer` on the same rows in the same order, so they differ only in what trains.
The two GRPO arms share the algorithm: TRL is configured with our loss (TRL's loss_type "grpo": token mean
per completion, mean over completions), reward scaling, schedule, warmup, weight decay, clipping,
sampling, beta, epsilon and one update per rollout batch; TRL's own prompt order remains. Each method
reports what it ran (`Method.training`), and the harness writes it into results.json and results.md.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from latentmem.chat import render_chat
from latentmem.config import Config, require
from latentmem.errors import LatentMemError
from latentmem.eval.task import Example, Task, get_task
from latentmem.memgen import GenerationConfig, LatentMemoryModel, MemGenConfig, RetrievedMemory
from latentmem.models import load_model
from latentmem.runs import RunDir
from latentmem.seeding import seed_everything


@dataclass
class Budget(Config):
    """The training budget every trained method gets: the same steps, batch and learning rate."""

    steps: int = 60
    batch_size: int = 8
    lr: float = 1e-3
    num_generations: int = 4  # GRPO methods: completions per prompt (divides batch_size)

    def validate(self) -> None:
        require(self.steps >= 1, "budget.steps", f"must be >= 1, got {self.steps}")
        require(self.batch_size >= 1, "budget.batch_size", f"must be >= 1, got {self.batch_size}")
        require(self.lr > 0, "budget.lr", f"must be > 0, got {self.lr}")
        require(
            self.batch_size % self.num_generations == 0,
            "budget.num_generations",
            f"must divide budget.batch_size ({self.batch_size}), got {self.num_generations}",
        )


@dataclass
class Context:
    """What a method gets to prepare itself: the run's settings, the task and its training examples."""

    model: str
    task: Task
    task_name: str
    task_args: dict[str, Any]
    train: list[Example]
    budget: Budget
    memgen: MemGenConfig
    workdir: Path
    seed: int
    retrieval_k: int = 3
    eval_batch_size: int = 16
    extra: dict[str, Any] = field(default_factory=dict)
    # held out from the train split, disjoint from `train` and the test split: for choosing lr or config
    val: list[Example] = field(default_factory=list)


@dataclass
class Completions:
    texts: list[str]
    seconds: float  # wall time of generation
    new_tokens: int  # tokens generated (up to EOS)


class Method(ABC):
    """A way of answering a task's prompts, trained or not."""

    name: str = ""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.train_seconds = 0.0

    def fit(self) -> None:  # noqa: B027  (untrained methods need nothing)
        """Train on `ctx.train` within `ctx.budget` (no-op for untrained methods)."""

    @abstractmethod
    def complete(self, prompts: list[str]) -> Completions:
        """Greedy completions of the user prompts (the chat template is applied here)."""

    @property
    @abstractmethod
    def trainable_params(self) -> int: ...

    def training(self) -> dict[str, Any]:
        """What `fit` ran, for the results: algorithm, loss, schedule, lr, steps, rows seen, start point."""
        return {"algorithm": "none", "steps": 0, "rows_seen": 0, "start": "the base model"}


METHODS: dict[str, type[Method]] = {}


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    def wrap(cls: type[Method]) -> type[Method]:
        cls.name = name
        METHODS[name] = cls
        return cls

    return wrap


def check_methods(names: list[str]) -> None:
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise LatentMemError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")


# ---- generation shared by all methods ------------------------------------------------------------
def _batches(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _encode_prompts(tok: PreTrainedTokenizerBase, prompts: list[str], system: str | None):
    texts = [render_chat(tok, p, system=system) for p in prompts]
    return tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)


@torch.no_grad()
def complete_with_memgen(
    mm: LatentMemoryModel,
    prompts: list[str],
    task: Task,
    batch_size: int,
    memory_for: Callable[[list[str]], RetrievedMemory] | None = None,
) -> Completions:
    """Greedy completions with a LatentMemoryModel; `memory_for(prompts)` gives the retrieved memories its
    weaver reads, when it reads any."""
    tok, texts, n_new, start = mm.tokenizer, [], 0, time.perf_counter()
    cfg = GenerationConfig(max_new_tokens=task.max_new_tokens)
    for batch in tqdm(_batches(prompts, batch_size), desc=f"generate ({len(prompts)})", leave=False):
        enc = _encode_prompts(tok, batch, task.system)
        memory = memory_for(batch) if memory_for else None
        res = mm.generate(enc["input_ids"], enc["attention_mask"], cfg, memory=memory)
        keep = res.completion_mask()
        texts += tok.batch_decode(
            res.sequences.masked_fill(~keep, tok.pad_token_id), skip_special_tokens=True
        )
        n_new += int(keep.sum())
    return Completions(texts, time.perf_counter() - start, n_new)


@torch.no_grad()
def complete_with_hf(
    model: PreTrainedModel, tok: PreTrainedTokenizerBase, prompts: list[str], task: Task, batch_size: int
) -> Completions:
    """Greedy completions with a plain (or PEFT) Hugging Face model's own `generate`."""
    texts, n_new, start = [], 0, time.perf_counter()
    for batch in tqdm(_batches(prompts, batch_size), desc=f"generate ({len(prompts)})", leave=False):
        enc = _encode_prompts(tok, batch, task.system).to(model.device)
        out = model.generate(
            **enc, max_new_tokens=task.max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id
        )
        new = out[:, enc["input_ids"].shape[1] :]
        stop = torch.tensor([tok.eos_token_id, tok.pad_token_id], device=new.device)
        keep = torch.cumsum(torch.isin(new, stop), 1) == 0
        texts += tok.batch_decode(new.masked_fill(~keep, tok.pad_token_id), skip_special_tokens=True)
        n_new += int(keep.sum()) + int((~keep).any(1).sum())  # count the EOS that ended a row
    return Completions(texts, time.perf_counter() - start, n_new)


def write_rows(
    path: Path, task: Task, examples: list[Example], extra: list[dict[str, Any]] | None = None
) -> Path:
    """Training rows as JSONL: the prompt, the gold answer (`answer`), the task's columns, the SFT target
    (`target`) and `extra`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for i, ex in enumerate(examples):
            f.write(
                json.dumps({**ex.as_row(), "target": task.target(ex), **(extra[i] if extra else {})}) + "\n"
            )
    return path


# ---- methods ---------------------------------------------------------------------------------------
@register_method("vanilla")
class Vanilla(Method):
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
        texts = [f"Question: {ex.prompt}\nAnswer: {ctx.task.target(ex)}" for ex in ctx.train]
        store.add_many(texts, agent=SOLVED, metadatas=[{"index": i} for i in range(len(ctx.train))])
    return store


@register_method("retrieval")
class RetrievalFewShot(Vanilla):
    """Solved training examples as memories; the `retrieval_k` most similar ones go into the prompt."""

    def fit(self) -> None:
        start = time.perf_counter()
        self.store = solved_examples_store(self.ctx)
        self.train_seconds = time.perf_counter() - start

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


def weaver_trainable_params(ctx: Context) -> int:
    """The trainable-parameter count of a MemGen weaver for this model and config (the LoRA budget)."""
    model, tok = load_model(ctx.model, seed=ctx.seed)
    return LatentMemoryModel(model, tok, ctx.memgen).num_trainable()


def budget_matched_lora(ctx: Context) -> LoraConfig:
    """LoRA on the weaver's target modules with the rank whose parameter count is nearest the weaver's."""
    model = load_model(ctx.model, seed=ctx.seed)[0]
    targets = list(LatentMemoryModel._lora_targets(model, ctx.memgen))
    per_rank = get_peft_model(model, LoraConfig(r=1, target_modules=targets))
    rank = max(
        1,
        round(
            weaver_trainable_params(ctx) / sum(p.numel() for p in per_rank.parameters() if p.requires_grad)
        ),
    )
    return LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets)


def recipe_dict(ctx: Context, rows: Path, name: str) -> dict[str, Any]:
    """The recipe config every trained method of the harness shares (before its own sections): the budget
    on top of `TrainConfig`'s defaults, rows at `rows` with the gold answer in `answer` (for rewards) and
    the SFT target in `target`, a run folder `workdir/<name>`, and no resume (every arm starts fresh)."""
    return {
        "model": ctx.model,
        "seed": ctx.seed,
        "output_dir": str(ctx.workdir / name),
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
        "reward": "latentmem.eval.methods:task_reward",
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


def _grpo_training(s: Any) -> dict[str, Any]:
    """The sampling and objective settings a GRPO arm records beside `recipe_training`'s."""
    return {
        "completions_per_prompt": s.num_generations,
        "temperature": s.temperature,
        "top_k": s.top_k,
        "top_p": s.top_p,
        "beta": s.beta,
        "epsilon": s.epsilon,
        "updates_per_batch": 1,
    }


SFT_LOSS = "token-mean NLL of the target (over the step's answer tokens)"


@register_method("lora-sft")
class LoRASFT(Method):
    """LoRA on the reasoner's own projections, its rank chosen so that its parameters match the weaver's,
    trained by the same `Trainer`, config and rows as memgen-sft (`training.lora`)."""

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

    def training(self) -> dict[str, Any]:
        return recipe_training(
            self.recipe,
            self.run_dir,
            algorithm="SFT (latentmem Trainer)",
            loss_type=SFT_LOSS,
            start="fresh LoRA (B = 0: the base model)",
            rows_per_step=self.recipe.train.batch_size,
        )


class _MemGenMethod(Method):
    """Shared by the MemGen methods: train with a recipe into `workdir/<name>`, load its `model/`."""

    @abstractmethod
    def recipe_config(self, rows: Path) -> Any:
        """The recipe's typed config for training rows at `rows`."""

    @abstractmethod
    def train(self, cfg: Any) -> Path:
        """Run the recipe; return its run folder (with `model/`)."""

    def fit(self) -> None:
        rows = write_rows(
            self.ctx.workdir / "train.jsonl", self.ctx.task, self.ctx.train, self.extra_columns()
        )
        self.recipe = self.recipe_config(rows)
        start = time.perf_counter()
        self.run_dir = self.train(self.recipe)
        self.train_seconds = time.perf_counter() - start
        base, tok = load_model(self.ctx.model, seed=self.ctx.seed)
        self.mm = LatentMemoryModel.from_pretrained(self.run_dir / "model", base, tok).eval()

    def extra_columns(self) -> list[dict[str, Any]] | None:
        """Extra training columns per example (None: the task's own columns only)."""
        return None

    def _common(self, rows: Path) -> dict[str, Any]:
        return recipe_dict(self.ctx, rows, self.name)

    def complete(self, prompts: list[str]) -> Completions:
        return complete_with_memgen(self.mm, prompts, self.ctx.task, self.ctx.eval_batch_size)

    @property
    def trainable_params(self) -> int:
        return self.mm.num_trainable()

    def training(self) -> dict[str, Any]:
        return recipe_training(
            self.recipe,
            self.run_dir,
            algorithm="SFT (latentmem Trainer)",
            loss_type=SFT_LOSS,
            start="fresh weaver, reasoner frozen",
            rows_per_step=self.recipe.train.batch_size,
        )


@register_method("memgen-sft")
class MemGenSFT(_MemGenMethod):
    def recipe_config(self, rows: Path):
        from latentmem.training.config import SFTConfig

        return SFTConfig.from_dict(self._common(rows))

    def train(self, cfg) -> Path:
        from latentmem.training.sft import train_sft

        return train_sft(cfg)


@cache
def _cached_task(name: str, args_json: str) -> Task:
    return get_task(name, **json.loads(args_json))


def task_reward(
    prompts: list[str], completions: list[str], *, task: str, task_args: str = "{}", **columns: Any
) -> list[float]:
    """A task's reward as a `module:function` reward for the RL recipes (task built once per process). The
    rows' own `prompt` column (the user turn) stands in for the rendered prompt, since a task scores
    against its examples as it made them."""
    return _cached_task(task, task_args).reward(columns.pop("prompt", prompts), completions, **columns)


@register_method("memgen-grpo")
class MemGenGRPO(_MemGenMethod):
    def recipe_config(self, rows: Path):
        return grpo_recipe(self.ctx, rows, self.name)

    def train(self, cfg) -> Path:
        from latentmem.training.grpo import train_grpo

        return train_grpo(cfg)

    def training(self) -> dict[str, Any]:
        return {
            **recipe_training(
                self.recipe,
                self.run_dir,
                algorithm="GRPO (latentmem Trainer)",
                loss_type="grpo",
                start="fresh weaver, reasoner frozen",
                rows_per_step=self.recipe.train.batch_size // self.recipe.grpo.num_generations,
            ),
            **_grpo_training(self.recipe.grpo),
        }


@register_method("memgen-rag")
class MemGenRAG(MemGenSFT):
    """MemGen-SFT whose weaver also reads the MiniLM vectors of the `retrieval_k` most similar solved
    training examples (M = W([H; E])). In training an example never retrieves itself."""

    def fit(self) -> None:
        self.store = solved_examples_store(self.ctx)
        super().fit()

    def extra_columns(self) -> list[dict[str, Any]]:
        k = self.ctx.retrieval_k
        columns = []
        for i, ex in enumerate(self.ctx.train):
            hits = self.store.search(ex.prompt, agent=SOLVED, k=k + 1)
            vectors = [h.record.vector.tolist() for h in hits if h.record.metadata["index"] != i][:k]
            columns.append({"memory": vectors})
        return columns

    def _common(self, rows: Path) -> dict[str, Any]:
        cfg = super()._common(rows)
        cfg["memgen"]["memory_dim"] = self.store.dim
        cfg["data"]["memory_column"] = "memory"
        return cfg

    def memory_for(self, prompts: list[str]) -> RetrievedMemory:
        found = [self.store.retrieve(p, agent=SOLVED, k=self.ctx.retrieval_k) for p in prompts]
        return RetrievedMemory.stack([f.vectors for f in found], self.store.dim)

    def complete(self, prompts: list[str]) -> Completions:
        return complete_with_memgen(
            self.mm, prompts, self.ctx.task, self.ctx.eval_batch_size, self.memory_for
        )


@register_method("grpo")
class LoRAGRPO(LoRASFT):
    """The RL baseline: TRL's GRPOTrainer (the reference GRPO implementation) trains the budget-matched
    LoRA on the task's reward, configured from memgen-grpo's own config (`grpo_recipe`) so that the two
    arms run the same algorithm; `budget.batch_size` completions per step, `budget.num_generations` per
    prompt."""

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
