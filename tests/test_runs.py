import json
import random

import numpy as np
import torch
import yaml

from latentmem.runs import RunDir, package_versions
from latentmem.seeding import seed_everything


def _draw():
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_seed_everything_reproduces_all_generators():
    seed_everything(11)
    first = _draw()
    seed_everything(11)
    assert _draw() == first
    seed_everything(12)
    assert _draw() != first


def test_run_dir_records_config_seed_git_and_versions(tmp_path):
    run = RunDir.create(tmp_path / "run", {"lr": 0.1, "model": "tiny-qwen2"}, seed=5)
    assert yaml.safe_load((run.path / "config.yaml").read_text()) == {"lr": 0.1, "model": "tiny-qwen2"}
    info = json.loads((run.path / "run.json").read_text())
    assert info["seed"] == 5
    assert "git_hash" in info and info["packages"]["torch"].startswith("2.13")
    run.log(step=1, loss=2.5)
    run.log(step=2, loss=2.0)
    assert [m["loss"] for m in run.metrics()] == [2.5, 2.0]


def test_package_versions_has_core_stack():
    versions = package_versions()
    for name in ("python", "torch", "transformers", "peft"):
        assert name in versions
