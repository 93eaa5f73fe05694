"""Run folders: every run keeps its resolved config, seed, git hash and package versions beside its outputs.

A training run holds its folder's lock (`RunDir.lock`, an exclusive `flock` on `<run>/.lock`) for its
lifetime, so that a second run started in the same folder fails at once, naming the first one's pid,
instead of the two overwriting each other's checkpoints and metrics.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import yaml

from latentmem.config import Config
from latentmem.errors import LatentMemError

# The packages whose versions decide a result; recorded in every run folder.
TRACKED_PACKAGES = (
    "latentmem",
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "trl",
    "tokenizers",
    "numpy",
    "safetensors",
    "faiss-cpu",
    "sentence-transformers",
)
LOCK_FILE = ".lock"
# The open lock files of the run folders this process holds, by resolved path. `flock` locks belong to an
# open file, so a second open in this process would conflict with its own lock: a run restarted in the same
# process (after an error, or a notebook cell run again) reuses the lock it already holds.
_HELD_LOCKS: dict[Path, IO[str]] = {}


def package_versions() -> dict[str, str]:
    """Installed versions of `TRACKED_PACKAGES` (absent ones are skipped) plus python's."""
    out = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def git_hash(cwd: str | Path | None = None) -> str | None:
    """The HEAD commit of the repository at `cwd` (default: this source tree), with `-dirty` if modified."""
    cwd = Path(cwd) if cwd else Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}-dirty" if dirty else head


@dataclass
class RunDir:
    """A run folder: `config.yaml`, `run.json` (seed, git hash, versions, command) and `metrics.jsonl`."""

    path: Path

    @classmethod
    def create(
        cls, path: str | Path, config: Config | Mapping[str, Any], seed: int, *, exist_ok: bool = True
    ) -> RunDir:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=exist_ok)
        cfg = config.to_dict() if isinstance(config, Config) else dict(config)
        _atomic_write(path / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))
        info = {
            "seed": seed,
            "git_hash": git_hash(),
            "packages": package_versions(),
            "command": [os.path.basename(sys.argv[0]), *sys.argv[1:]],
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": platform.node(),
        }
        _atomic_write(path / "run.json", json.dumps(info, indent=2) + "\n")
        return cls(path)

    def lock(self) -> None:
        """Take this folder's exclusive lock for this process (creating the folder), or raise
        `LatentMemError` naming the pid of the run that holds it. Held until `unlock` or the process ends
        (the kernel drops a dead process's lock, so a killed run never leaves a stale one)."""
        self.path.mkdir(parents=True, exist_ok=True)
        key = self.path.resolve()
        if key in _HELD_LOCKS:
            return
        handle = (key / LOCK_FILE).open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            pid = handle.read().strip() or "unknown"
            handle.close()
            raise LatentMemError(
                f"{self.path} is in use by another run (pid {pid}); wait for it to finish, stop it, or give "
                "this run another output_dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        _HELD_LOCKS[key] = handle

    def unlock(self) -> None:
        """Release the lock `lock` took (nothing when this process does not hold it). The lock file stays:
        removing it could let two runs lock two different files of the same name."""
        handle = _HELD_LOCKS.pop(self.path.resolve(), None)
        if handle is not None:
            handle.close()

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def log(self, **metrics: Any) -> None:
        """Append one JSON line of metrics (e.g. `step=3, loss=1.2`)."""
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(metrics) + "\n")

    def metrics(self) -> list[dict[str, Any]]:
        """Every logged line. A damaged *last* line is what a kill in the middle of `log` leaves: it is
        dropped with a warning (resume then rewrites the file without it). A damaged line before others
        is not explained by a kill, so it is an error naming the line."""
        if not self.metrics_path.exists():
            return []
        lines = [
            (n, line) for n, line in enumerate(self.metrics_path.read_text().splitlines(), 1) if line.strip()
        ]
        out = []
        for i, (number, line) in enumerate(lines):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                if i + 1 < len(lines):
                    raise LatentMemError(
                        f"{self.metrics_path}:{number} is not valid JSON ({exc}); fix or delete that line"
                    ) from None
                warnings.warn(
                    f"{self.metrics_path}:{number}: dropping a half-written last line ({line[:60]!r})",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return out


def _atomic_write(path: Path, text: str) -> None:
    """Write to a temporary file beside `path`, fsync, then rename: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
