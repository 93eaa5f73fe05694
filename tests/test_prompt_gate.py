"""The prompt gate (`trigger.prompt: knn`): a row it turns away is exactly the plain reasoner's, the rows it
serves are exactly what they were without it, training forward still equals generation, it saves and
loads, the SFT recipe fits it on its training prompts and a continued run keeps the earlier ones."""

import pytest
import torch

import latentmem.training.sft as sft
from conftest import steer
from latentmem.chat import render_chat
from latentmem.errors import ConfigError, ModelLoadError
from latentmem.memgen import GenerationConfig, LatentMemoryModel, MemGenConfig, TriggerConfig
from latentmem.memgen.generate import prompt_gate_features
from latentmem.memgen.prompt_gate import GATE_FILE, PromptGate
from latentmem.models import load_model
from latentmem.tiny import TINY_MODELS
from latentmem.training import SFTConfig
from latentmem.training.data import synthetic_rows
from latentmem.training.rollout import as_training_batch

PROMPTS = ["hi", "a much longer prompt, with words.", "x", "yes. no, maybe", "apple orange", "the river"]
SERVED = [True, False, True, False, True, False]
KNN = TriggerConfig(prompt="knn")


def _memgen(name, **cfg):
    model, tok = load_model(name, seed=0)
    steer(model, tok)
    torch.manual_seed(0)
    cfg = {"prompt_latents": 4, "inference_latents": 3, "max_inference_insertions": 3, "trigger": KNN, **cfg}
    return LatentMemoryModel(model, tok, MemGenConfig(**cfg)), tok


def _batch(tok):
    enc = tok([render_chat(tok, p) for p in PROMPTS], return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


def _admit_only(mm, ids, mask, rows):
    """Fit the gate so that it serves exactly the prompts `rows` of the batch: each one's feature k
    times in the bank (its k-th neighbour at distance 0) and a threshold below any other prompt's."""
    feats = prompt_gate_features(mm, ids, mask)
    k = mm.config.trigger.prompt_k
    mm.prompt_gate.bank = feats[torch.tensor(rows)].repeat_interleave(k, 0)
    mm.prompt_gate.threshold = torch.tensor(1e-5)
    return feats


@pytest.mark.parametrize("name", TINY_MODELS)
def test_a_turned_away_row_is_the_plain_reasoner_and_served_rows_are_unchanged(name):
    mm, tok = _memgen(name)
    ids, mask = _batch(tok)
    cfg = GenerationConfig(max_new_tokens=24)
    ungated = mm.generate(ids, mask, cfg)
    assert bool(ungated.served.all())  # unfitted: serves every prompt
    _admit_only(mm, ids, mask, [i for i, s in enumerate(SERVED) if s])
    res = mm.generate(ids, mask, cfg)
    assert res.served.tolist() == SERVED
    plain, _ = load_model(name)
    steer(plain, tok)
    ref = plain.generate(input_ids=ids, attention_mask=mask, max_new_tokens=24, do_sample=False)
    ref = ref[:, ids.shape[1] :]
    for row, served in enumerate(SERVED):
        n = int(res.lengths[row])
        if served:
            assert res.sequences[row].tolist() == ungated.sequences[row].tolist()
            torch.testing.assert_close(res.logprobs[row], ungated.logprobs[row], atol=1e-4, rtol=1e-4)
            assert res.insertions[row] == ungated.insertions[row]
            assert int(res.plan.prompt_end[row]) >= 0
        else:
            assert res.sequences[row, :n].tolist() == ref[row, :n].tolist()
            assert res.insertions[row] == [] and int(res.plan.prompt_end[row]) == -1
    assert sum(len(res.insertions[r]) for r in range(len(PROMPTS)) if SERVED[r]) >= 2
    # a rejected row's plain answer differs from what the weaver made of it: the gate changed something
    assert any(
        res.sequences[r].tolist() != ungated.sequences[r].tolist()
        for r in range(len(PROMPTS))
        if not SERVED[r]
    )


@pytest.mark.parametrize("name", TINY_MODELS)
def test_training_forward_matches_generation_with_some_rows_turned_away(name):
    mm, tok = _memgen(name)
    ids, mask = _batch(tok)
    _admit_only(mm, ids, mask, [0, 2, 4])
    res = mm.generate(ids, mask, GenerationConfig(max_new_tokens=24))
    full, full_mask, labels = as_training_batch(ids, mask, res, tok.pad_token_id)
    out = mm(full, full_mask, labels, plan=res.plan)
    keep = res.completion_mask()
    torch.testing.assert_close(
        out.token_logprobs[:, ids.shape[1] :][keep], res.logprobs[keep], atol=1e-4, rtol=1e-4
    )


def test_no_served_row_runs_no_weaver_and_answers_like_the_plain_model():
    mm, tok = _memgen("tiny-qwen2")
    ids, mask = _batch(tok)
    feats = prompt_gate_features(mm, ids, mask)
    mm.prompt_gate.bank = -feats[:1].repeat(5, 1)  # far from every prompt of the batch
    mm.prompt_gate.threshold = torch.tensor(1e-5)
    calls = []
    mm.weaver_lm.register_forward_hook(lambda *a: calls.append(1))
    res = mm.generate(ids, mask, GenerationConfig(max_new_tokens=16))
    assert not bool(res.served.any()) and calls == []
    plain, _ = load_model("tiny-qwen2")
    steer(plain, tok)
    ref = plain.generate(input_ids=ids, attention_mask=mask, max_new_tokens=16, do_sample=False)
    for row in range(len(PROMPTS)):
        n = int(res.lengths[row])
        assert res.sequences[row, :n].tolist() == ref[row, ids.shape[1] : ids.shape[1] + n].tolist()


def test_fit_admits_its_own_distribution_and_refuses_another():
    gen = torch.Generator().manual_seed(0)

    def cluster(center, n):
        return torch.nn.functional.normalize(center + 0.05 * torch.randn(n, 16, generator=gen), dim=-1)

    a, b = torch.randn(16, generator=gen), torch.randn(16, generator=gen)
    gate = PromptGate(TriggerConfig(prompt="knn", prompt_accept=0.95), 16)
    assert not gate.active and bool(gate.admits(cluster(b, 4)).all())
    fitted = gate.fit(cluster(a, 200))
    assert fitted["prompt_gate_bank"] == 200 and gate.active
    assert float(gate.admits(cluster(a, 200)).float().mean()) > 0.85
    assert not bool(gate.admits(cluster(b, 50)).any())
    gate.fit(cluster(b, 200))  # a second task: its prompts join the bank
    assert gate.bank.shape[0] == 400 and float(gate.admits(cluster(b, 50)).float().mean()) > 0.85
    small = PromptGate(TriggerConfig(prompt="knn", prompt_bank=300), 16)
    small.fit(cluster(a, 500))
    assert small.bank.shape[0] == 300
    with pytest.raises(ConfigError, match=r"trigger\.prompt_k: .*more than 5 training prompts"):
        PromptGate(KNN, 16).fit(cluster(a, 5))
    always = PromptGate(TriggerConfig(prompt="always"), 16)
    always.fit(cluster(a, 50))
    assert not always.active and bool(always.admits(cluster(b, 4)).all())


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"trigger\.prompt_accept: must be in \(0, 1\]"):
        TriggerConfig(prompt="knn", prompt_accept=0)
    with pytest.raises(ConfigError, match=r"trigger\.prompt_bank: must exceed trigger\.prompt_k"):
        TriggerConfig(prompt_k=8, prompt_bank=8)
    with pytest.raises(ConfigError, match=r"prompt: must be one of 'always', 'knn'"):
        MemGenConfig.from_dict({"trigger": {"prompt": "sometimes"}})


