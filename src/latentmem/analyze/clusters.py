"""Cluster the latents of a trace, the paper's route to functional kinds of latent memory.

Latents are clustered by direction: each is L2-normalised first (its nearest tokens depend on direction,
and norms are reported on their own). k is fixed or chosen in [2, k_max] by the best silhouette score. A
latent belongs to the cluster of its nearest centroid, both for the clustered latents and for the new
latents an ablation run writes, so one rule decides membership everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from latentmem.analyze.config import AnalysisError, ClusterConfig


@dataclass
class Clustering:
    """centroids (C, D) float32 in the normalised space; labels (N,) the clusters of the clustered latents;
    silhouettes: the silhouette score of each k tried (only the chosen k when k was fixed)."""

    centroids: torch.Tensor
    labels: torch.Tensor
    silhouettes: dict[int, float]
    method: str

    @property
    def k(self) -> int:
        return self.centroids.shape[0]

    def assign(self, latents: torch.Tensor) -> torch.Tensor:
        """Cluster of each latent (..., D) -> (...) long: its nearest centroid after normalisation."""
        x = _unit(latents.float())
        c = self.centroids.to(x.device)
        return torch.cdist(x.reshape(-1, x.shape[-1]), c).argmin(-1).reshape(x.shape[:-1])

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "k": self.k,
            "silhouettes": {str(k): round(s, 4) for k, s in self.silhouettes.items()},
            "sizes": torch.bincount(self.labels, minlength=self.k).tolist(),
        }


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _sklearn():
    try:
        from sklearn import cluster, metrics
    except ImportError:
        raise AnalysisError(
            "clustering needs scikit-learn: pip install 'latentmem[analyze]' (or scikit-learn==1.9.1)"
        ) from None
    return cluster, metrics


def _fit(points: np.ndarray, k: int, method: str, seed: int) -> np.ndarray:
    """Cluster labels (N,) of `points` (N, D) into `k` clusters."""
    cluster, _ = _sklearn()
    if method == "kmeans":
        return cluster.KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(points)
    return cluster.AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(points)


def cluster_latents(latents: torch.Tensor, cfg: ClusterConfig, seed: int = 0) -> Clustering:
    """Cluster latents (N, D) per `cfg` (see the module docstring); deterministic under `seed`."""
    _, metrics = _sklearn()
    points = _unit(latents.float()).cpu().numpy().astype(np.float64)
    distinct = len(np.unique(points.round(6), axis=0))
    if distinct < 3:
        raise AnalysisError(
            f"only {distinct} distinct latents to cluster (need 3 or more); run more examples (--n)"
        )
    ks = [cfg.k] if cfg.k else list(range(2, min(cfg.k_max, distinct - 1) + 1))
    if cfg.k and cfg.k >= distinct:
        raise AnalysisError(f"clusters.k = {cfg.k} needs more than {distinct} distinct latents; lower k")
    fits, silhouettes = {}, {}
    for k in ks:
        labels = _fit(points, k, cfg.method, seed)
        fits[k] = labels
        # a degenerate fit (fewer distinct labels than k) has no silhouette; it is never the choice
        silhouettes[k] = (
            float(metrics.silhouette_score(points, labels)) if len(set(labels.tolist())) > 1 else -1.0
        )
    best = max(ks, key=lambda k: (silhouettes[k], -k))  # ties go to the smaller k
    labels = torch.as_tensor(fits[best], dtype=torch.long)
    centroids = torch.stack(
        [torch.as_tensor(points[labels.numpy() == c].mean(0), dtype=torch.float32) for c in labels.unique()]
    )
    clustering = Clustering(centroids=centroids, labels=labels, silhouettes=silhouettes, method=cfg.method)
    # membership is nearest-centroid everywhere (module docstring), for the clustered latents too
    clustering.labels = clustering.assign(latents.cpu())
    return clustering


def project_2d(latents: torch.Tensor) -> torch.Tensor:
    """The normalised latents (N, D) projected on their first two principal components: (N, 2)."""
    x = _unit(latents.float().cpu())
    x = x - x.mean(0, keepdim=True)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    return x @ v[:2].T if v.shape[0] >= 2 else torch.cat([x @ v.T, torch.zeros(x.shape[0], 1)], 1)
