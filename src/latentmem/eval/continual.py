"""Continual learning: `latentmem compare --sequence a,b,c` trains every method on the tasks in order and
reports the forgetting matrix, as the paper's continual-learning experiment does.

Stages. A method that trains carries one state through the sequence: stage i's `fit` starts from stage
i-1's `Method.state_dir` (`Context.init_from`: the weaver for MemGen, the adapter for lora-sft) and runs
`budget.steps` on task i's training rows (drawn per seed as in `compare`). After every stage the method, as
deployed, answers every task's test split, so R[i][j] is the accuracy on task j after training on tasks
0..i. An untrained method (vanilla) answers each task once; its row is the same after every stage. Methods
that cannot continue from an earlier state (TRL's GRPO builds its own adapter; retrieval and memgen-rag
hold one task's store) are refused before any model loads.

Summaries per method, over seeds and items (intervals and paired tests from `latentmem.eval.stats`):
- `final`: R[T-1][j] per task, with a 95% interval and p-values against vanilla and lora-sft;
- `forgetting`: F_j = max over stages j <= i < T-1 of R[i][j] - R[T-1][j], for every task but the last
  (Chaudhry et al., 2018), and their mean;
- `backward_transfer`: BWT = mean over j < T-1 of R[T-1][j] - R[j][j] (Lopez-Paz & Ranzato, 2017), with a
  paired test of the final against the just-trained scores per task;
- `forward_transfer`: R[j-1][j] - vanilla's accuracy on task j, for j >= 1 (what earlier stages did for a
  task not yet trained on: the cross-domain measurement).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from latentmem.errors import ConfigError
from latentmem.eval import stats
from latentmem.eval.compare import (
    CompareConfig,
    Splits,
    TaskData,
    evaluate_on,
    fit_method,
    labelled_task,
    write_completions,
)
from latentmem.eval.method import METHODS, Method
from latentmem.eval.report import BASELINES, STATS_NOTE, acc_cell, p_cell, pyplot
from latentmem.runs import RunDir

Cells = list[list[np.ndarray]]  # [stage][task] -> (seeds, items) scores


def check_sequence_methods(names: list[str]) -> list[str]:
    """The names among `names` that train (they continue stage to stage); ConfigError naming those that
    can neither continue from an earlier state nor run untrained. Imports the methods' modules."""
    trained, refused = [], []
    for name in names:
        cls = METHODS[name]
        if cls.continues:
            trained.append(name)
        elif cls.fit is not Method.fit:  # trains, but only from scratch
            refused.append(name)
    if refused:
        able = [n for n in METHODS if METHODS[n].continues or METHODS[n].fit is Method.fit]
        raise ConfigError(
            f"methods: {', '.join(refused)} cannot continue training from an earlier stage; "
            f"with sequence use {', '.join(able)}"
        )
    return trained


def run_sequence(cfg: CompareConfig) -> dict[str, Any]:
    """Train every method through `cfg.sequence`, evaluate after every stage; returns (and writes)
    results.json / .md and sequence.png into `cfg.out`."""
    if not cfg.sequence:
        raise ConfigError("sequence: name the tasks to train on in order, e.g. arithmetic,facts,gsm8k")
    stages = []
    for label in cfg.sequence:  # task errors before any model loads
        t = labelled_task(label, cfg.sequence_task_args)
        stages.append(TaskData(t.name, t.args, t.task, Splits.make(t.task, cfg, True), label))
    trained = check_sequence_methods(cfg.methods)
    out = Path(cfg.out)
    run = RunDir.create(out, cfg, cfg.seeds[0])
    results: dict[str, Any] = {
        "sequence": list(cfg.sequence),
        "model": cfg.model,
        "n_test": {s.label: len(s.splits.test) for s in stages},
        "n_train": {s.label: s.splits.n_train for s in stages},
        "seeds": list(cfg.seeds),
        "split_seed": cfg.split_seed,
        "budget_per_stage": cfg.budget.to_dict(),
        "stats": STATS_NOTE,
        "methods": {},
    }
    cells: dict[str, Cells] = {}
    for name in tqdm(cfg.methods, desc="methods"):
        cells[name], training = _run_method(name, name in trained, cfg, stages, out, run)
        results["methods"][name] = {"training": training}
        _summarise(results, cells, stages)
        _write(out, results)
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    _write(out, results)
    return results


