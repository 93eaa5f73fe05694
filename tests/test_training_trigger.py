"""Trigger RL: the reward-adaptive penalty (p_bar over the whole batch, invocation up to p_bar free, lambda
not divided away by the group std), and what it does to the invocation rate in short tiny-model runs:
nothing with lambda -> 0, a fall with a large lambda and p_bar = 0, nothing with p_bar = 1."""

import json
import statistics

import pytest
import torch

from latentmem.memgen import LatentMemoryModel
from latentmem.models import load_model
from latentmem.training import TriggerRLConfig
from latentmem.training.config import TriggerRLSettings
from latentmem.training.data import DataConfig, encode, synthetic_rows
from latentmem.training.rewards import REWARDS, resolve_reward
from latentmem.training.rollout import Sampler
from latentmem.training.trigger_rl import AdaptivePenalty, shaped_advantages, train_trigger

NAN = float("nan")


def test_p_bar_is_the_rate_of_high_reward_rollouts():
    pen = AdaptivePenalty(TriggerRLSettings(penalty=0.5, p_bar_momentum=0.0, p_bar_init=0.2))
    # quantile 0.75 of all five rewards -> 1: rewards 1, 1 and 5 are high; 5 has no candidate (nan rate)
    pen.update(torch.tensor([0.0, 0.0, 1.0, 1.0, 5.0]), torch.tensor([1.0, 1.0, 0.5, 0.25, NAN]))
    assert pen.p_bar == pytest.approx(0.375)
    pen.update(torch.tensor([1.0, 1.0, 1.0]), torch.tensor([0.9, 0.9, 0.9]))  # all equal: none is high
    assert pen.p_bar == pytest.approx(0.375)
    ema = AdaptivePenalty(TriggerRLSettings(p_bar_momentum=0.9, p_bar_init=0.0))
    ema.update(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 1.0]))
    assert ema.p_bar == pytest.approx(0.1)


def test_rollouts_without_candidates_count_toward_the_high_reward_quantile():
    pen = AdaptivePenalty(TriggerRLSettings(p_bar_momentum=0.0, p_bar_init=0.2))
    # the quantile is taken over all five rewards (-> 1), so the 0.5 rollout is not high-reward even though
    # it is the best of those with a candidate; the high ones have no rate, so p_bar stays
    pen.update(torch.tensor([0.0, 0.5, 1.0, 1.0, 1.0]), torch.tensor([0.0, 0.8, NAN, NAN, NAN]))
    assert pen.p_bar == pytest.approx(0.2)


def test_penalty_spares_invocation_up_to_p_bar():
    pen = AdaptivePenalty(TriggerRLSettings(penalty=2.0, p_bar_init=0.5))
    insertions = torch.tensor([0, 1, 2, 3, 4, 0])
    candidates = torch.tensor([4, 4, 4, 4, 4, 0])
    # rates 0, 0.25, 0.5 (at p_bar) pay nothing; 0.75 and 1 pay lambda per insertion beyond 0.5 * 4
    torch.testing.assert_close(pen(insertions, candidates), torch.tensor([0.0, 0.0, 0.0, 2.0, 4.0, 0.0]))
    pen.p_bar = 0.0  # nothing spared: lambda per insertion
    torch.testing.assert_close(pen(insertions, candidates), 2.0 * insertions.float())
    pen.p_bar = 1.0  # everything spared
    assert not pen(insertions, candidates).any()


def test_lambda_and_p_bar_act_where_the_task_rewards_are_equal():
    rewards = torch.ones(4)  # one group, equal task rewards: the penalty is the only signal
    insertions, candidates = torch.tensor([0, 1, 2, 4]), torch.full((4,), 4)

    def adv(penalty: float, p_bar: float) -> torch.Tensor:
        pen = AdaptivePenalty(TriggerRLSettings(penalty=penalty, p_bar_init=p_bar))
        return shaped_advantages(rewards, pen(insertions, candidates), 4)

    # penalties 0.1 * [0, 1, 2, 4], less their mean 1.75 * 0.1; lambda scales them, not divided by a std
    torch.testing.assert_close(adv(0.1, 0.0), -0.1 * torch.tensor([-1.75, -0.75, 0.25, 2.25]))
    torch.testing.assert_close(adv(10.0, 0.0), 100 * adv(0.1, 0.0))
    # p_bar = 0.5 spares up to 2 insertions of 4: only the rollout at 4 pays (10 * 2)
    torch.testing.assert_close(adv(10.0, 0.5), -torch.tensor([-5.0, -5.0, -5.0, 15.0]))


