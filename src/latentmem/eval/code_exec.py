"""Run model-written Python against its tests, always in a separate, limited process.

A sample may crash, loop forever, allocate without bound, fork, or print without end; none of that may
reach the evaluator. So each run is a fresh `python` process in its own temporary directory and session,
with `setrlimit` caps on CPU seconds, address space, written file size, core dumps and processes
(`MAX_PROCESSES` more than its user already runs), a wall-clock timeout, no stdin, output sent to
size-capped files, and a minimal environment. When it ends (or times out) its process group is killed and
then every process of its session, or carrying its per-run environment marker, is swept, so a child that
forked and called `setsid()` does not outlive the run. Every failure mode comes back as a status, never
as an exception.

A sample may also try to *look* passed (reward hacking, when scores are rewards). Exiting early with status
0 does not pass: the evaluator decides from a report the trusted bootstrap writes, not from the exit status
or the output. That report travels over an inherited pipe and each line starts with a per-run random nonce
the sample cannot see: the nonce is read from a second pipe that is closed before any sample code runs (it
is on no command line, in no environment variable or file), and kept only in a local variable of the
bootstrap. `run_tests` finds the test functions itself, by parsing the test file in the evaluator, before
any sample code is imported, and passes only when every one of them was reported run and passed, so a
sample that hides, skips or empties the tests (e.g. by patching `inspect` or pytest) scores 0, and so does a
test file with no tests.

What this does not stop, since the sample runs in the bootstrap's interpreter: code written against this
bootstrap can read the nonce from its frame (`sys._getframe`, `gc`, memory) and forge the report, or
replace the test functions after they are defined (threads, trace or import hooks); a returned object
whose `__eq__` is always true defeats an `assert result == expected`; patched builtins can fool tests that
call them. Nor is it a security boundary: the process runs as the same user and can reach the network and
the file system, and read what that user can, including the evaluator's environment
(`/proc/<pid>/environ`: keep secrets out of it); a process that leaves the session *and* execs with a new
environment escapes the sweep; `RLIMIT_NPROC` counts all of the user's processes and is not enforced for
root. Evaluate untrusted code in a container (or user and pid namespaces).
"""

from __future__ import annotations

import ast
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

# The trusted part of every run, given as `python -c`. Its arguments (not secret): the mode, the nonce and
# report pipes' fd numbers, the file (program mode) or module (tests mode), and the test names to run.
# Everything it calls after sample code has run was looked up before, so patching `os` or `traceback` does
# not reach it; a test that raises anything, SystemExit included, failed.
BOOTSTRAP = r"""
def _bootstrap():
    import os, sys, traceback
    mode, target, names = sys.argv[1], sys.argv[4], sys.argv[5:]
    nonce_fd, report_fd = int(sys.argv[2]), int(sys.argv[3])
    nonce = os.read(nonce_fd, 64)
    os.close(nonce_fd)
    write, print_exc, exit_, getattr_ = os.write, traceback.print_exc, os._exit, getattr
    sys.argv = [target]

    def send(line):
        write(report_fd, nonce + b" " + line.encode() + b"\n")

    if mode == "program":
        import runpy
        runpy.run_path(target, run_name="__main__")
        send("finished")
    elif mode == "pytest":
        import pytest

        class Report:
            def pytest_runtest_logreport(self, report):
                # a failed or skipped setup, call or teardown fails the test; only a passed call passes it
                if report.when == "call" or not report.passed:
                    outcome = "passed" if report.passed else "failed"
                    send(outcome + " " + report.nodeid.split("::")[-1].split("[")[0])

        code = pytest.main(["-q", "-x", "-p", "no:cacheprovider", target + ".py"], plugins=[Report()])
        raise SystemExit(int(code))
    else:
        import importlib
        module = importlib.import_module(target)  # imports the solution: sample code runs from here on
        for name in names:
            try:
                getattr_(module, name)()
            except BaseException:
                print_exc()
                send("failed " + name)
                sys.stderr.flush()
                exit_(1)
            send("passed " + name)


_bootstrap()
"""
REPORT_LIMIT_BYTES = 1 << 16  # more than any honest report; a sample flooding the pipe only fails itself
MAX_PROCESSES = 64  # processes (threads included) a run may add to its user's count
MARKER_VAR = "LATENTMEM_SANDBOX_RUN"  # set to a per-run id in the environment of each run, for the sweep
OUTPUT_LIMIT_BYTES = 1 << 20  # per output file; writing more kills the sample (SIGXFSZ)
DETAIL_CHARS = 2000  # how much of stderr the result keeps


