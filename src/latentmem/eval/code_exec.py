"""Run model-written Python against its tests, always in a separate, limited process.

A sample may crash, loop forever, allocate without bound, fork, or print without end; none of that may
reach the evaluator. So each run is a fresh `python` process in its own temporary directory and session,
with `setrlimit` caps on CPU seconds, address space, written file size and core dumps, a wall-clock
timeout after which its whole process group is killed, no stdin, output sent to size-capped files, and a
minimal environment. Every failure mode comes back as a status, never as an exception.

This contains accidents, not attackers: the process runs as the same user and can still reach the
network and the file system. Evaluate untrusted code in a container.
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Status = Literal["passed", "failed", "timeout"]

# Runs `main` as __main__ and then prints a per-run random token: a run passes only when it exits 0 *and*
# printed the token, so a sample cannot pass by exiting early (`sys.exit(0)`, `os._exit(0)`) before the
# tests that follow it have run.
BOOTSTRAP = "import runpy, sys; runpy.run_path({main!r}, run_name='__main__'); sys.stdout.write({token!r})"
OUTPUT_LIMIT_BYTES = 1 << 20  # per output file; writing more kills the sample (SIGXFSZ)
DETAIL_CHARS = 2000  # how much of stderr the result keeps


@dataclass(frozen=True)
class ExecResult:
    """How a run ended: `passed` (ran to its end and exited with status 0), `failed` (any other exit,
    signal or limit) or `timeout`; `detail` is the tail of its stderr (or what stopped it)."""

    status: Status
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _limits(cpu_seconds: int, memory_bytes: int) -> None:
    """Runs in the child between fork and exec: cap what the sample can use."""
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (OUTPUT_LIMIT_BYTES, OUTPUT_LIMIT_BYTES))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _environment(workdir: str) -> dict[str, str]:
    """Only what Python needs; one thread per numeric library so the address-space cap is not spent on
    thread stacks."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = "1"
    return env


def run_python(
    files: dict[str, str],
    main: str,
    *,
    timeout: float = 10.0,
    memory_mb: int = 1024,
) -> ExecResult:
    """Write `files` (name → source) into a fresh temporary directory and run `python <main>` there.

    Args:
        files: the program's files; `main` must be one of them. Their directory is the working directory
            and on `sys.path`, so the files import each other.
        main: the file to run.
        timeout: wall-clock seconds before the process group is killed (CPU time is capped at the same,
            rounded up).
        memory_mb: address-space cap; an allocation beyond it raises MemoryError inside the sample.
    """
    if main not in files:
        raise ValueError(f"main file {main!r} is not among the files {sorted(files)}")
    token = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="latentmem-exec-") as workdir:
        for name, source in files.items():
            Path(workdir, name).write_text(source)
        out_path, err_path = Path(workdir, ".stdout"), Path(workdir, ".stderr")
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            # -s: no user site-packages; -E: ignore PYTHON* variables of the evaluator's environment
            proc = subprocess.Popen(
                [sys.executable, "-s", "-E", "-c", BOOTSTRAP.format(main=main, token=token)],
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=_environment(workdir),
                start_new_session=True,  # its own process group, so a timeout kills its children too
                preexec_fn=lambda: _limits(math.ceil(timeout), memory_mb << 20),
            )
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                code = None
            finally:
                _kill_group(proc)
        stderr = err_path.read_bytes()[-DETAIL_CHARS:].decode("utf-8", "replace")
        finished = out_path.read_bytes().endswith(token.encode())
    if code is None:
        return ExecResult("timeout", f"killed after {timeout:g} s")
    if code == 0 and finished:
        return ExecResult("passed", stderr)
    if code == 0:
        return ExecResult("failed", f"exited with status 0 before {main} finished (sys.exit or os._exit)")
    if code < 0:
        return ExecResult("failed", f"killed by {signal.Signals(-code).name}\n{stderr}".rstrip())
    return ExecResult("failed", stderr or f"exit status {code}")


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill whatever is left of the sample's session (it may have forked) and reap the process."""
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group may be gone already
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
