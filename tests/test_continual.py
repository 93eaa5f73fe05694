"""Continual learning (`compare --sequence`): each trained method carries one state through the tasks (stage
i starts from stage i-1's weaver or adapter, exactly), every task is evaluated after every stage, and the
forgetting matrix and its summaries are the recorded per-item scores' values; methods that cannot continue
are refused before any model loads."""

import json

import numpy as np
import pytest
import torch
from peft import LoraConfig

from latentmem.errors import ConfigError
from latentmem.eval import stats
from latentmem.eval.compare import CompareConfig
from latentmem.eval.continual import backward_transfer, forgetting, run_sequence
from latentmem.eval.task import TASKS, Example, Task
from latentmem.training.config import SFTConfig
from latentmem.training.lora import LoRAModel

WORDS = ["apple", "river", "green", "memory", "paris", "orange", "blue", "answer", "city", "water"]


class Affirm(Task):
    """Answer "yes" to every question: a few SFT steps teach it, a random model never says it."""

    name = "affirm-seq-test"
    max_new_tokens = 4
    answer = "yes"

    def load(self, split):
        words = WORDS[:8] if split == "train" else [*WORDS[8:], "paris", "blue"]
        return [Example(f"Is {w} a word?", self.answer) for w in words]

    def target(self, example):
        return self.answer

    def score(self, example, completion):
        return float(completion.strip().startswith(self.answer))


class Deny(Affirm):
    """The same questions answered "no": training on it overwrites what Affirm taught a LoRA."""

    name = "deny-seq-test"
    answer = "no"


@pytest.fixture(autouse=True)
def seq_tasks(monkeypatch):
    monkeypatch.setitem(TASKS, "affirm-seq-test", Affirm)
    monkeypatch.setitem(TASKS, "deny-seq-test", Deny)


def _cfg(tmp_path, methods, **kw):
    return CompareConfig.from_dict(
        {
            "sequence": ["affirm-seq-test", "deny"],
            "sequence_task_args": {"deny": {"task": "deny-seq-test"}},  # a label for a registered task
            "model": "tiny-qwen2",
            "methods": methods,
            "out": str(tmp_path / "out"),
            "n_test": 0,
            "eval_batch_size": 4,
            "budget": {"steps": 30, "batch_size": 4, "lr": 1e-2, "num_generations": 2},
            "memgen": {"prompt_latents": 2, "inference_latents": 2, "max_inference_insertions": 1},
            **kw,
        }
    )


def _scores(path):
    rows = sorted((json.loads(x) for x in path.read_text().splitlines()), key=lambda r: r["item"])
    return np.array([[r["score"] for r in rows]])


def test_sequence_carries_one_state_and_measures_forgetting(tmp_path):
    torch.set_num_threads(1)
    methods = ["vanilla", "lora-sft", "memgen-sft"]
    results = run_sequence(_cfg(tmp_path, methods))
    out = tmp_path / "out"
    saved = json.loads((out / "results.json").read_text())
    assert saved["sequence"] == ["affirm-seq-test", "deny"] and saved["methods"].keys() == set(methods)
    tasks = saved["sequence"]
    for name in methods:
        r = saved["methods"][name]
        cells = [
            [
                _scores(out / name / f"completions-stage{i if name != 'vanilla' else 0}-{t}.jsonl")
                for t in tasks
            ]
            for i in range(2)
        ]
        matrix = np.array([[c.mean() for c in row] for row in cells])
        assert r["matrix"] == matrix.tolist()
        assert r["forgetting"] == dict(zip(tasks[:1], forgetting(matrix), strict=True))
        assert r["backward_transfer"] == backward_transfer(matrix)
        for j, t in enumerate(tasks):
            assert r["final"][t]["ci95"] == list(stats.wilson_interval(int(cells[1][j].sum()), 4))
        if name != "vanilla":
            # stage 1 continued from stage 0's saved state, not from scratch
            stage0, stage1 = r["training"][0]
            assert stage0["start"].startswith("fresh")
            assert str(out / name / "seed-0" / "stage-0-affirm-seq-test" / name / "model") in stage1["start"]
            assert stage0["steps"] == stage1["steps"] == 30
            p = r["final"]["affirm-seq-test"]["p_value"]["vanilla"]
            assert (
                p
                == stats.paired_test(
                    cells[1][0], _scores(out / "vanilla" / "completions-stage0-affirm-seq-test.jsonl")
                ).p
            )
    assert saved["methods"]["vanilla"]["matrix"][0] == saved["methods"]["vanilla"]["matrix"][1]
    lora = np.array(saved["methods"]["lora-sft"]["matrix"])
    # the LoRA learnt each task in its stage, and learning "no" overwrote "yes": forgetting is measured
    assert lora[0, 0] >= 0.75 and lora[1, 1] >= 0.75 and lora[1, 0] <= 0.25, lora
    assert saved["methods"]["lora-sft"]["forgetting_mean"] >= 0.5
    table = (out / "results.md").read_text()
    assert "**lora-sft**" in table and "| 1: deny |" in table and "| memgen-sft |" in table
    assert (out / "sequence.png").read_bytes()[:4] == b"\x89PNG"
    assert results["methods"]["lora-sft"]["matrix"] == saved["methods"]["lora-sft"]["matrix"]


def test_lora_init_from_loads_the_saved_adapter_exactly(tmp_path):
    torch.set_num_threads(1)
    lora = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])
    cfg = SFTConfig.from_dict({"model": "tiny-qwen2", "seed": 0, "output_dir": str(tmp_path / "a")})
    first = LoRAModel.build(cfg, torch.device("cpu"), lora)
    with torch.no_grad():
        for p in first.trainable_parameters():
            p.add_(torch.randn_like(p))  # B != 0: not the fresh adapter
    first.save_pretrained(tmp_path / "adapter")
    cfg.init_from = str(tmp_path / "adapter")
    second = LoRAModel.build(cfg, torch.device("cpu"), lora)
    a, b = first.trainable_state_dict(), second.trainable_state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(p.requires_grad for p in second.trainable_parameters()) and second.trainable_parameters()
    with pytest.raises(ConfigError, match="rank 2"):
        LoRAModel.build(cfg, torch.device("cpu"), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    cfg.init_from = str(tmp_path)
    with pytest.raises(ConfigError, match="no PEFT adapter"):
        LoRAModel.build(cfg, torch.device("cpu"), lora)


def test_forgetting_and_transfer_formulas():
    m = np.array([[0.9, 0.1, 0.2], [0.5, 0.8, 0.3], [0.4, 0.6, 0.7]])
    assert forgetting(m) == pytest.approx([0.5, 0.2])  # max(0.9, 0.5) - 0.4; 0.8 - 0.6
    assert backward_transfer(m) == pytest.approx(((0.4 - 0.9) + (0.6 - 0.8)) / 2)


def test_sequence_refuses_methods_that_cannot_continue(tmp_path):
    with pytest.raises(ConfigError, match="grpo cannot continue"):
        run_sequence(_cfg(tmp_path, ["vanilla", "grpo"]))
    assert not (tmp_path / "out").exists()  # refused before the run folder or any model
    with pytest.raises(ConfigError, match="sequence"):
        _cfg(tmp_path, ["vanilla"], sequence=["affirm-seq-test"], sequence_task_args={})
    with pytest.raises(ConfigError, match="retention_tasks"):
        _cfg(tmp_path, ["vanilla"], retention_tasks=["affirm-seq-test"])