def _run_method(
    name: str, trains: bool, cfg: CompareConfig, stages: list[TaskData], out: Path, run: RunDir
) -> tuple[Cells, list[list[dict[str, Any]]]]:
    """`name`'s scores after every stage, and per seed its stages' training records."""
    n = len(stages)
    rows: list[list[list[list[float]]]] = [[[] for _ in stages] for _ in range(n)]  # [i][j] -> per seed
    training: list[list[dict[str, Any]]] = []
    for k, seed in enumerate(cfg.seeds):
        previous: Path | None = None
        training.append([])
        for i, stage in enumerate(stages if trains else stages[:1]):
            workdir = out / name / f"seed-{seed}" / f"stage-{i}-{stage.label}"
            method = fit_method(name, cfg, stage, seed, cfg.budget, workdir, init_from=previous)
            previous = method.state_dir
            training[-1].append({"stage": i, "task": stage.label, **method.training()})
            for j, other in enumerate(stages):
                done, scores = evaluate_on(method, other.task, other.splits.test)
                path = out / name / f"completions-stage{i}-{other.label}.jsonl"
                write_completions(path, other.splits.test, done, scores, seed, k > 0)
                rows[i][j].append(scores)
                run.log(method=name, seed=seed, stage=i, task=other.label, accuracy=float(np.mean(scores)))
            del method  # free its model before the next stage loads
    if not trains:  # untrained: the same answers after every stage
        rows = [rows[0] for _ in stages]
    return [[np.array(cell) for cell in row] for row in rows], training


def forgetting(matrix: np.ndarray) -> list[float]:
    """F_j = max over stages j <= i < T-1 of R[i][j] - R[T-1][j], for j < T-1, from a (T, T) accuracy
    matrix R (row: after stage i; column: task j)."""
    last = len(matrix) - 1
    return [float(matrix[j:last, j].max() - matrix[last, j]) for j in range(last)]


def backward_transfer(matrix: np.ndarray) -> float:
    """BWT = mean over j < T-1 of R[T-1][j] - R[j][j] (< 0: training on later tasks lost earlier ones)."""
    last = len(matrix) - 1
    return float(np.mean([matrix[last, j] - matrix[j, j] for j in range(last)]))


def _summarise(results: dict[str, Any], cells: dict[str, Cells], stages: list[TaskData]) -> None:
    """(Re)compute every finished method's matrix, final accuracies, p-values and transfer numbers; run
    after each method so that a baseline evaluated later enters the earlier methods' rows."""
    names = [s.label for s in stages]
    last = len(stages) - 1
    for name, m in cells.items():
        r = results["methods"][name]
        matrix = np.array([[float(c.mean()) for c in row] for row in m])
        r["matrix"] = matrix.tolist()
        r["matrix_ci95"] = [[_ci(c) for c in row] for row in m]
        r["final"] = {}
        for j, task in enumerate(names):
            entry: dict[str, Any] = {"accuracy": float(matrix[last, j]), "ci95": _ci(m[last][j])}
            entry["p_value"] = {
                b: stats.paired_test(m[last][j], cells[b][last][j]).p
                for b in BASELINES
                if b in cells and b != name
            }
            r["final"][task] = entry
        r["final_mean"] = float(matrix[last].mean())
        f = forgetting(matrix)
        r["forgetting"] = dict(zip(names[:last], f, strict=True))
        r["forgetting_mean"] = float(np.mean(f))
        r["backward_transfer"] = backward_transfer(matrix)
        r["backward_transfer_p"] = {
            names[j]: stats.paired_test(m[last][j], m[j][j]).p for j in range(last)
        }  # the final scores against the just-trained ones, on the same items and seeds
        if "vanilla" in cells:
            base = cells["vanilla"]
            r["forward_transfer"] = {
                names[j]: float(matrix[j - 1, j] - base[0][j].mean()) for j in range(1, len(names))
            }


