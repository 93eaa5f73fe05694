"""`latentmem train RECIPE --config FILE [key.sub=value ...]`: run a training recipe.

Each recipe is a function `run(config_path, overrides) -> Path` (the run folder) in its own module; the
run folder's path is printed on the last line of output (by the main process, under `accelerate launch`).
"""

from __future__ import annotations

import argparse
import importlib
import os

from latentmem.cli.common import example

# recipe name -> "module:function"
RECIPES: dict[str, str] = {
    "recall": "latentmem.recall.train:run",
    "sft": "latentmem.training.sft:run",
    "grpo": "latentmem.training.grpo:run",
    "trigger": "latentmem.training.trigger_rl:run",
    "warmup": "latentmem.training.warmup:run",
    "memory-manager": "latentmem.agent_memory.train:run",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help=f"train: {', '.join(sorted(RECIPES))}",
        epilog="Config overrides follow anywhere: --train.lr=1e-4 or train.lr=1e-4\n\n"
        + example("latentmem train sft --config configs/debug/sft.yaml"),
    )
    p.add_argument("recipe", choices=sorted(RECIPES), help="the training recipe")
    p.add_argument("--config", required=True, help="a YAML config (see configs/)")
    p.set_defaults(func=run, overrides=[])


def run(args: argparse.Namespace) -> int:
    module, func = RECIPES[args.recipe].split(":")
    run_dir = getattr(importlib.import_module(module), func)(args.config, list(args.overrides))
    if int(os.environ.get("RANK", "0")) == 0:  # set by accelerate's launcher (torchrun)
        print(run_dir)
    return 0
