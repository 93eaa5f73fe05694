"""Rollouts for the RL recipes: G completions per prompt from *our* generation (weaver and trigger active),
scored by a TRL-signature reward, laid out as a labelled batch whose training forward replays the rollout's
insertions exactly (`plan`), and group-relative advantages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from latentmem.decoding import IGNORE
from latentmem.errors import ConfigError
from latentmem.memgen import GenerationConfig, GenerationResult, LatentMemoryModel, RetrievedMemory
from latentmem.sampling import SamplingConfig
from latentmem.training.config import DataConfig, RolloutConfig
from latentmem.training.data import Encoded, Row, collate, collate_memory, reward_columns
from latentmem.training.rewards import RewardFn
from latentmem.training.sharding import gathered


@dataclass
class Rollouts:
    """B = P * G rollouts (the G of a prompt are adjacent). T: prompt width, N: completion width.

    input_ids, attention_mask, labels (B, T + N): prompt + completion; labels are the completion tokens up
    to and including EOS, -100 elsewhere (so nothing after EOS is ever trained).
    result: the `GenerationResult`: logprobs (B, N), under the sampling-time weights, of the processed
    distribution each token was drawn from (softmax(z / temperature) for GRPO); plan; trigger_probs.
    rewards (B,): float32. completions: decoded texts.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    result: GenerationResult
    rewards: torch.Tensor
    completions: list[str]
    memory: RetrievedMemory | None = None  # retrieved memories the weaver read (replayed in the update)

    @property
    def prompt_len(self) -> int:
        return self.input_ids.shape[1] - self.result.sequences.shape[1]

    def insertions(self) -> torch.Tensor:
        """(B,) inference insertions of each rollout."""
        return insertion_counts(self.result)


def as_training_batch(
    ids: torch.Tensor, mask: torch.Tensor, res: GenerationResult, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prompts `ids`, `mask` (B, T) and their generation `res` as one labelled batch (B, T + N); tokens
    after EOS get attention 0 and label -100."""
    keep = res.completion_mask()
    full_mask = torch.cat([mask, keep.long()], 1)
    full = torch.cat([ids, res.sequences], 1).masked_fill(full_mask == 0, pad_id)
    labels = torch.cat([torch.full_like(ids, IGNORE), res.sequences.masked_fill(~keep, IGNORE)], 1)
    return full, full_mask, labels


def generation_config(s: RolloutConfig, *, sample: bool = True) -> GenerationConfig:
    """The rollouts' generation settings: `s`'s processors when `sample`, else greedy (evaluation)."""
    sampling = SamplingConfig(do_sample=sample, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p)
    return GenerationConfig(max_new_tokens=s.max_new_tokens, sampling=sampling)


def score(
    reward_fn: RewardFn,
    prompts: Sequence[str],
    completions: Sequence[str],
    rows: Sequence[Row],
    data: DataConfig,
    insertions: Sequence[int],
) -> torch.Tensor:
    """(B,) rewards: `reward_fn(prompts, completions, **columns, insertions=...)`, the columns those of
    `rows` with the gold answer (`data.answer_column`) also as `answer` (`data.reward_columns`)."""
    columns = reward_columns(rows, data)
    rewards = reward_fn(list(prompts), list(completions), **columns, insertions=list(insertions))
    if len(rewards) != len(completions):
        raise ConfigError(
            f"reward: the reward function returned {len(rewards)} rewards for {len(completions)} completions"
        )
    return torch.tensor([float(r) for r in rewards], dtype=torch.float32)


@dataclass
class Sampler:
    """Rollouts of a recipe's rows by index: the encoded `items` and the raw `rows` (the reward reads
    their columns), sampled with `settings` and scored by `reward_fn`."""

    model: LatentMemoryModel
    items: Sequence[Encoded]
    rows: Sequence[Row]
    settings: RolloutConfig
    reward_fn: RewardFn
    data: DataConfig

    @torch.no_grad()
    def __call__(
        self,
        indices: Sequence[int],
        generator: torch.Generator,
        *,
        sample: bool = True,
        groups: int | None = None,
    ) -> Rollouts:
        """`groups` (default `settings.num_generations`) completions for each row of `indices`, scored."""
        model, settings = self.model, self.settings
        g = settings.num_generations if groups is None else groups
        items = [self.items[i] for i in indices for _ in range(g)]
        rows = [self.rows[i] for i in indices for _ in range(g)]
        tok = model.tokenizer
        ids, mask, _ = (t.to(model.device) for t in collate(items, tok.pad_token_id, with_answer=False))
        memory = collate_memory(items)
        memory = memory.to(model.device) if memory else None
        with gathered(model):  # processes decode for different numbers of steps
            res = model.generate(
                ids, mask, generation_config(settings, sample=sample), generator=generator, memory=memory
            )
        full, full_mask, labels = as_training_batch(ids, mask, res, tok.pad_token_id)
        completions = [
            tok.decode(seq[:n].tolist(), skip_special_tokens=True)
            for seq, n in zip(res.sequences, res.lengths.tolist(), strict=True)
        ]
        prompts = [tok.decode(it.prompt_ids) for it in items]
        rewards = score(self.reward_fn, prompts, completions, rows, self.data, insertion_counts(res).tolist())
        return Rollouts(full, full_mask, labels, res, rewards.to(model.device), completions, memory)


def insertion_counts(res: GenerationResult) -> torch.Tensor:
    """(B,) inference insertions of each rollout."""
    return (res.plan.decisions & (res.plan.candidates >= 0)).sum(1)


def group_advantages(rewards: torch.Tensor, group: int, eps: float = 1e-4) -> torch.Tensor:
    """(B,) -> (B,): each reward minus its group's mean, over the group's std (+eps); groups are `group`
    adjacent rows. A group whose rewards are all equal gets advantage 0."""
    r = rewards.view(-1, group)
    adv = (r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + eps)
    return adv.flatten()
