"""One analysis of a saved MemGen model on a task, as a run folder.

    out/config.yaml, run.json        the resolved `AnalyzeConfig`, seed, git hash, package versions
    out/traces.jsonl                 per example: completion, score, trigger candidates, insertions, and
                                     per inserted latent its nearest tokens, logit-lens tokens and norm
    (in summary.json)                attention mass from answer tokens on latents, per layer
    out/latents.safetensors          latents (N, D) and index (N, 3) = (example, block, slot)
    out/clusters.json                k, silhouettes, per cluster: size, kinds, slots, nearest tokens
    out/ablations.json               per ablation: accuracy, its change, changed completions, error types
    out/summary.json, report.md      everything above in one place; the report embeds the plots
    out/plots/*.png                  insertion positions, trigger probability, invocation against
                                     correctness, latent norms, attention to latents per layer,
                                     cluster projection, ablations

Greedy decoding, seeded k-means and seeded random ablations: the same config gives the same files.
"""

from __future__ import annotations

import json
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

import latentmem.analyze.plots as plots
from latentmem.analyze.ablate import error_counts, run_ablation, standard_ablations
from latentmem.analyze.attention import latent_attention
from latentmem.analyze.capture import ExampleTrace, SlotRef, Trace, capture
from latentmem.analyze.clusters import Clustering, cluster_latents, project_2d
from latentmem.analyze.config import AnalyzeConfig
from latentmem.analyze.neighbors import LatentReading, embedding_norms, read_latents
from latentmem.analyze.report import write_report
from latentmem.eval.task import get_task
from latentmem.memgen import LatentMemoryModel
from latentmem.models import load_model
from latentmem.runs import RunDir
from latentmem.seeding import seed_everything

ANALYSIS_PACKAGES = ("scikit-learn", "matplotlib")


def _versions() -> dict[str, str]:
    out = {}
    for name in ANALYSIS_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def _readings_by_example(
    refs: list[SlotRef], readings: list[LatentReading]
) -> dict[int, list[list[dict[str, Any]]]]:
    """Readings regrouped as example -> block -> slot."""
    out: dict[int, list[list[dict[str, Any]]]] = {}
    for ref, reading in zip(refs, readings, strict=True):
        blocks = out.setdefault(ref.example, [])
        while len(blocks) <= ref.block:
            blocks.append([])
        blocks[ref.block].append(reading.as_dict())
    return out


def cluster_summary(
    trace: Trace, refs: list[SlotRef], readings: list[LatentReading], clustering: Clustering, top: int = 8
) -> list[dict[str, Any]]:
    """Per cluster: size, how many prompt / inference latents, which slots, mean norm, and its members'
    most frequent nearest tokens (top-1 by cosine) and logit-lens tokens."""
    kinds = trace.kinds(refs)
    out = []
    for c in range(clustering.k):
        members = [i for i, label in enumerate(clustering.labels.tolist()) if label == c]
        out.append(
            {
                "cluster": c,
                "size": len(members),
                "kinds": dict(Counter(kinds[i] for i in members)),
                "slots": dict(sorted(Counter(refs[i].slot for i in members).items())),
                "examples": len({refs[i].example for i in members}),
                "mean_norm": round(sum(readings[i].norm for i in members) / max(len(members), 1), 4),
                "nearest": Counter(readings[i].nearest[0][0] for i in members).most_common(top),
                "lens": Counter(readings[i].lens[0][0] for i in members).most_common(top),
            }
        )
    return out


def _trace_stats(trace: Trace) -> dict[str, Any]:
    n = max(len(trace.examples), 1)
    cands = [c for e in trace.examples for c in e.candidates]
    return {
        "examples": len(trace.examples),
        "accuracy": round(trace.accuracy, 4),
        "inference_insertions_per_example": round(sum(len(e.insertion_steps) for e in trace.examples) / n, 3),
        "candidates_per_example": round(len(cands) / n, 3),
        "invocation_rate": round(sum(c.inserted for c in cands) / max(len(cands), 1), 4),
        "stopped_at_eos": sum(e.stopped for e in trace.examples),
    }


