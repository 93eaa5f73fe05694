"""The contract of the methods the harness compares, and their registry: a method trains what it needs on
a task's train split (`fit`), then completes the test prompts (`complete`).

The built-in methods live in `latentmem.eval.methods`, one family per module, and are found through
`BUILTIN_METHODS` (name → `"module:Class"`), imported only when the harness builds one, so this module
imports none of their torch-heavy dependencies; later methods plug in with `@register_method(name)`.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from latentmem.config import Config, require
from latentmem.errors import LatentMemError
from latentmem.eval.registry import LazyRegistry
from latentmem.eval.task import Example, Task

if TYPE_CHECKING:
    from latentmem.memgen import MemGenConfig


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
    extra: dict[str, Any] = field(default_factory=dict)  # the comparison's `method_args` of this method
    # held out from the train split, disjoint from `train` and the test split: for choosing lr or config
    val: list[Example] = field(default_factory=list)
    # continual learning: an earlier stage's `Method.state_dir`, which `fit` continues from (None: fresh)
    init_from: Path | None = None


@dataclass
class Completions:
    texts: list[str]
    seconds: float  # wall time of generation
    new_tokens: int  # tokens generated (up to EOS)
    prompt_tokens: int  # tokens of context read before generating (prompts with what they retrieved)
    # per prompt, the texts of the stored memories the method read for it, in reading order (recall: its
    # recalls; xrag: its top-1), for `compare`'s memory@1; None: the method reports no reads
    read: list[list[str]] | None = None
    # per prompt, whether the weaver served it (a MemGen model with a fitted prompt gate; the others were
    # answered by the plain reasoner); None: the method has no prompt gate
    served: list[bool] | None = None


class Method(ABC):
    """A way of answering a task's prompts, trained or not."""

    name: str = ""
    continues: bool = False  # `fit` can continue from `ctx.init_from` (an earlier run's `state_dir`)
    # trains nothing and answers greedily the same whatever the seed: `compare` evaluates it once
    seed_free: bool = False

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.train_seconds = 0.0

    def fit(self) -> None:  # noqa: B027  (untrained methods need nothing)
        """Train on `ctx.train` within `ctx.budget` (no-op for untrained methods)."""

    def add_memories(self, examples: list[Example]) -> None:  # noqa: B027  (most methods keep no store)
        """Write `examples` (`Task.memories`: never trained on) into this method's memory, after `fit`;
        a method without a memory store ignores them, and answers their questions as it can."""

    @abstractmethod
    def complete(self, prompts: list[str]) -> Completions:
        """Greedy completions of the user prompts (the chat template is applied here)."""

    @property
    @abstractmethod
    def trainable_params(self) -> int: ...

    @property
    def state_dir(self) -> Path | None:
        """The folder of what `fit` trained, which a later `fit` of the same method continues from through
        `ctx.init_from` (None: nothing trained)."""
        return None

    def training(self) -> dict[str, Any]:
        """What `fit` ran, for the results: algorithm, loss, schedule, lr, steps, rows seen, start point."""
        return {"algorithm": "none", "steps": 0, "rows_seen": 0, "start": "the base model"}


# the built-in methods, name -> "module:Class" (see `latentmem.eval.methods` for what each one is)
BUILTIN_METHODS: dict[str, str] = {
    "vanilla": "latentmem.eval.methods.frozen:Vanilla",
    "retrieval": "latentmem.eval.methods.frozen:RetrievalFewShot",
    "lora-sft": "latentmem.eval.methods.lora:LoRASFT",
    "grpo": "latentmem.eval.methods.lora:LoRAGRPO",
    "memgen-sft": "latentmem.eval.methods.memgen:MemGenSFT",
    "memgen-grpo": "latentmem.eval.methods.memgen:MemGenGRPO",
    "memgen-rag": "latentmem.eval.methods.memgen:MemGenRAG",
    "recall": "latentmem.eval.methods.recall:RecallMemoryMethod",
    "xrag": "latentmem.eval.methods.recall:XRAGMethod",
}

METHODS: LazyRegistry[type[Method]] = LazyRegistry(BUILTIN_METHODS)


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: make a method available to the harness as `name` (which it sets as `cls.name`)."""

    def wrap(cls: type[Method]) -> type[Method]:
        cls.name = name
        METHODS[name] = cls
        return cls

    return wrap


def check_methods(names: list[str]) -> None:
    """LatentMemError naming the unknown ones among `names` (without importing any method)."""
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise LatentMemError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")


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
