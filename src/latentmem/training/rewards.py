"""Task rewards with TRL's signature: `reward(prompts, completions, **columns) -> list[float]`.

`prompts` and `completions` are strings (the rendered prompt, the decoded completion without special
tokens); every dataset column arrives as a keyword holding one value per completion, and the configured
answer column also as `answer`. latentmem adds one keyword: `insertions`, the number of inference-latent insertions of each rollout, so that a reward may
depend on whether memory was used. A reward function must accept `**kwargs` (as in TRL).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from functools import partial
from typing import Any

from latentmem.errors import ConfigError

RewardFn = Callable[..., list[float]]


def exact_match(prompts: list[str], completions: list[str], answer: list[Any], **_: Any) -> list[float]:
    """1 when the completion, stripped, equals the answer column."""
    return [float(c.strip() == str(a).strip()) for c, a in zip(completions, answer, strict=True)]


def contains_answer(prompts: list[str], completions: list[str], answer: list[Any], **_: Any) -> list[float]:
    """1 when the answer column appears in the completion (lenient for chatty models)."""
    return [float(str(a).strip() in c) for c, a in zip(completions, answer, strict=True)]


def first_number(prompts: list[str], completions: list[str], answer: list[Any], **_: Any) -> list[float]:
    """1 when the first integer in the completion equals the answer column (arithmetic tasks)."""
    found = [re.search(r"-?\d+", c) for c in completions]
    return [float(m is not None and m.group() == str(a).strip()) for m, a in zip(found, answer, strict=True)]


def char_fraction(prompts: list[str], completions: list[str], chars: str = "e", **_: Any) -> list[float]:
    """The fraction of the completion's characters that are in `chars` (0 for an empty completion). A dense
    reward that a tiny random model can partly earn from the start: the evidence task of the tests."""
    return [sum(ch in chars for ch in c) / len(c) if c else 0.0 for c in completions]


def used_memory(prompts: list[str], completions: list[str], insertions: list[int], **_: Any) -> list[float]:
    """1 when the rollout inserted inference latents at least once: a task where memory is 'needed'."""
    return [float(n > 0) for n in insertions]


def constant(prompts: list[str], completions: list[str], value: float = 1.0, **_: Any) -> list[float]:
    """The same reward for every rollout: a task where insertions do not change the reward."""
    return [float(value)] * len(completions)


REWARDS: dict[str, RewardFn] = {
    "exact_match": exact_match,
    "contains_answer": contains_answer,
    "first_number": first_number,
    "char_fraction": char_fraction,
    "used_memory": used_memory,
    "constant": constant,
}


def resolve_reward(name: str, args: dict[str, Any] | None = None) -> RewardFn:
    """A built-in reward by name, or any `module:function`, with `args` bound as keywords."""
    if name in REWARDS:
        fn = REWARDS[name]
    elif ":" in name:
        module, attr = name.split(":", 1)
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"reward: cannot import {name!r}: {exc}") from None
    else:
        raise ConfigError(
            f"reward: unknown reward {name!r}; choose one of {sorted(REWARDS)} or module:function"
        )
    return partial(fn, **(args or {}))
