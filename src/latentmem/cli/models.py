"""`latentmem models`: list the model names `load_model` understands."""

from __future__ import annotations

import argparse

from latentmem.cli.common import example


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "models", help="list the built-in model names", epilog=example("latentmem models")
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from latentmem.models import SMOLLM2, available_models, cache_dir

    for name in available_models():
        note = f"  (converted once into {cache_dir() / SMOLLM2})" if name == SMOLLM2 else "  (tiny, random)"
        print(f"{name}{note}")
    print("or any local Hugging Face model directory")
    return 0
