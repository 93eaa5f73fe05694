"""Tasks read from local data files: the readers, the train/test split rule and the `FileTask` base.

A data-file task takes `path=` (a JSONL, JSON, parquet or CSV file, gzipped JSONL/JSON too, a directory
of such files, e.g. a dataset snapshot's parquet shards, or a `datasets` `save_to_disk` directory) and
optionally `train_path=`:

* with `train_path`, the train split is that file and the test split is `path`;
* without it, `path` is split deterministically: a fixed-seed permutation of its records puts
  `test_fraction` (default 0.2, at least one record) in the test split and the rest in the train split,
  so every method of a comparison trains and evaluates on the same records.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import random
from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from latentmem.errors import LatentMemError
from latentmem.eval.task import Example, Split, Task, TaskError

DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".jsonl.gz", ".json.gz")
SPLIT_SEED = 1234  # fixed: the train/test split of a file must not depend on any run's seed


class RecordError(LatentMemError, ValueError):
    """A record lacks a field or has a malformed one; `FileTask.load` adds the file and record number."""


def pick(record: dict[str, Any], *names: str) -> Any:
    """The first of `names` that `record` has (not None); RecordError naming them otherwise."""
    for name in names:
        if record.get(name) is not None:
            return record[name]
    wanted = " or ".join(repr(n) for n in names)
    raise RecordError(f"missing field {wanted} (it has {sorted(record) or 'no fields'})")


def pick_text(record: dict[str, Any], *names: str) -> str:
    """Like `pick`, for a field that must be a non-empty string."""
    value = pick(record, *names)
    if not isinstance(value, str) or not value.strip():
        raise RecordError(f"field {names[0]!r} must be a non-empty string, got {value!r:.80}")
    return value


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return next((s for s in sorted(DATA_SUFFIXES, key=len, reverse=True) if name.endswith(s)), "")


def _read_text(path: Path) -> str:
    return gzip.decompress(path.read_bytes()).decode() if path.name.endswith(".gz") else path.read_text()


def _read_file(path: Path) -> list[dict[str, Any]]:
    suffix = _suffix(path)
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise TaskError(f"reading {path} needs pyarrow: pip install pyarrow") from exc
        return pq.read_table(path).to_pylist()
    text = _read_text(path)
    if suffix == ".csv":
        return list(csv.DictReader(io.StringIO(text)))
    if suffix.startswith(".jsonl"):
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise TaskError(f"{path} line {number} is not valid JSON: {exc}") from None
        return rows
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TaskError(f"{path} is not valid JSON: {exc}") from None
    if isinstance(data, dict):  # {"examples": [...]} (BIG-bench) or {"data": [...]}
        data = next((data[k] for k in ("examples", "data") if isinstance(data.get(k), list)), data)
    if not isinstance(data, list):
        raise TaskError(f"{path}: expected a JSON list of records (or an object with an 'examples' list)")
    return data


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Every record (a dict) of a data file, of a `datasets` `save_to_disk` directory, or of all data
    files under a directory (sorted by name)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise TaskError(f"data file {path} does not exist")
    if (path / "dataset_dict.json").is_file():
        raise TaskError(
            f"{path} is a saved DatasetDict; pass one split's directory, e.g. path={path / 'test'} "
            f"train_path={path / 'train'}"
        )
    if (path / "state.json").is_file():  # a Dataset.save_to_disk directory (its JSON files are metadata)
        try:
            import datasets
        except ImportError as exc:
            raise TaskError(f"reading the saved dataset {path} needs the datasets package") from exc
        return datasets.load_from_disk(str(path)).to_list()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and _suffix(p))
        if not files:
            raise TaskError(f"directory {path} holds no data files ({', '.join(DATA_SUFFIXES)})")
    elif not _suffix(path):
        raise TaskError(f"{path}: unknown data format; use one of {', '.join(DATA_SUFFIXES)}")
    else:
        files = [path]
    rows = [row for f in files for row in _read_file(f)]
    bad = next((i for i, row in enumerate(rows) if not isinstance(row, dict)), None)
    if bad is not None:
        raise TaskError(f"{path}: record {bad} is a {type(rows[bad]).__name__}, not an object with fields")
    return rows


def holdout(items: Sequence[Any], split: Split, test_fraction: float) -> list[Any]:
    """The `split` part of `items` under the deterministic train/test rule of this module."""
    order = list(range(len(items)))
    random.Random(SPLIT_SEED).shuffle(order)
    n_test = max(1, round(len(items) * test_fraction)) if items else 0
    chosen = order[:n_test] if split == "test" else order[n_test:]
    return [items[i] for i in sorted(chosen)]


class FileTask(Task):
    """A task whose examples come from local data files (see the module docstring for the split rule).

    Subclasses set `expects` (the record fields, as the error messages list them) and implement
    `parse(record) -> Example`, raising RecordError for a missing or malformed field.
    """

    expects: str = ""

    def __init__(self, path: str | Path, train_path: str | Path | None = None, test_fraction: float = 0.2):
        if not 0 < test_fraction < 1:
            raise TaskError(f"{self.name}: test_fraction must be in (0, 1), got {test_fraction}")
        self.path = Path(path).expanduser()
        self.train_path = Path(train_path).expanduser() if train_path is not None else None
        self.test_fraction = test_fraction
        self._cache: dict[Path, list[Example]] = {}

    @abstractmethod
    def parse(self, record: dict[str, Any]) -> Example:
        """One record → one Example (RecordError when a field is missing or malformed)."""

    def records(self, path: Path) -> list[dict[str, Any]]:
        """The raw records of `path` (subclasses with their own file layout override this)."""
        return read_records(path)

    def _examples(self, path: Path) -> list[Example]:
        if path not in self._cache:
            try:
                rows = self.records(path)
            except TaskError as exc:
                raise TaskError(f"{self.name}: {exc}. Each record needs {self.expects}") from None
            if not rows:
                raise TaskError(f"{self.name}: {path} has no records. Each record needs {self.expects}")
            examples = []
            for i, row in enumerate(rows):
                try:
                    examples.append(self.parse(row))
                except RecordError as exc:
                    raise TaskError(
                        f"{self.name}: {path} record {i}: {exc}. Each record needs {self.expects}"
                    ) from None
            self._cache[path] = examples
        return self._cache[path]

    def load(self, split: Split) -> list[Example]:
        if self.train_path is not None:
            return list(self._examples(self.train_path if split == "train" else self.path))
        return holdout(self._examples(self.path), split, self.test_fraction)

    def split(self, split: Split, limit: int | None = None, seed: int = 0) -> list[Example]:
        """As `Task.split`, with an empty split explained by where it comes from."""
        if not self.load(split):
            source = (
                f"{self.train_path if split == 'train' else self.path}"
                if self.train_path is not None
                else f"{1 - self.test_fraction:.0%} of {self.path} (pass train_path= for a train file)"
            )
            raise TaskError(f"{self.name}: the {split} split is empty; it is {source}")
        return super().split(split, limit, seed)
