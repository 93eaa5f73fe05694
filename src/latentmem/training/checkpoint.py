"""Atomic training checkpoints: a kill during a save never leaves a corrupt `latest`.

Layout under `<run>/checkpoints/`::

    step-000020/trainable.safetensors   the model's trainable state (LoRA, queries, projections, trigger)
    step-000020/state.pt                optimizer, scheduler, RNG states, step, recipe state (e.g. p_bar)
    latest                              a text file naming the newest complete checkpoint

A save writes everything into a hidden temporary folder, fsyncs it, renames it to `step-N` (atomic on one
filesystem), and only then replaces `latest` (write a temporary file, fsync, `os.replace`). A crash at any
point leaves `latest` pointing at the previous complete checkpoint; leftover temporary folders are ignored
and removed by the next save.
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from latentmem.errors import LatentMemError

WEIGHTS = "trainable.safetensors"
STATE = "state.pt"
LATEST = "latest"


def rng_state() -> dict[str, Any]:
    """Every RNG a training step may draw from (dropout, shuffles)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
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
    """The folder `latest` names, or None when there is no complete checkpoint yet."""
    pointer = Path(root) / LATEST
    if not pointer.is_file():
        return None
    path = Path(root) / pointer.read_text().strip()
    if not (path / WEIGHTS).is_file() or not (path / STATE).is_file():
        raise LatentMemError(f"{pointer} names {path}, which is incomplete; delete {pointer} to start over")
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path)
    # weights_only=False: the state holds python/numpy RNG states, written by us
    state = torch.load(path / STATE, weights_only=False)
    return Checkpoint(step=int(state.pop("step")), weights=load_file(str(path / WEIGHTS)), state=state)
