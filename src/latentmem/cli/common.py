"""Argument helpers shared by subcommands, and the parser class every (sub)command's parser is built with."""

from __future__ import annotations

import argparse
from typing import Any

from latentmem.config import parse_override
from latentmem.errors import ConfigError

# `latentmem.models.DTYPES` without importing torch (`--help` should not wait seconds for it); a test checks
# that the two agree.
DTYPE_NAMES = ("float32", "bfloat16", "float16")


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" to an option's help unless the help already states it, and keeps epilogs (the
    examples) as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        # None and False are "not given" (the value then comes from a config, or is stated in the help); a
        # help that names the default, as "(5)" or "(default: the store's)", needs no second one.
        unstated = default is None or default is False or default == [] or default == argparse.SUPPRESS
        if unstated or "default" in text or f"({default}" in text:
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` with `HelpFormatter`. Subparsers are built with the class of their parent,
    so every subcommand's help shows defaults the same way."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def example(*commands: str) -> str:
    """An epilog showing `commands` (each a full `latentmem ...` command line) as examples."""
    return "example" + ("s" if len(commands) > 1 else "") + ":\n" + "\n".join(f"  {c}" for c in commands)


def add_model_args(p: argparse.ArgumentParser, default: str = "smollm2-135m-instruct") -> None:
    p.add_argument("--model", default=default, help="a built-in model name or a local HF model dir")
    p.add_argument("--dtype", default="float32", choices=DTYPE_NAMES, help="weights dtype")
    p.add_argument("--seed", type=int, default=0, help="random seed")


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