def test_replayed_trigger_probabilities_equal_the_rollouts():
    cfg = TriggerRLConfig.from_yaml("configs/debug/trigger.yaml")
    reasoner, tok = load_model(cfg.model)
    torch.manual_seed(0)
    model = LatentMemoryModel(reasoner, tok, cfg.memgen)
    rows = synthetic_rows("echo", 2, seed=0)
    data = DataConfig(task="echo")
    sampler = Sampler(model, encode(rows, tok, data), rows, cfg.rl, resolve_reward("constant"), data)
    ro = sampler(range(len(rows)), torch.Generator().manual_seed(0))
    plan = ro.result.plan
    valid = plan.candidates >= 0
    assert valid.sum() >= 4 and plan.decisions[valid].any() and not plan.decisions[valid].all()
    out = model(ro.input_ids, ro.attention_mask, ro.labels, plan=plan)
    torch.testing.assert_close(out.trigger_probs[valid], ro.result.trigger_probs[valid], atol=1e-4, rtol=1e-4)


def _half_constant(prompts: list[str], completions: list[str], **_: object) -> list[float]:
    """Equal rewards in even groups; 0, 1, 0, 1 by position in odd ones: task advantages that do not depend
    on the decisions, next to groups where only the penalty can speak."""
    g = 4  # rl.num_generations of the debug config
    return [1.0 if (i // g) % 2 == 0 else float(i % 2) for i in range(len(completions))]


def _rates(tmp_path, name, overrides, steps=6):
    cfg = TriggerRLConfig.from_yaml(
        "configs/debug/trigger.yaml",
        [f"output_dir={tmp_path / name}", f"train.steps={steps}", "train.save_every=0", *overrides],
    )
    run = train_trigger(cfg)
    logs = [json.loads(line) for line in run.joinpath("metrics.jsonl").read_text().splitlines()]
    assert all(m["candidates"] > 0 for m in logs)
    return [m["invocation_rate"] for m in logs]


def test_a_vanishing_penalty_leaves_the_invocation_rate_as_without_one(tmp_path, monkeypatch):
    # Adam rescales a gradient that only the penalty makes, so "unchanged" is measured against lambda = 0
    # on a task whose reward gradients set the scale: the runs share their sampling, so a penalty that
    # acts in its own units (lambda * 1e-3 of the task's) changes no decision. Normalising R - P as a
    # whole gave the equal-reward groups full-size advantages for any lambda > 0 and the rate fell.
    monkeypatch.setitem(REWARDS, "half_constant", _half_constant)
    base = _rates(tmp_path, "zero", ["rl.reward=half_constant", "rl.penalty=0.0"])
    small = _rates(tmp_path, "small", ["rl.reward=half_constant", "rl.penalty=0.001"])
    assert max(abs(a - b) for a, b in zip(base, small, strict=True)) < 0.05, (base, small)


def test_large_penalty_lowers_the_rate_only_above_p_bar(tmp_path):
    # constant reward: no rollout is high-reward, so p_bar stays at p_bar_init
    falls = _rates(tmp_path, "p0", ["rl.reward=constant", "rl.penalty=5.0", "rl.p_bar_init=0.0"])
    assert falls[0] > 0.3 and statistics.mean(falls[-3:]) < 0.1, falls
    stays = _rates(tmp_path, "p1", ["rl.reward=constant", "rl.penalty=5.0", "rl.p_bar_init=1.0"])
    assert abs(statistics.mean(stays[-3:]) - statistics.mean(stays[:2])) < 0.15, stays
