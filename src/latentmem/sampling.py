"""Next-token selection shared by every generator in latentmem (MemGen decoding, recall memory heads).

One set of processors (temperature, top-k, top-p) and one selection rule (greedy or multinomial), applied
to any row of logits: token logits `(B, V)` or memory logits `(B, N_memories)` alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from latentmem.config import Config, require


@dataclass
class SamplingConfig(Config):
    """How to pick the next item from logits. `do_sample=False` is greedy and ignores the rest."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0 = no top-k filter
    top_p: float = 1.0  # 1.0 = no nucleus filter

    def validate(self) -> None:
        require(
            self.temperature > 0,
            "temperature",
            f"must be > 0, got {self.temperature}; use do_sample=false for greedy",
        )
        require(self.top_k >= 0, "top_k", f"must be >= 0 (0 disables it), got {self.top_k}")
        require(0 < self.top_p <= 1, "top_p", f"must be in (0, 1] (1 disables it), got {self.top_p}")


def process_logits(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """Apply temperature, then top-k, then top-p to `logits` (B, V); filtered entries become -inf.

    Greedy configs are returned unchanged: argmax is invariant to all three processors.
    """
    if not cfg.do_sample:
        return logits
    logits = logits.float() / cfg.temperature
    vocab = logits.shape[-1]
    if 0 < cfg.top_k < vocab:
        kth = torch.topk(logits, cfg.top_k, dim=-1).values[..., -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the mass strictly before it already reaches top_p (the top token always stays)
        drop_sorted = (probs.cumsum(-1) - probs) >= cfg.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def select_next(
    logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Pick one index per row of `logits` (B, V) -> (B,) long: argmax, or a draw from the processed logits."""
    if not cfg.do_sample:
        return logits.argmax(dim=-1)
    probs = process_logits(logits, cfg).softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
