"""The memory trigger: at a delimiter, decide whether the weaver writes latents there.

Paper: p_j = sigmoid(T(H_<j)), d_j ~ Bernoulli(p_j), considered only at sentence-level delimiters. Our learned
trigger is a small MLP head on the reasoner's last hidden state at the delimiter token: the reasoner has
already computed that state, so a decision costs one tiny matmul, and no second model is kept in memory.
"""

from __future__ import annotations

import torch
from torch import nn

from latentmem.errors import ConfigError
from latentmem.memgen.config import TriggerConfig


def rule_decides(cfg: TriggerConfig, delimiter_count: torch.Tensor) -> torch.Tensor:
    """The decisions of a deterministic policy (always, never, every_n) at delimiters with 1-based counts
    `delimiter_count` (N,) -> (N,) bool. The one statement of these rules: training's insertion plan,
    generation's trigger and the benchmarks all ask here."""
    if cfg.policy == "always":
        return torch.ones_like(delimiter_count, dtype=torch.bool)
    if cfg.policy == "every_n":
        return delimiter_count % cfg.every_n == 0
    if cfg.policy == "never":
        return torch.zeros_like(delimiter_count, dtype=torch.bool)
    raise ConfigError(
        f"trigger.policy: {cfg.policy!r} is not a deterministic rule; a learned trigger decides"
    )


class Trigger(nn.Module):
    """Insert probabilities and decisions for candidate delimiters, under one of four policies."""

    def __init__(self, cfg: TriggerConfig, hidden_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.head: nn.Sequential | None = None
        if cfg.policy == "learned":
            self.head = nn.Sequential(
                nn.Linear(hidden_size, cfg.hidden_size), nn.GELU(), nn.Linear(cfg.hidden_size, 1)
            )
            with torch.no_grad():
                self.head[2].weight.mul_(0.1)
                self.head[2].bias.fill_(cfg.init_bias)

    def probs(self, hidden: torch.Tensor, delimiter_count: torch.Tensor) -> torch.Tensor:
        """Insert probability per candidate: `hidden` (N, D) states at the delimiters, `delimiter_count` (N,)
        the 1-based index of each delimiter among its row's delimiters. Returns (N,) float32."""
        if self.head is not None:
            return torch.sigmoid(self.head(hidden.float()).squeeze(-1))
        return rule_decides(self.cfg, delimiter_count.to(hidden.device)).float()

    def decide(
        self,
        hidden: torch.Tensor,
        delimiter_count: torch.Tensor,
        *,
        sample: bool,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(decisions (N,) bool, probs (N,)). Learned: a Bernoulli draw when `sample`, else p > threshold."""
        p = self.probs(hidden, delimiter_count)
        if self.head is None:
            return p > 0.5, p
        if sample:
            return torch.bernoulli(p, generator=generator).bool(), p
        return p > self.cfg.threshold, p

    @staticmethod
    def log_prob(probs: torch.Tensor, decisions: torch.Tensor) -> torch.Tensor:
        """log P(d | p) of Bernoulli decisions, elementwise, clamped away from log(0)."""
        eps = 1e-6
        p = probs.clamp(eps, 1 - eps)
        return torch.where(decisions, p.log(), (1 - p).log())

    def __repr__(self) -> str:
        extra = f", head={sum(p.numel() for p in self.parameters())} params" if self.head is not None else ""
        return f"Trigger(policy={self.cfg.policy}{extra})"
