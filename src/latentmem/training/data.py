"""Prompt/answer rows for the training recipes: loading (JSONL or synthetic), column checks, encoding.

A row is a dict with at least a prompt and an answer column, and the SFT target column when it is another
(names from `DataConfig`); every other column travels along to the reward functions, and the gold answer
column also as `answer` (`reward_columns`). `check_columns` runs before any model is loaded, so a dataset
without the needed columns fails in a second with the file, the row and the missing name.

Encoding: the prompt is rendered with the tokenizer's chat template (generation prompt appended); the SFT
target (`DataConfig.sft_column`) is followed by EOS. `encode_rows` skips, with a warning, rows longer than
`row_limit` (`data.max_length`, else the model's positions less MemGen's latent slots): one huge row would
otherwise exhaust memory or run past the model's positions, and truncating it would cut its answer.
`collate` left-pads (the layout generation expects) and puts -100 on every label outside the answer.
"""

from __future__ import annotations

import json
import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from latentmem.chat import render_chat
from latentmem.decoding import IGNORE, left_padded, pad_rows
from latentmem.errors import ConfigError
from latentmem.memgen import LatentMemoryModel, MemGenConfig, RetrievedMemory
from latentmem.models import max_positions
from latentmem.training.config import DataConfig, RecipeConfig

Row = dict[str, Any]

_WORDS = ("red", "blue", "green", "apple", "orange", "river", "city", "water", "day", "time", "word", "one")
# The `generic` task: everyday instructions about everyday topics, for the task-agnostic warm-up
# (`training.warmup`), which lets the plain reasoner write the answers. None of them is a question of the
# held-out set that `latentmem bench init-harm` measures on.
_GENERIC_TEMPLATES = (
    "Write one sentence about {t}.",
    "Describe {t} in a few words.",
    "List three things that go with {t}.",
    "Why do people like {t}?",
    "Give a short tip about {t}.",
    "What is {t} used for?",
    "Explain {t} to a child.",
    "Write a question about {t}.",
)
_GENERIC_TOPICS = tuple(
    (
        "a bicycle|the library|tea|a garden|the moon|music|a train|breakfast|winter|a map|soap|a bridge|"
        "the market|rain|a pencil|the kitchen|a clock|mountains|a letter|football|bread|a window|"
        "the museum|a candle|friendship|a boat|the park|coffee|a ladder|the weekend|a camera|the forest|"
        "shoes|a storm|the post office|a piano|homework|a lamp|the harbour|cheese"
    ).split("|")
)


def synthetic_rows(task: str, n: int, seed: int) -> list[Row]:
    """`n` rows of a built-in task, deterministic in `seed`.

    arithmetic: "What is a + b? Answer with the number only." -> "a+b" (a, b < 10).
    echo: "Repeat: w1 w2" -> "w1 w2" (two words from a 12-word list).
    generic: an everyday instruction ("Describe tea in a few words.") with an empty answer: prompts for the
    warm-up, whose targets the plain reasoner writes.
    """
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        if task == "arithmetic":
            a, b = rng.randrange(10), rng.randrange(10)
            rows.append({"prompt": f"What is {a} + {b}? Answer with the number only.", "answer": str(a + b)})
        elif task == "echo":
            words = " ".join(rng.choice(_WORDS) for _ in range(2))
            rows.append({"prompt": f"Repeat: {words}", "answer": words})
        elif task == "generic":
            topic = rng.choice(_GENERIC_TOPICS)
            rows.append({"prompt": rng.choice(_GENERIC_TEMPLATES).format(t=topic), "answer": ""})
        else:
            raise ConfigError(f"data.task: unknown task {task!r}; choose arithmetic, echo or generic")
    return rows


def read_jsonl(path: str | Path) -> list[Row]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"data.path: {path} does not exist; give a JSONL file with one object per line")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"data.path: {path} line {line} is not UTF-8 text ({exc.reason}); save it as UTF-8"
        ) from None
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"data.path: {path} line {i} is not JSON: {exc}") from None
        if not isinstance(row, dict):
            raise ConfigError(f"data.path: {path} line {i} must be a JSON object, got {type(row).__name__}")
        rows.append(row)
    if not rows:
        raise ConfigError(f"data.path: {path} has no rows")
    return rows


