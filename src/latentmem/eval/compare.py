"""`latentmem compare`: train what needs training, evaluate every method on the same held-out split, and
write `results.json`, `results.md` and `results.png` into the output folder (a run folder: it also keeps
the resolved config, seed, git hash and package versions). Beside its scores, each method records what
its training ran (`Method.training`: algorithm, loss type, schedule, lr, steps, rows seen, start point),
so that a reader can check that the arms got the same budget and algorithm.

Splits and seeds. The test split (`task.split("test")` under `split_seed`) is the same items for every
seed, so that methods and seeds pair item by item. The validation split (`val_fraction`) is carved from
the train split under `split_seed` too, so it is the same items for every seed, and it is disjoint from
the training rows and from the test split; methods get it as `Context.val`. A task with a validation split
of its own (`Task.validation`: the facts task asks its facts in a third wording) gives its `val_fraction`
share of it instead, and keeps every training example: a memory cannot be validated on facts it lacks.
For each seed in `seeds`, every method is built afresh and trained with that seed, on that seed's sample
of the remaining train split (shuffled under the seed, cut to `n_train`); with no validation split this is
exactly `task.split("train", n_train, seed)`.

Statistics (`latentmem.eval.stats`). Each method's accuracy is the mean over seeds and items, with a 95%
interval (Wilson for one seed of 0/1 scores, else a bootstrap over seeds and items) and a paired test
against `vanilla` and against `lora-sft` where they run (McNemar's exact test for one seed of 0/1 scores,
else a sign-flip permutation test over items of the seed-averaged scores).

Accuracy against training steps (`steps`). Each trained method is also trained and evaluated, per seed,
under each listed step count: separate runs, each a complete run of its budget (its LR schedule ends at
that step, as the main runs' do), which works alike for every method, TRL's GRPO included; a count equal
to `budget.steps` reuses the main runs. Untrained methods are drawn flat in `steps.png`.

Retention (`retention_tasks`). After training on the main task, each seed's method, as deployed (its LoRA
or weaver active, its retrieval store holding the main task's examples), also answers each retention
task's test split (in that task's own format); the table shows its accuracy there and its drop against
`vanilla`'s, which must therefore run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from latentmem.config import Config, require
from latentmem.eval import stats
from latentmem.eval.method import METHODS, Budget, Completions, Context, Method, check_methods, write_rows
from latentmem.eval.report import BASELINES, STATS_NOTE, write_results
from latentmem.eval.task import Example, Task, TaskError, get_task
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
    seeds: list[int] = field(default_factory=lambda: [0])  # one training run of every method per seed
    split_seed: int = 0  # draws the test and validation splits: the same items for every seed
    n_train: int = 256  # training examples per seed (0 = all)
    n_test: int = 100  # held-out examples (0 = all); also per retention task
    val_fraction: float = 0.0  # validation split, as a share of n_train (of the train split when 0)
    # "val": score methods on the validation split instead of the test split, to choose a config or lr
    # without looking at the test split (the test split is then not evaluated at all)
    eval_split: str = "test"
    steps: list[int] = field(default_factory=list)  # step counts of the accuracy-vs-steps curve
    retention_tasks: list[str] = field(default_factory=list)  # evaluated after training on `task`
    # per retention task; its key `task` names the registered task when the label is not one, e.g.
    # {navigate: {task: bigbench, path: navigate/task.json}} (so also in `sequence_task_args`)
    retention_task_args: dict[str, dict[str, Any]] = field(default_factory=dict)
    # continual learning (`latentmem.eval.continual`): train on these tasks in order, in place of `task`
    sequence: list[str] = field(default_factory=list)
    sequence_task_args: dict[str, dict[str, Any]] = field(default_factory=dict)  # per sequence task
    eval_batch_size: int = 16
    retrieval_k: int = 3
    # per method, settings of its own config over the harness's (`Context.extra`), e.g.
    # {recall: {step2: {retention_kl: 0.0}}, xrag: {restate_share: 0.3}}
    method_args: dict[str, dict[str, Any]] = field(default_factory=dict)
    budget: Budget = field(default_factory=Budget)
    memgen: MemGenConfig = field(default_factory=MemGenConfig)

    def validate(self) -> None:
        require(len(self.methods) > 0, "methods", "name at least one method, e.g. vanilla,memgen-sft")
        check_methods(self.methods)
        require(len(set(self.methods)) == len(self.methods), "methods", f"listed twice in {self.methods}")
        require(len(self.seeds) > 0, "seeds", "name at least one seed, e.g. [0] or 0,1,2")
        require(all(s >= 0 for s in self.seeds), "seeds", f"must be >= 0, got {self.seeds}")
        require(len(set(self.seeds)) == len(self.seeds), "seeds", f"listed twice in {self.seeds}")
        require(self.split_seed >= 0, "split_seed", f"must be >= 0, got {self.split_seed}")
        require(
            self.n_train >= 0 and self.n_test >= 0, "n_train", "n_train and n_test must be >= 0 (0 = all)"
        )
        require(0 <= self.val_fraction < 1, "val_fraction", f"must be in [0, 1), got {self.val_fraction}")
        require(all(s >= 1 for s in self.steps), "steps", f"step counts must be >= 1, got {self.steps}")
        require(len(set(self.steps)) == len(self.steps), "steps", f"listed twice in {self.steps}")
        require(
            not self.retention_tasks or "vanilla" in self.methods,
            "retention_tasks",
            "the drop on a retention task is measured against vanilla: add vanilla to methods",
        )
        require(
            self.task not in self.retention_tasks,
            "retention_tasks",
            f"{self.task!r} is the main task; retention tasks are the other ones",
        )
        unknown = set(self.retention_task_args) - set(self.retention_tasks)
        require(not unknown, "retention_task_args", f"{sorted(unknown)} are not among {self.retention_tasks}")
        require(self.eval_split in ("test", "val"), "eval_split", f"'test' or 'val', got {self.eval_split!r}")
        if self.eval_split == "val":
            require(self.val_fraction > 0, "val_fraction", "eval_split=val needs a validation split: set > 0")
            require(
                not self.retention_tasks and not self.sequence,
                "eval_split",
                "eval_split=val scores the main task's validation split only: drop retention_tasks/sequence",
            )
        unknown = set(self.method_args) - set(self.methods)
        require(not unknown, "method_args", f"{sorted(unknown)} are not among the methods {self.methods}")
        require(self.eval_batch_size >= 1, "eval_batch_size", f"must be >= 1, got {self.eval_batch_size}")
        if not self.sequence:
            require(not self.sequence_task_args, "sequence_task_args", "set only with sequence")
            return
        require(len(self.sequence) >= 2, "sequence", f"name two tasks or more, got {self.sequence}")
        require(len(set(self.sequence)) == len(self.sequence), "sequence", f"listed twice in {self.sequence}")
        unknown = set(self.sequence_task_args) - set(self.sequence)
        require(not unknown, "sequence_task_args", f"{sorted(unknown)} are not among {self.sequence}")
        # a sequence's matrix already evaluates every method on every task after every stage
        require(not self.retention_tasks, "retention_tasks", "not with sequence: every stage evaluates all")
        require(not self.steps, "steps", "not with sequence: each stage trains budget.steps")


@dataclass
class Splits:
    """The examples of one comparison: the test and validation splits (the same for every seed) and the
    pool each seed's training rows are drawn from (the train split without the validation split)."""

    test: list[Example]
    val: list[Example]
    pool: list[Example]
    n_train: int  # training rows per seed

    @classmethod
    def make(cls, task: Task, cfg: CompareConfig, needs_train: bool) -> Splits:
        test = task.split("test", cfg.n_test or None, seed=cfg.split_seed)
        if not needs_train and cfg.val_fraction == 0:  # test-only benchmarks have no train split
            return cls(test, [], [], 0)
        examples = task.load("train")
        if not examples:
            raise TaskError(f"{task.name}: the train split is empty")
        n_val = math.ceil(cfg.val_fraction * (cfg.n_train or len(examples)))
        own = task.validation() if n_val else None
        if own is not None:  # the task's own validation split: every training example stays in the pool
            val = sorted(random.Random(cfg.split_seed).sample(range(len(own)), min(n_val, len(own))))
            pool = list(examples)
            return cls(test, [own[i] for i in val], pool, min(cfg.n_train or len(pool), len(pool)))
        if n_val >= len(examples):
            raise TaskError(
                f"{task.name}: val_fraction {cfg.val_fraction} holds out {n_val} of the train split's "
                f"{len(examples)} examples, leaving none to train on; lower val_fraction"
            )
        held = set(random.Random(cfg.split_seed).sample(range(len(examples)), n_val))
        # the pool keeps the split's own order, so that with no validation split a seed's sample is
        # exactly `task.split("train", n_train, seed)`, as before seeds and validation existed
        pool = [ex for i, ex in enumerate(examples) if i not in held]
        val = [examples[i] for i in sorted(held)]
        return cls(test, val, pool, min(cfg.n_train or len(pool), len(pool)))

    def scored(self, split: str) -> list[Example]:
        """The examples methods are scored on: the test split, or the validation split (`eval_split`)."""
        return self.val if split == "val" else self.test

    def train(self, seed: int) -> list[Example]:
        """Seed `seed`'s training rows: the pool shuffled under `seed`, cut to `n_train`."""
        rows = list(self.pool)
        random.Random(seed).shuffle(rows)
        return rows[: self.n_train]


