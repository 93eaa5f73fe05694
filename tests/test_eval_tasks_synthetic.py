"""The generated tasks (`latentmem.eval.tasks.synthetic`): arithmetic, invented facts, general questions."""

import pytest

from eval_tasks_fixtures import find, make
from latentmem.eval.task import TaskError, get_task

# (task, a piece of the prompt, completion, expected score)
CASES = [
    ("arithmetic", "What is", "nothing here", 0.0),
    ("facts", "capital of", "I do not know.", 0.0),
]


@pytest.mark.parametrize(("key", "needle", "completion", "expected"), CASES)
def test_scoring_cases(key, needle, completion, expected):
    task = make(key)
    assert task.score(find(task, needle), completion) == expected


def test_synthetic_tasks_are_deterministic_and_disjoint():
    a, b = get_task("arithmetic", n_train=50, n_test=20), get_task("arithmetic", n_train=50, n_test=20)
    assert [ex.prompt for ex in a.load("test")] == [ex.prompt for ex in b.load("test")]
    train, test = {ex.prompt for ex in a.load("train")}, {ex.prompt for ex in a.load("test")}
    assert len(train) == 50 and len(test) == 20 and train.isdisjoint(test)
    assert get_task("arithmetic", seed=1).load("test")[0].prompt != a.load("test")[0].prompt
    ex = a.load("test")[0]
    assert a.target(ex).endswith(f"#### {ex.answer}")
    assert a.score(ex, f"#### {ex.answer}") == 1.0

    facts = get_task("facts", n_facts=12)
    train_f, test_f = facts.load("train"), facts.load("test")
    assert [ex.answer for ex in train_f] == [ex.answer for ex in test_f]  # the same facts...
    assert all(tr.prompt != te.prompt for tr, te in zip(train_f, test_f, strict=True))  # ...asked anew
    assert [ex.prompt for ex in get_task("facts", n_facts=12).load("test")] == [ex.prompt for ex in test_f]
    assert get_task("facts", n_facts=12, seed=1).load("train")[0].answer != train_f[0].answer
    names = [ex.prompt for ex in train_f]
    assert len(set(names)) == len(names)


def test_bad_arguments_of_arithmetic():
    with pytest.raises(TaskError, match="ops must be made of"):
        get_task("arithmetic", ops="/")
    with pytest.raises(TaskError, match="at most half"):
        get_task("arithmetic", low=1, high=3, n_test=50)


def test_the_general_task_asks_what_the_base_model_knows():
    task = get_task("general")
    test, train = task.load("test"), task.load("train")
    assert len(test) == 100 and len(train) == 200
    assert {ex.prompt for ex in test}.isdisjoint(ex.prompt for ex in train)
    capitals = [ex for ex in test if "capital" in ex.prompt]
    assert len(capitals) == 16 and all("plus" in ex.prompt for ex in train)
    assert {ex.columns["group"] for ex in capitals} == {"capital"} and train[0].columns["group"] == "sum"
    paris = find(task, "capital of France")  # the task's own: its full test split
    assert task.score(paris, "The capital of France is Paris.") == 1.0
    assert task.score(paris, "Lyon") == 0.0
    total = find(task, "plus")
    assert task.score(total, f"It is {total.answer}.") == 1.0 and task.target(total) == f"{total.answer}."
    with pytest.raises(TaskError, match="general: need"):
        get_task("general", n_test=0)
