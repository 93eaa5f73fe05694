"""Runs that would silently go wrong stop with a clear error instead: a resume under an edited config, two
runs in one folder, a diverged loss."""

import re
import subprocess
import sys
import textwrap

import pytest
import yaml

import latentmem.training.sft as sft
from latentmem.errors import ConfigError, LatentMemError
from latentmem.training import SFTConfig
from latentmem.training.checkpoint import latest_checkpoint

TINY = {
    "model": "tiny-qwen2",
    "memgen": {"prompt_latents": 2, "inference_latents": 2, "max_inference_insertions": 2, "lora_r": 4},
    "data": {"task": "arithmetic", "train_size": 16, "eval_size": 0},
}


def _cfg(run, memgen=None, **train):
    return SFTConfig.from_dict(
        {
            **TINY,
            "memgen": {**TINY["memgen"], **(memgen or {})},
            "output_dir": str(run),
            "train": {"batch_size": 4, "lr": 3e-3, "steps": 2, **train},
        }
    )


def test_resume_refuses_an_edited_config_but_not_new_steps(tmp_path, capsys):
    run = tmp_path / "run"
    sft.train_sft(_cfg(run))
    with pytest.raises(ConfigError, match=r"train\.lr: 0\.003 -> 0\.01\). A resumed run may change only"):
        sft.train_sft(_cfg(run, lr=1e-2, steps=4))
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["lr"] == 3e-3  # left as it was
    # a shape change is named too, rather than failing as a size mismatch while loading the weights
    # the way out it names exists for every recipe (recall configs have no train.resume to set)
    with pytest.raises(ConfigError, match=rf"or delete {re.escape(str(run / 'checkpoints'))} to overwrite"):
        sft.train_sft(_cfg(run, lr=1e-2))
    with pytest.raises(ConfigError, match=r"memgen\.lora_r: 4 -> 8"):
        sft.train_sft(_cfg(run, memgen={"lora_r": 8}))
    capsys.readouterr()
    sft.train_sft(_cfg(run, steps=3, save_every=1, eval_every=5))
    assert "resumed from step 2" in capsys.readouterr().err
    assert latest_checkpoint(run / "checkpoints").name == "step-000003"


def _hold_lock(run):
    """A process that holds `run`'s lock until its stdin closes."""
    code = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from latentmem.runs import RunDir
        RunDir(Path({str(run)!r})).lock()
        print("locked", flush=True)
        sys.stdin.read()
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_run_in_the_same_folder_is_refused_naming_the_first(tmp_path):
    run = tmp_path / "run"
    other = _hold_lock(run)
    try:
        with pytest.raises(LatentMemError, match=rf"{run} is in use by another run \(pid {other.pid}\)"):
            sft.train_sft(_cfg(run))
        assert not (run / "config.yaml").exists()
    finally:
        other.communicate("")
    sft.train_sft(_cfg(run))  # the lock died with its process
    other = _hold_lock(run)  # and this process released its own when training ended
    other.communicate("")


def test_a_diverged_loss_stops_the_run_without_saving_the_model(tmp_path, monkeypatch):
    real = sft.summed_nll
    calls = {"n": 0}

    def nan_from_step_2(*a, **k):
        calls["n"] += 1
        loss = real(*a, **k)
        return loss * float("nan") if calls["n"] >= 2 else loss

    monkeypatch.setattr(sft, "summed_nll", nan_from_step_2)
    run = tmp_path / "run"
    with pytest.raises(LatentMemError, match=r"step 2: the loss is nan .*diverged.*step-000001\) is intact"):
        sft.train_sft(_cfg(run, steps=3, save_every=1))
    assert not (run / "model").exists()
    assert latest_checkpoint(run / "checkpoints").name == "step-000001"
