"""Argument helpers shared by subcommands."""

from __future__ import annotations

import argparse
from typing import Any

from latentmem.config import parse_override
from latentmem.errors import ConfigError
from latentmem.models import DTYPES


def add_model_args(p: argparse.ArgumentParser, default: str = "smollm2-135m-instruct") -> None:
    p.add_argument(
        "--model", default=default, help=f"a built-in model name or a local HF model dir ({default})"
    )
    p.add_argument("--dtype", default="float32", choices=list(DTYPES), help="weights dtype (float32)")
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")


def task_args(items: list[str]) -> dict[str, Any]:
    """`--task-arg KEY=VALUE` values, parsed as config overrides are (`n_test=5` is an int, `path=x` a
    string), so that a task receives the types its arguments declare."""
    out = {}
    for item in items:
        key, sep, _ = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--task-arg {item!r}: expected KEY=VALUE, e.g. n_test=5")
        out[key] = parse_override(item)[1]
    return out