@dataclass(frozen=True)
class ExecResult:
    """How a run ended: `passed` (ran to its end, or every test passed, and exited with status 0),
    `failed` (anything else: an exit, signal, limit, failed or missing test) or `timeout`; `detail` is
    the tail of its stderr (or what stopped it). `run_tests` also counts the tests reported run and
    passed."""

    status: Status
    detail: str = ""
    tests_run: int = 0
    tests_passed: int = 0

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _limits(cpu_seconds: int, memory_bytes: int, processes: int) -> None:
    """Runs in the child between fork and exec: cap what the sample can use."""
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
    resource.setrlimit(resource.RLIMIT_NPROC, (processes, processes))
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (OUTPUT_LIMIT_BYTES, OUTPUT_LIMIT_BYTES))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _user_tasks() -> int:
    """How many processes and threads this user runs now: the kernel checks `RLIMIT_NPROC` against that
    whole count, not against the run's own processes."""
    uid, total = os.getuid(), 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):  # gone meanwhile
            fields = dict(
                line.split(":", 1)
                for line in Path(entry.path, "status").read_text().splitlines()
                if ":" in line
            )
            if int(fields["Uid"].split()[0]) == uid:
                total += int(fields["Threads"])
    return total


def _environment(workdir: str, marker: str) -> dict[str, str]:
    """Only what Python needs, and the sweep's marker; one thread per numeric library so the
    address-space cap is not spent on thread stacks."""
    env = {
        MARKER_VAR: marker,
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
    """Write `files` (name → source) into a fresh temporary directory and run `python <main>` there; it
    passes when `main` runs to its end (an early `sys.exit(0)` or `os._exit(0)` fails).

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
    code, stderr, reports = _run(files, ["program", main], timeout, memory_mb)
    if code is None:
        return ExecResult("timeout", f"killed after {timeout:g} s")
    if code == 0 and reports == ["finished"]:
        return ExecResult("passed", stderr)
    if code == 0:
        return ExecResult("failed", f"exited with status 0 before {main} finished (sys.exit or os._exit)")
    return _failed(code, stderr)


def find_tests(source: str) -> tuple[list[str], bool]:
    """The module-level `test*` functions of a test file, in order, and whether any takes arguments
    (pytest fixtures or parametrize, so pytest must run them). Read from the source, never by importing
    it: importing would run the code under test first."""
    tests = [
        node
        for node in ast.parse(source).body
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test")
    ]
    args = [n.args for n in tests]
    takes_args = any(a.posonlyargs or a.args or a.kwonlyargs or a.vararg or a.kwarg for a in args)
    return list(dict.fromkeys(n.name for n in tests)), takes_args


def run_tests(
    files: dict[str, str],
    test_file: str,
    *,
    timeout: float = 10.0,
    memory_mb: int = 1024,
) -> ExecResult:
    """Run the test functions of `test_file` (one of `files`) in a limited process (see `run_python` for
    the arguments); it passes when every module-level `test*` function was run and passed, and fails
    when there is none. The tests run in definition order, with pytest only if one takes arguments."""
    if test_file not in files or not test_file.endswith(".py"):
        raise ValueError(f"test file {test_file!r} is not a .py file among the files {sorted(files)}")
    try:
        names, takes_args = find_tests(files[test_file])
    except SyntaxError as exc:
        return ExecResult("failed", f"the test file does not parse: {exc}")
    if not names:
        return ExecResult("failed", f"{test_file} defines no test functions")
    mode = "pytest" if takes_args else "tests"
    code, stderr, reports = _run(files, [mode, test_file.removesuffix(".py"), *names], timeout, memory_mb)
    if code is None:
        return ExecResult("timeout", f"killed after {timeout:g} s")
    outcomes = [line.split(" ", 1) for line in reports or []]
    if reports is None or any(len(o) != 2 or o[0] not in ("passed", "failed") for o in outcomes):
        return ExecResult("failed", "the test report was forged or garbled")
    run = len(outcomes)
    passed_names = {name for outcome, name in outcomes if outcome == "passed"}
    passed = sum(outcome == "passed" for outcome, _ in outcomes)
    never_passed = [n for n in names if n not in passed_names]
    if code == 0 and passed == run and not never_passed:
        return ExecResult("passed", stderr, run, passed)
    if code == 0:
        detail = f"{passed} of {run} tests passed; never passed: {', '.join(never_passed) or '-'}"
        return ExecResult("failed", f"{detail}\n{stderr}".rstrip(), run, passed)
    result = _failed(code, stderr)
    return ExecResult(result.status, result.detail, run, passed)


def _failed(code: int, stderr: str) -> ExecResult:
    if code < 0:
        return ExecResult("failed", f"killed by {signal.Signals(-code).name}\n{stderr}".rstrip())
    return ExecResult("failed", stderr or f"exit status {code}")


def _run(
    files: dict[str, str], args: list[str], timeout: float, memory_mb: int
) -> tuple[int | None, str, list[str] | None]:
    """Run `BOOTSTRAP` with `args` among `files`: (exit status or None on timeout, tail of stderr, the
    report lines without their nonce; None when a line did not carry this run's nonce)."""
    nonce, marker = secrets.token_hex(16).encode(), secrets.token_hex(8)
    processes = _user_tasks() + MAX_PROCESSES
    mode, *rest = args
    with tempfile.TemporaryDirectory(prefix="latentmem-exec-") as workdir:
        for name, source in files.items():
            Path(workdir, name).write_text(source)
        out_path, err_path = Path(workdir, ".stdout"), Path(workdir, ".stderr")
        nonce_r, nonce_w = os.pipe()
        report_r, report_w = os.pipe()
        open_fds = {nonce_r, nonce_w, report_r, report_w}

        def close(fd: int) -> None:
            open_fds.discard(fd)
            os.close(fd)

        try:
            os.write(nonce_w, nonce)  # fits the pipe's buffer: the child reads it first thing
            close(nonce_w)
            with open(out_path, "wb") as out, open(err_path, "wb") as err:
                # -s: no user site-packages; -E: ignore PYTHON* variables of the evaluator's environment
                proc = subprocess.Popen(
                    [sys.executable, "-s", "-E", "-c", BOOTSTRAP, mode, str(nonce_r), str(report_w), *rest],
                    cwd=workdir,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    env=_environment(workdir, marker),
                    pass_fds=(nonce_r, report_w),
                    start_new_session=True,  # its own process group, so a timeout kills its children too
                    preexec_fn=lambda: _limits(math.ceil(timeout), memory_mb << 20, processes),
                )
                close(nonce_r)  # the child's copies are its only ones
                close(report_w)
                try:
                    code = proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    code = None
                finally:
                    _kill_group(proc)
                    _sweep(proc.pid, marker)
            report = _read_available(report_r)
        finally:
            for fd in list(open_fds):
                close(fd)
        stderr = err_path.read_bytes()[-DETAIL_CHARS:].decode("utf-8", "replace")
    lines = report.decode("utf-8", "replace").splitlines()
    prefix = nonce.decode() + " "
    if not all(line.startswith(prefix) for line in lines):
        return code, stderr, None  # a line without the nonce: the sample wrote to the pipe itself
    return code, stderr, [line.removeprefix(prefix) for line in lines]


def _read_available(fd: int) -> bytes:
    """What is in the pipe now, without waiting: a surviving grandchild may hold its write end open."""
    os.set_blocking(fd, False)
    chunks, size = [], 0
    while size < REPORT_LIMIT_BYTES:
        try:
            chunk = os.read(fd, REPORT_LIMIT_BYTES - size)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _sweep(session: int, marker: str) -> None:
    """Kill every process left of a run: those still in its session (a changed process group escapes
    `killpg`) and those whose environment carries its marker (`setsid()` leaves the session, and a fork
    keeps the environment). Repeated while it finds any, since a survivor may fork meanwhile."""
    needle = f"{MARKER_VAR}={marker}".encode()
    for _ in range(16):
        found = False
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            pid = int(entry.name)
            try:
                if Path(entry.path, "stat").read_text().rpartition(")")[2].split()[0] == "Z":
                    continue  # dead already, waiting for its parent (init, for an orphan) to reap it
                environ = Path(entry.path, "environ").read_bytes().split(b"\0")
                ours = os.getsid(pid) == session or needle in environ
            except OSError:  # gone, or not ours to read
                continue
            if ours:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
                    found = True
        if not found:
            return


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill whatever is left of the sample's session (it may have forked) and reap the process."""
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group may be gone already
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
