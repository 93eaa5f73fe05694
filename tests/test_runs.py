import json
import os
import random

import numpy as np
import pytest
import torch
import yaml

from latentmem.errors import LatentMemError, ModelLoadError
from latentmem.runs import RunDir, package_versions
from latentmem.seeding import seed_everything
from latentmem.training.checkpoint import (
    LATEST,
    STATE,
    WEIGHTS,
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


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


def test_a_half_written_last_metrics_line_is_dropped_with_a_warning(tmp_path):
    run = RunDir.create(tmp_path / "run", {}, seed=0)
    run.log(step=1, loss=2.5)
    run.log(step=2, loss=2.0)
    with run.metrics_path.open("a") as f:
        f.write('{"step": 3, "lo')  # killed in the middle of a write
    with pytest.warns(RuntimeWarning, match="half-written last line"):
        assert [m["step"] for m in run.metrics()] == [1, 2]
    run.metrics_path.write_text('{"step": 1}\n{"ste\n{"step": 3}\n')  # not what a kill leaves
    with pytest.raises(LatentMemError, match=r"metrics.jsonl:2 is not valid JSON"):
        run.metrics()


# ---- checkpoints ------------------------------------------------------------------------------------
def _save(root, step, keep=2):
    return save_checkpoint(root, step, {"w": torch.full((4,), float(step))}, {"rng": rng_state()}, keep)


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damaged", [WEIGHTS, STATE])
@pytest.mark.parametrize("how", ["truncated", "empty"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_older_one(tmp_path, damaged, how):
    root = tmp_path / "checkpoints"
    _save(root, 10)
    newest = _save(root, 20)
    target = newest / damaged
    _truncate(target) if how == "truncated" else target.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="step-000020 is damaged"):
        load_checkpoint(newest)
    with pytest.warns(RuntimeWarning, match="resuming from step-000010: step-000020 is damaged"):
        path = latest_checkpoint(root)
    ckpt = load_checkpoint(path)
    assert ckpt.step == 10 and ckpt.weights["w"].tolist() == [10.0] * 4
    set_rng_state(ckpt.state["rng"])
    _truncate(path / STATE)  # both kept checkpoints damaged: an error, never a silent fresh start
    with pytest.raises(ModelLoadError, match="no intact checkpoint"):
        latest_checkpoint(root)


def test_latest_must_name_a_step_folder_beside_it(tmp_path):
    root = tmp_path / "run" / "checkpoints"
    _save(root, 5)
    outside = _save(tmp_path / "elsewhere", 99)
    (root / LATEST).write_text(f"../../elsewhere/{outside.name}\n")
    with pytest.warns(RuntimeWarning, match="not a step-N folder"):
        assert latest_checkpoint(root) == root / "step-000005"
    assert latest_checkpoint(tmp_path / "empty") is None


def test_a_checkpoint_cannot_run_code_on_load(tmp_path):
    root = tmp_path / "checkpoints"
    path = _save(root, 1)
    flag = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {flag}",))

    torch.save({"step": 1, "rng": Payload()}, path / STATE)
    assert latest_checkpoint(root) == path  # an intact file ...
    with pytest.raises(ModelLoadError, match="cannot load checkpoint"):
        load_checkpoint(path)  # ... whose pickle may not call anything
    assert not flag.exists()


def test_checkpoint_round_trip_restores_the_rng_states(tmp_path):
    seed_everything(3)
    path = _save(tmp_path / "c", 7)
    expected = _draw()
    _draw()
    set_rng_state(load_checkpoint(path).state["rng"])
    assert _draw() == expected
