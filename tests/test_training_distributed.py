"""Multi-process training: `accelerate launch` with 2 CPU processes (gloo), under the shipped DDP and FSDP
configs, matches one process with the same global batch (2 accumulation steps), step by step and in the
final weights."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from latentmem.errors import ConfigError
from latentmem.training import SFTConfig, train_sft

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = Path(sys.executable).with_name("accelerate")
DDP = "configs/accelerate/ddp_cpu.yaml"
FSDP = "configs/accelerate/fsdp_cpu.yaml"


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _train(recipe, config, out, overrides, launch_config=None):
    """One process, or two under `accelerate launch --config_file launch_config`, at the same global
    batch: 2 accumulation steps in one process, or 1 in each of 2 processes."""
    processes = 2 if launch_config else 1
    args = [f"output_dir={out}", "train.resume=false", f"train.grad_accum={2 // processes}", *overrides]
    cli = ["-m", "latentmem.cli", "train", recipe, *args, "--config", config]
    if launch_config:
        cmd = [str(ACCELERATE), "launch", "--config_file", launch_config, *cli]
    else:
        cmd = [sys.executable, *cli]
    done = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines() == [str(out)]  # the run folder, printed once, on the last line
    logs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return logs, load_file(str(out / "model" / "memgen.safetensors"))


def _compare(a, b, keys):
    """Per-step metrics and final weights agree; and the two processes really split the batch."""
    (logs_a, w_a), (logs_b, w_b) = a, b
    assert logs_a[-1]["processes"] == 2 and logs_b[-1]["processes"] == 1
    assert [m["step"] for m in logs_a] == [m["step"] for m in logs_b]
    for x, y in zip(logs_a, logs_b, strict=True):
        for k in keys:
            if k in x or k in y:
                assert x[k] == pytest.approx(y[k], abs=1e-4), (k, x, y)
    for k in w_a:
        torch.testing.assert_close(w_a[k], w_b[k], atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("launch", [DDP, FSDP])
def test_sft_two_processes_match_one(tmp_path, launch):
    overrides = ["train.steps=3", "train.eval_every=3", "train.save_every=0"]
    two = _train("sft", "configs/debug/sft.yaml", tmp_path / "two", overrides, launch)
    one = _train("sft", "configs/debug/sft.yaml", tmp_path / "one", overrides)
    assert any("eval_loss" in m for m in two[0])
    # FSDP sharded every frozen layer weight: 2 layers x (7 projections + 3 q/k/v biases + 2 norms)
    assert two[0][-1].get("sharded_tensors", 0) == (24 if launch == FSDP else 0)
    held_two, held_one = two[0][-1]["param_mb_per_process"], one[0][-1]["param_mb_per_process"]
    assert held_two < held_one if launch == FSDP else held_two == held_one
    _compare(two, one, ["loss", "eval_loss", "grad_norm"])


def test_sft_fsdp_with_a_separate_weaver_lm(tmp_path):
    """Both models' layers are sharded: tiny-qwen2's 24 tensors and tiny-llama's 2 x (7 + 2 norms)."""
    overrides = [
        "train.steps=2",
        "train.eval_every=2",
        "train.save_every=0",
        "memgen.weaver_model=tiny-llama",
    ]
    two = _train("sft", "configs/debug/sft.yaml", tmp_path / "two", overrides, FSDP)
    one = _train("sft", "configs/debug/sft.yaml", tmp_path / "one", overrides)
    assert two[0][-1]["sharded_tensors"] == 24 + 18
    _compare(two, one, ["loss", "eval_loss", "grad_norm"])


@pytest.mark.parametrize("launch", [pytest.param(DDP, marks=pytest.mark.slow), FSDP])
def test_grpo_two_processes_match_one(tmp_path, launch):
    """Rollouts too (sampling is seeded per (step, chunk), not per process); under FSDP the rollouts and
    the greedy evaluation run on gathered layers while processes decode for different numbers of steps."""
    overrides = ["train.steps=2", "train.eval_every=2", "data.eval_size=6", "train.save_every=0"]
    two = _train("grpo", "configs/debug/grpo.yaml", tmp_path / "two", overrides, launch)
    one = _train("grpo", "configs/debug/grpo.yaml", tmp_path / "one", overrides)
    _compare(two, one, ["loss", "reward", "insertions", "eval_reward"])


def test_trigger_rl_fsdp_matches_one_process(tmp_path):
    """Only the trigger head trains (chosen before sharding); the LoRA weights stay whole and saved."""
    overrides = ["train.steps=2", "train.save_every=0"]
    two = _train("trigger", "configs/debug/trigger.yaml", tmp_path / "two", overrides, FSDP)
    one = _train("trigger", "configs/debug/trigger.yaml", tmp_path / "one", overrides)
    _compare(two, one, ["loss", "reward", "shaped_reward", "p_bar", "invocation_rate"])


@pytest.mark.parametrize(
    ("env", "overrides", "field"),
    [
        ({"FSDP_VERSION": "1"}, [], "fsdp_version"),
        ({"FSDP_OFFLOAD_PARAMS": "true"}, [], "fsdp_offload_params"),
        ({}, ["memgen.prompt_latents=0"], "memgen.prompt_latents"),
    ],
)
def test_fsdp_settings_it_cannot_honour_fail_before_the_model_loads(
    monkeypatch, tmp_path, env, overrides, field
):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    cfg = SFTConfig.from_yaml(ROOT / "configs/debug/sft.yaml", [f"output_dir={tmp_path}", *overrides])
    cfg.model = "no-such-model"  # reaching the model loader would fail differently
    with pytest.raises(ConfigError, match=field):
        train_sft(cfg)
