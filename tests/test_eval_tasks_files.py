"""Tasks read from data files (`latentmem.eval.tasks.files`): the formats, the train/test split rule, and
errors that name what a record needs."""

import json
from pathlib import Path

import pytest

from eval_tasks_fixtures import FIXTURES, make
from latentmem.eval.task import TaskError, get_task


def test_file_split_is_deterministic_80_20_and_train_path_overrides(tmp_path):
    task = make("gsm8k")
    train, test = task.load("train"), task.load("test")
    assert (len(train), len(test)) == (4, 1)
    assert {ex.prompt for ex in train}.isdisjoint(ex.prompt for ex in test)
    assert [ex.prompt for ex in make("gsm8k").load("test")] == [ex.prompt for ex in test]
    both = get_task("gsm8k", path=FIXTURES / "gsm8k.jsonl", train_path=FIXTURES / "gsm8k.jsonl")
    assert len(both.load("train")) == len(both.load("test")) == 5
    assert len(task.split("train", limit=2, seed=3)) == 2


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
