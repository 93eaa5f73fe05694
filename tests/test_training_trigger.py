"""Trigger RL: the reward-adaptive penalty's p_bar rule, and the invocation rate under two tasks: falls when
insertions do not change the reward, does not collapse when the reward needs them."""

import json

import pytest
import torch

from latentmem.memgen import LatentMemoryModel
from latentmem.models import load_model
from latentmem.training import TriggerRLConfig
from latentmem.training.config import TriggerRLSettings
from latentmem.training.data import DataConfig, encode, synthetic_rows
from latentmem.training.rewards import resolve_reward
from latentmem.training.rollout import Sampler
from latentmem.training.trigger_rl import AdaptivePenalty, train_trigger

NAN = float("nan")


def test_p_bar_is_the_rate_of_high_reward_rollouts():
    pen = AdaptivePenalty(TriggerRLSettings(penalty=0.5, p_bar_momentum=0.0, p_bar_init=0.2))
    # quantile 0.75 of [0, 0, 1, 1, nan-rate row excluded] -> 1: the two rollouts with reward 1
    pen.update(torch.tensor([0.0, 0.0, 1.0, 1.0, 5.0]), torch.tensor([1.0, 1.0, 0.5, 0.25, NAN]))
    assert pen.p_bar == pytest.approx(0.375)
    pen.update(torch.tensor([1.0, 1.0, 1.0]), torch.tensor([0.9, 0.9, 0.9]))  # all equal: none is high
    assert pen.p_bar == pytest.approx(0.375)
    decisions = torch.tensor([[True, False, True], [False, False, False]])
    valid = torch.tensor([[True, True, False], [True, False, False]])  # the 3rd candidate is padding
    # one valid insertion, penalised by lambda * (1 - p_bar); skipping is never penalised
    torch.testing.assert_close(pen(decisions, valid), torch.tensor([0.5 * 0.625, 0.0]))
    ema = AdaptivePenalty(TriggerRLSettings(p_bar_momentum=0.9, p_bar_init=0.0))
    ema.update(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 1.0]))
    assert ema.p_bar == pytest.approx(0.1)


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


def _run(tmp_path, reward, steps):
    cfg = TriggerRLConfig.from_yaml(
        "configs/debug/trigger.yaml",
        [
            f"output_dir={tmp_path / reward}",
            f"rl.reward={reward}",
            f"train.steps={steps}",
            "train.save_every=0",
        ],
    )
    run = train_trigger(cfg)
    return [json.loads(line) for line in run.joinpath("metrics.jsonl").read_text().splitlines()]


def test_invocation_rate_falls_when_insertions_do_not_change_the_reward(tmp_path):
    logs = _run(tmp_path, "constant", steps=6)
    rates = [m["invocation_rate"] for m in logs]
    assert all(m["candidates"] > 0 for m in logs)
    assert rates[0] > 0.3 and max(rates[-3:]) < 0.1, rates


def test_invocation_rate_does_not_collapse_when_insertions_are_needed(tmp_path):
    logs = _run(tmp_path, "used_memory", steps=6)
    rates = [m["invocation_rate"] for m in logs]
    assert min(rates[-3:]) > 0.3, rates
    assert logs[-1]["p_bar"] > 0.2 and sum(m["reward"] for m in logs[-3:]) / 3 > 0.5
