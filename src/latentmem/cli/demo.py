"""`latentmem demo`: the main job on the embedded default model (SmolLM2-135M-Instruct)."""

from __future__ import annotations

import argparse

from latentmem.cli.generate import run as run_generate

DEMO_PROMPTS = [
    "What is the capital of France?",
    "Name three primary colours.",
]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="run the demo on SmolLM2-135M-Instruct")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    ns = argparse.Namespace(
        model="smollm2-135m-instruct",
        dtype="float32",
        seed=0,
        prompt=DEMO_PROMPTS,
        max_new_tokens=48,
        temperature=0.0,
    )
    return run_generate(ns)
