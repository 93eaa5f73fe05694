"""The task registry (`latentmem.eval.task`) and what every built-in task must do: build by name, score its
reference targets 1 and an empty completion 0, give TRL-signature rewards, and fail clearly."""

import pytest

from eval_tasks_fixtures import TASK_ARGS, make
from latentmem.eval.task import BUILTIN_TASKS, TASKS, Task, TaskError, get_task, register_task


def test_every_built_in_task_is_covered():
    assert {k.split("-")[0] for k in TASK_ARGS} == set(BUILTIN_TASKS)
    for name in BUILTIN_TASKS:  # each path names a class of `latentmem.eval.tasks` that carries its name
        assert TASKS[name].__module__.startswith("latentmem.eval.tasks.") and TASKS[name].name == name


@pytest.mark.parametrize("key", [k for k in TASK_ARGS if k != "humaneval"])  # its own test: _code
def test_reference_targets_score_one_and_empty_completions_zero(key):
    task = make(key)
    train, test = task.load("train"), task.load("test")
    assert train and test
    for ex in train + test:
        assert ex.prompt.strip()
        assert task.score(ex, task.target(ex)) == 1.0, (ex.prompt, task.target(ex))
        assert task.score(ex, "") == 0.0


def test_reward_has_trls_signature():
    task = make("gpqa")
    examples = task.load("train")
    rows = [ex.as_row() for ex in examples]
    columns = {k: [row[k] for row in rows] for k in rows[0] if k != "prompt"}
    completions = [task.target(ex) for ex in examples]
    completions[0] = "I do not know."
    rewards = task.reward([ex.prompt for ex in examples], completions, **columns)
    assert rewards == [0.0] + [1.0] * (len(examples) - 1)
    with pytest.raises(TaskError, match="answer"):
        task.reward(["p"], ["c"])


def test_unknown_task_and_missing_arguments():
    with pytest.raises(TaskError, match=r"unknown task 'gsm9k'; choose one of .*arithmetic.*gsm8k"):
        get_task("gsm9k")
    with pytest.raises(TaskError, match="gsm8k"):
        get_task("gsm8k")  # no path


def test_register_task_adds_a_task_at_run_time_and_refuses_a_taken_name():
    @register_task("echo-test")
    class Echo(Task):
        name = "echo-test"

        def load(self, split):
            return []

        def target(self, example):
            return ""

        def score(self, example, completion):
            return 0.0

    try:
        assert isinstance(get_task("echo-test"), Echo) and "echo-test" in sorted(TASKS)
        for taken in ("echo-test", "gsm8k"):
            with pytest.raises(TaskError, match="registered twice"):
                register_task(taken)(Echo)
    finally:
        del TASKS["echo-test"]
    assert "echo-test" not in TASKS
