"""Injection: a chosen memory vector becomes the input embedding of a forced `<|memory_pad|>`.

The projector is the twin of the embedding lookup: where a token id selects a row of the embedding
matrix, a memory vector (M,) goes through a small MLP into the model's input space: m = `slots` input
embeddings (m, D), which fill the m consecutive `<|memory_pad|>` of one recall (m = 1: the seed's single
slot). `inject` is the one splicing rule, used by both the training forward and generation, so the two
cannot disagree.
"""

from __future__ import annotations

import torch
from torch import nn

from latentmem.recall.errors import BankDimensionError


class MemoryProjector(nn.Module):
    """Memory vectors (P, M) -> input embeddings (P, slots, D): Linear (M -> width) -> GELU -> Linear
    (width -> slots * D), then `out_scale`.

    `width` (default D) is the projector's capacity: decoding an invented name from one vector may need
    more than a D-wide bottleneck. `out_scale` is set to the typical norm of the model's token embeddings
    (see `match_embedding_norm`), so an injected memory starts at the input scale the model is used to
    instead of an arbitrary one.
    """

    def __init__(self, memory_dim: int, hidden_size: int, *, slots: int = 1, width: int = 0) -> None:
        super().__init__()
        if slots < 1:
            raise BankDimensionError(f"a memory fills at least one slot, got slots={slots}")
        self.memory_dim, self.hidden_size, self.slots = memory_dim, hidden_size, slots
        self.width = width or hidden_size
        self.fc1 = nn.Linear(memory_dim, self.width)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(self.width, slots * hidden_size)
        self.out_scale = nn.Parameter(torch.tensor(1.0))

    def match_embedding_norm(self, embedding: torch.Tensor) -> None:
        """Scale outputs so that unit memory vectors map to about the mean row norm of `embedding` (V, D)."""
        with torch.no_grad():
            probe = torch.nn.functional.normalize(torch.randn(256, self.memory_dim), dim=-1)
            out = self.fc2(self.act(self.fc1(probe.to(self.fc1.weight))))
            current = out.unflatten(-1, (self.slots, self.hidden_size)).norm(dim=-1).mean()
            self.out_scale.fill_(float(embedding.float().norm(dim=-1).mean() / current))

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        """(P, M) unit memory vectors -> (P, slots, D) input embeddings."""
        if vectors.shape[-1] != self.memory_dim:
            raise BankDimensionError(
                f"memory vectors have dimension {vectors.shape[-1]} but the projector expects {self.memory_dim}"
            )
        vectors = vectors.to(self.fc1.weight)
        out = self.out_scale * self.fc2(self.act(self.fc1(vectors)))
        return out.unflatten(-1, (self.slots, self.hidden_size))


def inject(embeds: torch.Tensor, slots: torch.Tensor, memory_embeds: torch.Tensor) -> torch.Tensor:
    """Replace the input embeddings at `slots` with memory embeddings (differentiable, out of place).

    Args:
        embeds: (B, T, D) token input embeddings.
        slots: (B, T) bool, True at each `<|memory_pad|>` to fill.
        memory_embeds: (P, D) projected memories, P = slots.sum(), in row-major order of the slots; an
            m-slot memory's (R, m, D) projection, flattened to (R * m, D), fills its m consecutive pads.
    Returns:
        (B, T, D): `embeds` with row-major slot i holding `memory_embeds[i]`.
    """
    memory_embeds = memory_embeds.flatten(0, -2)
    n = int(slots.sum())
    if memory_embeds.shape != (n, embeds.shape[-1]):
        raise BankDimensionError(
            f"{n} memory slots of width {embeds.shape[-1]} but memory embeddings of shape "
            f"{tuple(memory_embeds.shape)}"
        )
    return embeds.masked_scatter(slots.unsqueeze(-1), memory_embeds.to(embeds.dtype))
