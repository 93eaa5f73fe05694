"""The analysis plots, as PNG files (matplotlib's Agg backend: no display needed). Each function writes
one file and returns its path."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from latentmem.analyze.ablate import AblationResult
from latentmem.analyze.attention import LatentAttention
from latentmem.analyze.capture import Trace
from latentmem.analyze.config import AnalysisError
from latentmem.analyze.taxonomy import ERROR_TYPES


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise AnalysisError(
            "plots need matplotlib: pip install 'latentmem[analyze]' (or matplotlib==3.10.8)"
        ) from None
    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def insertion_positions(trace: Trace, path: Path) -> Path:
    """Histogram of the generated-token indices after which inference latents went in."""
    plt = _pyplot()
    steps = [s for e in trace.examples for s in e.insertion_steps]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(steps, bins=max(1, min(40, len(set(steps)))), color="tab:blue")
    ax.set(xlabel="answer token index of the insertion", ylabel="insertions",
           title=f"Where latents were inserted ({len(steps)} inference insertions)")  # fmt: skip
    return _save(fig, path)


def trigger_probability(trace: Trace, path: Path) -> Path:
    """The trigger's probability at every candidate delimiter, against its position in the answer."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for inserted, colour, label in ((True, "tab:green", "inserted"), (False, "tab:red", "not inserted")):
        pts = [
            (c.step, c.probability) for e in trace.examples for c in e.candidates if c.inserted == inserted
        ]
        if pts:
            ax.scatter(*zip(*pts, strict=True), s=10, alpha=0.6, color=colour, label=label)
    ax.set(xlabel="answer token index of the delimiter", ylabel="trigger probability", ylim=(-0.05, 1.05),
           title="The trigger along the answer")  # fmt: skip
    if ax.collections:
        ax.legend(loc="lower right")
    return _save(fig, path)


def invocation_vs_correctness(trace: Trace, path: Path) -> Path:
    """Mean inference insertions per example, and the share of candidates inserted at, for wrong and
    right completions."""
    plt = _pyplot()
    groups = {
        "wrong": [e for e in trace.examples if e.score < 1],
        "right": [e for e in trace.examples if e.score >= 1],
    }
    mean_ins = [sum(len(e.insertion_steps) for e in g) / max(len(g), 1) for g in groups.values()]
    rate = []
    for g in groups.values():
        cands = [c for e in g for c in e.candidates]
        rate.append(sum(c.inserted for c in cands) / max(len(cands), 1))
    fig, (a, b) = plt.subplots(1, 2, figsize=(7, 3.2))
    labels = [f"{k} (n={len(g)})" for k, g in groups.items()]
    a.bar(labels, mean_ins, color=["tab:red", "tab:green"])
    a.set(ylabel="inference insertions / example", title="Insertions")
    b.bar(labels, rate, color=["tab:red", "tab:green"])
    b.set(ylabel="inserted / candidates", ylim=(0, 1.05), title="Invocation rate")
    return _save(fig, path)


def latent_norms(norms: torch.Tensor, token_norms: torch.Tensor, path: Path) -> Path:
    """Histograms of the latents' norms (N,) and of the token embeddings' norms (V,)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(token_norms.numpy(), bins=50, alpha=0.6, density=True, label="token embeddings")
    ax.hist(norms.numpy(), bins=50, alpha=0.6, density=True, label="latents")
    ax.set(xlabel="L2 norm", ylabel="density", title="Latent norms against token embedding norms")
    ax.legend()
    return _save(fig, path)


def attention_to_latents(attention: LatentAttention, path: Path) -> Path:
    """Mean attention mass on prompt and on inference latents per layer, against the uniform share."""
    plt = _pyplot()
    layers = list(range(attention.prompt.shape[0]))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(layers, attention.prompt.numpy(), marker="o", label="prompt latents")
    ax.plot(layers, attention.inference.numpy(), marker="x", label="inference latents")
    ax.axhline(attention.uniform, color="k", linestyle="--", label="uniform share (all latents)")
    ax.set(xlabel="layer", ylabel="attention mass", title="Attention from answer tokens to latents")
    ax.legend()
    return _save(fig, path)


def cluster_projection(points: torch.Tensor, labels: torch.Tensor, kinds: Sequence[str], path: Path) -> Path:
    """The latents' 2-D projection (N, 2), coloured by cluster; prompt latents round, inference crosses."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    cmap = plt.get_cmap("tab10")
    for kind, marker in (("prompt", "o"), ("inference", "x")):
        idx = [i for i, k in enumerate(kinds) if k == kind]
        if idx:
            ax.scatter(points[idx, 0], points[idx, 1], c=[cmap(int(labels[i]) % 10) for i in idx],
                       marker=marker, s=14, alpha=0.7, label=f"{kind} latents")  # fmt: skip
    ax.set(xlabel="PC 1", ylabel="PC 2", title=f"Latents by cluster (k={int(labels.max()) + 1})")
    ax.legend(loc="best")
    return _save(fig, path)


def ablations(results: Sequence[AblationResult], baseline: float, path: Path) -> Path:
    """Accuracy under each ablation (with the unablated accuracy as a line), and its error types."""
    if not results:
        raise AnalysisError("no ablation results to plot")
    plt = _pyplot()
    names = [r.name for r in results]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 0.45 * len(names) + 1.8), sharey=True)
    a.barh(names, [r.accuracy for r in results], color="tab:blue")
    a.axvline(baseline, color="k", linestyle="--", label=f"unablated {baseline:.2f}")
    a.set(xlabel="accuracy", xlim=(0, 1.05), title="Accuracy")
    a.legend(loc="lower right")
    a.invert_yaxis()
    left = [0] * len(results)
    for t in ERROR_TYPES:
        values = [r.errors[t] for r in results]
        b.barh(names, values, left=left, label=t)
        left = [x + v for x, v in zip(left, values, strict=True)]
    b.set(xlabel="examples", title="Outcome")
    b.legend(loc="lower right", fontsize=7)
    return _save(fig, path)
