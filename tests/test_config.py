from dataclasses import dataclass, field
from typing import Literal

import pytest

from latentmem.config import Config, apply_overrides, parse_override, require
from latentmem.errors import ConfigError


@dataclass
class Optim(Config):
    lr: float = 1e-4
    steps: int = 10
    schedule: Literal["constant", "cosine"] = "cosine"

    def validate(self):
        require(self.lr > 0, "optim.lr", f"must be > 0, got {self.lr}; try 1e-4")


@dataclass
class Run(Config):
    model: str = "tiny-qwen2"
    delimiters: tuple[str, ...] = (",", ".")
    optim: Optim = field(default_factory=Optim)
    note: str | None = None


def test_defaults_round_trip():
    cfg = Run()
    assert Run.from_dict(cfg.to_dict()) == cfg


def test_nested_and_coercion():
    cfg = Run.from_dict({"optim": {"lr": 1, "steps": 3}, "delimiters": [";"]})
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.delimiters == (";",)


def test_unknown_key_names_the_field_and_suggests():
    with pytest.raises(ConfigError, match=r"optim.setps: unknown key .*Did you mean 'optim.steps'"):
        Run.from_dict({"optim": {"setps": 3}})


def test_wrong_type_names_the_field():
    with pytest.raises(ConfigError, match=r"Optim.steps: expected an int, got 'ten'"):
        Run.from_dict({"optim": {"steps": "ten"}})
    with pytest.raises(ConfigError, match=r"must be one of 'constant', 'cosine'"):
        Optim(schedule="linear")


def test_validate_runs_at_construction():
    with pytest.raises(ConfigError, match=r"optim.lr: must be > 0"):
        Optim(lr=-1.0)


def test_yaml_with_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("# latentmem something --config c.yaml\nmodel: tiny-llama\noptim:\n  lr: 0.01\n")
    cfg = Run.from_yaml(path, ["optim.steps=7", "--note=hello", "optim.lr=2e-3"])
    assert (cfg.model, cfg.optim.steps, cfg.optim.lr, cfg.note) == ("tiny-llama", 7, 0.002, "hello")
    assert Run.from_dict(__import__("yaml").safe_load(__import__("yaml").safe_dump(cfg.to_dict()))) == cfg


def test_override_errors(tmp_path):
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_override("optim.lr")
    with pytest.raises(ConfigError, match="'model' is a value, not a section"):
        apply_overrides({"model": "x"}, ["model.name=y"])
    with pytest.raises(ConfigError, match="does not exist"):
        Run.from_yaml(tmp_path / "missing.yaml")


@dataclass
class Scaled(Config):
    scale: float | None = None


def test_float_fields_must_be_finite():
    for raw in ("inf", ".inf", "-inf", "nan", ".nan", "1e999"):
        with pytest.raises(ConfigError, match=r"Optim.lr: must be a finite number"):
            Run.from_dict(apply_overrides({}, [f"optim.lr={raw}"]))
    with pytest.raises(ConfigError, match=r"Scaled.scale: must be a finite number, got inf"):
        Scaled(scale=float("inf"))
    assert Scaled(scale=2).scale == 2.0 and Scaled().scale is None

    from latentmem.training import SFTConfig

    with pytest.raises(ConfigError, match=r"TrainConfig.lr: must be a finite number"):
        SFTConfig.from_dict({"train": {"lr": "inf"}})
