"""Recall training: data and labels, a short run that learns, the CLI recipe, save and reload."""

import numpy as np
import pytest

from latentmem.config import ConfigError
from latentmem.models import load_model
from latentmem.recall import MemoryBank, RecallGenerator, RecallMemory
from latentmem.recall.data import IGNORE, MixedRecallData, general_task, make_facts
from latentmem.recall.train import RecallTrainConfig, recall_at_1, run, train_recall

FAST = {
    "num_facts": 8,
    "num_general": 8,
    "reply_tokens": 4,
    "step1": {"steps": 25, "batch_size": 8, "lr": 0.01},
    "step2": {"epochs": 2, "samples_per_epoch": 16, "batch_size": 8, "lr": 0.01, "max_tokens": 80},
    "lora": {"r": 2, "alpha": 4},
}


def test_mixture_labels_token_limit_and_epoch_resampling():
    model, tok = load_model("tiny-qwen2")
    memory = RecallMemory.attach(model, tok, 16)
    t = memory.tokens
    facts, general = make_facts(6), general_task(6)
    data = MixedRecallData(
        tok, t, facts, general, ["ok"] * 6, samples_per_epoch=30, max_tokens=60, mix=(1, 1, 1)
    )
    e0, e1 = data.epoch(0), data.epoch(1)
    assert {s.kind for s in e0} == {"memory_front", "memory_full", "sft_only"}
    assert [(s.kind, s.memory) for s in e0] != [(s.kind, s.memory) for s in e1]  # resampled per epoch
    assert [s.input_ids for s in data.epoch(0)] == [s.input_ids for s in e0]  # ...deterministically
    for s in e0:
        assert len(s.input_ids) <= 60
        if s.kind == "sft_only":
            assert s.memory == -1 and t.recall_id not in s.input_ids
            continue
        r, p = s.input_ids.index(t.recall_id), s.input_ids.index(t.pad_id)
        assert p == r + 1 and s.labels[r] == t.recall_id and s.labels[p] == IGNORE  # <recall> supervised
        assert s.labels[s.input_ids.index(t.end_id)] == t.end_id
        assert all(lab == IGNORE for lab in s.labels[:r])  # the prompt is not
    with pytest.raises(Exception, match="max_tokens"):
        MixedRecallData(tok, t, facts, general, ["ok"] * 6, samples_per_epoch=3, max_tokens=10).epoch(0)


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"step2\.mix"):
        RecallTrainConfig.from_dict({"step2": {"mix": [1, 1]}})
    with pytest.raises(ConfigError, match="objective"):
        RecallTrainConfig.from_dict({"step1": {"objective": "cosine"}})


def test_short_training_learns_recall_and_decoding():
    trained = train_recall(RecallTrainConfig.from_dict(FAST))
    m = trained.metrics
    assert m["step1_loss_last"] < 0.5 * m["step1_loss_first"]
    assert m["step1_recall_at_1"] >= 0.75 > m["recall_at_1_before"]
    assert m["step2_loss_last"] < m["step2_loss_first"]
    assert m["recall_at_1"] >= 0.75  # step 2 keeps the head aligned while LoRA moves the hidden states


def test_cli_recipe_saves_a_run_that_reloads_exactly(tmp_path):
    overrides = [f"output_dir={tmp_path / 'run'}", "num_facts=6", "num_general=4", "reply_tokens=2"]
    overrides += ["step1.steps=5", "step2.epochs=1", "step2.samples_per_epoch=8", "lora.r=2"]
    run_dir = run("configs/debug/recall.yaml", overrides)
    assert {"config.yaml", "run.json", "metrics.jsonl", "recall.safetensors", "adapter", "bank"} <= {
        p.name for p in run_dir.iterdir()
    }
    # reload twice into fresh models: identical head scores and identical generations
    outs = []
    for _ in range(2):
        model, tok = load_model("tiny-qwen2")
        memory = RecallMemory.load(run_dir, model, tok)
        bank = MemoryBank.load(run_dir / "bank")
        vectors = bank.matrix()[1]
        facts = make_facts(6)
        r1 = recall_at_1(model, tok, memory, vectors, [f.question for f in facts])
        gen = RecallGenerator(model, tok, memory, bank)
        outs.append((r1, gen.generate(gen.render([facts[0].question], recall_first=True), max_new_tokens=5)))
    (r_a, g_a), (r_b, g_b) = outs
    assert r_a == r_b and g_a.token_ids == g_b.token_ids
    final = [line for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"final"' in line]
    assert len(final) == 1 and f'"recall_at_1": {r_a}' in final[0]
    assert len(g_a.recalls[0]) == 1 and np.isfinite(g_a.recalls[0][0].logit)
