"""Instruments for looking inside generative latent memory (`latentmem analyze`): where the trigger
fires, what each latent is near, how latents cluster, and what removing a cluster does to a task."""

from __future__ import annotations

from typing import TYPE_CHECKING

from latentmem._lazy import lazy_package

# Imported on first use (`latentmem._lazy`): these modules import torch, which `latentmem --help` should not wait for.
if TYPE_CHECKING:
    from latentmem.analyze.ablate import (
        Ablation,
        AblationResult,
        ClusterAblation,
        RandomSameNorm,
        RemoveAll,
        ShuffleExamples,
        run_ablation,
        standard_ablations,
    )
    from latentmem.analyze.capture import Block, Candidate, ExampleTrace, SlotRef, Trace, capture
    from latentmem.analyze.clusters import Clustering, cluster_latents, project_2d
    from latentmem.analyze.config import AnalysisError, AnalyzeConfig, ClusterConfig
    from latentmem.analyze.neighbors import LatentReading, embedding_norms, read_latents
    from latentmem.analyze.run import run_analysis
    from latentmem.analyze.taxonomy import ERROR_TYPES, classify

__all__ = [
    "ERROR_TYPES",
    "Ablation",
    "AblationResult",
    "AnalysisError",
    "AnalyzeConfig",
    "Block",
    "Candidate",
    "ClusterAblation",
    "ClusterConfig",
    "Clustering",
    "ExampleTrace",
    "LatentReading",
    "RandomSameNorm",
    "RemoveAll",
    "ShuffleExamples",
    "SlotRef",
    "Trace",
    "capture",
    "classify",
    "cluster_latents",
    "embedding_norms",
    "project_2d",
    "read_latents",
    "run_ablation",
    "run_analysis",
    "standard_ablations",
]

lazy_package(__name__)
