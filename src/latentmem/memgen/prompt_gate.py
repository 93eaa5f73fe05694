"""The prompt gate: the weaver serves the prompts that look like the ones it was trained on, and the plain
reasoner answers the others.

Why (issue 13, retention): a trained weaver's latents go into every prompt whatever the task and carry the
trained task's answer format there (trained on object counting, the weaver answered a number word to every
navigate question). The reasoner is frozen, so a row that gets no latents is exactly the base model: unlike
a LoRA, which edits the reasoner for every prompt, a weaver can be switched off per prompt. The gate
decides once, at the prompt; a row it turns away gets neither prompt latents nor insertions while decoding.

How: out-of-distribution detection with deep nearest neighbours (Sun et al., 2022, "Out-of-distribution
detection with deep nearest neighbors"). A prompt's feature is the L2-normalised mean of the reasoner's
last-layer states over its valid tokens up to where the prompt latents go: the prefill computes those states
anyway, so a decision costs one (B, N) matmul. Its score is the cosine distance to its k-th nearest prompt in
the bank (the training prompts). The gate admits a prompt whose score is at most the threshold fitted so
that a share `trigger.prompt_accept` of the bank's own prompts, each scored against the others (leave one
out), would be admitted. It needs no negative examples, so nothing of the tasks it should turn away is
seen in fitting.

Fitting again adds to the bank (a sequence of tasks: each stage adds its prompts) and refits the threshold
over all of it; past `trigger.prompt_bank` prompts a seeded random subset is kept. An unfitted gate (empty
bank) admits every prompt. The gate is not trained by gradient and is not part of the trainable state: it is
saved beside it (`prompt_gate.safetensors`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from latentmem.errors import ConfigError, ModelLoadError
from latentmem.memgen.config import TriggerConfig

GATE_FILE = "prompt_gate.safetensors"
_CHUNK = 1024  # bank rows scored at once: a (chunk, N) similarity block, not (N, N)


def prompt_features(hidden: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, D) float32 unit vectors: the mean of `hidden` (B, T, D) over the slots `valid` (B, T) marks."""
    w = valid.to(torch.float32)[..., None]
    mean = (hidden.float() * w).sum(1) / w.sum(1).clamp(min=1.0)
    return nn.functional.normalize(mean, dim=-1)


class PromptGate(nn.Module):
    """Which prompts the weaver serves (see the module docstring). `bank` (N, D) unit features of the
    fitted prompts; `threshold` () the largest k-th-neighbour cosine distance admitted."""

    bank: torch.Tensor
    threshold: torch.Tensor

    def __init__(self, cfg: TriggerConfig, hidden_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("bank", torch.zeros(0, hidden_size))
        self.register_buffer("threshold", torch.tensor(float("inf")))

    @property
    def active(self) -> bool:
        """Whether the gate decides anything: `trigger.prompt: knn` and fitted."""
        return self.cfg.prompt == "knn" and self.bank.shape[0] > 0

    def scores(self, features: torch.Tensor, *, leave_one_out: bool = False) -> torch.Tensor:
        """(B,) cosine distance of each of `features` (B, D) to its k-th nearest bank prompt;
        `leave_one_out`: `features` is the bank itself, and each row skips its own entry."""
        bank = self.bank.to(features.dtype)
        k = min(self.cfg.prompt_k, bank.shape[0] - leave_one_out)
        out = []
        for start in range(0, len(features), _CHUNK):
            sims = features[start : start + _CHUNK] @ bank.T  # (c, N)
            if leave_one_out:
                rows = torch.arange(sims.shape[0], device=sims.device)
                sims[rows, rows + start] = -float("inf")
            out.append(1.0 - sims.topk(k, dim=1).values[:, -1])
        return torch.cat(out) if out else features.new_zeros(0)

    def admits(self, features: torch.Tensor) -> torch.Tensor:
        """(B,) bool: the prompts (features (B, D)) the weaver serves; every one when the gate is inactive."""
        if not self.active:
            return torch.ones(len(features), dtype=torch.bool, device=features.device)
        return self.scores(features) <= self.threshold

    def fit(self, features: torch.Tensor, seed: int = 0) -> dict[str, float]:
        """Add `features` (N, D) to the bank and refit the threshold; returns what was fitted."""
        bank = torch.cat([self.bank, features.to(self.bank)])
        if len(bank) <= self.cfg.prompt_k:
            raise ConfigError(
                f"trigger.prompt_k: the prompt gate needs more than {self.cfg.prompt_k} training prompts to "
                f"fit, got {len(bank)}; lower trigger.prompt_k or train on more rows"
            )
        if len(bank) > self.cfg.prompt_bank:
            keep = torch.randperm(len(bank), generator=torch.Generator().manual_seed(seed))
            bank = bank[keep[: self.cfg.prompt_bank].sort().values.to(bank.device)]
        self.bank = bank
        loo = self.scores(bank, leave_one_out=True)
        self.threshold = torch.quantile(loo.float(), self.cfg.prompt_accept).to(self.threshold)
        return {"prompt_gate_bank": float(len(bank)), "prompt_gate_threshold": float(self.threshold)}

    def save(self, directory: str | Path) -> None:
        """Write the fitted gate into `directory`; an unfitted one removes any gate saved there before, so
        that the folder loads as what was saved."""
        path = Path(directory) / GATE_FILE
        if self.bank.shape[0]:
            state = {"bank": self.bank.detach().cpu().contiguous(), "threshold": self.threshold.cpu()}
            save_file(state, str(path))
        else:
            path.unlink(missing_ok=True)

    def load(self, directory: str | Path) -> None:
        """Restore a gate `save` wrote into `directory`; a folder without one leaves the gate unfitted."""
        path = Path(directory) / GATE_FILE
        if not path.is_file():
            return
        state = load_file(str(path))
        if state["bank"].shape[1:] != self.bank.shape[1:]:
            raise ModelLoadError(
                f"{path}: the prompt gate's features have {state['bank'].shape[1]} dimensions, this reasoner "
                f"{self.bank.shape[1]}; it belongs to another base model"
            )
        self.bank = state["bank"].to(self.bank)
        self.threshold = state["threshold"].to(self.threshold)

    def __repr__(self) -> str:
        return f"PromptGate(policy={self.cfg.prompt}, bank={self.bank.shape[0]})"
