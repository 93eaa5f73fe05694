"""What the prompt gate changes, on the same trained weavers: each seed's MemGen model of a `latentmem compare`
run trained with `trigger.prompt: knn`, evaluated on the main task and the retention tasks with its gate as
saved and with the gate switched off (every prompt served, the paper's setting), against `vanilla`'s scores
of the same run.

.venv/bin/python scripts/prompt_gate_ablation.py --run runs/prompt_gate/arithmetic_gate [--method memgen-sft]

Writes `<run>/prompt_gate_ablation.json` and prints a markdown table: accuracy with 95% interval, the share
of prompts served, the drop against vanilla (vanilla minus the method, in points; positive = forgetting)
and paired p-values (`latentmem.eval.stats`), gate on against gate off and each against vanilla.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import yaml

from latentmem.eval.methods.generate import complete_with_memgen
from latentmem.eval.stats import accuracy_ci, paired_test
from latentmem.eval.task import get_task
from latentmem.memgen import LatentMemoryModel
from latentmem.models import load_model


def _scores(path: Path) -> dict[int, list[float]]:
    """Per seed, the item-ordered scores of a completions file."""
    out: dict[int, list[tuple[int, float]]] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        out.setdefault(row["seed"], []).append((row["item"], row["score"]))
    return {s: [v for _, v in sorted(rows)] for s, rows in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--method", default="memgen-sft")
    args = parser.parse_args()
    cfg = yaml.safe_load((args.run / "config.yaml").read_text())
    tasks = [cfg["task"], *cfg.get("retention_tasks", [])]
    task_args = {cfg["task"]: cfg.get("task_args") or {}, **(cfg.get("retention_task_args") or {})}
    files = {t: "completions.jsonl" if t == cfg["task"] else f"completions-{t}.jsonl" for t in tasks}
    vanilla = {t: _scores(args.run / "vanilla" / files[t]) for t in tasks}
    compared = {
        t: _scores(args.run / args.method / files[t]) for t in tasks
    }  # the gate on, as compare ran it
    results: dict[str, dict] = {t: {"on": [], "off": [], "flags": []} for t in tasks}
    groups: dict[str, dict[str, list[int]]] = {}  # task -> group -> its test items (`columns["group"]`)
    for seed in cfg["seeds"]:
        base, tok = load_model(cfg["model"], seed=seed)
        model_dir = args.run / args.method / f"seed-{seed}" / args.method / "model"
        mm = LatentMemoryModel.from_pretrained(model_dir, base, tok).eval()
        gate = (mm.prompt_gate.bank.clone(), mm.prompt_gate.threshold.clone())
        for t in tasks:
            spec = dict(task_args.get(t) or {})
            task = get_task(spec.pop("task", t), **spec)
            examples = task.split("test", cfg.get("n_test") or None, cfg.get("split_seed", 0))
            prompts = [ex.prompt for ex in examples]
            for i, ex in enumerate(examples):
                if "group" in ex.columns and seed == cfg["seeds"][0]:
                    groups.setdefault(t, {}).setdefault(str(ex.columns["group"]), []).append(i)
            for arm in ("on", "off"):
                mm.prompt_gate.bank, mm.prompt_gate.threshold = (
                    gate if arm == "on" else (gate[0][:0], gate[1])
                )
                done = complete_with_memgen(mm, prompts, task, cfg.get("eval_batch_size", 16))
                results[t][arm].append(
                    [task.score(ex, c) for ex, c in zip(examples, done.texts, strict=True)]
                )
                if arm == "on":  # which prompts the gate served (None: nothing fitted, all of them)
                    results[t]["flags"].append(done.served or [True] * len(prompts))
            mm.prompt_gate.bank, mm.prompt_gate.threshold = gate
    report: dict[str, dict] = {}
    lines = [
        "| task | vanilla | gate on (served share) | gate off | drop on / off (points) | p on vs off | p on vs vanilla | p off vs vanilla |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in tasks:
        v = [vanilla[t][0]] * len(cfg["seeds"]) if len(vanilla[t]) == 1 else list(vanilla[t].values())
        on, off = results[t]["on"], results[t]["off"]
        if on != [compared[t][s] for s in cfg["seeds"]]:
            print(f"note: {t}: the gate-on scores differ from {args.method}'s completions of the run")
        flags = results[t]["flags"]
        every = list(range(len(on[0])))
        for g, idx in [(None, every), *groups.get(t, {}).items()]:
            rv, ron, roff = ([[row[i] for i in idx] for row in arm] for arm in (v, on, off))
            share = sum(sum(f[i] for i in idx) / len(idx) for f in flags) / len(flags)
            a = {k: float(torch.tensor(x).mean()) for k, x in (("vanilla", rv), ("on", ron), ("off", roff))}
            c = {k: accuracy_ci(x) for k, x in (("on", ron), ("off", roff))}
            pp = [paired_test(ron, roff).p, paired_test(ron, rv).p, paired_test(roff, rv).p]
            if g is None:
                report[t] = {
                    "accuracy": a,
                    "ci95": {k: [x.low, x.high] for k, x in c.items()},
                    "p_value": dict(zip(("on_vs_off", "on_vs_vanilla", "off_vs_vanilla"), pp, strict=True)),
                    "served": share,
                    "served_per_seed": [sum(f) / len(f) for f in flags],
                }
            else:
                report[t].setdefault("by_group", {})[g] = a
            label = t if g is None else f"{t}: {g} (n = {len(idx)})"
            lines.append(
                f"| {label} | {a['vanilla']:.3f} | {a['on']:.3f} [{c['on'].low:.3f}, {c['on'].high:.3f}]"
                + f" ({share:.2f})"
                + f" | {a['off']:.3f} [{c['off'].low:.3f}, {c['off'].high:.3f}] | "
                f"{100 * (a['vanilla'] - a['on']):+.1f} / {100 * (a['vanilla'] - a['off']):+.1f} | "
                + " | ".join(f"{x:.3g}" for x in pp)
                + " |"
            )
    (args.run / "prompt_gate_ablation.json").write_text(json.dumps(report, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