@dataclass
class TaskData:
    """One task a comparison trains or evaluates on: its registry name and arguments (which rebuild it, as
    the GRPO reward does), the task, its splits, and the label results name it by."""

    name: str
    args: dict[str, Any]
    task: Task
    splits: Splits
    label: str = ""

    def __post_init__(self) -> None:
        self.label = self.label or self.name


@dataclass
class LabelledTask:
    name: str  # in the task registry
    args: dict[str, Any]
    task: Task


def labelled_task(label: str, args_by_label: dict[str, dict[str, Any]]) -> LabelledTask:
    """The task a retention or sequence entry `label` names: the registered task `args["task"]` (default:
    `label` itself) built with the remaining arguments, so that one registered task (bigbench) can appear
    under several labels."""
    args = dict(args_by_label.get(label, {}))
    name = str(args.pop("task", label))
    return LabelledTask(name, args, get_task(name, **args))


def run_compare(cfg: CompareConfig) -> dict[str, Any]:
    """Run the comparison; returns (and writes) the results."""
    task = get_task(cfg.task, **cfg.task_args)  # task errors before any model loads
    retention = {n: labelled_task(n, cfg.retention_task_args).task for n in cfg.retention_tasks}
    retention_tests = {
        n: t.split("test", cfg.n_test or None, seed=cfg.split_seed) for n, t in retention.items()
    }
    splits = Splits.make(task, cfg, needs_train=any(m != "vanilla" for m in cfg.methods))
    data = TaskData(cfg.task, cfg.task_args, task, splits)
    scored = splits.scored(cfg.eval_split)  # the examples every method is scored on
    out = Path(cfg.out)
    run = RunDir.create(out, cfg, cfg.seeds[0])  # config.yaml holds every seed
    if splits.val:
        write_rows(out / "val.jsonl", task, splits.val)
    results: dict[str, Any] = {
        "task": cfg.task,
        "model": cfg.model,
        "eval_split": cfg.eval_split,
        "n_test": len(scored),
        "n_train": splits.n_train,
        "n_val": len(splits.val),
        "seeds": list(cfg.seeds),
        "split_seed": cfg.split_seed,
        "steps": sorted(cfg.steps),
        "retention_tasks": {n: len(t) for n, t in retention_tests.items()},
        "stats": STATS_NOTE,
        "methods": {},
    }
    scores: dict[str, np.ndarray] = {}  # method -> (seeds, test items)
    retained: dict[str, dict[str, np.ndarray]] = {}  # method -> retention task -> (seeds, items)
    # method -> task -> per seed, the share of prompts a prompt gate served (gated MemGen methods only)
    served_of: dict[str, dict[str, list[float]]] = {}
    for name in tqdm(cfg.methods, desc="methods"):
        per_seed, main, kept, hits = [], [], {n: [] for n in retention}, []
        served = served_of.setdefault(name, {})
        for i, seed in enumerate(cfg.seeds):
            if i == 0 or not METHODS[name].seed_free:
                method = fit_method(name, cfg, data, seed, cfg.budget, out / name / f"seed-{seed}")
                done_by_task = {cfg.task: evaluate_on(method, task, scored)} | {
                    n: evaluate_on(method, rtask, retention_tests[n]) for n, rtask in retention.items()
                }
                done, item_scores = done_by_task[cfg.task]
                per_seed.append(
                    {
                        "seed": seed,
                        "accuracy": sum(item_scores) / len(item_scores),
                        "n_train": len(method.ctx.train),
                        "trainable_params": method.trainable_params,
                        "train_seconds": round(method.train_seconds, 2),
                        "seconds_per_sample": round(done.seconds / len(item_scores), 4),
                        "tokens_per_second": round(done.new_tokens / max(done.seconds, 1e-9), 2),
                        "context_tokens_per_sample": round(done.prompt_tokens / len(item_scores), 1),
                        "training": method.training(),
                    }
                )
                run.log(method=name, **per_seed[-1])
                del method  # free its model before the next seed's loads
            else:
                # greedy answers of an untrained model do not depend on the seed: the first seed's answers
                # are every seed's, recorded per seed so that the paired tests see aligned rows
                per_seed.append({**per_seed[0], "seed": seed})
            done, item_scores = done_by_task[cfg.task]
            for task_name, (d, _) in done_by_task.items():
                if d.served is not None:
                    served.setdefault(task_name, []).append(sum(d.served) / len(d.served))
            write_completions(out / name / "completions.jsonl", scored, done, item_scores, seed, i > 0)
            main.append(item_scores)
            hits.append(memory_hits(scored, done))
            for n in retention:
                rdone, rscores = done_by_task[n]
                write_completions(
                    out / name / f"completions-{n}.jsonl", retention_tests[n], rdone, rscores, seed, i > 0
                )
                kept[n].append(rscores)
        scores[name] = np.array(main)
        retained[name] = {n: np.array(s) for n, s in kept.items()}
        first = per_seed[0]
        results["methods"][name] = {
            "accuracy": float(scores[name].mean()),
            "n": len(scored),
            "n_seeds": len(cfg.seeds),
            "trainable_params": first["trainable_params"],
            "train_seconds": round(float(np.mean([s["train_seconds"] for s in per_seed])), 2),
            "seconds_per_sample": round(float(np.mean([s["seconds_per_sample"] for s in per_seed])), 4),
            "tokens_per_second": round(float(np.mean([s["tokens_per_second"] for s in per_seed])), 2),
            "context_tokens_per_sample": round(
                float(np.mean([s["context_tokens_per_sample"] for s in per_seed])), 1
            ),
            "training": first["training"],
            "seeds": per_seed,
        }
        groups = _groups(scored)
        if len(groups) > 1:
            results["methods"][name]["by_group"] = {
                g: {**accuracy_entry(scores[name][:, idx]), "n": len(idx)} for g, idx in groups.items()
            }
        if all(h is not None for h in hits):
            found = np.array(hits)
            results["methods"][name]["memory_at_1"] = {
                **accuracy_entry(found),
                "n": found.shape[1],
                "by_group": {g: accuracy_entry(found[:, idx]) for g, idx in groups.items()},
            }
        if cfg.steps and first["training"]["steps"] > 0:
            results["methods"][name]["steps"] = _steps_curve(name, cfg, data, scores[name])
        _add_stats(results["methods"], scores, retained)
        for gated, shares in served_of.items():  # after _add_stats, which rebuilds the retention rows
            _add_served(results["methods"][gated], cfg.task, shares)
        write_results(out, results)
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    write_results(out, results)
    return results


