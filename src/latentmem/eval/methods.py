"""Methods the harness compares, in a registry: each trains what it needs on a task's train split, then
completes the test prompts. Later methods plug in with `@register_method(name)`.

vanilla      the frozen model as it is.
retrieval    few-shot memory (ExpeL/AWM-style): the most similar solved training examples, retrieved from a
             `VectorMemory` store (MiniLM embeddings), are put into the prompt.
lora-sft     LoRA fine-tuning of the reasoner with a trainable-parameter budget equal to the weaver's.
grpo         GRPO of the same budget-matched LoRA, with TRL's `GRPOTrainer` on the task's reward.
memgen-sft   MemGen: weaver SFT (`latentmem.training.sft`), reasoner frozen.
memgen-grpo  MemGen: weaver GRPO on the task's reward (`latentmem.training.grpo`).
memgen-rag   MemGen-SFT with a weaver that also reads the retrieved solved examples' vectors.
"""

from __future__ import annotations

import json
import math
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
        enc = _encode_prompts(tok, batch, task.system)
        out = model.generate(
            **enc, max_new_tokens=task.max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id
        )
        new = out[:, enc["input_ids"].shape[1] :]
        keep = torch.cumsum(torch.isin(new, torch.tensor([tok.eos_token_id, tok.pad_token_id])), 1) == 0
        texts += tok.batch_decode(new.masked_fill(~keep, tok.pad_token_id), skip_special_tokens=True)
        n_new += int(keep.sum()) + int((~keep).any(1).sum())  # count the EOS that ended a row
    return Completions(texts, time.perf_counter() - start, n_new)


def write_rows(
    path: Path, task: Task, examples: list[Example], extra: list[dict[str, Any]] | None = None
) -> Path:
    """Training rows as JSONL: the prompt, the SFT target, the gold answer, the task's columns and `extra`."""
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


@register_method("lora-sft")
class LoRASFT(Method):
    """LoRA on the reasoner's own projections, its rank chosen so that its parameters match the weaver's."""

    def fit(self) -> None:
        from latentmem.training.config import DataConfig
        from latentmem.training.data import collate, encode

        ctx = self.ctx
        seed_everything(ctx.seed)
        model, self.tok = load_model(ctx.model, seed=ctx.seed)
        self.model = get_peft_model(model, budget_matched_lora(ctx))
        rows = [{"prompt": ex.prompt, "answer": ctx.task.target(ex)} for ex in ctx.train]
        items = encode(rows, self.tok, DataConfig(path=None, system=ctx.task.system))
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=ctx.budget.lr)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / ctx.budget.steps))
        )
        g = torch.Generator().manual_seed(ctx.seed)
        start = time.perf_counter()
        self.model.train()
        for _ in tqdm(range(ctx.budget.steps), desc="lora-sft"):
            idx = torch.randint(len(items), (ctx.budget.batch_size,), generator=g).tolist()
            ids, mask, labels = collate([items[i] for i in idx], self.tok.pad_token_id)
            loss = self.model(input_ids=ids, attention_mask=mask, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
        self.model.eval()
        self.train_seconds = time.perf_counter() - start

    def complete(self, prompts: list[str]) -> Completions:
        return complete_with_hf(self.model, self.tok, prompts, self.ctx.task, self.ctx.eval_batch_size)

    @property
    def trainable_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)


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
        start = time.perf_counter()
        run_dir = self.train(self.recipe_config(rows))
        self.train_seconds = time.perf_counter() - start
        base, tok = load_model(self.ctx.model, seed=self.ctx.seed)
        self.mm = LatentMemoryModel.from_pretrained(run_dir / "model", base, tok).eval()

    def extra_columns(self) -> list[dict[str, Any]] | None:
        """Extra training columns per example (None: the task's own columns only)."""
        return None

    def _common(self, rows: Path) -> dict[str, Any]:
        ctx = self.ctx
        return {
            "model": ctx.model,
            "seed": ctx.seed,
            "output_dir": str(ctx.workdir / self.name),
            "memgen": ctx.memgen.to_dict(),
            "data": {"path": str(rows), "answer_column": "target", "system": ctx.task.system},
            "train": {
                "steps": ctx.budget.steps,
                "batch_size": ctx.budget.batch_size,
                "lr": ctx.budget.lr,
                "resume": False,
            },
        }

    def complete(self, prompts: list[str]) -> Completions:
        return complete_with_memgen(self.mm, prompts, self.ctx.task, self.ctx.eval_batch_size)

    @property
    def trainable_params(self) -> int:
        return self.mm.num_trainable()


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
    """A task's reward as a `module:function` reward for the RL recipes (task built once per process)."""
    return _cached_task(task, task_args).reward(prompts, completions, **columns)


@register_method("memgen-grpo")
class MemGenGRPO(_MemGenMethod):
    def recipe_config(self, rows: Path):
        from latentmem.training.config import GRPOConfig

        ctx = self.ctx
        cfg = self._common(rows)
        cfg["grpo"] = {
            "num_generations": ctx.budget.num_generations,
            "max_new_tokens": ctx.task.max_new_tokens,
            "reward": "latentmem.eval.methods:task_reward",
            "reward_args": {"task": ctx.task_name, "task_args": json.dumps(ctx.task_args, sort_keys=True)},
        }
        return GRPOConfig.from_dict(cfg)

    def train(self, cfg) -> Path:
        from latentmem.training.grpo import train_grpo

        return train_grpo(cfg)


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
    LoRA on the task's reward; `budget.batch_size` completions per step, `budget.num_generations` per prompt."""

    def fit(self) -> None:
        from datasets import Dataset
        from trl import GRPOConfig, GRPOTrainer

        ctx, task = self.ctx, self.ctx.task
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

        args = GRPOConfig(
            output_dir=str(ctx.workdir / "trl"),
            use_cpu=not torch.cuda.is_available(),
            per_device_train_batch_size=ctx.budget.batch_size,
            num_generations=ctx.budget.num_generations,
            max_completion_length=task.max_new_tokens,
            max_steps=ctx.budget.steps,
            learning_rate=ctx.budget.lr,
            beta=0.0,
            seed=ctx.seed,
            report_to=[],
            logging_steps=max(1, ctx.budget.steps // 10),
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
