"""Injection: a chosen memory vector becomes the input embedding of a forced `<|memory_pad|>`.

The projector is the twin of the embedding lookup: where a token id selects a row of the embedding
matrix, a memory vector (M,) goes through a small MLP into the model's input space (D,). `inject` is the
one splicing rule, used by both the training forward and generation, so the two cannot disagree.
"""

from __future__ import annotations

import torch
from torch import nn

from latentmem.recall.errors import BankDimensionError


class MemoryProjector(nn.Module):
    """Memory vectors (P, M) -> input embeddings (P, D): Linear -> GELU -> Linear, then `out_scale`.

    `out_scale` is set to the typical norm of the model's token embeddings (see `match_embedding_norm`), so
    an injected memory starts at the input scale the model is used to instead of an arbitrary one.
    """

    def __init__(self, memory_dim: int, hidden_size: int) -> None:
        super().__init__()
        self.memory_dim, self.hidden_size = memory_dim, hidden_size
        self.fc1 = nn.Linear(memory_dim, hidden_size)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_size, hidden_size)
        self.out_scale = nn.Parameter(torch.tensor(1.0))

    def match_embedding_norm(self, embedding: torch.Tensor) -> None:
        """Scale outputs so that unit memory vectors map to about the mean row norm of `embedding` (V, D)."""
        with torch.no_grad():
            probe = torch.nn.functional.normalize(torch.randn(256, self.memory_dim), dim=-1)
            current = self.fc2(self.act(self.fc1(probe.to(self.fc1.weight)))).norm(dim=-1).mean()
            self.out_scale.fill_(float(embedding.float().norm(dim=-1).mean() / current))

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        if vectors.shape[-1] != self.memory_dim:
            raise BankDimensionError(
                f"memory vectors have dimension {vectors.shape[-1]} but the projector expects {self.memory_dim}"
            )
        vectors = vectors.to(self.fc1.weight)
        return self.out_scale * self.fc2(self.act(self.fc1(vectors)))


def inject(embeds: torch.Tensor, slots: torch.Tensor, memory_embeds: torch.Tensor) -> torch.Tensor:
    """Replace the input embeddings at `slots` with memory embeddings (differentiable, out of place).

    Args:
        embeds: (B, T, D) token input embeddings.
        slots: (B, T) bool, True at each `<|memory_pad|>` to fill.
        memory_embeds: (P, D) projected memories, P = slots.sum(), in row-major order of the slots.
    Returns:
        (B, T, D): `embeds` with row-major slot i holding `memory_embeds[i]`.
    """
    n = int(slots.sum())
    if memory_embeds.shape != (n, embeds.shape[-1]):
        raise BankDimensionError(
            f"{n} memory slots of width {embeds.shape[-1]} but memory embeddings of shape "
            f"{tuple(memory_embeds.shape)}"
        )
    return embeds.masked_scatter(slots.unsqueeze(-1), memory_embeds.to(embeds.dtype))