def _groups(examples: list[Example]) -> dict[str, list[int]]:
    """The test items of each `columns["group"]` (e.g. the facts task's seen / unseen), in item order."""
    out: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        if "group" in ex.columns:
            out.setdefault(str(ex.columns["group"]), []).append(i)
    return out


def memory_hits(examples: list[Example], done: Completions) -> list[float] | None:
    """Per test item, 1.0 when the first memory the method read for it (`Completions.read`) is the one the
    item asks about (its `statement` column, which the memory methods store), else 0.0; None when the
    method reports no reads or an item names no memory."""
    if done.read is None or not all(isinstance(ex.columns.get("statement"), str) for ex in examples):
        return None
    return [
        float(bool(read) and read[0] == ex.columns["statement"])
        for ex, read in zip(examples, done.read, strict=True)
    ]


def accuracy_entry(m: np.ndarray) -> dict[str, Any]:
    """Accuracy and 95% interval of a (seeds, items) score matrix, as the results record them."""
    ci = stats.accuracy_ci(m)
    return {"accuracy": float(m.mean()), "ci95": [ci.low, ci.high]}


def fit_method(
    name: str,
    cfg: CompareConfig,
    data: TaskData,
    seed: int,
    budget: Budget,
    workdir: Path,
    init_from: Path | None = None,
) -> Method:
    """`name`, trained (if it trains) on `data`'s task under `budget` with seed `seed` on that seed's rows:
    fresh, or continuing from `init_from` (an earlier run's `Method.state_dir`)."""
    seed_everything(seed)
    ctx = Context(
        model=cfg.model, task=data.task, task_name=data.name, task_args=data.args,
        train=data.splits.train(seed), val=data.splits.val, budget=budget, memgen=cfg.memgen,
        workdir=workdir, seed=seed, retrieval_k=cfg.retrieval_k, eval_batch_size=cfg.eval_batch_size,
        init_from=init_from, extra=cfg.method_args.get(name, {}),
    )  # fmt: skip
    method = METHODS[name](ctx)
    method.fit()
    memories = data.task.memories()
    if memories:  # new memories, never trained on, written after training (`Task.memories`)
        method.add_memories(memories)
    return method


