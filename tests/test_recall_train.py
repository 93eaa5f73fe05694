"""Recall training: data and labels, a short run that learns, resume through the shared loop, the run
folder, the CLI recipe, save and reload."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import latentmem.recall.train as recall_train
from latentmem.config import ConfigError
from latentmem.decoding import IGNORE
from latentmem.models import load_model
from latentmem.recall import MemoryBank, RecallGenerator, RecallMemory
from latentmem.recall.config import RecallTrainConfig
from latentmem.recall.data import (
    NEW_FACT_RESERVE,
    MixedRecallData,
    auxiliary_facts,
    general_task,
    make_facts,
    split_general,
)
from latentmem.recall.errors import RecallError
from latentmem.recall.train import (
    base_kl,
    base_positions,
    base_tokens,
    collate,
    first_token_recall_rate,
    recall_at_1,
    run,
    step2_losses,
    train_recall,
)
from latentmem.training.checkpoint import latest_checkpoint

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
    with pytest.raises(ConfigError, match=r"step2\.batch_size: must divide step2\.samples_per_epoch"):
        RecallTrainConfig.from_dict({"step2": {"samples_per_epoch": 12, "batch_size": 8}})
    with pytest.raises(ConfigError, match=r"step1\.steps: and step2\.epochs are both 0"):
        RecallTrainConfig.from_dict({"step1": {"steps": 0}, "step2": {"epochs": 0}})
    with pytest.raises(ConfigError, match=r"step2\.retention_kl: must be >= 0"):
        RecallTrainConfig.from_dict({"step2": {"retention_kl": -0.1}})
    with pytest.raises(ConfigError, match=r"num_val_general: must be >= 0"):
        RecallTrainConfig.from_dict({"num_val_general": -1})


def test_base_kl_is_the_recall_mass_at_a_fresh_lora_and_grows_as_the_lora_moves():
    """KL(base || model) on base text: with a fresh LoRA (B = 0) the model is the base, and the KL is only
    the mass the model puts on the recall tokens, -log(1 - p_recall); a moved LoRA raises it, and its
    gradient reaches the LoRA. Only positions before `<recall>` count."""
    from peft import LoraConfig, get_peft_model

    model, tok = load_model("tiny-qwen2")
    memory = RecallMemory.attach(model, tok, 16)
    t = memory.tokens
    lm = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    samples = _mixture(tok, t).epoch(0)[:8]
    batch = collate(samples, tok.pad_token_id)
    at = base_positions(batch.input_ids, batch.attention_mask, t.recall_id)
    assert at.sum(1).tolist() == [base_tokens(s, t.recall_id) for s in samples]
    for s, row in zip(samples, at, strict=True):  # nothing from the position that predicts <recall> on
        if s.memory >= 0:
            assert not row[s.input_ids.index(t.recall_id) - 1 :].any()
    kwargs = {"attention_mask": batch.attention_mask}
    logits = lm(input_ids=batch.input_ids, **kwargs).logits
    p_recall = logits[:, :-1][at].float().softmax(-1)[:, list(t.ids)].sum(-1)
    fresh = base_kl(lm, memory, batch, logits)
    assert fresh.item() == pytest.approx(-torch.log1p(-p_recall).sum().item(), rel=1e-3, abs=1e-5)
    with torch.no_grad():
        for name, p in lm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    logits = lm(input_ids=batch.input_ids, **kwargs).logits
    moved = base_kl(lm, memory, batch, logits)
    assert moved.item() > 10 * max(fresh.item(), 1e-3)
    moved.backward()
    grads = [p.grad for n, p in lm.named_parameters() if "lora_" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_fsdp_is_refused_before_anything_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch` sets for an FSDP config
    with pytest.raises(ConfigError, match="without an FSDP config"):
        train_recall(RecallTrainConfig.from_dict({"output_dir": str(tmp_path / "run")}))
    assert not (tmp_path / "run").exists()


def test_short_training_learns_recall_and_decoding(tmp_path):
    trained = train_recall(RecallTrainConfig.from_dict({**FAST, "output_dir": str(tmp_path / "run")}))
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


def test_step2_does_not_teach_recalling_on_general_questions(tmp_path):
    cfg = RecallTrainConfig.from_dict({**BEHAVIOUR, "output_dir": str(tmp_path / "run")})
    trained = train_recall(cfg)
    _, held_out = split_general(general_task(cfg.num_general, seed=cfg.seed))
    questions = [q.question for q in held_out]
    after = first_token_recall_rate(
        trained.model, trained.tokenizer, trained.memory.tokens.recall_id, questions
    )
    # measured on the merged model, the one that is deployed, against the metric taken before training
    assert after <= trained.metrics["general_recall_rate_before"]
    assert trained.metrics["step2_loss_last"] < trained.metrics["step2_loss_first"]  # step 2 did train


SMALL = {
    "num_facts": 6,
    "num_general": 4,
    "reply_tokens": 2,
    "step1": {"steps": 3, "batch_size": 6, "lr": 0.01, "train_model": False},
    "step2": {"epochs": 2, "samples_per_epoch": 8, "batch_size": 4, "lr": 0.01, "max_tokens": 80},
    "lora": {"r": 2, "alpha": 4},
}


def _small(tmp_path, grad_accum):
    return RecallTrainConfig.from_dict(
        {
            **SMALL,
            "output_dir": str(tmp_path / "run"),
            "step1": {**SMALL["step1"], "grad_accum": grad_accum},
            "step2": {**SMALL["step2"], "grad_accum": grad_accum, "save_every": 2},
        }
    )


def _lines(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_step2_resume_gives_the_same_losses_as_an_uninterrupted_run(tmp_path, monkeypatch):
    """Both steps run on the shared loop: a run killed in step 2 resumes from its checkpoint and logs what
    an uninterrupted run logs. The interrupted run also splits every step into two micro-steps: the losses,
    divided by the whole step's facts / tokens / head rows, are the same as in one."""
    reference = train_recall(_small(tmp_path / "full", grad_accum=1))

    real = recall_train.step2_losses
    calls = {"n": 0}

    def dies_in_step_3(*a, **k):  # two micro-steps per step: calls 1-4 are steps 1-2, saved at step 2
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*a, **k)

    cfg = _small(tmp_path / "resumed", grad_accum=2)
    monkeypatch.setattr(recall_train, "step2_losses", dies_in_step_3)
    with pytest.raises(KeyboardInterrupt):
        train_recall(cfg)
    assert latest_checkpoint(tmp_path / "resumed" / "run" / "step2" / "checkpoints").name == "step-000002"
    monkeypatch.setattr(recall_train, "step2_losses", real)
    resumed = train_recall(cfg)

    a, b = _lines(reference.run), _lines(resumed.run)
    assert [(m["phase"], m.get("step")) for m in b] == [
        *[("step1", s) for s in (1, 2, 3)],
        *[("step2", s) for s in (1, 2, 3, 4)],  # the steps after the checkpoint are not logged twice
        ("final", None),
    ]
    for x, y in zip(a[:-1], b[:-1], strict=True):
        assert x["rows_digest"] == y["rows_digest"]  # the same samples, in the same order
        keys = {"step1": ("loss", "scale"), "step2": ("loss", "head_loss")}[x["phase"]]
        for k in (*keys, "grad_norm", "lr"):
            assert x[k] == pytest.approx(y[k], rel=1e-5, abs=1e-6), (k, x, y)
    final_a, final_b = reference.memory.state_dict(), resumed.memory.state_dict()
    assert all(torch.allclose(final_a[k], final_b[k], atol=1e-5) for k in final_a)


