"""The comparison harness end to end on a tiny model: every method trains (briefly) and is scored on the
same held-out split; results.json / .md / .png are written; bad input fails before any model loads."""

import json

import pytest
import torch

from latentmem.errors import ConfigError, LatentMemError
from latentmem.eval.compare import CompareConfig, run_compare
from latentmem.eval.methods import METHODS
from latentmem.eval.task import TASKS, Example, Task, TaskError

WORDS = ["apple", "river", "green", "memory", "paris", "orange", "blue", "answer", "city", "water"]


class Parrot(Task):
    """Repeat a word: the answer is the word; a completion is right when it contains it."""

    name = "parrot-test"
    max_new_tokens = 6

    def __init__(self, empty_test: bool = False) -> None:
        self.empty_test = empty_test

    def load(self, split):
        if split == "test" and self.empty_test:
            return []
        words = WORDS[:6] if split == "train" else WORDS
        return [Example(f"Say the word {w}.", w) for w in words]

    def target(self, example):
        return f"{example.answer}."

    def score(self, example, completion):
        return float(example.answer in completion)


@pytest.fixture(autouse=True)
def parrot_task(monkeypatch):
    """Registered only while a test here runs, so the registry other tests see stays the built-in one."""
    monkeypatch.setitem(TASKS, "parrot-test", Parrot)


def _cfg(tmp_path, methods, **kw):
    return CompareConfig.from_dict(
        {
            "task": "parrot-test",
            "model": "tiny-qwen2",
            "methods": methods,
            "out": str(tmp_path / "out"),
            "n_test": 6,
            "eval_batch_size": 4,
            "budget": {"steps": 2, "batch_size": 4, "lr": 1e-3, "num_generations": 2},
            "memgen": {"prompt_latents": 2, "inference_latents": 2, "max_inference_insertions": 1},
            **kw,
        }
    )


def test_compare_runs_every_method_and_writes_results(tmp_path):
    torch.set_num_threads(1)
    methods = ["vanilla", "retrieval", "lora-sft", "grpo", "memgen-sft", "memgen-grpo", "memgen-rag"]
    results = run_compare(_cfg(tmp_path, methods))
    out = tmp_path / "out"
    saved = json.loads((out / "results.json").read_text())
    assert saved["methods"].keys() == set(methods) and saved["n_test"] == 6
    for name in methods:
        r = saved["methods"][name]
        assert 0.0 <= r["accuracy"] <= 1.0 and r["n"] == 6
        assert r["seconds_per_sample"] > 0 and r["tokens_per_second"] > 0
        assert len((out / name / "completions.jsonl").read_text().splitlines()) == 6
    assert (
        saved["methods"]["vanilla"]["trainable_params"]
        == saved["methods"]["retrieval"]["trainable_params"]
        == 0
    )
    # memgen-rag's weaver reads retrieved examples: its rows carry their neighbours' vectors, never their own
    rag_rows = [json.loads(x) for x in (out / "memgen-rag" / "train.jsonl").read_text().splitlines()]
    assert all(len(r["memory"]) == 3 and len(r["memory"][0]) == 384 for r in rag_rows)
    assert saved["methods"]["memgen-rag"]["trainable_params"] > weaver_params(saved)
    weaver = saved["methods"]["memgen-sft"]["trainable_params"]
    lora = saved["methods"]["lora-sft"]["trainable_params"]
    assert abs(lora - weaver) / weaver < 0.35  # the LoRA baseline gets the weaver's parameter budget
    assert saved["methods"]["grpo"]["trainable_params"] == lora
    assert "| memgen-sft |" in (out / "results.md").read_text()
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "run.json").exists() and (out / "config.yaml").exists()
    assert results["methods"]["vanilla"] == saved["methods"]["vanilla"]


def weaver_params(saved):
    return saved["methods"]["memgen-sft"]["trainable_params"]


def test_retrieval_puts_similar_solved_examples_in_the_prompt(tmp_path):
    from latentmem.eval.methods import Context, RetrievalFewShot

    cfg = _cfg(tmp_path, ["retrieval"])
    task = Parrot()
    ctx = Context(
        model="tiny-qwen2", task=task, task_name="parrot-test", task_args={}, train=task.load("train"),
        budget=cfg.budget, memgen=cfg.memgen, workdir=tmp_path / "r", seed=0, retrieval_k=2,
    )  # fmt: skip
    method = RetrievalFewShot(ctx)
    method.fit()
    prompt = method.with_examples("Say the word river.")
    assert prompt.count("Question:") == 3 and "Answer: river." in prompt
    assert prompt.endswith("Question: Say the word river.\nAnswer:")


def test_bad_input_fails_before_models_load(tmp_path):
    with pytest.raises(LatentMemError, match="unknown method.*memgen-sft"):
        _cfg(tmp_path, ["vanilla", "no-such-method"])
    with pytest.raises(TaskError, match="unknown task 'nope'"):
        run_compare(_cfg(tmp_path, ["vanilla"], task="nope"))
    with pytest.raises(TaskError, match="test split is empty"):
        run_compare(_cfg(tmp_path, ["vanilla"], task_args={"empty_test": True}))
    with pytest.raises(ConfigError, match="budget.num_generations"):
        _cfg(tmp_path, ["vanilla"], budget={"batch_size": 4, "num_generations": 3})
    assert set(METHODS) >= {
        "vanilla",
        "retrieval",
        "lora-sft",
        "grpo",
        "memgen-sft",
        "memgen-grpo",
        "memgen-rag",
    }
