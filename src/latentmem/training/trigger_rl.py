"""Trigger RL with the paper's reward-adaptive penalty. `latentmem train trigger --config FILE`.

The policy: at each candidate delimiter the learned trigger inserts with probability p_j
(d_j ~ Bernoulli(p_j)); only the trigger head learns. Each rollout's shaped reward is

    R'(tau) = R(tau) - lambda * sum_j max(0, d_j - p_bar)

where p_bar is the invocation rate of high-reward rollouts (`AdaptivePenalty` documents the exact rule).
With d_j in {0, 1}, the penalty is lambda * (1 - p_bar) per insertion: insertions cost little when the
rollouts that earn reward insert often, and a lot when they do not. Advantages are group-relative over the
G rollouts of a prompt; the loss is REINFORCE over the decisions,

    L = -1/N_global * sum_i A_i * sum_j log P(d_ij | p_ij),

with p_ij recomputed by a training forward that replays the rollout's plan (its probabilities equal the
rollout's, since the weaver is fixed during the update).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from latentmem.memgen import LatentMemoryModel
from latentmem.memgen.trigger import Trigger
from latentmem.training.config import TriggerRLConfig, TriggerRLSettings
from latentmem.training.data import encode, load_rows
from latentmem.training.loop import Metrics, StepContext, Trainer, launch
from latentmem.training.rewards import resolve_reward
from latentmem.training.rollout import Rollouts, Sampler, group_advantages


class AdaptivePenalty:
    """p_bar and the penalty lambda * sum_j max(0, d_j - p_bar).

    High-reward rollouts of a batch: reward >= the batch's `high_reward_quantile` quantile (linear
    interpolation, `torch.quantile`) and reward > the batch minimum, among rollouts with at least one
    candidate delimiter (the others have no invocation rate). Their mean invocation rate (insertions /
    candidates, per rollout) moves p_bar by an exponential moving average with `p_bar_momentum`; a batch
    without high-reward rollouts (e.g. all rewards equal) leaves p_bar unchanged.
    """

    def __init__(self, s: TriggerRLSettings) -> None:
        self.s = s
        self.p_bar = s.p_bar_init

    def update(self, rewards: torch.Tensor, rates: torch.Tensor) -> None:
        """`rewards` (B,), `rates` (B,) invocation rates (nan where a rollout had no candidate)."""
        has = ~rates.isnan()
        if not bool(has.any()):
            return
        r = rewards[has]
        high = (r >= torch.quantile(r, self.s.high_reward_quantile)) & (r > r.min())
        if bool(high.any()):
            m = self.s.p_bar_momentum
            self.p_bar = m * self.p_bar + (1 - m) * float(rates[has][high].mean())

    def __call__(self, decisions: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(B, C) bool decisions and candidate mask -> (B,) penalty."""
        over = (decisions.float() - self.p_bar).clamp(min=0) * valid
        return self.s.penalty * over.sum(1)

    def state_dict(self) -> dict[str, Any]:
        return {"p_bar": self.p_bar}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.p_bar = float(state["p_bar"])


def invocation_rates(ro: Rollouts) -> torch.Tensor:
    """(B,) insertions / candidate delimiters of each rollout; nan without candidates."""
    valid = ro.result.plan.candidates >= 0
    n = valid.sum(1).float()
    return torch.where(n > 0, ro.insertions().float() / n, torch.full_like(n, math.nan))


def trigger_loss(
    model: LatentMemoryModel, ro: Rollouts, advantages: torch.Tensor, n_global: int
) -> torch.Tensor:
    """REINFORCE over the rollout's decisions: `advantages` (B,), divided by `n_global`."""
    plan = ro.result.plan
    # the forward runs even when no rollout reached a delimiter: under FSDP every process must run it
    out = model(ro.input_ids, ro.attention_mask, ro.labels, plan=plan, memory=ro.memory)
    if out.trigger_probs is None:  # no candidate delimiter: nothing to learn from
        return torch.zeros((), device=ro.rewards.device)
    valid = plan.candidates >= 0
    logp = Trigger.log_prob(out.trigger_probs, plan.decisions).masked_fill(~valid, 0.0).sum(1)  # (B,)
    return -(advantages * logp).sum() / n_global


def train_trigger(cfg: TriggerRLConfig) -> Path:
    """Run trigger RL per `cfg`; return the run folder. Logs `invocation_rate` (insertions / candidates over
    the step's rollouts), `reward`, `shaped_reward` and `p_bar`."""
    s = cfg.rl
    reward_fn = resolve_reward(s.reward, s.reward_args)
    train_rows, _ = load_rows(cfg.data, cfg.seed)
    G = s.num_generations
    dist, run, model = launch(cfg, cfg.train.batch_size // G)
    for p in model.parameters():  # only the trigger head learns
        p.requires_grad_(False)
    for p in model.trigger.parameters():
        p.requires_grad_(True)
    train = Sampler(model, encode(train_rows, model.tokenizer, cfg.data), train_rows, s, reward_fn, cfg.data)
    penalty = AdaptivePenalty(s)
    trainer = Trainer(
        cfg,
        model,
        run,
        dist,
        n_rows=len(train_rows),
        rows_per_step=cfg.train.batch_size // G,
        extra_state=penalty,
    )

    def micro_step(ctx: StepContext) -> Metrics:
        ro = train(ctx.indices, ctx.generator(dist.device))
        rates = invocation_rates(ro)
        # p_bar comes from the whole micro-batch over all processes, so every process shapes alike
        penalty.update(dist.gather(ro.rewards), dist.gather(rates.to(ro.rewards.device)))
        plan = ro.result.plan
        shaped = ro.rewards - penalty(plan.decisions, plan.candidates >= 0)
        n_global = len(ctx.step_indices) * G
        loss = trigger_loss(model, ro, group_advantages(shaped, G), n_global)
        if loss.requires_grad:
            loss.backward()
        n_cand = float((plan.candidates >= 0).sum())
        return {
            "loss": loss.item(),
            "reward": float(ro.rewards.sum()) / n_global,
            "shaped_reward": float(shaped.sum()) / n_global,
            "insertions": float(ro.insertions().sum()),
            "candidates": n_cand,
            # p_bar is the same on every process; each adds its share so that the sum is p_bar
            "p_bar": penalty.p_bar * len(ctx.indices) / len(ctx.step_indices),
        }

    def derive(m: Metrics) -> Metrics:
        return {"invocation_rate": m["insertions"] / m["candidates"] if m["candidates"] else math.nan}

    trainer.fit(micro_step, postfix="invocation_rate", derive=derive)
    return run.path


def run(config_path: str, overrides: list[str]) -> Path:
    """CLI entry: `latentmem train trigger --config FILE [key.sub=value ...]`."""
    return train_trigger(TriggerRLConfig.from_yaml(config_path, overrides))
