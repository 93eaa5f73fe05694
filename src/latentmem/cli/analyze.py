"""`latentmem analyze trace|clusters --memgen DIR --task T --out DIR`: look inside a trained weaver.

trace      where latents went in, the trigger along the answer, what each latent is near (no clustering)
clusters   all of trace, then the latents clustered, and each cluster (and the whole memory) ablated
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from latentmem.cli.common import example, task_args
from latentmem.config import apply_overrides, load_yaml_mapping

# The weaver `latentmem train sft --config configs/debug/sft.yaml` saves, for the examples in `--help`.
EXAMPLE_WEAVER = "runs/debug-sft/model"
ANALYSES = {
    "trace": "where the trigger fires and latents go in, and what each latent is near",
    "clusters": "trace, then cluster the latents and ablate each cluster and the whole memory",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    from latentmem.analyze.config import AnalyzeConfig

    d = AnalyzeConfig(memgen="-")
    p = subparsers.add_parser(
        "analyze",
        help="look inside a trained weaver: traces, latents, clusters, ablations",
        epilog=example(f"latentmem analyze trace --memgen {EXAMPLE_WEAVER} --model tiny-qwen2 --n 8"),
    )
    analyses = p.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)
    for name, text in ANALYSES.items():
        a = analyses.add_parser(name, help=text)
        a.add_argument("--config", help="a YAML AnalyzeConfig (flags below override it)")
        a.add_argument("--memgen", help="a saved MemGen model directory (required)")
        a.add_argument("--model", help=f"the reasoner it was trained on (default {d.model})")
        a.add_argument("--task", help=f"task name (default {d.task})")
        a.add_argument(
            "--task-arg", action="append", default=[], metavar="KEY=VALUE",
            help="task argument, e.g. path=data.jsonl (repeatable; default: none)",
        )  # fmt: skip
        a.add_argument(
            "--split", choices=["train", "test"], help=f"examples from this split (default {d.split})"
        )
        a.add_argument("--n", type=int, help=f"examples, 0 = the whole split (default {d.n})")
        a.add_argument(
            "--seed", type=int, help=f"draws examples, k-means starts, random ablations (default {d.seed})"
        )
        a.add_argument("--batch-size", type=int, help=f"generation batch (default {d.batch_size})")
        a.add_argument("--max-new-tokens", type=int, help="answer length, 0 = the task's (default 0)")
        if name == "clusters":
            a.add_argument("--k", type=int, help="clusters, 0 = choose by silhouette (default 0)")
            a.add_argument("--k-max", type=int, help=f"largest k tried (default {d.clusters.k_max})")
            a.add_argument(
                "--method", choices=["kmeans", "agglomerative"], help="clustering (default kmeans)"
            )
            a.add_argument("--no-ablate", action="store_true", help="cluster only; skip the ablation runs")
        a.add_argument("--out", help=f"the run folder (default {d.out})")
        a.epilog = (
            "Config overrides follow anywhere: top_k=10 ablation_modes=[remove,zero] clusters.k=3\n\n"
            + example(f"latentmem analyze {name} --memgen {EXAMPLE_WEAVER} --model tiny-qwen2 --n 8")
        )
        a.set_defaults(func=run, overrides=[])


def config_from_args(args: argparse.Namespace):
    """The `AnalyzeConfig` of `--config`, with the flags and then the `key=value` overrides on top."""
    from latentmem.analyze.config import AnalyzeConfig

    data = load_yaml_mapping(args.config) if args.config else {}
    flags = {
        "memgen": args.memgen, "model": args.model, "task": args.task, "split": args.split, "n": args.n,
        "seed": args.seed, "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens, "out": args.out,
    }  # fmt: skip
    data.update({k: v for k, v in flags.items() if v is not None})
    if args.task_arg:
        data["task_args"] = {**data.get("task_args", {}), **task_args(args.task_arg)}
    if args.analysis == "trace":
        data.update(cluster=False, ablate=False)
    else:
        clusters = {"k": args.k, "k_max": args.k_max, "method": args.method}
        data["clusters"] = {
            **data.get("clusters", {}),
            **{k: v for k, v in clusters.items() if v is not None},
        }
        data.update(cluster=True, ablate=not args.no_ablate)
    return AnalyzeConfig.from_dict(apply_overrides(data, args.overrides))


def run(args: argparse.Namespace) -> int:
    from latentmem.analyze.run import run_analysis

    cfg = config_from_args(args)
    summary = run_analysis(cfg)
    line = {"accuracy": summary["trace"]["accuracy"], "invocation_rate": summary["trace"]["invocation_rate"]}
    if "clusters" in summary:
        line["k"] = summary["clusters"]["k"]
    if "ablations" in summary:
        line["ablations"] = {a["name"]: a["delta"] for a in summary["ablations"]}
    print(json.dumps(line))
    print(Path(cfg.out) / "report.md")
    return 0
