"""`latentmem bench agent-memory`: memory-manager policies on long conversations, one table.

    latentmem bench agent-memory --model smollm2-135m-instruct \\
        --policies add-only,heuristic,prompted,rl --manager runs/memory-manager --json

For each policy: a fresh store (one scope per episode); every fact of every episode goes through the
`MemoryManager` in conversation order (episodes in lockstep, so the model policies decide one fact of
each episode per batch); then the `AnswerAgent` answers every question from the final store. Reported:
accuracy per category and overall (`answer.answer_match`), retrieval recall@k of the evidence turns
(answerable questions; a memory's source is the turn that last wrote it), the store size per episode,
and, where the facts carry slots (the generated benchmark), the share of stale and of duplicate memories
left (`store_audit`). Writes results.json, results.md, results.png and per-policy ops / answers JSONL to
`--out`.

Data: `generated` (`bench_data`, `--users`, `--seed`), `locomo:PATH` or `longmemeval:PATH`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from latentmem.agent_memory.answer import AnswerAgent, answer_match
from latentmem.agent_memory.bench_data import generate_benchmark
from latentmem.agent_memory.episodes import CATEGORIES, Episode
from latentmem.agent_memory.errors import AgentMemoryError
from latentmem.agent_memory.generation import ChatGenerator
from latentmem.agent_memory.loaders import load_locomo, load_longmemeval, longmemeval_episodes
from latentmem.agent_memory.manager import POLICIES, MemoryManager, Policy, make_policy
from latentmem.agent_memory.store_audit import audit_store
from latentmem.memory.base import Scope
from latentmem.memory.vector import VectorMemory


def register(targets: argparse._SubParsersAction) -> None:
    p = targets.add_parser("agent-memory", help="memory-manager policies: accuracy, recall, stale memories")
    p.add_argument("--model", default="smollm2-135m-instruct", help="chat model (smollm2-135m-instruct)")
    p.add_argument(
        "--policies", default="add-only,heuristic,prompted", help=f"comma-separated: {','.join(POLICIES)}"
    )
    p.add_argument(
        "--manager", default=None, help="the rl policy's `latentmem train memory-manager` run folder"
    )
    p.add_argument("--data", default="generated", help="generated, locomo:PATH or longmemeval:PATH")
    p.add_argument("--users", type=int, default=8, help="users of the generated benchmark (8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated benchmark (0)")
    p.add_argument("--episodes", type=int, default=0, help="use only the first N episodes (0 = all)")
    p.add_argument("--k", type=int, default=20, help="memories the answer agent retrieves (20)")
    p.add_argument("--manager-k", type=int, default=5, help="related memories shown to the manager (5)")
    p.add_argument(
        "--answerer", default="model", choices=["model", "extractive"],
        help="the answer agent: the chat model (distil + answer), or extractive (best memory's text)",
    )  # fmt: skip
    p.add_argument("--embedder", default="minilm", help="the stores' embedder (minilm)")
    p.add_argument("--out", default="runs/bench-agent-memory", help="output folder")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def load_episodes(spec: str, users: int = 8, seed: int = 0) -> list[Episode]:
    """`generated`, `locomo:PATH` or `longmemeval:PATH` as episodes."""
    kind, _, path = spec.partition(":")
    if kind == "generated" and not path:
        return longmemeval_episodes(generate_benchmark(users, seed), "generated")
    if kind == "locomo" and path:
        return load_locomo(path)
    if kind == "longmemeval" and path:
        return load_longmemeval(path)
    raise AgentMemoryError(f"--data {spec!r}: expected generated, locomo:PATH or longmemeval:PATH")


def scope_of(episode: Episode) -> Scope:
    return Scope(user=episode.id)


def fill_store(manager: MemoryManager, episodes: Sequence[Episode]) -> list[dict[str, Any]]:
    """Every fact of every episode through `manager`, episodes in lockstep; the decisions as JSON rows."""
    facts = [list(ep.fact_turns()) for ep in episodes]
    log = []
    for t in range(max((len(f) for f in facts), default=0)):
        live = [(ep, f[t]) for ep, f in zip(episodes, facts, strict=True) if t < len(f)]
        items = [(turn.fact, scope_of(ep), {"source": turn.key}) for ep, (_, turn) in live]
        for (ep, (_, turn)), d in zip(live, manager.observe_many(items), strict=True):
            log.append(
                {
                    "episode": ep.id, "turn": turn.key, "fact": turn.fact, "shown": [h.record.id for h in d.request.related],
                    "raw": d.parsed.raw, "operation": d.parsed.operation.format(), "rejected": d.parsed.rejected,
                }
            )  # fmt: skip
    return log


def evaluate_policy(
    episodes: Sequence[Episode],
    policy: Policy,
    store: VectorMemory,
    answerer: ChatGenerator | None,
    *,
    k: int = 20,
    manager_k: int = 5,
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """One policy's metrics (module docstring), its decisions and its answers."""
    start = time.perf_counter()
    decisions = fill_store(MemoryManager(store, policy, k=manager_k), episodes)
    agent = AnswerAgent(store, answerer, k=k)
    asked = [(ep, q) for ep in episodes for q in ep.questions]
    answers = agent.answer_many([(q.question, scope_of(ep)) for ep, q in asked])
    rows, by_cat, recalls = [], {}, []
    for (ep, q), a in zip(asked, answers, strict=True):
        ok = answer_match(a.text, q.answer)
        by_cat.setdefault(q.category, []).append(ok)
        sources = {h.record.metadata.get("source") for h in a.retrieved}
        if q.evidence and q.category != "abstention":
            recalls.append(len(sources & set(q.evidence)) / len(q.evidence))
        rows.append(
            {
                "episode": ep.id, "question": q.question, "gold": q.answer, "category": q.category,
                "prediction": a.text, "correct": ok, "selected": [h.record.text for h in a.selected],
            }
        )  # fmt: skip
    audits = [audit_store(ep, store.list(scope_of(ep))) for ep in episodes]
    sizes = [store.count(scope_of(ep)) for ep in episodes]
    known = [a for a in audits if a is not None]
    total = sum(a.size for a in known)
    flat = [ok for oks in by_cat.values() for ok in oks]
    metrics = {
        "accuracy": sum(flat) / len(flat) if flat else 0.0,
        "by_category": {c: sum(v) / len(v) for c, v in by_cat.items()},
        "questions": {c: len(v) for c, v in by_cat.items()},
        "recall_at_k": sum(recalls) / len(recalls) if recalls else None,
        "store_size": sum(sizes) / len(sizes) if sizes else 0.0,
        "stale_share": sum(a.stale for a in known) / total if total else None,
        "duplicate_share": sum(a.duplicate for a in known) / total if total else None,
        "operations": dict(Counter(d["operation"].split()[0] for d in decisions)),
        "rejected": sum(d["rejected"] is not None for d in decisions),
        "seconds": round(time.perf_counter() - start, 1),
    }
    if total:
        metrics["stale_or_duplicate_share"] = metrics["stale_share"] + metrics["duplicate_share"]
    return metrics, decisions, rows


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def results_table(results: dict[str, Any]) -> str:
    """The results as a Markdown table (percentages)."""
    cats = [c for c in CATEGORIES if any(c in r["by_category"] for r in results["policies"].values())]
    cats += sorted({c for r in results["policies"].values() for c in r["by_category"]} - set(cats))
    k = results["k"]
    head = ["policy", "overall", *cats, f"recall@{k}", "store size", "stale %", "duplicate %"]
    lines = [
        f"agent memory · {results['data']} · model {results['model']} · answerer {results['answerer']} · "
        f"{results['episodes']} episodes, {results['questions']} questions\n",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for name, r in results["policies"].items():
        cells = [name, _pct(r["accuracy"]), *(_pct(r["by_category"].get(c)) for c in cats)]
        cells += [
            _pct(r["recall_at_k"]),
            f"{r['store_size']:.1f}",
            _pct(r["stale_share"]),
            _pct(r["duplicate_share"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _plot(path: Path, results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    import matplotlib.pyplot as plt

    names = list(results["policies"])
    cats = [
        "overall",
        *[c for c in CATEGORIES if any(c in r["by_category"] for r in results["policies"].values())],
    ]
    fig, ax = plt.subplots(figsize=(2 + 1.2 * len(cats), 3.4))
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        r = results["policies"][name]
        ys = [r["accuracy"], *(r["by_category"].get(c, 0.0) for c in cats[1:])]
        ax.bar([j + i * width for j in range(len(cats))], ys, width, label=name)
    ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(cats))], cats)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    ax.set_title(f"agent memory · {results['data']} · {results['model']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    """Run the bench per the parsed arguments; write the output folder; return the results."""
    names = [n.strip() for n in args.policies.split(",") if n.strip()]
    for name in names:
        if name not in POLICIES:
            raise AgentMemoryError(f"--policies: unknown policy {name!r}; choose from {', '.join(POLICIES)}")
    episodes = load_episodes(args.data, args.users, args.seed)
    if args.episodes:
        episodes = episodes[: args.episodes]
    generator = None
    if args.answerer == "model" or "prompted" in names:
        from latentmem.models import load_model

        model, tokenizer = load_model(args.model)
        generator = ChatGenerator(model, tokenizer)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "data": args.data, "model": args.model, "answerer": args.answerer, "k": args.k,
        "manager_k": args.manager_k, "embedder": args.embedder, "episodes": len(episodes),
        "questions": sum(len(ep.questions) for ep in episodes), "manager": args.manager, "policies": {},
    }  # fmt: skip
    answerer = generator if args.answerer == "model" else None
    with tempfile.TemporaryDirectory(prefix="latentmem-agent-memory-") as tmp:
        for name in names:
            policy = make_policy(name, generator, args.manager, args.model)
            with VectorMemory.open(Path(tmp) / name, embedder=args.embedder) as store:
                metrics, decisions, answers = evaluate_policy(
                    episodes, policy, store, answerer, k=args.k, manager_k=args.manager_k
                )
            results["policies"][name] = metrics
            for kind, rows in (("ops", decisions), ("answers", answers)):
                (out / f"{kind}_{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(results_table(results))
    _plot(out / "results.png", results)
    return results


def run(args: argparse.Namespace) -> int:
    results = run_bench(args)
    if args.json:
        print(json.dumps(results))
    else:
        print(results_table(results))
        print(args.out)
    return 0