def evaluate_on(method: Method, task: Task, examples: list[Example]) -> tuple[Completions, list[float]]:
    """`method`'s completions of `examples` of `task` (the main task or a retention task) and their
    scores. Methods format prompts from `ctx.task` (system prompt, answer length), so for the call it is
    `task`; what the method learnt or retrieves stays that of the main task, as deployed."""
    deployed = method.ctx
    method.ctx = dataclasses.replace(deployed, task=task)
    try:
        done = method.complete([ex.prompt for ex in examples])
    finally:
        method.ctx = deployed
    return done, [task.score(ex, c) for ex, c in zip(examples, done.texts, strict=True)]


def write_completions(
    path: Path, examples: list[Example], done: Completions, scores: list[float], seed: int, append: bool
) -> None:
    """One JSON line per test item of one seed: which item, the prompt, gold answer, completion, score,
    the memories read for it where the method reports them, and whether a prompt gate served it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a" if append else "w") as f:
        for item, (ex, c, s) in enumerate(zip(examples, done.texts, scores, strict=True)):
            row = {"seed": seed, "item": item, "prompt": ex.prompt, "answer": ex.answer, "completion": c}
            read = {} if done.read is None else {"read": done.read[item]}
            gate = {} if done.served is None else {"served": done.served[item]}
            f.write(json.dumps({**row, "score": s, **read, **gate}) + "\n")


def _steps_curve(name: str, cfg: CompareConfig, data: TaskData, main: np.ndarray) -> list[dict[str, Any]]:
    """Accuracy of `name` trained for each of `cfg.steps` (one run per seed and count, into
    `<method>/seed-<s>/steps-<n>/`); the count `budget.steps` is the main runs' `main` scores."""
    points, scored = [], data.splits.scored(cfg.eval_split)
    for n_steps in sorted(cfg.steps):
        if n_steps == cfg.budget.steps:
            m = main
        else:
            rows = []
            for seed in cfg.seeds:
                workdir = Path(cfg.out) / name / f"seed-{seed}" / f"steps-{n_steps}"
                budget = dataclasses.replace(cfg.budget, steps=n_steps)
                method = fit_method(name, cfg, data, seed, budget, workdir)
                done, item_scores = evaluate_on(method, data.task, scored)
                write_completions(workdir / "completions.jsonl", scored, done, item_scores, seed, False)
                rows.append(item_scores)
                del method
            m = np.array(rows)
        points.append({"steps": n_steps, **accuracy_entry(m), "seeds": [float(row.mean()) for row in m]})
    return points


