"""Argument helpers shared by subcommands."""

from __future__ import annotations

import argparse

from latentmem.models import DTYPES


def add_model_args(p: argparse.ArgumentParser, default: str = "smollm2-135m-instruct") -> None:
    p.add_argument(
        "--model", default=default, help=f"a built-in model name or a local HF model dir ({default})"
    )
    p.add_argument("--dtype", default="float32", choices=list(DTYPES), help="weights dtype (float32)")
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
