"""Multi-process training: `accelerate launch` with 2 CPU processes (gloo) matches one process with the
same global batch (2 accumulation steps), step by step and in the final weights."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = Path(sys.executable).with_name("accelerate")


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _train(recipe, config, out, overrides, processes):
    # the same global batch: 2 accumulation steps in one process, or 1 in each of 2 processes
    args = [f"output_dir={out}", "train.resume=false", f"train.grad_accum={2 // processes}", *overrides]
    cli = ["-m", "latentmem.cli", "train", recipe, *args, "--config", config]
    if processes == 1:
        cmd = [sys.executable, *cli]
    else:
        # --multi_gpu is accelerate's torchrun launcher; without CUDA our processes join a gloo group
        # (`--cpu` with several processes would need mpirun)
        launch = [
            str(ACCELERATE),
            "launch",
            "--multi_gpu",
            "--num_processes",
            str(processes),
            "--num_machines",
            "1",
        ]
        cmd = [*launch, "--mixed_precision", "no", "--dynamo_backend", "no", *cli]
    done = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == str(out)  # the run folder, on the last line
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


def test_sft_two_processes_match_one(tmp_path):
    overrides = ["train.steps=3", "train.eval_every=3", "train.save_every=0"]
    two = _train("sft", "configs/debug/sft.yaml", tmp_path / "two", overrides, 2)
    one = _train("sft", "configs/debug/sft.yaml", tmp_path / "one", overrides, 1)
    assert any("eval_loss" in m for m in two[0])
    _compare(two, one, ["loss", "eval_loss", "grad_norm"])


@pytest.mark.slow
def test_grpo_two_processes_match_one(tmp_path):
    """Rollouts too: sampling is seeded per (step, chunk), not per process."""
    overrides = ["train.steps=2", "train.eval_every=0", "train.save_every=0"]
    two = _train("grpo", "configs/debug/grpo.yaml", tmp_path / "two", overrides, 2)
    one = _train("grpo", "configs/debug/grpo.yaml", tmp_path / "one", overrides, 1)
    _compare(two, one, ["loss", "reward", "insertions"])
