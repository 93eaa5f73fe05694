"""Evaluation tasks: a registry of `Task`s, each = loader + prompt format + answer extraction + reward.

A task yields `Example`s (a user prompt, a gold answer, extra columns). Methods see only the prompt (and,
to train, `task.target(example)`); the harness scores completions with `task.score`. `task.reward` has TRL's
reward signature `(prompts, completions, **columns) -> list[float]`, so the same scoring trains GRPO.

The built-in tasks live in `latentmem.eval.tasks`, one family per module, and are found through
`BUILTIN_TASKS` (name → `"module:Class"`), imported only when `get_task` builds one; `register_task` adds
one at run time.
"""

from __future__ import annotations

import json
import random
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal

from latentmem.errors import LatentMemError
from latentmem.eval.registry import LazyRegistry

Split = Literal["train", "test"]


class TaskError(LatentMemError, ValueError):
    """A task's data are missing, malformed or empty; the message lists what is expected."""


@dataclass
class Example:
    prompt: str  # the user turn; methods apply the chat template
    answer: Any  # gold answer: a string, a list of aliases, a choice letter, ...
    columns: dict[str, Any] = field(default_factory=dict)  # extra fields (tests, choices, entry point...)

    def as_row(self) -> dict[str, Any]:
        """A flat row (prompt, answer, columns...) for training data and reward functions."""
        return {"prompt": self.prompt, "answer": self.answer, **self.columns}


class Task(ABC):
    """One benchmark format. Subclasses set `name` and implement `load`, `target` and `score`."""

    name: str = ""
    max_new_tokens: int = 128
    system: str | None = None

    @abstractmethod
    def load(self, split: Split) -> list[Example]:
        """All examples of `split` ("train" may be empty for test-only benchmarks)."""

    @abstractmethod
    def target(self, example: Example) -> str:
        """The reference completion a supervised method trains on (e.g. a worked solution ending in the
        answer in the task's format)."""

    @abstractmethod
    def score(self, example: Example, completion: str) -> float:
        """1.0 for a correct completion, 0.0 for a wrong one (partial credit where the format has it)."""

    def validation(self) -> list[Example] | None:
        """A validation split of the task's own, or None (the harness carves one out of the train split).
        A memory task, whose test split asks about its training examples themselves (the facts task), has
        one: the same facts asked in other words, so that no fact leaves the memory to validate on it."""
        return None

    def memories(self) -> list[Example]:
        """Examples whose memories are written into the memory methods' stores after training, never
        trained on (`Method.add_memories`; e.g. the facts task's `unseen=`): new memories, usable without
        retraining. The test split asks about them, its examples marked `columns["group"] = "unseen"`."""
        return []

    def reward(self, prompts: list[str], completions: list[str], **columns: list[Any]) -> list[float]:
        """TRL-signature reward: rebuild each example from its columns and score the completion."""
        answers = columns.get("answer")
        if answers is None:
            raise TaskError(f"{self.name}: reward needs an 'answer' column")
        rows = [
            Example(p, a, {k: v[i] for k, v in columns.items() if k not in ("answer", "prompt")})
            for i, (p, a) in enumerate(zip(prompts, answers, strict=True))
        ]
        return [self.score(ex, c) for ex, c in zip(rows, completions, strict=True)]

    def split(self, split: Split, limit: int | None = None, seed: int = 0) -> list[Example]:
        """`load(split)`, shuffled under `seed` and cut to `limit`; an empty split is an error."""
        examples = self.load(split)
        if not examples:
            raise TaskError(f"{self.name}: the {split} split is empty")
        examples = list(examples)
        random.Random(seed).shuffle(examples)
        return examples[:limit] if limit else examples


# the built-in tasks, name -> "module:Class" (see `latentmem.eval.tasks` for what each reads and scores)
BUILTIN_TASKS: dict[str, str] = {
    "gsm8k": "latentmem.eval.tasks.math:GSM8K",
    "math": "latentmem.eval.tasks.math:MATH",
    "gpqa": "latentmem.eval.tasks.choice:GPQA",
    "bigbench": "latentmem.eval.tasks.choice:BigBench",
    "triviaqa": "latentmem.eval.tasks.qa:TriviaQA",
    "popqa": "latentmem.eval.tasks.qa:PopQA",
    "kodcode": "latentmem.eval.tasks.code:KodCode",
    "humaneval": "latentmem.eval.tasks.code:HumanEval",
    "arithmetic": "latentmem.eval.tasks.synthetic:Arithmetic",
    "facts": "latentmem.eval.tasks.synthetic:Facts",
    "general": "latentmem.eval.tasks.synthetic:General",
}

TASKS: LazyRegistry[Callable[..., Task]] = LazyRegistry(BUILTIN_TASKS)


def register_task(name: str) -> Callable[[Callable[..., Task]], Callable[..., Task]]:
    """Class decorator: make a task constructible by name (`get_task(name, **kwargs)`)."""

    def wrap(factory: Callable[..., Task]) -> Callable[..., Task]:
        if name in TASKS:
            raise TaskError(f"task {name!r} is registered twice")
        TASKS[name] = factory
        return factory

    return wrap


def get_task(name: str, **kwargs: Any) -> Task:
    """The task `name`, built with `kwargs` (e.g. `path=` for tasks read from local files)."""
    if name not in TASKS:
        raise TaskError(f"unknown task {name!r}; choose one of {', '.join(sorted(TASKS))}")
    factory = TASKS[name]  # imports a built-in's module, outside the try: its errors are not bad arguments
    try:
        return factory(**kwargs)
    except TypeError as exc:
        raise TaskError(f"task {name!r}: {exc}") from None


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
