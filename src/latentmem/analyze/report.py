"""The analysis report: one Markdown file beside its plots, written from the run's summary, saying what
was measured and what it does not show."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from latentmem.analyze.taxonomy import ERROR_TYPES

CAVEATS = """\
What this shows: where this weaver's latents go in on these examples, what they resemble in the
reasoner's vocabulary, whether they fall into separable groups, and how accuracy and the kinds of errors
move when one group is taken away. What it does not show: why. Nearest tokens and the logit lens read a
latent out of context (the reasoner reads it through all its layers); clusters are groups by direction,
and a cluster that matters for accuracy is not thereby "planning" or "working" memory; an ablation that
changes a completion also changes every later insertion point, so its effect is on the whole
continuation. With few examples, differences of a few points are noise."""


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += [
        "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", "\\n") for c in r) + " |" for r in rows
    ]
    return "\n".join(lines)


def _tokens(pairs: list[tuple[str, int]]) -> str:
    return ", ".join(f"`{t!r}`×{n}" for t, n in pairs)


def write_report(path: Path, summary: dict[str, Any]) -> Path:
    """Write `report.md` from a `run_analysis` summary; plots are linked by their paths in the run folder."""
    cfg, tr, figs = summary["config"], summary["trace"], summary["plots"]
    parts = [
        "# Latent memory analysis",
        f"Model `{cfg['model']}` with MemGen weights `{cfg['memgen']}`, task `{cfg['task']}` "
        f"({cfg['split']} split, {tr['examples']} examples), seed {cfg['seed']}. "
        f"Versions: {', '.join(f'{k} {v}' for k, v in summary['versions'].items()) or 'n/a'}; "
        "the rest are in `run.json`.",
        "## Traces",
        _table(
            [
                "accuracy",
                "inference insertions / example",
                "candidates / example",
                "invocation rate",
                "ended at EOS",
            ],
            [
                [
                    tr["accuracy"],
                    tr["inference_insertions_per_example"],
                    tr["candidates_per_example"],
                    tr["invocation_rate"],
                    f"{tr['stopped_at_eos']} / {tr['examples']}",
                ]
            ],
        ),
        "Outcomes: " + ", ".join(f"{t} {tr['errors'][t]}" for t in ERROR_TYPES) + ".",
    ]
    parts += [f"![{name}]({figs[name]})" for name in ("insertion positions", "trigger probability",
                                                       "invocation and correctness")]  # fmt: skip
    norms = summary["norms"]
    parts += [
        "## What the latents are near",
        f"Mean latent norm {norms['latents_mean']}, against a mean token-embedding norm of "
        f"{norms['tokens_mean']} (5th-95th percentile {norms['tokens_p5_p95'][0]}-{norms['tokens_p5_p95'][1]}). "
        "Every latent's nearest tokens (cosine to the input embeddings) and logit-lens tokens are in "
        "`traces.jsonl`; the first latent of the first examples:",
        _table(
            ["example", "completion", "nearest", "logit lens"],
            [
                [
                    e["index"],
                    e["completion"][:60],
                    ", ".join(repr(t) for t, _ in e["first_latent"]["nearest"]) if e["first_latent"] else "",
                    ", ".join(repr(t) for t, _ in e["first_latent"]["lens"]) if e["first_latent"] else "",
                ]
                for e in summary["examples"]
            ],
        ),
        f"![latent norms]({figs['latent norms']})",
    ]
    att = summary["attention"]
    if att is not None:
        peak_p, peak_i = max(att["prompt"]), max(att["inference"])
        parts += [
            f"Attention from answer tokens ({att['queries']} slots) to latents, per layer: at most "
            f"{peak_p:.3f} on prompt latents and {peak_i:.3f} on inference latents, against a uniform "
            f"share of {att['uniform']:.3f} (the latent slots' share of what each token sees).",
            f"![attention to latents]({figs['attention to latents']})",
        ]
    if "clusters" in summary:
        cl = summary["clusters"]
        parts += [
            "## Clusters",
            f"{cl['method']}, k = {cl['k']} (silhouette by k: "
            + ", ".join(f"{k}: {s}" for k, s in cl["silhouettes"].items())
            + ").",
            _table(
                [
                    "cluster",
                    "latents",
                    "prompt / inference",
                    "examples",
                    "mean norm",
                    "nearest (top-1)",
                    "logit lens (top-1)",
                ],
                [
                    [
                        c["cluster"],
                        c["size"],
                        f"{c['kinds'].get('prompt', 0)} / {c['kinds'].get('inference', 0)}",
                        c["examples"],
                        c["mean_norm"],
                        _tokens(c["nearest"][:4]),
                        _tokens(c["lens"][:4]),
                    ]
                    for c in cl["per_cluster"]
                ],
            ),
            f"![clusters]({figs['clusters']})",
        ]
    if "ablations" in summary:
        parts += [
            "## Ablations",
            "Each row re-generates every example with the named latents removed (their slots skipped) or "
            "replaced; `changed` counts completions that differ from the unablated ones, `latents` the "
            "latents the ablation touched.",
            _table(
                ["ablation", "accuracy", "change", "changed", "latents", *ERROR_TYPES],
                [
                    [
                        a["name"],
                        a["accuracy"],
                        f"{a['delta']:+.4f}",
                        a["changed"],
                        a["slots"],
                        *(a["errors"][t] for t in ERROR_TYPES),
                    ]
                    for a in summary["ablations"]
                ],
            ),
            f"![ablations]({figs['ablations']})",
        ]
    parts += ["## What this does and does not show", CAVEATS]
    path.write_text("\n\n".join(parts) + "\n")
    return path
