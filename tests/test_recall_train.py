"""Recall training: data and labels, a short run that learns, the CLI recipe, save and reload."""

import numpy as np
import pytest
import torch

from latentmem.config import ConfigError
from latentmem.decoding import IGNORE
from latentmem.models import load_model
from latentmem.recall import MemoryBank, RecallGenerator, RecallMemory
from latentmem.recall.data import MixedRecallData, general_task, make_facts, split_general
from latentmem.recall.errors import RecallError
from latentmem.recall.train import (
    RecallTrainConfig,
    collate,
    first_token_recall_rate,
    recall_at_1,
    run,
    step2_losses,
    train_recall,
)

FAST = {
    "num_facts": 8,
    "num_general": 8,
    "reply_tokens": 4,
    "step1": {"steps": 25, "batch_size": 8, "lr": 0.01},
    "step2": {"epochs": 3, "samples_per_epoch": 16, "batch_size": 8, "lr": 0.01, "max_tokens": 80},
    "lora": {"r": 2, "alpha": 4},
}


def _mixture(tok, tokens, samples_per_epoch=30, max_tokens=80):
    facts, (pool, _) = make_facts(6), split_general(general_task(12))
    replies = ["ok"] * len(pool)
    return MixedRecallData(
        tok, tokens, facts, pool, replies, samples_per_epoch=samples_per_epoch, max_tokens=max_tokens
    )


def test_mixture_labels_token_limit_and_epoch_resampling():
    model, tok = load_model("tiny-qwen2")
    memory = RecallMemory.attach(model, tok, 16)
    t = memory.tokens
    data = _mixture(tok, t)
    e0, e1 = data.epoch(0), data.epoch(1)
    assert {s.kind for s in e0} == {"memory_front", "memory_full", "sft_only"}
    assert [(s.kind, s.memory) for s in e0] != [(s.kind, s.memory) for s in e1]  # resampled per epoch
    assert [s.input_ids for s in data.epoch(0)] == [s.input_ids for s in e0]  # ...deterministically
    every_question = [q.question for q in general_task(10_000)]  # the whole pool, both halves
    fronts = []
    for s in e0:
        assert len(s.input_ids) <= 80
        first = next(i for i, lab in enumerate(s.labels) if lab != IGNORE)  # labels start in the reply
        if s.kind == "sft_only":
            # a negative: no recall token anywhere, and the plain reply's first token is the target
            assert s.memory == -1 and not set(t.ids) & set(s.input_ids)
            assert s.labels[first] == s.input_ids[first] != t.recall_id
            continue
        r, p = s.input_ids.index(t.recall_id), s.input_ids.index(t.pad_id)
        assert p == r + 1 and s.labels[p] == IGNORE
        assert s.labels[s.input_ids.index(t.end_id)] == t.end_id  # memory text and its end supervised
        if s.kind == "memory_full":
            assert first == r and s.labels[r] == t.recall_id  # recall taught where a question asks for it
        else:
            # the memory is random: only its text is taught, not <recall>, and the context is no question
            assert s.labels[r] == IGNORE and first == p + 1
            context = tok.decode(s.input_ids[:r])
            assert "?" not in context and not any(q in context for q in every_question)
            fronts.append(context)
    assert len(set(fronts)) > 1  # a random context, not a constant one
    with pytest.raises(RecallError, match="max_tokens"):
        _mixture(tok, t, samples_per_epoch=3, max_tokens=10).epoch(0)
    with pytest.raises(RecallError, match="must not hold"):
        MixedRecallData(
            tok, t, make_facts(2), general_task(1), ["<recall>"], samples_per_epoch=1, max_tokens=60
        )


def test_head_loss_covers_memory_full_rows_only():
    model, tok = load_model("tiny-qwen2")
    memory = RecallMemory.attach(model, tok, 16)
    samples = _mixture(tok, memory.tokens).epoch(0)
    batch = collate(samples, tok.pad_token_id)
    assert batch.head_rows.tolist() == [s.kind == "memory_full" for s in samples]
    vectors = torch.randn(6, 16, generator=torch.Generator().manual_seed(0))
    vectors = torch.nn.functional.normalize(vectors, dim=-1)
    with torch.no_grad():
        memory.head.log_scale.zero_()  # scale 1: a head loss well above 0, so that equalities below bite
    # memory_front rows hold a memory (and a <recall>) but their memory is random: no head loss at all
    fronts = collate([s for s in samples if s.kind == "memory_front"], tok.pad_token_id)
    assert step2_losses(model, memory, fronts, vectors)[1].item() == 0.0
    # ...so a mixed batch has the head loss of its memory_full rows alone
    fulls = collate([s for s in samples if s.kind == "memory_full"], tok.pad_token_id)
    full_loss = step2_losses(model, memory, fulls, vectors)[1].item()
    assert full_loss > 0.5
    assert step2_losses(model, memory, batch, vectors)[1].item() == pytest.approx(full_loss, rel=1e-4)


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"step2\.mix"):
        RecallTrainConfig.from_dict({"step2": {"mix": [1, 1]}})
    with pytest.raises(ConfigError, match=r"step2\.mix.*sft_only"):
        RecallTrainConfig.from_dict({"step2": {"mix": [1, 1, 0]}})
    with pytest.raises(ConfigError, match="objective"):
        RecallTrainConfig.from_dict({"step1": {"objective": "cosine"}})


def test_short_training_learns_recall_and_decoding():
    trained = train_recall(RecallTrainConfig.from_dict(FAST))
    m = trained.metrics
    assert m["step1_loss_last"] < 0.5 * m["step1_loss_first"]
    assert m["step1_recall_at_1"] >= 0.75 > m["recall_at_1_before"]
    assert m["step2_loss_last"] < m["step2_loss_first"]
    assert m["recall_at_1"] >= 0.75  # step 2 keeps the head aligned while LoRA moves the hidden states


# long enough that the old mixture (<recall> labelled after general questions in memory_front) made the
# model open 75-100% of the held-out general answers with <recall> on seeds 0-3; still a few seconds
BEHAVIOUR = {
    "num_facts": 8,
    "num_general": 8,
    "reply_tokens": 4,
    "step1": {"steps": 5, "batch_size": 8, "lr": 0.01, "train_model": False},
    "step2": {"epochs": 24, "samples_per_epoch": 24, "batch_size": 8, "lr": 0.03, "max_tokens": 80},
    "lora": {"r": 4, "alpha": 8},
}


def test_step2_does_not_teach_recalling_on_general_questions():
    cfg = RecallTrainConfig.from_dict(BEHAVIOUR)
    trained = train_recall(cfg)
    _, held_out = split_general(general_task(cfg.num_general, seed=cfg.seed))
    questions = [q.question for q in held_out]
    after = first_token_recall_rate(
        trained.model, trained.tokenizer, trained.memory.tokens.recall_id, questions
    )
    # measured on the merged model, the one that is deployed, against the metric taken before training
    assert after <= trained.metrics["general_recall_rate_before"]
    assert trained.metrics["step2_loss_last"] < trained.metrics["step2_loss_first"]  # step 2 did train


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
