"""Atomic training checkpoints: a kill during a save never leaves a corrupt `latest`.

Layout under `<run>/checkpoints/`::

    step-000020/trainable.safetensors   the model's trainable state (LoRA, queries, projections, trigger)
    step-000020/state.pt                optimizer, scheduler, RNG states, step, recipe state (e.g. p_bar),
                                        the run's resolved config
    latest                              a text file naming the newest complete checkpoint

A save writes everything into a hidden temporary folder, fsyncs it, renames it to `step-N` (atomic on one
filesystem), and only then replaces `latest` (write a temporary file, fsync, `os.replace`). A crash at any
point leaves `latest` pointing at the previous complete checkpoint; leftover temporary folders are ignored
and removed by the next save.

Loading trusts nothing it reads. `latest` must name a `step-N` folder beside it (a path such as `../x` is
ignored); `latest_checkpoint` returns the newest checkpoint, at or before the one `latest` names, whose
files pass an integrity check (the safetensors header against the file size, the CRCs of `state.pt`'s
zip archive), so a damaged newest checkpoint falls back to the older one kept beside it. `state.pt` is
read with `weights_only=True`: tensors, numbers, strings and containers only (the RNG states are saved in
that form), so a checkpoint from a shared run folder cannot run code on resume. Anything unreadable is a
`ModelLoadError` that names the file.

Resuming under an edited config is refused (`check_resume_config`) unless only `RESUMABLE_FIELDS` changed:
the optimizer and scheduler states would silently keep the old learning rate, a changed shape would fail
as a size mismatch, and anything else would make the run a mix of two configs under one config.yaml.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import struct
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from latentmem.errors import ConfigError, ModelLoadError

WEIGHTS = "trainable.safetensors"
STATE = "state.pt"
LATEST = "latest"
_STEP_DIR = re.compile(r"^step-(\d+)$")
# Config fields a resumed run may change: how long it trains, how often it evaluates and saves, where the
# run folder is. None of them is part of the state a checkpoint restores.
RESUMABLE_FIELDS = frozenset(
    {
        "output_dir",
        "train.steps",
        "train.eval_every",
        "train.save_every",
        "train.keep_checkpoints",
        "train.resume",
    }
)
# Checkpoints saved before the RNG states were plain values hold numpy's key array: allow exactly what
# rebuilds an array (its reconstructor, ndarray, dtypes), which runs no other code.
_NUMPY_ARRAY_GLOBALS = [np.ndarray(0).__reduce__()[0], np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def rng_state() -> dict[str, Any]:
    """Every RNG a training step may draw from (dropout, shuffles), as tensors and plain values (numpy's
    key array as a list), which `torch.load(weights_only=True)` reads back."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = (name, keys.tolist(), int(pos), int(has_gauss), float(cached))
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": numpy_state}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class Checkpoint:
    """A loaded checkpoint: the trainable weights and the training state saved beside them."""

    step: int
    weights: dict[str, torch.Tensor]
    state: dict[str, Any]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    root: str | Path, step: int, weights: dict[str, torch.Tensor], state: dict[str, Any], keep: int = 2
) -> Path:
    """Write checkpoint `step` under `root` atomically, point `latest` at it, keep the newest `keep`."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):  # left by a save that was killed
        shutil.rmtree(stale, ignore_errors=True)
    name = f"step-{step:06d}"
    tmp = root / f".tmp-{name}-{os.getpid()}"
    tmp.mkdir()
    save_file(weights, str(tmp / WEIGHTS))
    torch.save({**state, "step": step}, tmp / STATE)
    for f in tmp.iterdir():
        with f.open("rb") as fh:
            os.fsync(fh.fileno())
    final = root / name
    if final.exists():  # a re-save of the same step (after a resume): replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    pointer = root / f".{LATEST}.tmp{os.getpid()}"
    pointer.write_text(name + "\n")
    with pointer.open("rb") as fh:
        os.fsync(fh.fileno())
    os.replace(pointer, root / LATEST)
    _fsync_dir(root)
    for old in sorted(root.glob("step-*"))[:-keep]:
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest intact checkpoint folder, at or before the one `latest` names (see the module
    docstring); None when there is no checkpoint yet. A damaged one is skipped with a warning; when every
    kept checkpoint is damaged, `ModelLoadError` (starting over would silently discard the run)."""
    root = Path(root)
    candidates = _step_dirs(root)
    pointer = root / LATEST
    if pointer.is_file():
        named = pointer.read_text(errors="replace").strip()
        match = _STEP_DIR.match(named)
        if match is None:
            warnings.warn(
                f"{pointer} names {named[:80]!r}, not a step-N folder beside it; ignoring it",
                RuntimeWarning,
                stacklevel=2,
            )
        else:  # later folders are from a save killed before it moved `latest`: not trusted
            candidates = [(step, path) for step, path in candidates if step <= int(match.group(1))]
    elif not candidates:
        return None
    problems = []
    for _, path in sorted(candidates, reverse=True):
        problem = _damage(path)
        if problem is None:
            if problems:
                warnings.warn(
                    f"resuming from {path.name}: {'; '.join(problems)}", RuntimeWarning, stacklevel=2
                )
            return path
        problems.append(f"{path.name} is damaged ({problem})")
    if not problems:
        return None
    raise ModelLoadError(
        f"no intact checkpoint under {root}: {'; '.join(problems)}. Delete {root} to start the run over"
    )


