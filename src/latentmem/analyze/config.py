"""What an analysis run reads and does: `AnalyzeConfig`, and the error every analysis step raises."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from latentmem.config import Config, require
from latentmem.errors import LatentMemError

ClusterMethod = Literal["kmeans", "agglomerative"]
AblationMode = Literal["remove", "mean", "zero"]


class AnalysisError(LatentMemError):
    """An analysis cannot run on what it was given (too few latents to cluster, a trace without latents,
    a missing optional package); the message says what to change."""


@dataclass
class ClusterConfig(Config):
    """How the latents are clustered: k fixed, or chosen in [2, k_max] by the best silhouette."""

    method: ClusterMethod = "kmeans"
    k: int = 0  # 0 = choose by silhouette
    k_max: int = 8

    def validate(self) -> None:
        require(self.k == 0 or self.k >= 2, "clusters.k", f"must be 0 (choose) or >= 2, got {self.k}")
        require(self.k_max >= 2, "clusters.k_max", f"must be >= 2, got {self.k_max}")


@dataclass
class AnalyzeConfig(Config):
    """One analysis of a saved MemGen model on a task (see `latentmem.analyze.run.run_analysis`)."""

    model: str = "smollm2-135m-instruct"  # the reasoner the MemGen model was trained on
    memgen: str = ""  # a saved MemGen model (`LatentMemoryModel.save_pretrained`)
    task: str = "arithmetic"
    task_args: dict[str, Any] = field(default_factory=dict)
    split: Literal["train", "test"] = "test"
    n: int = 100  # examples (0 = the whole split)
    seed: int = 0  # draws the examples, k-means starts and the random ablations
    batch_size: int = 16
    max_new_tokens: int = 0  # 0 = the task's own
    top_k: int = 5  # nearest vocabulary tokens recorded per latent
    clusters: ClusterConfig = field(default_factory=ClusterConfig)
    cluster: bool = True  # cluster the latents (scikit-learn)
    ablate: bool = True  # cluster and whole-memory ablations (one more generation pass each)
    ablation_modes: list[AblationMode] = field(default_factory=lambda: ["remove", "mean"])
    out: str = "runs/analyze"

    def validate(self) -> None:
        require(bool(self.memgen), "memgen", "name a saved MemGen model directory (--memgen DIR)")
        require(self.n >= 0, "n", f"must be >= 0 (0 = all), got {self.n}")
        require(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
        require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        require(self.max_new_tokens >= 0, "max_new_tokens", f"must be >= 0, got {self.max_new_tokens}")
        require(self.top_k >= 1, "top_k", f"must be >= 1, got {self.top_k}")
        require(
            len(set(self.ablation_modes)) == len(self.ablation_modes),
            "ablation_modes",
            f"listed twice in {self.ablation_modes}",
        )
