"""The report of `latentmem compare`: `results.md` (`results_table`: accuracy with its interval and paired
tests, per seed, by group, against training steps, on the retention tasks, and each method's training),
`results.png` and `steps.png`, written beside `results.json` by `write_results`. The cells and the plotting
import are shared with the continual-learning report (`latentmem.eval.continual`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

BASELINES = ("vanilla", "lora-sft")  # every method gets a p-value against each of these that runs
STATS_NOTE = (
    "95% CI: Wilson score interval for one seed of 0/1 scores, else a percentile bootstrap resampling "
    "seeds and items (10,000 resamples). p: McNemar's exact test for one seed of 0/1 scores, else a "
    "two-sided sign-flip permutation test over items of the seed-averaged scores."
)


def acc_cell(r: dict[str, Any]) -> str:
    low, high = r["ci95"]
    return f"{r['accuracy']:.3f} [{low:.3f}, {high:.3f}]"


def p_cell(r: dict[str, Any], baseline: str) -> str:
    p = r.get("p_value", {}).get(baseline)
    if p is None:
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def table(caption: str | None, columns: list[str], cells: dict[str, list[str]]) -> list[str]:
    """Markdown lines of one table with a row per method (`cells`: method -> its cells under `columns`),
    after a blank line, `caption` and a blank line when there is a caption."""
    head = ["", caption, ""] if caption else []
    return [
        *head,
        "| method | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
        *(f"| {name} | " + " | ".join(row) + " |" for name, row in cells.items()),
    ]


def results_table(results: dict[str, Any]) -> str:
    """Markdown tables of the results: accuracy with its interval and p-values, per seed, against training
    steps, on the retention tasks, and each method's training."""
    methods = results["methods"]
    seeds = results["seeds"]
    lines = [
        f"Task `{results['task']}`, model `{results['model']}`, {results['n_test']} "
        f"{'validation' if results.get('eval_split') == 'val' else 'held-out test'} examples, "
        f"{results['n_train']} training examples per seed, {results['n_val']} validation examples, "
        f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}.",
        "",
    ]
    baselines = [b for b in BASELINES if b in methods]
    columns = ["accuracy [95% CI]", *(f"p vs {b}" for b in baselines), "n", "trainable params", "train s"]
    columns += ["s / sample", "tokens / s", "context tokens / sample"]
    lines += table(
        None,
        columns,
        {
            name: [acc_cell(r), *(p_cell(r, b) for b in baselines), str(r["n"]), f"{r['trainable_params']:,}",
                   f"{r['train_seconds']:.1f}", f"{r['seconds_per_sample']:.3f}",
                   f"{r['tokens_per_second']:.1f}", f"{r['context_tokens_per_sample']:.1f}"]
            for name, r in methods.items()
        },
    )  # fmt: skip
    lines += ["", STATS_NOTE]
    if len(seeds) > 1:
        lines += table(
            "Accuracy per seed (the same test items; each seed its own training sample and run).",
            [f"seed {s}" for s in seeds],
            {name: [f"{s['accuracy']:.3f}" for s in r["seeds"]] for name, r in methods.items()},
        )
    grouped = [r["by_group"] for r in methods.values() if "by_group" in r]
    if grouped:
        names = list(grouped[0])
        lines += table(
            "Accuracy by group of test items (`unseen`: facts written into the memory methods' stores after "
            "training, never trained on; methods without a store answer them unaided).",
            [f"{g} (n = {grouped[0][g]['n']}) [95% CI]" for g in names],
            {name: [acc_cell(r["by_group"][g]) for g in names] for name, r in methods.items()},
        )
    found = {name: r["memory_at_1"] for name, r in methods.items() if "memory_at_1" in r}
    if found:
        names = list(next(iter(found.values()))["by_group"])
        lines += table(
            "Memory read first (memory@1): the share of test items whose first memory read (recall's first "
            "recall, xrag's top-1) is the one the item asks about.",
            [f"memory@1 (n = {results['n_test']}) [95% CI]", *(f"{g} [95% CI]" for g in names)],
            {name: [acc_cell(m), *(acc_cell(m["by_group"][g]) for g in names)] for name, m in found.items()},
        )
    if results["steps"]:
        n_counts = len(results["steps"])
        lines += table(
            "Accuracy against training steps (a full run of each budget per seed; untrained methods are "
            "the same at every count).",
            [f"{s} steps" for s in results["steps"]],
            {
                name: [acc_cell(p) for p in r["steps"]]
                if "steps" in r
                else [f"{r['accuracy']:.3f}"] * n_counts
                for name, r in methods.items()
            },
        )
    if results["retention_tasks"]:
        tasks = list(results["retention_tasks"])

        def retention_cells(r: dict[str, Any]) -> list[str]:
            cells = []
            for t in tasks:
                e = r["retention"][t]
                drop = e.get("drop_vs_vanilla")
                cells += [acc_cell(e), "–" if drop is None else f"{drop:+.3f}", p_cell(e, "vanilla")]
            return cells

        lines += table(
            "Retention: each method as trained on the main task, on other tasks' test splits (drop: "
            "vanilla's accuracy minus the method's; p against vanilla).",
            [c for t in tasks for c in (f"{t} accuracy [95% CI]", f"{t} drop", f"{t} p")],
            {name: retention_cells(r) for name, r in methods.items()},
        )
    lines += table(
        "Training. Every trained method starts from scratch; `rows seen` counts training rows (prompts, for "
        "GRPO) over all steps.",
        ["algorithm", "loss type", "schedule", "lr", "steps", "rows seen", "start"],
        {
            name: [t["algorithm"], t.get("loss_type", "-"), t.get("schedule", "-"), str(t.get("lr", "-")),
                   str(t["steps"]), str(t["rows_seen"]), t["start"]]
            for name, t in ((n, r["training"]) for n, r in methods.items())
        },
    )  # fmt: skip
    return "\n".join(lines) + "\n"