def _ci(scores: np.ndarray) -> list[float]:
    ci = stats.accuracy_ci(scores)
    return [ci.low, ci.high]


def sequence_table(results: dict[str, Any]) -> str:
    """Markdown: per method the forgetting matrix, then a summary table of final accuracy, forgetting and
    transfer against vanilla and lora-sft."""
    tasks, methods, seeds = results["sequence"], results["methods"], results["seeds"]
    lines = [
        f"Continual learning on {' → '.join(f'`{t}`' for t in tasks)}, model `{results['model']}`, "
        f"{results['budget_per_stage']['steps']} steps per stage, seed{'s' if len(seeds) > 1 else ''} "
        f"{', '.join(map(str, seeds))}; test items per task: "
        + ", ".join(f"{t} {n}" for t, n in results["n_test"].items())
        + ".",
        "",
    ]
    for name, r in methods.items():
        if "matrix" not in r:
            continue
        lines += [f"**{name}**: accuracy on each task (columns) after each stage (rows).", ""]
        lines += ["| after stage | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
        for i, row in enumerate(r["matrix"]):
            cells = [
                f"{a:.3f} [{lo:.3f}, {hi:.3f}]" for a, (lo, hi) in zip(row, r["matrix_ci95"][i], strict=True)
            ]
            lines.append(f"| {i}: {tasks[i]} | " + " | ".join(cells) + " |")
        lines.append("")
    baselines = [b for b in BASELINES if b in methods and "final" in methods[b]]
    lines += [
        "Summary. Final: after the last stage, mean over tasks; forgetting: mean over tasks but the last of "
        "the best earlier accuracy minus the final one; BWT: mean of final minus just-trained accuracy; "
        "FWT: accuracy on a task just before training on it minus vanilla's.",
        "",
        "| method | final mean | forgetting | BWT | FWT (mean) | "
        + " | ".join(f"{t} final [95% CI] | " + " | ".join(f"p vs {b}" for b in baselines) for t in tasks)
        + " |",
        "|---|---|---|---|---|" + ("---|" * (1 + len(baselines))) * len(tasks),
    ]
    for name, r in methods.items():
        if "final" not in r:
            continue
        fwt = r.get("forward_transfer")
        cells = [
            f"{r['final_mean']:.3f}",
            f"{r['forgetting_mean']:+.3f}",
            f"{r['backward_transfer']:+.3f}",
            f"{np.mean(list(fwt.values())):+.3f}" if fwt else "–",
        ]
        for t in tasks:
            e = r["final"][t]
            cells += [acc_cell(e), *(p_cell(e, b) for b in baselines)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", STATS_NOTE]
    return "\n".join(lines) + "\n"


def _write(out: Path, results: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(sequence_table(results))
    _plot(out / "sequence.png", results)


def _plot(path: Path, results: dict[str, Any]) -> None:
    """One heatmap per method: accuracy on each task (x) after each stage (y)."""
    plt = pyplot()
    done = {n: r for n, r in results["methods"].items() if "matrix" in r}
    tasks = results["sequence"]
    fig, axes = plt.subplots(1, len(done), figsize=(0.6 + 2.6 * len(done), 2.9), squeeze=False)
    for ax, (name, r) in zip(axes[0], done.items(), strict=True):
        m = np.array(r["matrix"])
        ax.imshow(m, vmin=0, vmax=1, cmap="viridis")
        for (i, j), a in np.ndenumerate(m):
            ax.text(j, i, f"{a:.2f}", ha="center", va="center", color="white" if a < 0.6 else "black")
        ax.set_xticks(range(len(tasks)), tasks, rotation=30, fontsize=7)
        ax.set_yticks(range(len(tasks)), [f"after {t}" for t in tasks], fontsize=7)
        ax.set_title(name, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
