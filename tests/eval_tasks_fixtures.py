"""What the evaluation-task tests share: the fixture files and a small instance of every built-in task."""

from pathlib import Path

from latentmem.eval.task import Example, Task, get_task

FIXTURES = Path(__file__).parent / "fixtures" / "eval"

# every built-in task, built from its fixture (or generated), small
TASK_ARGS = {
    "gsm8k": {"path": FIXTURES / "gsm8k.jsonl"},
    "math": {"path": FIXTURES / "math.jsonl"},
    "gpqa": {"path": FIXTURES / "gpqa.jsonl"},
    "triviaqa": {"path": FIXTURES / "triviaqa.jsonl"},
    "popqa": {"path": FIXTURES / "popqa.jsonl"},
    "kodcode": {"path": FIXTURES / "kodcode.jsonl", "timeout": 2.0},
    "humaneval": {"timeout": 5.0},
    "bigbench-generate": {"path": FIXTURES / "bigbench_gen" / "task.json"},
    "bigbench-choice": {"path": FIXTURES / "bigbench_mc" / "task.json"},
    "arithmetic": {"n_train": 20, "n_test": 10},
    "facts": {"n_facts": 12},
    "general": {"n_train": 20, "n_test": 20},
}


def make(key: str) -> Task:
    return get_task(key.split("-")[0], **TASK_ARGS[key])


def find(task: Task, needle: str) -> Example:
    """The first example (test split first) whose prompt contains `needle`."""
    hits = [ex for split in ("test", "train") for ex in task.load(split) if needle in ex.prompt]
    assert hits, f"no prompt contains {needle!r}"
    return hits[0]
