"""`latentmem compare --task T --model M --methods a,b,... --out DIR`: one table, every method."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from latentmem.config import apply_overrides
from latentmem.eval.compare import CompareConfig, results_table, run_compare


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("compare", help="train and evaluate methods on a task; write one results table")
    p.add_argument("--config", help="a YAML CompareConfig (flags below override it)")
    p.add_argument("--task", help="task name (see latentmem.eval.tasks)")
    p.add_argument(
        "--task-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="task argument, e.g. path=data.jsonl",
    )
    p.add_argument("--model", help="model name or local HF dir")
    p.add_argument("--methods", help="comma-separated, e.g. vanilla,lora-sft,memgen-sft")
    p.add_argument(
        "--train-budget", type=int, metavar="STEPS", help="optimiser steps for every trained method"
    )
    p.add_argument("--n-train", type=int)
    p.add_argument("--n-test", type=int)
    p.add_argument("--out", help="output folder (results.json, results.md, results.png)")
    p.epilog = "Config overrides follow anywhere: budget.lr=1e-3 --memgen.prompt_latents=4"
    p.set_defaults(func=run, overrides=[])


def run(args: argparse.Namespace) -> int:
    import yaml

    data = yaml.safe_load(Path(args.config).read_text()) if args.config else {}
    flags = {
        "task": args.task, "model": args.model, "out": args.out, "n_train": args.n_train, "n_test": args.n_test,
        "methods": args.methods.split(",") if args.methods else None,
    }  # fmt: skip
    data.update({k: v for k, v in flags.items() if v is not None})
    if args.task_arg:
        data["task_args"] = {**data.get("task_args", {}), **dict(kv.split("=", 1) for kv in args.task_arg)}
    overrides = list(args.overrides) + ([f"budget.steps={args.train_budget}"] if args.train_budget else [])
    cfg = CompareConfig.from_dict(apply_overrides(data, overrides))
    results = run_compare(cfg)
    print(results_table(results))
    print(json.dumps({k: v["accuracy"] for k, v in results["methods"].items()}))
    print(cfg.out)
    return 0