def test_save_load_keeps_the_gate(tmp_path):
    mm, tok = _memgen("tiny-qwen2")
    ids, mask = _batch(tok)
    _admit_only(mm, ids, mask, [1, 3])
    mm.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / GATE_FILE).is_file()
    base, tok2 = load_model("tiny-qwen2", seed=0)
    steer(base, tok2)
    loaded = LatentMemoryModel.from_pretrained(tmp_path / "m", base, tok2)
    assert torch.equal(loaded.prompt_gate.bank, mm.prompt_gate.bank)
    res = loaded.generate(ids, mask, GenerationConfig(max_new_tokens=4))
    assert res.served.tolist() == [False, True, False, True, False, False]
    gate = PromptGate(KNN, mm.prompt_gate.bank.shape[1] + 1)
    with pytest.raises(ModelLoadError, match="belongs to another base model"):
        gate.load(tmp_path / "m")
    # an unfitted model saved over the folder leaves no gate behind
    unfitted, _ = _memgen("tiny-qwen2")
    unfitted.save_pretrained(tmp_path / "m")
    assert not (tmp_path / "m" / GATE_FILE).exists()


def test_sft_fits_the_gate_on_its_training_prompts_and_a_continued_run_keeps_them(tmp_path):
    base = {
        "model": "tiny-qwen2",
        "memgen": {"prompt_latents": 2, "inference_latents": 2, "max_inference_insertions": 2, "lora_r": 4,
                   "trigger": {"prompt": "knn"}},
        "train": {"batch_size": 8, "lr": 3e-3, "steps": 2},
    }  # fmt: skip
    first = sft.train_sft(
        SFTConfig.from_dict(
            {**base, "output_dir": str(tmp_path / "a"), "data": {"task": "arithmetic", "train_size": 40, "eval_size": 0}}
        )
    )  # fmt: skip
    mm = LatentMemoryModel.from_pretrained(first / "model", "tiny-qwen2")
    assert mm.prompt_gate.active and mm.prompt_gate.bank.shape[0] == 40
    asked = synthetic_rows("arithmetic", 20, seed=99)  # new questions of the trained task
    enc = mm.tokenizer(
        [render_chat(mm.tokenizer, row["prompt"]) for row in asked], return_tensors="pt", padding=True
    )
    served = mm.generate(enc["input_ids"], enc["attention_mask"], GenerationConfig(max_new_tokens=2)).served
    assert float(served.float().mean()) >= 0.8
    second = sft.train_sft(
        SFTConfig.from_dict(
            {**base, "output_dir": str(tmp_path / "b"), "init_from": str(first / "model"),
             "data": {"task": "echo", "train_size": 24, "eval_size": 0}}
        )
    )  # fmt: skip
    assert LatentMemoryModel.from_pretrained(second / "model", "tiny-qwen2").prompt_gate.bank.shape[0] == 64
