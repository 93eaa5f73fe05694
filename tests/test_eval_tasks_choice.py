"""GPQA and BIG-bench (`latentmem.eval.tasks.choice`): lettered, shuffled choices, BIG-bench's two forms, and
the choice-letter rule."""

import json

import pytest

from eval_tasks_fixtures import FIXTURES, find, make
from latentmem.eval import answers
from latentmem.eval.task import Example, TaskError, get_task

# (task, a piece of the prompt, completion, expected score)
CASES = [
    ("bigbench-generate", "brellow", "It means a small lantern.", 1.0),
    ("bigbench-generate", "brellow", "a large lantern", 1.0),  # the 'lantern' alias
    ("bigbench-generate", "quintash", "a metal spoon", 0.0),
]


@pytest.mark.parametrize(("key", "needle", "completion", "expected"), CASES)
def test_scoring_cases(key, needle, completion, expected):
    task = make(key)
    assert task.score(find(task, needle), completion) == expected


def letter_of(ex: Example, text: str) -> str:
    return answers.LETTERS[ex.columns["choices"].index(text)]


@pytest.mark.parametrize(
    ("needle", "correct", "wrong"),
    [
        ("gas makes up", "Nitrogen", "Oxygen"),
        ("SI unit", "Coulomb", "Volt"),
        ("no electric", "Neutron", "Proton"),
    ],
)
def test_gpqa_scores_the_chosen_letter(needle, correct, wrong):
    task = make("gpqa")
    ex = find(task, needle)
    good, bad = letter_of(ex, correct), letter_of(ex, wrong)
    assert ex.answer == good
    assert f"{good}) {correct}" in ex.prompt
    for text in (
        f"Answer: {good}",
        f"The answer is ({good}).",
        good,
        f"\\boxed{{{good}}}",
        f"It is {correct}.",
    ):
        assert task.score(ex, text) == 1.0, text
    for text in (f"Answer: {bad}", f"{bad}) {wrong}", "I am not sure.", f"{correct} or {wrong}"):
        assert task.score(ex, text) == 0.0, text


def test_choice_order_is_shuffled_deterministically():
    a, b = make("gpqa"), make("gpqa")
    order = [ex.columns["choices"] for ex in a.load("train") + a.load("test")]
    assert order == [ex.columns["choices"] for ex in b.load("train") + b.load("test")]
    originals = [json.loads(line)["choices"] for line in (FIXTURES / "gpqa.jsonl").read_text().splitlines()]
    assert any(choices not in originals for choices in order)  # not all left in file order
    assert {ex.answer for ex in a.load("train") + a.load("test")} != {"A"}


def test_gpqa_reads_its_csv_columns():
    task = get_task("gpqa", path=FIXTURES / "gpqa.csv", train_path=FIXTURES / "gpqa.csv")
    ex = find(task, "pH of pure water")
    assert sorted(ex.columns["choices"]) == ["0", "1", "14", "7"]
    assert task.score(ex, f"Answer: {letter_of(ex, '7')}") == 1.0
    assert task.score(ex, f"Answer: {letter_of(ex, '14')}") == 0.0


def test_bigbench_picks_its_form_and_gives_partial_credit():
    gen, mc = make("bigbench-generate"), make("bigbench-choice")
    gen.load("test")
    mc.load("test")
    assert (gen.form, mc.form) == ("generate", "choice")
    assert find(gen, "brellow").prompt.startswith("Give the meaning of the invented word.")
    ex = find(mc, "hunts at night")
    assert ex.answer == letter_of(ex, "reedfox")
    assert mc.score(ex, f"Answer: {letter_of(ex, 'stonehound')}") == 0.5
    assert mc.score(ex, f"Answer: {letter_of(ex, 'glimmerbug')}") == 0.0
    forced = get_task("bigbench", path=FIXTURES / "bigbench_mc" / "task.json", form="generate")
    with pytest.raises(TaskError, match="target"):
        forced.load("test")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is (C).", "C"),
        ("**Answer:** **D**", "D"),
        ("answer: b", None),  # lower-case letters are words, not choices
        ("A dog is not a choice", None),
        ("(B) because ...", "B"),
        ("I think (A), no, (D)", "D"),
        ("Answer: E", None),  # out of range for 4 choices
        ("Blue", "B"),  # the text of choice B
    ],
)
def test_extract_letter(text, expected):
    assert answers.extract_letter(text, ["Red", "Blue", "Green", "Yellow"]) == expected