def test_a_recall_run_resumes_with_more_epochs_and_refuses_another_learning_rate(tmp_path, monkeypatch):
    """Recall's loop config names its lengths `recall.step2.epochs` (not `train.steps`): a run stopped in
    step 2 may resume with more epochs, and it continues where it stopped; another lr is refused, by name."""
    real = recall_train.step2_losses
    calls = {"n": 0}

    def dies_in_step_3(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    cfg = _small(tmp_path, grad_accum=1)
    monkeypatch.setattr(recall_train, "step2_losses", dies_in_step_3)
    with pytest.raises(KeyboardInterrupt):
        train_recall(cfg)
    monkeypatch.setattr(recall_train, "step2_losses", real)
    other_lr = RecallTrainConfig.from_dict({**cfg.to_dict(), "step2": {**cfg.step2.to_dict(), "lr": 0.02}})
    with pytest.raises(ConfigError, match=r"recall\.step2\.lr: 0\.01 -> 0\.02"):
        train_recall(other_lr)
    longer = RecallTrainConfig.from_dict({**cfg.to_dict(), "step2": {**cfg.step2.to_dict(), "epochs": 3}})
    train_recall(longer)
    steps = [m["step"] for m in _lines(tmp_path / "run" / "step2")]
    assert steps == [1, 2, 3, 4, 5, 6]  # 3 epochs x 2 steps, steps 1-2 from before the stop


def test_retention_kl_and_validation_probe_are_logged(tmp_path):
    """`step2.retention_kl` > 0 logs the step's token-mean KL to the base (0 at the first step: the LoRA
    starts at the base, up to the recall tokens' mass), and the probe logs retention on the validation
    split, whose base accuracy the final metrics hold."""
    cfg = RecallTrainConfig.from_dict(
        {
            **SMALL,
            "output_dir": str(tmp_path / "run"),
            "num_val_general": 4,
            "step2": {**SMALL["step2"], "retention_kl": 1.0, "eval_every": 2},
        }
    )
    trained = train_recall(cfg)
    step2 = [m for m in _lines(trained.run) if m["phase"] == "step2"]
    kls = [m["base_kl"] for m in step2 if "base_kl" in m]
    assert len(kls) == 4 and all(np.isfinite(kls)) and kls[0] < 0.05 and max(kls) > 0
    probes = [m["probe_val_retention"] for m in step2 if "probe_val_retention" in m]
    assert len(probes) == 3 and all(0 <= v <= 1 for v in probes)  # steps 0, 2 and 4
    assert 0 <= trained.metrics["val_retention_base"] <= 1 and 0 <= trained.metrics["val_retention"] <= 1


def test_extra_facts_are_never_new_facts_and_both_steps_share_their_stream(tmp_path, monkeypatch):
    """`step1.extra_facts` come after the trained facts and the reserve of new ones (set B): no subject in
    common with either; step 1 contrasts over them too, step 2 decodes the first `step2.extra_facts` of
    the same stream with the same vectors, while the bank keeps only the trained facts."""
    trained_and_new = make_facts(6 + NEW_FACT_RESERVE)
    extra = auxiliary_facts(40, 6)
    assert len(extra) == 40 and auxiliary_facts(0, 6) == []
    assert not {f.question for f in extra} & {f.question for f in trained_and_new}
    cfg = RecallTrainConfig.from_dict(
        {
            **SMALL,
            "output_dir": str(tmp_path / "run"),
            "step1": {**SMALL["step1"], "extra_facts": 10, "batch_size": 16},
            "step2": {**SMALL["step2"], "extra_facts": 14},
        }
    )
    assert cfg.steps()[0].train.batch_size == 16  # the step's rows: 6 facts + 10 extra
    seen = {}
    real1, real2 = recall_train.train_step1, recall_train.train_step2

    def spy1(job, facts, vectors, settings):
        seen.update(facts=list(facts), vectors=vectors.clone())
        return real1(job, facts, vectors, settings)

    def spy2(job, data, vectors, *args):
        seen.update(facts2=list(data.facts), vectors2=vectors.clone(), memories=data.epoch(0))
        return real2(job, data, vectors, *args)

    monkeypatch.setattr(recall_train, "train_step1", spy1)
    monkeypatch.setattr(recall_train, "train_step2", spy2)
    trained = train_recall(cfg)
    assert seen["facts"] == [*make_facts(6), *auxiliary_facts(10, 6)] and seen["vectors"].shape[0] == 16
    assert seen["facts2"] == [*make_facts(6), *auxiliary_facts(14, 6)] and seen["vectors2"].shape[0] == 20
    torch.testing.assert_close(seen["vectors2"][:16], seen["vectors"])  # one encoding of one stream
    assert torch.equal(seen["vectors2"][:6], trained.bank.matrix()[1])  # trained facts: the bank's rows
    assert all(-1 <= s.memory < 20 for s in seen["memories"])  # indices into step 2's vectors
    assert trained.bank.matrix()[1].shape[0] == 6  # the bank: the trained facts only
    step1 = [m for m in _lines(trained.run) if m["phase"] == "step1"]
    assert len(step1) == 3 and all(np.isfinite(m["loss"]) for m in step1)


def test_run_folder_holds_config_both_steps_and_checkpoints(tmp_path):
    cfg = _small(tmp_path, grad_accum=1)
    trained = train_recall(cfg)
    run_dir = trained.run
    assert RecallTrainConfig.from_dict(yaml.safe_load((run_dir / "config.yaml").read_text())) == cfg
    info = json.loads((run_dir / "run.json").read_text())
    assert info["seed"] == 0 and "git_hash" in info and "torch" in info["packages"]
    lines = _lines(run_dir)
    for phase, steps in (("step1", 3), ("step2", 4)):  # step 2: 2 epochs x 8 samples / 4 per step
        losses = [m["loss"] for m in lines if m["phase"] == phase]
        assert len(losses) == steps and all(np.isfinite(losses))
        # each step is a run of the shared loop in its own folder: its config, metrics and checkpoints
        step_dir = run_dir / phase
        assert {"config.yaml", "run.json", "metrics.jsonl", "model"} <= {p.name for p in step_dir.iterdir()}
        assert latest_checkpoint(step_dir / "checkpoints").name == f"step-{steps:06d}"
    assert [m["phase"] for m in lines].count("final") == 1
    assert trained.metrics["step2_loss_first"] == lines[3]["loss"]
    assert all(m["head_loss"] >= 0 for m in lines if m["phase"] == "step2")


def test_two_processes_match_one(tmp_path):
    """`accelerate launch` with 2 CPU processes (the shipped DDP config) splits each step's facts and
    samples between them and logs what one process with 2 accumulation steps logs."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    overrides = ["num_facts=6", "num_general=4", "reply_tokens=2", "step1.steps=2", "step1.batch_size=6"]
    overrides += ["step1.train_model=false", "step2.epochs=1", "step2.samples_per_epoch=8", "lora.r=2"]
    overrides += ["step2.batch_size=4"]
    logs = {}
    for processes in (2, 1):
        out = tmp_path / str(processes)
        args = [*overrides, f"output_dir={out}", f"step1.grad_accum={3 - processes}"]
        args += [f"step2.grad_accum={3 - processes}"]
        cli = ["-m", "latentmem.cli", "train", "recall", *args, "--config", "configs/debug/recall.yaml"]
        launcher = [str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file"]
        cmd = (
            [*launcher, "configs/accelerate/ddp_cpu.yaml", *cli] if processes == 2 else [sys.executable, *cli]
        )
        done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.strip().splitlines()[-1] == str(out)
        logs[processes] = _lines(out)[:-1]  # the steps' lines
    assert [m["processes"] for m in logs[2]] == [2] * 4 and [m["processes"] for m in logs[1]] == [1] * 4
    for x, y in zip(logs[2], logs[1], strict=True):
        for k in ("loss", "head_loss", "grad_norm"):
            if k in x:
                assert x[k] == pytest.approx(y[k], abs=1e-4), (k, x, y)


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
