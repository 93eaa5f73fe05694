"""Recall@1 against bank size (`latentmem.recall.scale`): distractors, synthetic fill, and the two paths."""

from __future__ import annotations

import numpy as np
import pytest

from latentmem.recall.config import RecallTrainConfig
from latentmem.recall.data import make_facts
from latentmem.recall.scale import distractor_facts, measure, synthetic_like
from latentmem.recall.train import train_recall


def test_distractors_are_new_subjects_of_the_same_kinds():
    taken = make_facts(40)
    out = distractor_facts(200, taken)
    assert len(out) == 200 and out == distractor_facts(200, taken)  # deterministic
    asked = {q for f in taken for q in (f.question, f.paraphrase)}
    assert not asked & {f.question for f in out}
    assert len({f.question for f in out}) == 200
    # the four templates in turn, as the trained facts are
    assert [f.text.split()[1:3] for f in out[:4:3]] == [f.text.split()[1:3] for f in taken[:4:3]]


def test_synthetic_vectors_share_the_real_ones_first_two_moments():
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(16, 16))
    real = rng.normal(size=(4000, 16)) @ basis + 5.0  # a large common direction, as hidden states have
    real /= np.linalg.norm(real, axis=1, keepdims=True)
    fake = synthetic_like(real, 20000, seed=1)
    assert fake.shape == (20000, 16) and fake.dtype == np.float32
    assert np.allclose(np.linalg.norm(fake, axis=1), 1.0, atol=1e-5)
    assert np.abs(fake.mean(0) - real.mean(0)).max() < 0.01
    assert np.abs(np.cov(fake, rowvar=False) - np.cov(real, rowvar=False)).max() < 0.01
    iso = rng.normal(size=(20000, 16))  # what a naive fill would be: far from the real ones
    assert np.abs((iso / np.linalg.norm(iso, axis=1, keepdims=True)).mean(0) - real.mean(0)).max() > 0.1


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cfg = RecallTrainConfig.from_dict(
        {
            "num_facts": 6,
            "num_general": 4,
            "reply_tokens": 2,
            "step1": {"steps": 5, "batch_size": 6, "lr": 0.01, "train_model": False, "extra_facts": 6},
            "step2": {"epochs": 0},
            "lora": {"r": 0},
            "output_dir": str(tmp_path_factory.mktemp("run")),
        }
    )
    return train_recall(cfg)


def test_bank_scale_rows_agree_with_training_and_across_paths(trained):
    new = make_facts(10)[6:]
    distractors = distractor_facts(30, [*trained.facts, *new])
    result = measure(trained, new, distractors, [6, 10, 40, 5000])
    rows = {r["bank_size"]: r for r in result["rows"]}
    assert list(rows) == [6, 10, 40, 5000] and result["encoded"] == 40
    # a bank of A alone is the trained bank: the same recall@1 training reported
    assert rows[6]["A_question"]["recall_at_1"] == trained.metrics["recall_at_1"]
    assert rows[6]["A_paraphrase"]["recall_at_1"] == trained.metrics["recall_at_1_paraphrase"]
    assert "B_question" not in rows[6] and "B_question" in rows[10]
    assert (rows[40]["real_distractors"], rows[40]["synthetic_distractors"]) == (30, 0)
    assert (rows[5000]["real_distractors"], rows[5000]["synthetic_distractors"]) == (30, 4960)
    # past 4096 entries generation searches the index for candidates: the same top-1 as a whole scan here
    for row in rows.values():
        for key in ("A_question", "A_paraphrase", "B_question", "B_paraphrase"):
            if key in row:
                assert row[key]["recall_at_1"] == row[key]["exact_scan"], (row["bank_size"], key)
