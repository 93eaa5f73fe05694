"""`latentmem compare`: train what needs training, evaluate every method on the same held-out split, and
write `results.json`, `results.md` and `results.png` into the output folder (a run folder: it also keeps
the resolved config, seed, git hash and package versions)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from latentmem.config import Config, require
from latentmem.eval.methods import METHODS, Budget, Context, check_methods
from latentmem.eval.task import get_task
from latentmem.memgen import MemGenConfig
from latentmem.runs import RunDir
from latentmem.seeding import seed_everything


@dataclass
class CompareConfig(Config):
    task: str = "arithmetic"
    task_args: dict[str, Any] = field(default_factory=dict)
    model: str = "smollm2-135m-instruct"
    methods: list[str] = field(default_factory=lambda: ["vanilla", "memgen-sft"])
    out: str = "runs/compare"
    seed: int = 0
    n_train: int = 256  # training examples (0 = all)
    n_test: int = 100  # held-out examples (0 = all)
    eval_batch_size: int = 16
    retrieval_k: int = 3
    budget: Budget = field(default_factory=Budget)
    memgen: MemGenConfig = field(default_factory=MemGenConfig)

    def validate(self) -> None:
        require(len(self.methods) > 0, "methods", "name at least one method, e.g. vanilla,memgen-sft")
        check_methods(self.methods)
        require(
            self.n_train >= 0 and self.n_test >= 0, "n_train", "n_train and n_test must be >= 0 (0 = all)"
        )
        require(self.eval_batch_size >= 1, "eval_batch_size", f"must be >= 1, got {self.eval_batch_size}")


def run_compare(cfg: CompareConfig) -> dict[str, Any]:
    """Run the comparison; returns (and writes) the results."""
    task = get_task(cfg.task, **cfg.task_args)  # task errors before any model loads
    test = task.split("test", cfg.n_test or None, seed=cfg.seed)
    needs_train = any(m != "vanilla" for m in cfg.methods)
    train = task.split("train", cfg.n_train or None, seed=cfg.seed) if needs_train else []
    run = RunDir.create(cfg.out, cfg, cfg.seed)
    prompts = [ex.prompt for ex in test]
    results: dict[str, Any] = {
        "task": cfg.task,
        "model": cfg.model,
        "n_test": len(test),
        "n_train": len(train),
        "methods": {},
    }
    for name in tqdm(cfg.methods, desc="methods"):
        seed_everything(cfg.seed)
        workdir = Path(cfg.out) / name
        ctx = Context(
            model=cfg.model, task=task, task_name=cfg.task, task_args=cfg.task_args, train=train,
            budget=cfg.budget, memgen=cfg.memgen, workdir=workdir, seed=cfg.seed,
            retrieval_k=cfg.retrieval_k, eval_batch_size=cfg.eval_batch_size,
        )  # fmt: skip
        method = METHODS[name](ctx)
        method.fit()
        out = method.complete(prompts)
        scores = [task.score(ex, c) for ex, c in zip(test, out.texts, strict=True)]
        workdir.mkdir(parents=True, exist_ok=True)
        with (workdir / "completions.jsonl").open("w") as f:
            for ex, c, s in zip(test, out.texts, scores, strict=True):
                f.write(
                    json.dumps({"prompt": ex.prompt, "answer": ex.answer, "completion": c, "score": s}) + "\n"
                )
        results["methods"][name] = {
            "accuracy": sum(scores) / len(scores),
            "n": len(scores),
            "trainable_params": method.trainable_params,
            "train_seconds": round(method.train_seconds, 2),
            "seconds_per_sample": round(out.seconds / len(scores), 4),
            "tokens_per_second": round(out.new_tokens / max(out.seconds, 1e-9), 2),
        }
        run.log(method=name, **results["methods"][name])
        _write(Path(cfg.out), results)
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    _write(Path(cfg.out), results)
    return results


def results_table(results: dict[str, Any]) -> str:
    """A markdown table of the results."""
    lines = [
        f"Task `{results['task']}`, model `{results['model']}`, {results['n_test']} held-out examples, "
        f"{results['n_train']} training examples.",
        "",
        "| method | accuracy | n | trainable params | train s | s / sample | tokens / s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results["methods"].items():
        lines.append(
            f"| {name} | {r['accuracy']:.3f} | {r['n']} | {r['trainable_params']:,} | {r['train_seconds']:.1f} "
            f"| {r['seconds_per_sample']:.3f} | {r['tokens_per_second']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def _write(out: Path, results: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(results_table(results))
    _plot(out / "results.png", results)


def _plot(path: Path, results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["methods"])
    acc = [results["methods"][n]["accuracy"] for n in names]
    fig, ax = plt.subplots(figsize=(1.2 + 1.3 * len(names), 3.2))
    bars = ax.bar(names, acc, color="#4c72b0")
    ax.bar_label(bars, labels=[f"{a:.2f}" for a in acc])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    ax.set_title(f"{results['task']} · {results['model']} · n={results['n_test']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
