"""`latentmem compare --task T --model M --methods a,b,... --out DIR`: one table, every method."""

from __future__ import annotations

import argparse
import json

from latentmem.cli.common import example, task_args
from latentmem.config import apply_overrides, load_yaml_mapping
from latentmem.eval.compare import CompareConfig


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, e.g. 0,1,2; got {text!r}"
        ) from None


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def register(subparsers: argparse._SubParsersAction) -> None:
    d = CompareConfig()
    p = subparsers.add_parser(
        "compare",
        help="train and evaluate methods on a task; write one results table",
        epilog="Config overrides follow anywhere: budget.lr=1e-3 --memgen.prompt_latents=4 split_seed=1\n\n"
        + example(
            "latentmem compare --task arithmetic --model tiny-qwen2 --methods vanilla,memgen-sft "
            "--train-budget 5 --n-train 16 --n-test 8 --out runs/compare-tiny",
            "latentmem compare --sequence arithmetic,facts --model tiny-qwen2 --methods "
            "vanilla,lora-sft,memgen-sft --train-budget 5 --n-train 16 --n-test 8 --out runs/sequence-tiny",
        ),
    )
    p.add_argument("--config", help="a YAML CompareConfig (flags below override it)")
    p.add_argument("--task", help=f"task name (see latentmem.eval.tasks; default {d.task})")
    p.add_argument(
        "--task-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="task argument, e.g. path=data.jsonl (repeatable; default: none)",
    )
    p.add_argument("--model", help=f"model name or local HF dir (default {d.model})")
    p.add_argument(
        "--methods",
        type=_names,
        help=f"comma-separated, e.g. vanilla,lora-sft (default {','.join(d.methods)})",
    )
    p.add_argument(
        "--train-budget",
        type=int,
        metavar="STEPS",
        help=f"optimiser steps for every trained method (default {d.budget.steps})",
    )
    p.add_argument(
        "--seeds",
        type=_ints,
        help="comma-separated training seeds; every method trains and is evaluated once per seed, on the "
        f"same test items (default {','.join(map(str, d.seeds))})",
    )
    p.add_argument(
        "--steps",
        type=_ints,
        metavar="N,N,...",
        help="also train each trained method for each of these step counts and plot accuracy against "
        "them to steps.png (default: none)",
    )
    p.add_argument(
        "--retention-tasks",
        type=_names,
        metavar="TASK,TASK,...",
        help="after training, also evaluate every method on these tasks; needs vanilla (default: none)",
    )
    p.add_argument(
        "--sequence",
        type=_names,
        metavar="TASK,TASK,...",
        help="continual learning in place of --task: train each method on these tasks in order (one weaver "
        "or LoRA carried through) and report every task's accuracy after every stage (default: none)",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        help="validation split held out of the train split, as a share of --n-train, the same for every "
        f"seed (default {d.val_fraction})",
    )
    p.add_argument(
        "--eval-split",
        choices=["test", "val"],
        help="score on the test split, or on the validation split to choose a config without the test "
        f"split (needs --val-fraction; default {d.eval_split})",
    )
    p.add_argument("--n-train", type=int, help=f"training examples per seed, 0 = all (default {d.n_train})")
    p.add_argument("--n-test", type=int, help=f"held-out examples, 0 = all (default {d.n_test})")
    p.add_argument(
        "--out", help=f"output folder: results.json, results.md, results.png, steps.png (default {d.out})"
    )
    p.set_defaults(func=run, overrides=[])


def config_from_args(args: argparse.Namespace) -> CompareConfig:
    """The config of `--config`, with the flags and then the `key=value` overrides on top."""
    data = load_yaml_mapping(args.config) if args.config else {}
    flags = {
        "task": args.task, "model": args.model, "out": args.out, "n_train": args.n_train, "n_test": args.n_test,
        "methods": args.methods, "seeds": args.seeds, "steps": args.steps,
        "retention_tasks": args.retention_tasks, "val_fraction": args.val_fraction, "sequence": args.sequence,
        "eval_split": args.eval_split,
    }  # fmt: skip
    data.update({k: v for k, v in flags.items() if v is not None})
    if args.task_arg:
        data["task_args"] = {**data.get("task_args", {}), **task_args(args.task_arg)}
    overrides = list(args.overrides) + ([f"budget.steps={args.train_budget}"] if args.train_budget else [])
    return CompareConfig.from_dict(apply_overrides(data, overrides))


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if cfg.sequence:
        from latentmem.eval.continual import run_sequence, sequence_table

        results = run_sequence(cfg)
        print(sequence_table(results))
        print(json.dumps({k: v["final_mean"] for k, v in results["methods"].items()}))
        print(cfg.out)
        return 0
    from latentmem.eval.compare import run_compare
    from latentmem.eval.report import results_table

    results = run_compare(cfg)
    print(results_table(results))
    print(json.dumps({k: v["accuracy"] for k, v in results["methods"].items()}))
    print(cfg.out)
    return 0
