"""The code-task scorer cannot be fooled by the generic ways a sample could fake a pass, and a run's
processes do not outlive it."""

import resource
import time

import pytest

from latentmem.eval.code_exec import find_tests, run_python, run_tests
from latentmem.eval.task import Example
from latentmem.eval.tasks.code import KodCode

TESTS = "from solution import *\n\ndef test_add():\n    assert add(2, 3) == 5\n\ndef test_zero():\n    assert add(0, 0) == 0\n"
PARAMETRIZED = (
    "import pytest\nfrom solution import *\n\n@pytest.mark.parametrize('a, b, s', [(1, 2, 3), (2, 2, 4)])\n"
    "def test_add(a, b, s):\n    assert add(a, b) == s\n"
)
RIGHT = "def add(a, b):\n    return a + b\n"
WRONG = "def add(a, b):\n    return a - b\n"

# Each prints the old per-run token (read from the command line) and/or hides the tests.
EXPLOITS = {
    "token from argv, then os._exit(0)": WRONG
    + "import os, re, sys\n"
    + "found = re.findall('[0-9a-f]{32}', open('/proc/self/cmdline').read())\n"
    + "sys.stdout.write(found[-1] if found else ''); sys.stdout.flush()\n"
    + "os._exit(0)\n",
    "tests hidden from inspect": WRONG + "import inspect\ninspect.isfunction = lambda f: False\n",
    "write to every inherited fd, then exit 0": WRONG
    + "import os\nfor fd in map(int, os.listdir('/proc/self/fd')):\n"
    + "    try:\n        os.write(fd, b'passed test_add\\npassed test_zero\\nfinished\\n')\n"
    + "    except OSError:\n        pass\nos._exit(0)\n",
    "sys.exit(0) at import": WRONG + "import sys\nsys.exit(0)\n",
    "exit inside a test": "def add(a, b):\n    raise SystemExit(0)\n",
    "pytest skip": "import pytest\ndef add(a, b):\n    pytest.skip('no')\n",
}


def _files(solution, tests=TESTS):
    return {"solution.py": solution, "test_solution.py": tests}


@pytest.mark.parametrize("tests", [TESTS, PARAMETRIZED], ids=["plain", "pytest"])
def test_right_passes_and_wrong_fails(tests):
    ok = run_tests(_files(RIGHT, tests), "test_solution.py", timeout=10)
    assert ok.passed and ok.tests_run == ok.tests_passed >= 2, ok
    bad = run_tests(_files(WRONG, tests), "test_solution.py", timeout=10)
    assert not bad.passed and bad.tests_passed < bad.tests_run, bad


@pytest.mark.parametrize("tests", [TESTS, PARAMETRIZED], ids=["plain", "pytest"])
@pytest.mark.parametrize("name", list(EXPLOITS))
def test_exploits_score_zero(name, tests):
    result = run_tests(_files(EXPLOITS[name], tests), "test_solution.py", timeout=10)
    assert not result.passed, (name, result)


def test_kodcode_scores_the_exploits_zero_and_a_right_answer_one(tmp_path):
    data = tmp_path / "kodcode.jsonl"
    data.write_text('{"question": "add", "test": "def test_x():\\n    pass\\n"}\n')
    task = KodCode(data, timeout=10)
    example = Example("add", "", {"test": TESTS.removeprefix("from solution import *\n")})
    assert task.score(example, f"```python\n{RIGHT}```") == 1.0
    assert task.score(example, f"```python\n{WRONG}```") == 0.0
    for name, code in EXPLOITS.items():
        assert task.score(example, f"```python\n{code}```") == 0.0, name


def test_no_tests_scores_zero():
    assert not run_tests(_files(RIGHT, "from solution import *\n"), "test_solution.py").passed
    # tests defined by the solution (imported with *) are not the task's tests
    solution = RIGHT + "def test_trivial():\n    pass\n"
    assert not run_tests(_files(solution, "from solution import *\nx = 1\n"), "test_solution.py").passed


def test_find_tests_reads_the_source_without_running_it():
    source = "raise SystemExit(1)\n\ndef test_a():\n    pass\n\ndef helper():\n    pass\n\ndef test_b(x):\n    pass\n"
    assert find_tests(source) == (["test_a", "test_b"], True)
    assert find_tests(TESTS) == (["test_add", "test_zero"], False)


def test_a_program_that_prints_the_old_token_and_exits_early_fails():
    program = EXPLOITS["token from argv, then os._exit(0)"].replace(WRONG, "")
    assert not run_python({"main.py": program + "raise AssertionError\n"}, "main.py", timeout=5).passed
    assert run_python({"main.py": "print('done')\n"}, "main.py", timeout=5).passed


def test_a_child_that_leaves_the_session_does_not_outlive_its_run(tmp_path):
    flag = tmp_path / "alive"
    program = (
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n"
        f"    time.sleep(2)\n    open({str(flag)!r}, 'w').close()\n"
    )
    assert run_python({"main.py": program}, "main.py", timeout=5).passed
    time.sleep(2.5)
    assert not flag.exists()


def test_the_process_count_is_capped():
    # Checked as a limit, not by a fork bomb: RLIMIT_NPROC is not enforced for root, and a real bomb
    # would hurt the machine the tests share.
    mine, _ = resource.getrlimit(resource.RLIMIT_NPROC)
    program = (
        "import resource\nsoft, hard = resource.getrlimit(resource.RLIMIT_NPROC)\n"
        f"assert soft == hard != resource.RLIM_INFINITY and ({mine} == resource.RLIM_INFINITY or soft < {mine})\n"
    )
    result = run_python({"main.py": program}, "main.py", timeout=5)
    assert result.passed, result
