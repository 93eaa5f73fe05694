"""`latentmem demo`: the main job on the embedded default model, SmolLM2-135M-Instruct.

Trains a MemGen weaver on a generated arithmetic task (no data download), on CPU, and prints the table of
vanilla vs MemGen on the same held-out questions; writes `runs/demo/results.json` (and .md, .png).
"""

from __future__ import annotations

import argparse
import json

from latentmem.cli.common import example
from latentmem.config import apply_overrides

# Sized to finish in well under 15 minutes on 2 CPU cores (see the README for the measured run).
DEMO = {
    "task": "arithmetic",
    "model": "smollm2-135m-instruct",
    "methods": ["vanilla", "memgen-sft"],
    "out": "runs/demo",
    "n_train": 400,
    "n_test": 100,
    "eval_batch_size": 25,
    "budget": {"steps": 40, "batch_size": 8, "lr": 2e-3},
    "memgen": {"prompt_latents": 8, "inference_latents": 8, "max_inference_insertions": 5},
}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="train a MemGen weaver on SmolLM2-135M and compare it with vanilla",
        epilog="CompareConfig overrides follow, e.g. budget.steps=10 n_test=20\n\n"
        + example("latentmem demo budget.steps=10 n_test=20"),
    )
    p.set_defaults(func=run, overrides=[])


def run(args: argparse.Namespace) -> int:
    from latentmem.eval.compare import CompareConfig, run_compare
    from latentmem.eval.report import results_table

    cfg = CompareConfig.from_dict(apply_overrides(DEMO, args.overrides))
    results = run_compare(cfg)
    print()
    print(results_table(results))
    print(json.dumps({k: round(v["accuracy"], 3) for k, v in results["methods"].items()}))
    print(cfg.out)
    return 0
