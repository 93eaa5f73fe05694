"""Next-item selection shared by every generator in latentmem (MemGen decoding, recall memory heads).

The processors are transformers' own (`RepetitionPenaltyLogitsProcessor`, then `TemperatureLogitsWarper`,
`TopKLogitsWarper`, `TopPLogitsWarper`, `MinPLogitsWarper`, in `generate`'s order), so a `SamplingConfig`
means what the same settings mean in `model.generate`. They apply to any row of logits: token logits
`(B, V)` or memory logits `(B, N_memories)` alike; only the repetition penalty needs a token history, so it
applies to token logits only. The selection rule is greedy (argmax of the processed logits) or one
multinomial draw from their softmax.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import (
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from latentmem.config import Config, require
from latentmem.errors import LatentMemError


class MissingHistoryError(LatentMemError, ValueError):
    """Repetition penalty was asked for on logits that come with no token history (e.g. memory logits)."""


@dataclass
class SamplingConfig(Config):
    """How to pick the next item from logits.

    `do_sample=False` is greedy: only `repetition_penalty` applies (as in `generate`), the warpers
    (temperature, top-k, top-p, min-p) are ignored. `top_k` larger than the number of items keeps them
    all. `repetition_penalty` (CTRL's, as in transformers) divides positive / multiplies negative logits of
    tokens already in the history; it needs one, so it is token-only.
    """

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0 = no top-k filter
    top_p: float = 1.0  # 1.0 = no nucleus filter
    min_p: float = 0.0  # 0.0 = no min-p filter
    repetition_penalty: float = 1.0  # 1.0 = no penalty

    def validate(self) -> None:
        require(
            self.temperature > 0,
            "temperature",
            f"must be > 0, got {self.temperature}; use do_sample=false for greedy",
        )
        require(self.top_k >= 0, "top_k", f"must be >= 0 (0 disables it), got {self.top_k}")
        require(0 < self.top_p <= 1, "top_p", f"must be in (0, 1] (1 disables it), got {self.top_p}")
        require(0 <= self.min_p <= 1, "min_p", f"must be in [0, 1] (0 disables it), got {self.min_p}")
        require(
            self.repetition_penalty > 0,
            "repetition_penalty",
            f"must be > 0 (1 disables it), got {self.repetition_penalty}",
        )

    def processors(self) -> LogitsProcessorList:
        """The transformers processors this config asks for, in `generate`'s order (identities left out)."""
        procs = LogitsProcessorList()
        if self.repetition_penalty != 1.0:
            procs.append(RepetitionPenaltyLogitsProcessor(float(self.repetition_penalty)))
        if not self.do_sample:
            return procs
        if self.temperature != 1.0:
            procs.append(TemperatureLogitsWarper(float(self.temperature)))
        if self.top_k > 0:
            procs.append(TopKLogitsWarper(top_k=self.top_k))
        if self.top_p < 1.0:
            procs.append(TopPLogitsWarper(top_p=float(self.top_p)))
        if self.min_p > 0.0:
            procs.append(MinPLogitsWarper(min_p=float(self.min_p)))
        return procs


def process_logits(
    logits: torch.Tensor,
    cfg: SamplingConfig,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The logits (B, V) float32 that selection uses: `logits` (B, V) through `cfg.processors()`;
    filtered entries are -inf.

    `input_ids` (B, t): the token history the repetition penalty reads (prompt then generated tokens);
    required when `cfg.repetition_penalty != 1`, ignored otherwise. `attention_mask` (B, t): 0 marks
    history positions that are padding, which are not penalised (transformers would penalise the pad
    token, which is often EOS).
    """
    logits = logits.float()
    if cfg.repetition_penalty != 1.0:
        if input_ids is None:
            raise MissingHistoryError(
                f"repetition_penalty={cfg.repetition_penalty} needs the token history (input_ids); it "
                "does not apply to logits without one, such as memory logits: set repetition_penalty=1.0"
            )
        if attention_mask is not None:
            # a padding slot repeats the row's first real token, which the penalty counts anyway
            first = input_ids.gather(1, attention_mask.long().argmax(1, keepdim=True))  # (B, 1)
            input_ids = input_ids.where(attention_mask.bool(), first)
    else:
        # the warpers read only the scores; transformers' signature still takes an (empty) history
        input_ids = torch.empty(logits.shape[0], 0, dtype=torch.long, device=logits.device)
    return cfg.processors()(input_ids, logits)


def draw(
    processed: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One index per row of processed logits (B, V) -> (B,) long: argmax, or a draw from their softmax."""
    if not cfg.do_sample:
        return processed.argmax(dim=-1)
    return torch.multinomial(processed.softmax(dim=-1), num_samples=1, generator=generator).squeeze(-1)


def select_next(
    logits: torch.Tensor,
    cfg: SamplingConfig,
    generator: torch.Generator | None = None,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pick one index per row of `logits` (B, V) -> (B,) long; `input_ids`, `attention_mask` (B, t) as
    in `process_logits`."""
    return draw(process_logits(logits, cfg, input_ids, attention_mask), cfg, generator)
