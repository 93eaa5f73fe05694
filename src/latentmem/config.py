"""Typed configuration: dataclasses validated at construction, loaded from YAML with command-line overrides.

Every config in latentmem subclasses `Config`. Field types are checked (and safely coerced: an int where a
float is declared, a list where a tuple is declared) in `__post_init__`, then `validate()` checks ranges.
Float fields must be finite: `inf` or `nan` (e.g. `train.lr=inf`) would pass every range check written as a
comparison, or fail none, and surface only as a diverged run.
Errors name the field and the fix::

    >>> MyConfig.from_yaml("configs/debug/sft.yaml", overrides=["train.lr=1e-3"])
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import functools
import math
import types
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, Self, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from latentmem.errors import ConfigError

C = TypeVar("C", bound="Config")


def require(condition: bool, field: str, message: str) -> None:
    """Raise `ConfigError("<field>: <message>")` unless `condition` holds."""
    if not condition:
        raise ConfigError(f"{field}: {message}")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """A config class's resolved field types: resolving them (`get_type_hints`) costs more than the rest of
    building a small config, and the server builds one per request."""
    return get_type_hints(cls)


@dataclasses.dataclass
class Config:
    """Base class of every typed config. Subclasses are dataclasses and override `validate()`."""

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            setattr(self, f.name, _coerce(value, hints[f.name], f"{type(self).__name__}.{f.name}"))
        self.validate()

    def validate(self) -> None:
        """Check ranges and cross-field rules; raise `ConfigError` via `require`. Default: nothing."""

    # ---- dict / YAML round trip -------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, *, _path: str = "") -> Self:
        """Build from a (nested) mapping. Unknown keys are errors that list the valid ones."""
        data = dict(data or {})
        hints = _hints(cls)
        names = [f.name for f in dataclasses.fields(cls) if f.init]
        unknown = [k for k in data if k not in names]
        if unknown:
            key = unknown[0]
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" Did you mean '{_path}{close[0]}'?" if close else ""
            raise ConfigError(
                f"{_path}{key}: unknown key for {cls.__name__}.{hint} Valid keys: {', '.join(names)}."
            )
        kwargs = {}
        for name in names:
            if name not in data:
                continue
            value, tp = data[name], hints[name]
            sub = _config_class(tp)
            if sub is not None and isinstance(value, Mapping):
                value = sub.from_dict(value, _path=f"{_path}{name}.")
            kwargs[name] = value
        try:
            return cls(**kwargs)
        except TypeError as exc:  # a required field is missing
            raise ConfigError(f"{_path.rstrip('.') or cls.__name__}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """A plain nested dict (tuples become lists) that `from_dict` turns back into an equal config."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Iterable[str] = ()) -> Self:
        """Load `path`, apply `key.sub=value` overrides, validate."""
        return cls.from_dict(apply_overrides(load_yaml_mapping(path), overrides))


def load_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """The mapping in YAML file `path` (empty file: {}); `ConfigError` naming the file when it is missing,
    not UTF-8, not YAML, or not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """`"train.lr=1e-3"` -> (["train", "lr"], 0.001). Values are parsed as YAML scalars/lists."""
    text = text.removeprefix("--")
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. train.lr=1e-4")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: empty key; expected e.g. train.lr=1e-4")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of `data` with each `a.b.c=value` override set (creating nested mappings)."""
    out = copy.deepcopy(data)
    for text in overrides:
        keys, value = parse_override(text)
        node = out
        for k in keys[:-1]:
            child = node.get(k)
            if child is None:
                child = node[k] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: '{k}' is a value, not a section")
            node = child
        node[keys[-1]] = value
    return out


# ---- type checking and coercion ------------------------------------------------------------------
def _config_class(tp: Any) -> type[Config] | None:
    for cand in (tp, *get_args(tp)):
        if isinstance(cand, type) and issubclass(cand, Config):
            return cand
    return None


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, field: str) -> Any:
    """Check `value` against the annotation `tp`; return it, safely coerced. Raise ConfigError otherwise."""
    if tp is Any:
        return value
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, field)
            except ConfigError as exc:
                errors.append(exc)
        if len(errors) == 1:  # an optional field (`float | None`): the one type's own message is clearer
            raise errors[0]
        raise ConfigError(f"{field}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        choices = get_args(tp)
        require(value in choices, field, f"must be one of {', '.join(map(repr, choices))}; got {value!r}")
        return value
    if origin in (list, tuple):
        require(isinstance(value, list | tuple), field, f"expected a list, got {value!r}")
        args = get_args(tp)
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{field}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        require(isinstance(value, dict), field, f"expected a mapping, got {value!r}")
        return value
    if isinstance(tp, type) and issubclass(tp, Config):
        if isinstance(value, Mapping):
            return tp.from_dict(value, _path=f"{field}.")
        require(isinstance(value, tp), field, f"expected a {tp.__name__} section, got {value!r}")
        return value
    if tp is bool:
        require(isinstance(value, bool), field, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        require(
            isinstance(value, int) and not isinstance(value, bool), field, f"expected an int, got {value!r}"
        )
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        require(ok, field, f"expected a number, got {value!r}")
        require(math.isfinite(value), field, f"must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        require(isinstance(value, str), field, f"expected a string, got {value!r}")
        return value
    if tp is Path:
        require(isinstance(value, str | Path), field, f"expected a path, got {value!r}")
        return Path(value)
    return value


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


__all__ = ["Config", "ConfigError", "apply_overrides", "load_yaml_mapping", "parse_override", "require"]
