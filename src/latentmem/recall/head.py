"""The memory head: the twin of `lm_head` for memories.

`lm_head` maps the last hidden state h (B, D) to one logit per vocabulary token; the memory head maps the
hidden state at `<recall>` to one logit per memory entry:

    q = normalize(W h + b)            (B, M)   the query, in the bank's vector space
    logits = s * q @ V^T              (B, N)   V (N, M): the bank's unit vectors; s: a learned scale

Raw cosines lie in [-1, 1], so a softmax over them is nearly uniform (the defect of the public
implementation: sampling with top-k picks almost at random among the k). The learned scale s (a CLIP-style
inverse temperature, trained by the contrastive loss and clamped to `max_scale`) makes memory logits as
peaked as token logits, so temperature / top-k / top-p mean the same thing for both.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from latentmem.recall.bank import MemoryBank


class MemoryHead(nn.Module):
    """`<recall>` hidden state (B, D) -> query (B, M) -> scaled cosine logits against a bank."""

    def __init__(
        self, hidden_size: int, memory_dim: int, *, init_scale: float = 20.0, max_scale: float = 100.0
    ) -> None:
        super().__init__()
        self.hidden_size, self.memory_dim, self.max_scale = hidden_size, memory_dim, max_scale
        self.proj = nn.Linear(hidden_size, memory_dim)
        if hidden_size == memory_dim:
            # Memories written from the model's own hidden states live in the hidden space already: start
            # from the identity so that new memories are retrievable before any training.
            with torch.no_grad():
                self.proj.weight.copy_(torch.eye(hidden_size))
                self.proj.bias.zero_()
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale)))

    @property
    def scale(self) -> torch.Tensor:
        """The logit scale s, a scalar tensor in (0, max_scale]."""
        return self.log_scale.exp().clamp(max=self.max_scale)

    def raw_query(self, hidden: torch.Tensor) -> torch.Tensor:
        """The unnormalised projection W h + b: (B, D) -> (B, M). The MSE objective regresses this."""
        return self.proj(hidden.to(self.proj.weight.dtype))

    def query(self, hidden: torch.Tensor) -> torch.Tensor:
        """The unit query vectors: (B, D) -> (B, M)."""
        return F.normalize(self.raw_query(hidden), dim=-1)

    def logits(self, hidden: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        """Scaled cosine logits of `hidden` (B, D) against unit `vectors` (N, M) -> (B, N) float32."""
        return (self.scale * self.query(hidden) @ vectors.to(self.proj.weight).T).float()

    def score_bank(
        self, hidden: torch.Tensor, bank: MemoryBank, *, full_max: int = 4096, candidates: int = 64
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Memory logits over `bank` for `hidden` (B, D) -> (logits (B, C), memory ids (B, C)).

        Banks of at most `full_max` entries are scored exactly and whole (C = N, the same logits training
        uses). Larger banks are searched through the bank's index for the top `candidates` by cosine
        (C = candidates; padding slots get id -1 and logit -inf), so a recall never scans or copies a
        large bank. Both give `s * cos`, so processors with top_k <= candidates behave identically.
        """
        bank.require_dim(self.memory_dim, "the memory head's query")
        bank.require_nonempty()
        if len(bank) <= full_max:
            ids, vectors = bank.matrix()
            logits = self.logits(hidden, vectors.to(hidden.device))
            return logits, ids.to(hidden.device).expand(len(hidden), -1)
        cos, ids = bank.search(self.query(hidden), min(candidates, len(bank)))
        cos_t = torch.from_numpy(cos).to(hidden.device)
        logits = torch.where(torch.isfinite(cos_t), self.scale.detach().float() * cos_t, float("-inf"))
        return logits, torch.from_numpy(ids).to(hidden.device)