def run_analysis(cfg: AnalyzeConfig, model: LatentMemoryModel | None = None) -> dict[str, Any]:
    """Run the analysis `cfg` describes into `cfg.out` (see the module docstring); returns the summary.

    `model`: an already loaded MemGen model to analyse instead of loading `cfg.memgen` onto `cfg.model`.
    """
    seed_everything(cfg.seed)
    out = Path(cfg.out)
    RunDir.create(out, cfg, cfg.seed)
    plot_dir = out / "plots"
    plot_dir.mkdir(exist_ok=True)
    if model is None:
        base, tok = load_model(cfg.model, seed=cfg.seed)
        model = LatentMemoryModel.from_pretrained(cfg.memgen, base, tok)
    model.eval()
    task = get_task(cfg.task, **cfg.task_args)
    examples = task.split(cfg.split, cfg.n or None, seed=cfg.seed)
    gen = {"batch_size": cfg.batch_size, "max_new_tokens": cfg.max_new_tokens or None}

    trace = capture(model, task, examples, **gen)
    latents, refs = trace.latents()
    readings = read_latents(model, latents, cfg.top_k)
    by_example = _readings_by_example(refs, readings)

    def latent_fields(e: ExampleTrace) -> dict[str, Any]:
        return {"latents": by_example.get(e.index, [])}

    trace.write_jsonl(out / "traces.jsonl", latent_fields)
    index = torch.tensor([[r.example, r.block, r.slot] for r in refs], dtype=torch.long)
    save_file({"latents": latents.contiguous(), "index": index}, str(out / "latents.safetensors"))
    norms = torch.tensor([r.norm for r in readings])
    token_norms = embedding_norms(model)
    figures = {
        "insertion positions": plots.insertion_positions(trace, plot_dir / "insertion_positions.png"),
        "trigger probability": plots.trigger_probability(trace, plot_dir / "trigger_probability.png"),
        "invocation and correctness": plots.invocation_vs_correctness(
            trace, plot_dir / "invocation_vs_correctness.png"
        ),
        "latent norms": plots.latent_norms(norms, token_norms, plot_dir / "latent_norms.png"),
    }
    attention = latent_attention(model, task, examples, trace)
    if attention is not None:
        figures["attention to latents"] = plots.attention_to_latents(
            attention, plot_dir / "attention_to_latents.png"
        )
    summary: dict[str, Any] = {
        "config": cfg.to_dict(),
        "versions": _versions(),
        "trace": {**_trace_stats(trace), "errors": error_counts(task, examples, trace)},
        "norms": {
            "latents_mean": round(float(norms.mean()), 4),
            "tokens_mean": round(float(token_norms.mean()), 4),
            "tokens_p5_p95": [round(float(q), 4) for q in token_norms.quantile(torch.tensor([0.05, 0.95]))],
        },
        "attention": attention.to_dict() if attention is not None else None,
        "examples": [
            {
                "index": e.index,
                "prompt": e.prompt,
                "completion": e.completion,
                "score": e.score,
                "insertions": e.insertion_steps,
                "first_latent": by_example[e.index][0][0] if by_example.get(e.index) else None,
            }
            for e in trace.examples[:3]
        ],
    }

    clustering = None
    if cfg.cluster:
        clustering = cluster_latents(latents, cfg.clusters, cfg.seed)
        summary["clusters"] = {
            **clustering.to_dict(),
            "per_cluster": cluster_summary(trace, refs, readings, clustering),
        }
        (out / "clusters.json").write_text(json.dumps(summary["clusters"], indent=2) + "\n")
        figures["clusters"] = plots.cluster_projection(
            project_2d(latents), clustering.labels, trace.kinds(refs), plot_dir / "clusters.png"
        )

    if cfg.ablate:
        results = [
            run_ablation(model, task, examples, trace, ablation, **gen)[0]
            for ablation in standard_ablations(trace, clustering, cfg.ablation_modes, cfg.seed)
        ]
        summary["ablations"] = [r.to_dict() for r in results]
        (out / "ablations.json").write_text(json.dumps(summary["ablations"], indent=2) + "\n")
        figures["ablations"] = plots.ablations(results, trace.accuracy, plot_dir / "ablations.png")

    summary["plots"] = {name: str(path.relative_to(out)) for name, path in figures.items()}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    write_report(out / "report.md", summary)
    return summary
