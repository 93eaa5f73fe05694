"""Trigger RL with the paper's reward-adaptive penalty. `latentmem train trigger --config FILE`.

The policy: at each candidate delimiter the learned trigger inserts with probability p_j
(d_j ~ Bernoulli(p_j)); only the trigger head learns. The paper's objective (MemGen, trigger training) is

    max E[ R(tau) - lambda * sum_j max(0, d_j - p_bar) ],

p_bar being the invocation rate of high-reward rollouts (`AdaptivePenalty` documents the exact rule). Taken
literally with binary d_j, max(0, d_j - p_bar) = (1 - p_bar) * d_j: every insertion costs lambda(1 - p_bar),
so p_bar only rescales a per-insertion cost and spares nothing. The paper's intent is that invoking as often
as high-reward rollouts do is free and only invocation beyond that is penalised, so the hinge is applied to
the rollout's invocation rate r = n_ins / n_cand (its mean d_j) instead of to each d_j:

    P(tau) = lambda * sum_j max(0, r - p_bar) = lambda * n_cand * max(0, r - p_bar)
           = lambda * max(0, n_ins - p_bar * n_cand),

i.e. lambda per insertion beyond p_bar times the rollout's candidates (0 without candidates). The
advantage of rollout i in its group g of G rollouts of one prompt is

    A_i = (R_i - mean_g R) / (std_g R + eps) - (P_i - mean_g P):

the task reward is normalised by its group's statistics as in GRPO, and the penalty is subtracted in its
own units (its group mean is a baseline, which lowers the variance, not a rescaling). Normalising the
shaped reward R - P as a whole would make lambda and p_bar irrelevant in every group whose task rewards
are equal (then A = -(P - mean P) / std P whatever lambda is). So lambda is the price of one excess
insertion in units of the task reward's group std. The loss is REINFORCE over the decisions,

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
from latentmem.training.data import encode_rows, load_rows
from latentmem.training.loop import Metrics, StepContext, Trainer, launch
from latentmem.training.prompt_gate import fit_prompt_gate
from latentmem.training.rewards import resolve_reward
from latentmem.training.rollout import Rollouts, Sampler, group_advantages


class AdaptivePenalty:
    """p_bar and the per-rollout penalty lambda * max(0, n_ins - p_bar * n_cand) (module docstring).

    High-reward rollouts of a batch: reward >= the `high_reward_quantile` quantile of ALL the batch's
    rewards (linear interpolation, `torch.quantile`) and reward > the batch minimum (so a batch of equal
    rewards has none). Rollouts without a candidate delimiter count toward which rewards are high, but have
    no invocation rate, so they do not enter its mean. The mean invocation rate (insertions / candidates,
    per rollout) of the high-reward rollouts that have candidates moves p_bar by an exponential moving
    average with `p_bar_momentum`; a batch where no high-reward rollout has a candidate leaves p_bar as is.
    """

    def __init__(self, s: TriggerRLSettings) -> None:
        self.s = s
        self.p_bar = s.p_bar_init

    def update(self, rewards: torch.Tensor, rates: torch.Tensor) -> None:
        """`rewards` (B,), `rates` (B,) invocation rates (nan where a rollout had no candidate)."""
        high = (rewards >= torch.quantile(rewards, self.s.high_reward_quantile)) & (rewards > rewards.min())
        high &= ~rates.isnan()
        if bool(high.any()):
            m = self.s.p_bar_momentum
            self.p_bar = m * self.p_bar + (1 - m) * float(rates[high].mean())

    def __call__(self, insertions: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """(B,) insertions and candidate delimiters of each rollout -> (B,) penalty: lambda per insertion
        beyond p_bar times the candidates, so a rollout at or below the rate p_bar pays nothing."""
        excess = (insertions.float() - self.p_bar * candidates.float()).clamp(min=0)
        return self.s.penalty * excess

    def state_dict(self) -> dict[str, Any]:
        return {"p_bar": self.p_bar}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.p_bar = float(state["p_bar"])


def shaped_advantages(rewards: torch.Tensor, penalties: torch.Tensor, group: int) -> torch.Tensor:
    """(B,) task rewards and penalties -> (B,) advantages: the task reward normalised by its group's mean
    and std (`group_advantages`), minus the penalty less its group mean, NOT divided by a std, so that
    lambda and p_bar keep their meaning where the group's task rewards are equal."""
    p = penalties.view(-1, group)
    return group_advantages(rewards, group) - (p - p.mean(1, keepdim=True)).flatten()


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
    job = launch(cfg, cfg.train.batch_size // G)
    dist, run, model = job.dist, job.run, job.model
    for p in model.parameters():  # only the trigger head learns
        p.requires_grad_(False)
    for p in model.trigger.parameters():
        p.requires_grad_(True)
    train_rows, train_items = encode_rows(train_rows, model, cfg, "train")
    train = Sampler(model, train_items, train_rows, s, reward_fn, cfg.data)
    penalty = AdaptivePenalty(s)
    trainer = Trainer(job, n_rows=len(train_rows), extra_state=penalty)

    def micro_step(ctx: StepContext) -> Metrics:
        ro = train(ctx.indices, ctx.generator(dist.device))
        rates = invocation_rates(ro)
        # p_bar comes from the whole micro-batch over all processes, so every process shapes alike
        penalty.update(dist.gather(ro.rewards), dist.gather(rates.to(ro.rewards.device)))
        candidates = (ro.result.plan.candidates >= 0).sum(1)
        pen = penalty(ro.insertions(), candidates)
        n_global = len(ctx.step_indices) * G
        loss = trigger_loss(model, ro, shaped_advantages(ro.rewards, pen, G), n_global)
        if loss.requires_grad:
            loss.backward()
        shaped = ro.rewards - pen
        n_cand = float(candidates.sum())
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
    fit_prompt_gate(job, train_items)
    return run.path


def run(config_path: str, overrides: list[str]) -> Path:
    """CLI entry: `latentmem train trigger --config FILE [key.sub=value ...]`."""
    return train_trigger(TriggerRLConfig.from_yaml(config_path, overrides))
