"""Recall memory parts: tokens, bank persistence, memory head, projector and injection, errors."""

import json

import numpy as np
import pytest
import torch

from latentmem.models import load_model
from latentmem.recall import (
    BankDimensionError,
    BankStorageError,
    EmptyBankError,
    MemoryBank,
    MemoryHead,
    RecallMemory,
    RecallTokenError,
    add_recall_tokens,
    inject,
)
from latentmem.recall.tokens import NewRowTraining, recall_tokens


def _vecs(n, d=16, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


# ---- tokens ---------------------------------------------------------------------------------------
def test_tokens_added_once_and_only_new_rows_train(tiny):
    _, model, tok = tiny
    with pytest.raises(RecallTokenError, match="add_recall_tokens"):
        recall_tokens(tok)
    rows_before = model.get_input_embeddings().num_embeddings
    tokens = add_recall_tokens(model, tok)
    assert add_recall_tokens(model, tok) == tokens  # idempotent
    assert model.get_input_embeddings().num_embeddings == rows_before + 3
    assert tok.convert_ids_to_tokens(list(tokens.ids)) == ["<recall>", "<|memory_pad|>", "</recall>"]
    assert (
        tok("a<recall><|memory_pad|>b</recall>", add_special_tokens=False).input_ids.count(tokens.pad_id) == 1
    )

    trainer = NewRowTraining(model, tokens)
    before = [p.detach().clone() for p in trainer.parameters()]
    opt = torch.optim.AdamW(trainer.parameters(), lr=0.1, weight_decay=0.0)
    ids = torch.tensor([[5, 6, tokens.recall_id, tokens.end_id, 7]])
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    new = list(tokens.ids)
    for p, b in zip(trainer.parameters(), before, strict=True):
        old_rows = torch.ones(len(p), dtype=torch.bool)
        old_rows[new] = False
        assert torch.equal(p.detach()[old_rows], b[old_rows])  # the base vocabulary is bit-for-bit frozen
        assert not torch.equal(p.detach()[new], b[new])
    trainer.remove()  # the gradient mask is gone: old rows get gradients again
    model.zero_grad()
    model(input_ids=ids, labels=ids).loss.backward()
    assert trainer.parameters()[0].grad[5].abs().sum() > 0


# ---- bank -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["exact", "hnsw"])
def test_bank_persist_reload_exact(tmp_path, kind):
    bank = MemoryBank(16, index_kind=kind)
    x = _vecs(6)
    ids = bank.add([f"memory {i}" for i in range(6)], x, [{"n": i, "tag": "t"} for i in range(6)])
    assert ids == list(range(6))
    bank.remove([2])
    bank.save(tmp_path / "bank")
    again = MemoryBank.load(tmp_path / "bank")
    assert again.ids() == bank.ids() == [0, 1, 3, 4, 5]
    for i in bank.ids():
        a, b = bank.get(i), again.get(i)
        assert (a.text, a.metadata) == (b.text, b.metadata) == (f"memory {i}", {"n": i, "tag": "t"})
        assert np.array_equal(a.vector, b.vector)
        assert np.allclose(a.vector, x[i] / np.linalg.norm(x[i]), atol=1e-6)
    q = _vecs(3, seed=1)
    assert np.array_equal(bank.search(q, 3)[1], again.search(q, 3)[1])
    assert again.add(["new"], _vecs(1, seed=2)) == [6]  # ids continue after a reload, never reused

    again.save(tmp_path / "bank")  # a second generation replaces the first, which is then deleted
    manifest = json.loads((tmp_path / "bank" / "manifest.json").read_text())
    assert manifest["generation"] == 1
    names = {p.name for p in (tmp_path / "bank").iterdir()}
    assert names == {"manifest.json", *manifest["files"].values()}
    assert len(MemoryBank.load(tmp_path / "bank")) == 6


def test_bank_errors(tmp_path):
    bank = MemoryBank(16)
    with pytest.raises(EmptyBankError, match="empty"):
        bank.matrix()
    with pytest.raises(BankDimensionError, match="dimension 8"):
        bank.add(["x"], _vecs(1, d=8))
    with pytest.raises(BankStorageError, match=r"no manifest\.json"):
        MemoryBank.load(tmp_path)
    bank.add(["x"], _vecs(1))
    bank.save(tmp_path / "b")
    (tmp_path / "b" / "vectors-0.safetensors").unlink()
    with pytest.raises(BankStorageError, match="missing"):
        MemoryBank.load(tmp_path / "b")


# ---- head -----------------------------------------------------------------------------------------
def test_head_logits_are_scaled_cosines_and_sharpen_with_scale():
    torch.manual_seed(0)
    head = MemoryHead(32, 16)
    hidden = torch.randn(4, 32)
    vectors = torch.nn.functional.normalize(torch.randn(50, 16), dim=-1)
    q = head.proj(hidden)
    cos = (q / q.norm(dim=-1, keepdim=True)) @ vectors.T
    entropies = []
    for scale in (1.0, 10.0, 50.0):
        head.log_scale.data.fill_(np.log(scale))
        logits = head.logits(hidden, vectors)
        assert torch.allclose(logits, scale * cos, atol=1e-5)
        p = logits.softmax(-1)
        entropies.append(float(-(p * p.log()).sum(-1).mean().detach()))
    assert entropies[0] > entropies[1] > entropies[2]
    assert entropies[0] > 0.95 * np.log(50)  # raw cosines: nearly uniform, the defect the scale fixes
    head.log_scale.data.fill_(np.log(1e6))
    assert head.scale.item() == pytest.approx(head.max_scale)


def test_head_large_bank_path_matches_full_scoring():
    torch.manual_seed(0)
    head = MemoryHead(32, 16)
    bank = MemoryBank(16)
    bank.add([str(i) for i in range(300)], _vecs(300))
    hidden = torch.randn(3, 32)
    full, full_ids = head.score_bank(hidden, bank, full_max=10_000)
    top, top_ids = head.score_bank(hidden, bank, full_max=10, candidates=5)
    assert full.shape == (3, 300) and top.shape == (3, 5)
    ref, ref_cols = full.topk(5, dim=-1)
    assert torch.equal(top_ids, full_ids.gather(1, ref_cols))
    assert torch.allclose(top, ref, atol=1e-5)
    with pytest.raises(BankDimensionError, match="dimension 16 but the memory bank holds 8"):
        head.score_bank(hidden, MemoryBank(8))


# ---- projector / injection ------------------------------------------------------------------------
def test_inject_fills_slots_row_major_and_keeps_gradients():
    embeds = torch.zeros(2, 4, 3)
    slots = torch.tensor([[False, True, False, True], [False, False, True, False]])
    mem = torch.arange(9, dtype=torch.float32).reshape(3, 3).requires_grad_()
    out = inject(embeds, slots, mem)
    assert (
        torch.equal(out[0, 1], mem[0]) and torch.equal(out[0, 3], mem[1]) and torch.equal(out[1, 2], mem[2])
    )
    assert torch.equal(out[~slots], torch.zeros(5, 3))
    out.sum().backward()
    assert torch.equal(mem.grad, torch.ones(3, 3))
    with pytest.raises(BankDimensionError, match="3 memory slots"):
        inject(embeds, slots, mem[:2])


def test_projector_matches_embedding_norm_and_checks_dimension():
    model, tok = load_model("tiny-llama")
    memory = RecallMemory.attach(model, tok, 16)
    out = memory.projector(torch.nn.functional.normalize(torch.randn(64, 16), dim=-1))
    target = model.get_input_embeddings().weight.norm(dim=-1).mean()
    assert 0.7 < float(out.norm(dim=-1).mean() / target) < 1.3
    with pytest.raises(BankDimensionError, match="projector expects 16"):
        memory.projector(torch.randn(1, 8))
