"""Every shipped config loads through the config class of the command on its first line.

A config whose first line names no known command, or which its recipe's config class rejects (an unknown
key, a value out of range), fails here instead of in a user's run.
"""

from __future__ import annotations

import importlib
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parent.parent
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))

# the command on a config's first line -> the typed config class that loads it
CLASSES = {
    ("latentmem", "compare"): "latentmem.eval.compare:CompareConfig",
    ("latentmem", "train", "sft"): "latentmem.training.config:SFTConfig",
    ("latentmem", "train", "grpo"): "latentmem.training.config:GRPOConfig",
    ("latentmem", "train", "trigger"): "latentmem.training.config:TriggerRLConfig",
    ("latentmem", "train", "warmup"): "latentmem.training.warmup:WarmupConfig",
    ("latentmem", "train", "recall"): "latentmem.recall.train:RecallTrainConfig",
    ("latentmem", "train", "memory-manager"): "latentmem.agent_memory.train:MemoryManagerConfig",
    ("scripts/recall_eval.py",): "latentmem.recall.evaluate:EvalConfig",
}
ACCELERATE_KEYS = {"compute_environment", "distributed_type", "num_machines", "num_processes"}


def first_command(path: Path) -> list[str]:
    line = path.read_text().splitlines()[0]
    assert line.startswith("# "), f"{path}: the first line must be the command that runs it"
    return shlex.split(line[2:])


def config_class(words: list[str]) -> type:
    """The config class of a command: the recipe after `latentmem`, or the script it runs."""
    words = ["latentmem" if w == "latentmem.cli" else w for w in words]  # `-m latentmem.cli` runs the CLI
    if "latentmem" in words:
        command = words[words.index("latentmem") :]
        key = tuple(w for w in command[:3] if not w.startswith("-"))  # latentmem compare --config ...
    else:
        key = tuple(w for w in words if w.endswith(".py"))[:1]
    assert key in CLASSES, f"no config class known for the command {' '.join(words)!r}"
    module, name = CLASSES[key].split(":")
    return getattr(importlib.import_module(module), name)


def test_configs_found():
    assert len(CONFIGS) >= 10


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_config_loads_through_its_recipe(path: Path):
    words = first_command(path)
    if path.parent.name == "accelerate":
        # an accelerate launch file: accelerate's own keys, and the config it launches loads too
        assert set(yaml.safe_load(path.read_text())) >= ACCELERATE_KEYS
        assert words[:2] == ["accelerate", "launch"] and words[words.index("--config_file") + 1] == str(
            path.relative_to(path.parents[2])
        )
        launched = path.parents[2] / words[words.index("--config") + 1]
        config_class(words).from_yaml(launched)
        return
    assert words[-1] == str(path.relative_to(ROOT)), f"{path}: its command must run this file"
    cfg = config_class(words).from_yaml(path)
    assert cfg.to_dict()  # resolved without error