def _add_served(entry: dict[str, Any], main_task: str, served: dict[str, list[float]]) -> None:
    """A gated method's `served_share` (mean over seeds of the share of prompts its weaver served) on the
    main task and in each retention entry."""
    for task_name, shares in served.items():
        target = entry if task_name == main_task else entry["retention"][task_name]
        target["served_share"] = float(np.mean(shares))


def _add_stats(
    methods: dict[str, Any], scores: dict[str, np.ndarray], retained: dict[str, dict[str, np.ndarray]]
) -> None:
    """(Re)compute every finished method's interval, p-values and retention rows; run after each method
    so that a baseline evaluated later still enters the earlier methods' rows."""
    for name, m in scores.items():
        r = methods[name]
        ci = stats.accuracy_ci(m)
        r["ci95"], r["ci_method"] = [ci.low, ci.high], ci.method
        tests = {b: stats.paired_test(m, scores[b]) for b in BASELINES if b in scores and b != name}
        r["p_value"] = {b: t.p for b, t in tests.items()}
        r["p_test"] = {b: t.method for b, t in tests.items()}
        if not retained[name]:
            continue
        r["retention"] = {}
        for task_name, rm in retained[name].items():
            entry = accuracy_entry(rm)
            if "vanilla" in retained:
                base = retained["vanilla"][task_name]
                entry["drop_vs_vanilla"] = float(base.mean() - rm.mean())  # > 0: worse than before training
                if name != "vanilla":
                    entry["p_value"] = {"vanilla": stats.paired_test(rm, base).p}
            r["retention"][task_name] = entry
