"""Weaver GRPO: the learner replays the rollout exactly (ratio 1 before the first update), tokens after EOS
are never trained, the KL reference is the plain reasoner, advantages are group-relative, reward rises."""

import json

import pytest
import torch

from conftest import steer
from latentmem.memgen import LatentMemoryModel, MemGenConfig
from latentmem.models import load_model
from latentmem.training import GRPOConfig
from latentmem.training.config import GRPOSettings
from latentmem.training.data import DataConfig, encode, synthetic_rows
from latentmem.training.grpo import base_logprobs, grpo_loss, train_grpo
from latentmem.training.rewards import resolve_reward
from latentmem.training.rollout import Sampler, group_advantages


def _model(name="tiny-qwen2", **cfg):
    reasoner, tok = load_model(name)
    steer(reasoner, tok)  # rows insert at delimiters and stop at different steps
    torch.manual_seed(0)
    return LatentMemoryModel(reasoner, tok, MemGenConfig(**cfg))


def _rollouts(model, settings, n=3):
    data = DataConfig(task="echo")
    rows = synthetic_rows("echo", n, seed=0)
    reward = resolve_reward(settings.reward, settings.reward_args)
    sampler = Sampler(model, encode(rows, model.tokenizer, data), rows, settings, reward, data)
    return sampler(range(len(rows)), torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", ["tiny-qwen2", "tiny-gpt2"])
def test_recomputed_logprobs_equal_the_rollouts_before_the_first_update(name):
    model = _model(name, prompt_latents=3, inference_latents=2, max_inference_insertions=3)
    s = GRPOSettings(num_generations=4, max_new_tokens=20, reward="char_fraction")
    ro = _rollouts(model, s)
    assert int(ro.insertions().sum()) >= 2  # the replayed plan really has inference insertions
    lengths = ro.result.lengths
    assert (lengths < 20).any() and len(set(lengths.tolist())) > 1  # some rows stop early, at EOS
    T = ro.prompt_len
    out = model(ro.input_ids, ro.attention_mask, ro.labels, plan=ro.result.plan)
    keep = ro.result.completion_mask()
    ratio = torch.exp(out.token_logprobs[:, T:] - ro.result.logprobs)[keep]
    torch.testing.assert_close(ratio, torch.ones_like(ratio), atol=1e-4, rtol=0)
    # nothing after EOS is attended to or scored
    assert not out.target_mask[:, T:][~keep].any() and (ro.labels[:, T:][~keep] == -100).all()


def test_tokens_after_eos_get_no_gradient():
    model = _model(prompt_latents=2, inference_latents=2)
    s = GRPOSettings(num_generations=4, max_new_tokens=20, reward="char_fraction")
    ro = _rollouts(model, s)
    keep = ro.result.completion_mask()
    assert (~keep).any()
    loss, _ = grpo_loss(model, ro, s, n_global=len(ro.rewards))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    # changing what follows EOS changes nothing: those tokens are masked out of attention and loss
    ro.result.sequences[~keep] = 7
    loss2, _ = grpo_loss(model, ro, s, n_global=len(ro.rewards))
    loss2.backward()
    assert torch.equal(loss, loss2)
    for n, p in model.named_parameters():
        if n in grads:
            torch.testing.assert_close(p.grad, grads[n])


def test_kl_reference_is_the_plain_reasoner():
    """With no latents at all, the model's own log-probs are the base log-probs: KL 0."""
    model = _model(prompt_latents=0, trigger={"policy": "never"})
    s = GRPOSettings(num_generations=2, max_new_tokens=8, reward="char_fraction", beta=0.5)
    ro = _rollouts(model, s, n=2)
    T = ro.prompt_len
    out = model(ro.input_ids, ro.attention_mask, ro.labels)
    keep = ro.result.completion_mask()
    base = base_logprobs(model, ro.input_ids, ro.attention_mask)[:, T:]
    torch.testing.assert_close(base[keep], out.token_logprobs[:, T:][keep], atol=1e-4, rtol=1e-4)
    _, metrics = grpo_loss(model, ro, s, n_global=len(ro.rewards))
    assert abs(metrics["kl"]) < 1e-4


def test_group_advantages():
    adv = group_advantages(torch.tensor([1.0, 0.0, 2.0, 2.0, 0.0, 0.0]), group=2)
    torch.testing.assert_close(adv[:2], torch.tensor([0.7071, -0.7071]), atol=1e-3, rtol=0)
    assert torch.equal(adv[2:], torch.zeros(4))  # equal rewards in a group teach nothing


@pytest.mark.slow
def test_grpo_mean_reward_rises(tmp_path):
    cfg = GRPOConfig.from_yaml(
        "configs/debug/grpo.yaml",
        [f"output_dir={tmp_path / 'run'}", "train.eval_every=0", "train.save_every=0"],
    )
    run = train_grpo(cfg)
    logs = [json.loads(line) for line in run.joinpath("metrics.jsonl").read_text().splitlines()]
    rewards = [m["reward"] for m in logs if m["step"] > 0]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 0.03, (first, last)
    assert logs[-1]["eval_reward"] > logs[0]["eval_reward"]  # greedy, on held-out prompts