def check_columns(rows: Sequence[Row], columns: Sequence[str], source: str) -> None:
    """Raise `ConfigError` naming the first row and column missing from `rows`."""
    for i, row in enumerate(rows):
        missing = [c for c in columns if c not in row]
        if missing:
            raise ConfigError(
                f"{source}: row {i} lacks column(s) {missing} (it has {sorted(row)}); add them, or point "
                "data.prompt_column / data.answer_column / data.target_column at the columns that hold the "
                "prompt, the gold answer and the SFT target"
            )


def _check_answer_alias(rows: Sequence[Row], cfg: DataConfig, source: str) -> None:
    """Rewards receive the gold answer as `answer`: rows whose answer column has another name must not carry
    an `answer` column of their own, or one of the two would silently shadow the other."""
    if cfg.answer_column != "answer" and any("answer" in r for r in rows):
        raise ConfigError(
            f"{source}: rows carry an 'answer' column besides data.answer_column={cfg.answer_column!r}; "
            "reward functions receive the gold answer as `answer`, so the two would collide. Point "
            "data.answer_column at 'answer' (and data.target_column at the SFT target), or rename the column"
        )


def reward_columns(rows: Sequence[Row], cfg: DataConfig) -> dict[str, list[Any]]:
    """Every column of `rows` as one list per column (the keywords a reward function receives), with the
    gold answer column also under `answer`; the row's columns are never overwritten."""
    _check_answer_alias(rows, cfg, "reward columns")
    columns = {k: [r.get(k) for r in rows] for k in rows[0]}
    columns.setdefault("answer", [r[cfg.answer_column] for r in rows])
    return columns


def load_rows(cfg: DataConfig, seed: int, extra_columns: Sequence[str] = ()) -> tuple[list[Row], list[Row]]:
    """(train rows, eval rows), every row checked for the prompt, answer, SFT target and `extra_columns`
    columns, and for an `answer` column that the gold answer column would collide with in rewards."""
    columns = list(dict.fromkeys([cfg.prompt_column, cfg.answer_column, cfg.sft_column, *extra_columns]))
    columns += [cfg.memory_column] if cfg.memory_column else []
    if cfg.path is None:
        # the eval rows come from a different seed, so they are (mostly) unseen prompts
        train = synthetic_rows(cfg.task, cfg.train_size, seed)
        evals = synthetic_rows(cfg.task, cfg.eval_size, seed + 1_000_003)
        source = f"data.task={cfg.task}"
    else:
        train = read_jsonl(cfg.path)
        evals = read_jsonl(cfg.eval_path) if cfg.eval_path else []
        source = f"data.path={cfg.path}"
    check_columns(train, columns, source)
    eval_source = f"data.eval_path={cfg.eval_path}" if cfg.eval_path else source
    check_columns(evals, columns, eval_source)
    _check_answer_alias(train, cfg, source)
    _check_answer_alias(evals, cfg, eval_source)
    return train, evals


@dataclass
class Encoded:
    """One row as token ids: `prompt_ids` (chat-templated prompt) and `answer_ids` (SFT target + EOS)."""

    prompt_ids: list[int]
    answer_ids: list[int]
    memory: list[list[float]] | None = None  # retrieved-memory vectors (M, memory_dim), if the data has them


def encode(rows: Sequence[Row], tokenizer: PreTrainedTokenizerBase, cfg: DataConfig) -> list[Encoded]:
    if not rows:  # a run without an eval split; tokenizers fail on an empty batch
        return []
    prompts = [render_chat(tokenizer, str(r[cfg.prompt_column]), system=cfg.system) for r in rows]
    p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    a_ids = tokenizer([str(r[cfg.sft_column]) for r in rows], add_special_tokens=False)["input_ids"]
    memories = [r[cfg.memory_column] for r in rows] if cfg.memory_column else [None] * len(rows)
    return [
        Encoded(p, [*a, tokenizer.eos_token_id], m) for p, a, m in zip(p_ids, a_ids, memories, strict=True)
    ]