def write_results(out: Path, results: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(results_table(results))
    plot_results(out / "results.png", results)
    if results["steps"]:
        plot_steps(out / "steps.png", results)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    import matplotlib.pyplot as plt

    return plt


def plot_results(path: Path, results: dict[str, Any]) -> None:
    plt = pyplot()
    names = list(results["methods"])
    rs = [results["methods"][n] for n in names]
    acc = [r["accuracy"] for r in rs]
    # matplotlib rejects negative error bars; a percentile bootstrap may end a hair inside the mean
    err = [
        [max(0.0, a - r["ci95"][0]) for a, r in zip(acc, rs, strict=True)],
        [max(0.0, r["ci95"][1] - a) for a, r in zip(acc, rs, strict=True)],
    ]
    fig, ax = plt.subplots(figsize=(1.2 + 1.3 * len(names), 3.2))
    bars = ax.bar(names, acc, yerr=err, capsize=4, color="#4c72b0")
    ax.bar_label(bars, labels=[f"{a:.2f}" for a in acc], label_type="center", color="white")
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("accuracy (95% CI)")
    ax.set_title(
        f"{results['task']} · {results['model']} · n={results['n_test']} · seeds={len(results['seeds'])}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_steps(path: Path, results: dict[str, Any]) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name, r in results["methods"].items():
        if "steps" in r:
            xs = [p["steps"] for p in r["steps"]]
            line = ax.plot(xs, [p["accuracy"] for p in r["steps"]], marker="o", label=name)[0]
            low, high = zip(*(p["ci95"] for p in r["steps"]), strict=True)
            ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.15)
        else:
            ax.axhline(r["accuracy"], linestyle="--", linewidth=1, color="grey")
            ax.annotate(name, (results["steps"][0], r["accuracy"]), fontsize=7, va="bottom")
    if len(results["steps"]) > 1:
        ax.set_xscale("log")
    ax.set_xticks(results["steps"], [str(s) for s in results["steps"]])
    ax.minorticks_off()
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("training steps")
    ax.set_ylabel("accuracy (95% CI)")
    ax.set_title(f"{results['task']} · {results['model']}")
    if any("steps" in r for r in results["methods"].values()):
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