def load_checkpoint(path: str | Path) -> Checkpoint:
    """The checkpoint in folder `path`; `ModelLoadError` when its files cannot be read."""
    path = Path(path)
    problem = _damage(path)
    if problem is not None:
        raise ModelLoadError(f"checkpoint {path} is damaged: {problem}")
    try:
        with torch.serialization.safe_globals(_NUMPY_ARRAY_GLOBALS):
            state = torch.load(path / STATE, map_location="cpu", weights_only=True)
        weights = load_file(str(path / WEIGHTS))
        step = int(state.pop("step"))
    except Exception as exc:  # pickle, zip and safetensors each fail in their own way
        raise ModelLoadError(
            f"cannot load checkpoint {path}: {type(exc).__name__}: {exc}".splitlines()[0]
        ) from exc
    return Checkpoint(step=step, weights=weights, state=state)


def _flat(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_resume_config(
    path: str | Path,
    saved: Mapping[str, Any] | None,
    current: Mapping[str, Any],
    resumable: frozenset[str] = RESUMABLE_FIELDS,
) -> None:
    """Refuse to resume checkpoint `path`, saved under config `saved` (a `Config.to_dict()`; None in a
    checkpoint from before configs were saved, which cannot be checked), under `current` when any field but
    `resumable` (the config's own names of `RESUMABLE_FIELDS`) differs; the `ConfigError` lists each field
    with both values."""
    if saved is None:
        warnings.warn(f"{path} holds no config (saved by an older version); resuming unchecked", stacklevel=2)
        return
    old, new = _flat(saved), _flat(current)
    changed = sorted(k for k in old.keys() | new.keys() if k not in resumable and old.get(k) != new.get(k))
    if changed:
        diffs = "; ".join(f"{k}: {old.get(k, '(unset)')!r} -> {new.get(k, '(unset)')!r}" for k in changed)
        raise ConfigError(
            f"resume: the config differs from the one checkpoint {path} was saved under ({diffs}). A resumed "
            f"run may change only {', '.join(sorted(resumable))}; restore the other values, start "
            f"over in a new output_dir, or delete {Path(path).parent} to overwrite this run"
        )


def _step_dirs(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    return [
        (int(m.group(1)), path)
        for path in root.iterdir()
        if (m := _STEP_DIR.match(path.name)) is not None and path.is_dir()
    ]


def _damage(path: Path) -> str | None:
    """Why the checkpoint folder `path` cannot be loaded, or None when its files look intact: cheap
    structural checks that catch truncated, empty and bit-flipped (zip CRC) files without unpickling."""
    weights, state = path / WEIGHTS, path / STATE
    for f in (weights, state):
        if not f.is_file():
            return f"{f.name} is missing"
    try:
        with weights.open("rb") as fh:
            size = weights.stat().st_size
            (header_len,) = struct.unpack("<Q", fh.read(8))
            if header_len > size - 8:
                return f"{WEIGHTS} is truncated"
            header = json.loads(fh.read(header_len))
        ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"]
        if 8 + header_len + max(ends, default=0) != size:
            return f"{WEIGHTS} is truncated or has trailing bytes"
        with zipfile.ZipFile(state) as archive:
            bad = archive.testzip()
        if bad is not None:
            return f"{STATE} fails its checksum at {bad}"
    except (OSError, ValueError, KeyError, TypeError, IndexError, struct.error, zipfile.BadZipFile) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None