def latent_slots(cfg: MemGenConfig) -> int:
    """The most latent slots MemGen adds to one training row: the prompt block and every insertion's."""
    inserted = cfg.inference_latents * cfg.max_inference_insertions if cfg.inserts_during_decoding else 0
    return cfg.prompt_latents + inserted


def row_limit(cfg: RecipeConfig, model: object) -> int | None:
    """The most tokens one row (prompt + target + EOS) may have when training `model`: `data.max_length`,
    else the positions of its reasoner (and weaver) less the latent slots a `LatentMemoryModel` adds; None
    when neither is known. A `data.max_length` that cannot fit is a `ConfigError`."""
    models = [model.reasoner]
    if isinstance(model, LatentMemoryModel):
        models.append(model.weaver_lm.get_base_model())
    limits = [p for p in map(max_positions, models) if p is not None]
    if not limits:
        return cfg.data.max_length
    slots = latent_slots(cfg.memgen) if isinstance(model, LatentMemoryModel) else 0
    room = min(limits) - slots
    if cfg.data.max_length is not None and cfg.data.max_length > room:
        raise ConfigError(
            f"data.max_length: {cfg.data.max_length} tokens and {slots} latent slots do not fit in the "
            f"model's {min(limits)} positions; set it to {room} or less"
        )
    return cfg.data.max_length or room


def encode_rows(
    rows: Sequence[Row], model: object, cfg: RecipeConfig, split: str
) -> tuple[list[Row], list[Encoded]]:
    """`rows` and their encodings, without the rows longer than `row_limit(cfg, model)` (skipped with a
    warning naming the first). `split` ("train", "eval") names them in messages; a training split with no
    row left is a `ConfigError`."""
    items = encode(rows, model.tokenizer, cfg.data)
    limit = row_limit(cfg, model)
    if limit is None:
        return list(rows), items
    lengths = [len(it.prompt_ids) + len(it.answer_ids) for it in items]
    kept = [i for i, n in enumerate(lengths) if n <= limit]
    if len(kept) < len(items):
        first = next(i for i, n in enumerate(lengths) if n > limit)
        message = (
            f"data: {len(items) - len(kept)} of {len(items)} {split} rows are longer than {limit} tokens "
            f"(data.max_length, prompt + target + EOS; e.g. row {first}, {lengths[first]} tokens)"
        )
        if not kept and split == "train":
            raise ConfigError(f"{message}: no row is left to train on; shorten the rows or the latents")
        warnings.warn(f"{message}; skipping them", RuntimeWarning, stacklevel=2)
    return [rows[i] for i in kept], [items[i] for i in kept]


def collate_memory(items: Sequence[Encoded]) -> RetrievedMemory | None:
    """The items' retrieved memories as a `RetrievedMemory` (vectors (B, M, D), mask (B, M); rows with fewer
    memories are padded), or None when the data carry none."""
    if items[0].memory is None:
        return None
    dim = next((len(v) for it in items for v in it.memory), 1)
    return RetrievedMemory.stack([it.memory for it in items], dim)


def collate(
    items: Sequence[Encoded], pad_id: int, *, with_answer: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded `(input_ids, attention_mask, labels)`, each (B, T). Labels are the answer ids in place
    and -100 elsewhere. `with_answer=False` gives the prompts alone (for generation; labels all -100)."""
    answers = [it.answer_ids if with_answer else [] for it in items]
    ids, mask = left_padded([it.prompt_ids + a for it, a in zip(items, answers, strict=True)], pad_id)
    labels = pad_rows(
        [[IGNORE] * len(it.prompt_ids) + a for it, a in zip(items, answers, strict=True)], IGNORE, left=True
    )
    return ids, mask, labels
