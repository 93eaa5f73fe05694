"""Recall memory parts: tokens, bank persistence, memory head, projector and injection, errors."""

import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from latentmem.errors import LatentMemError
from latentmem.memory import HashingEmbedder, Scope, VectorMemory
from latentmem.memory.backend import Where
from latentmem.memory.embedded import DB_NAME, EmbeddedBackend
from latentmem.models import load_model
from latentmem.recall import (
    BANK_SCOPE,
    BankDimensionError,
    BankEntryNotFoundError,
    BankInputError,
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


# ---- bank ----------------------------------------------------------------------------------------
def _store_records(path, scope=BANK_SCOPE):
    """The records of `scope` in the store directory `path`, through the store's own backend."""
    backend = EmbeddedBackend(path)
    try:
        return backend.select(Where(scope, exact_scope=True), None)
    finally:
        backend.close()


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
    assert again.index.kind == kind
    for i in bank.ids():
        a, b = bank.get(i), again.get(i)
        assert (a.text, a.metadata) == (b.text, b.metadata) == (f"memory {i}", {"n": i, "tag": "t"})
        assert np.array_equal(a.vector, b.vector)
        assert np.allclose(a.vector, x[i] / np.linalg.norm(x[i]), atol=1e-6)
    q = _vecs(3, seed=1)
    assert np.array_equal(bank.search(q, 3)[1], again.search(q, 3)[1])
    assert again.add(["new"], _vecs(1, seed=2)) == [6]  # ids continue after a reload, never reused

    # A second save writes only what changed: the unchanged entries keep their store records.
    before = {r.metadata["bank_id"]: r.id for r in _store_records(tmp_path / "bank")}
    again.remove([0])
    again.save(tmp_path / "bank")
    after = {r.metadata["bank_id"]: r.id for r in _store_records(tmp_path / "bank")}
    assert sorted(after) == [1, 3, 4, 5, 6]
    assert all(after[i] == before[i] for i in (1, 3, 4, 5)) and after[6] not in before.values()
    assert not (tmp_path / "bank" / "manifest.json").exists()
    again.remove([6])
    again.save(tmp_path / "bank")
    assert MemoryBank.load(tmp_path / "bank").add(["x"], _vecs(1)) == [7]  # a removed top id stays used


def test_bank_errors(tmp_path):
    bank = MemoryBank(16)
    with pytest.raises(EmptyBankError, match="empty"):
        bank.matrix()
    with pytest.raises(BankDimensionError, match="dimension 8"):
        bank.add(["x"], _vecs(1, d=8))
    with pytest.raises(BankInputError, match="2 texts for 1 vectors"):
        bank.add(["x", "y"], _vecs(1))
    with pytest.raises(BankInputError, match="JSON"):
        bank.add(["x"], _vecs(1), [{"bad": object()}])
    with pytest.raises(BankStorageError, match=r"not a memory store \(no memory\.sqlite\)"):
        MemoryBank.load(tmp_path / "nothing")
    assert not (tmp_path / "nothing").exists()  # a failed load creates no store
    bank.add(["x"], _vecs(1))
    with pytest.raises(BankInputError, match="new, unique and non-negative"):
        bank.add(["y"], _vecs(1), ids=[0])
    with pytest.raises(BankEntryNotFoundError, match="no entry with id 5") as err:
        bank.text(5)
    assert isinstance(err.value, KeyError) and isinstance(err.value, LatentMemError)
    with pytest.raises(BankEntryNotFoundError, match=r"no entries with ids \[5\]"):
        bank.remove([5])

    bank.save(tmp_path / "b")
    with pytest.raises(BankStorageError, match="no memory bank in scope"):
        MemoryBank.load(tmp_path / "b", scope=Scope(agent="another-bank"))
    with pytest.raises(BankDimensionError, match="holds 16-dimensional vectors"):
        MemoryBank(8).save(tmp_path / "b")
    with pytest.raises(BankStorageError, match="embedder 'precomputed:16'"):
        MemoryBank(16, embedder="hash:16").save(tmp_path / "b")
    (tmp_path / "b" / DB_NAME).write_bytes(b"not a database at all" * 100)
    with pytest.raises(BankStorageError, match="cannot open the memory bank"):
        MemoryBank.load(tmp_path / "b")


def test_bank_directory_is_a_memory_store_shared_with_other_memories(tmp_path):
    embedder = HashingEmbedder(64)
    facts = ["The capital of Vorlani is Quessot", "Miso the cat sleeps all day", "Tea is brewed at 80 C"]
    bank = MemoryBank(64, embedder=embedder.spec)
    bank.add(facts, embedder.embed(facts), [{"fact": i} for i in range(3)])
    bank.save(tmp_path / "store")
    with VectorMemory.open(tmp_path / "store", embedder=embedder.spec) as mem:
        assert [r.text for r in mem.list(agent="recall-bank")] == facts
        assert [r.metadata for r in mem.list(agent="recall-bank")] == [
            {"bank_id": i, "metadata": {"fact": i}} for i in range(3)
        ]
        hit = mem.search("where is Quessot the capital", agent="recall-bank", k=1)[0]
        assert hit.record.text == facts[0]
        assert np.array_equal(hit.record.vector, bank.get(0).vector)
        mem.add("Alice prefers green tea", user="alice")  # another memory of the same store
    bank.remove([1])
    bank.save(tmp_path / "store")  # touches the bank's scope only
    with VectorMemory.open(tmp_path / "store", embedder=embedder.spec) as mem:
        assert [r.text for r in mem.list(user="alice")] == ["Alice prefers green tea"]
        assert [r.text for r in mem.list(agent="recall-bank")] == [facts[0], facts[2]]
        mem.add("a stray note", agent="recall-bank")  # not a bank entry, in the bank's exact scope
    with pytest.raises(BankStorageError, match="holds no bank entry"):
        MemoryBank.load(tmp_path / "store")
    other = Scope(agent="recall-bank", session="s2")  # a second bank beside the first
    MemoryBank(64, embedder=embedder.spec).save(tmp_path / "store", scope=other)
    assert len(MemoryBank.load(tmp_path / "store", scope=other)) == 0


# Saves a bank of 40 entries, then a changed bank whose save stalls inside the store transaction (after its
# rows reached SQLite), printing "inside" to be killed there.
_BANK_WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from latentmem.memory.embedded import EmbeddedBackend
    from latentmem.recall import MemoryBank

    path = sys.argv[1]
    bank = MemoryBank(16)
    bank.add([f"fact {i}" for i in range(40)], np.random.default_rng(0).standard_normal((40, 16)))
    bank.save(path)
    print("saved", flush=True)
    bank.remove(list(range(10)))
    bank.add([f"late {i}" for i in range(25)], np.random.default_rng(1).standard_normal((25, 16)))
    insert = EmbeddedBackend.insert

    def insert_and_stall(self, rows):
        ids = insert(self, rows)
        print("inside", flush=True)
        time.sleep(120)
        return ids

    EmbeddedBackend.insert = insert_and_stall
    bank.save(path)
    """
)


def test_a_save_killed_midway_leaves_the_previous_bank(tmp_path):
    path = tmp_path / "bank"
    proc = subprocess.Popen(
        [sys.executable, "-c", _BANK_WRITER, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    while not lines or lines[-1] != "inside":
        line = proc.stdout.readline().strip()
        assert line, proc.stderr.read()  # the writer died on its own
        lines.append(line)
    proc.send_signal(signal.SIGKILL)  # the second save's rows are in SQLite, uncommitted
    proc.wait()
    assert lines == ["saved", "inside"]
    bank = MemoryBank.load(path)
    assert bank.ids() == list(range(40)) and bank.text(39) == "fact 39"
    expected = _vecs(40, seed=0).astype(np.float64)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert np.allclose(bank.matrix()[1].numpy(), expected, atol=1e-6)
    bank.add(["after the crash"], _vecs(1))
    bank.save(path)  # the killed writer's lock is free
    assert len(MemoryBank.load(path)) == 41


def test_a_qdrant_collection_holds_a_bank(tmp_path):
    pytest.importorskip("qdrant_client")
    from latentmem.memory.qdrant import QdrantBackend

    bank = MemoryBank(16)
    x = _vecs(5)
    bank.add([f"memory {i}" for i in range(5)], x, [{"n": i} for i in range(5)])
    bank.remove([1])
    backend = QdrantBackend(path=tmp_path / "qdrant", collection="banks")
    try:
        bank.save(backend)
        before = {r.metadata["bank_id"]: r.id for r in backend.select(Where(BANK_SCOPE), None)}
        bank.add(["later"], _vecs(1, seed=3))
        bank.save(backend)  # adds the new entry only, though Qdrant renormalised the stored vectors
        after = {r.metadata["bank_id"]: r.id for r in backend.select(Where(BANK_SCOPE), None)}
        assert sorted(after) == [0, 2, 3, 4, 5] and all(after[i] == before[i] for i in before)
    finally:
        backend.close()
    backend = QdrantBackend(path=tmp_path / "qdrant", collection="banks")  # reopened: from disk
    try:
        again = MemoryBank.load(backend)
    finally:
        backend.close()
    assert again.ids() == [0, 2, 3, 4, 5] and again.embedder == "precomputed:16"
    for i in again.ids():
        a, b = bank.get(i), again.get(i)
        assert (a.text, a.metadata) == (b.text, b.metadata)
        assert np.allclose(a.vector, b.vector, atol=1e-6)
    q = _vecs(2, seed=4)
    assert np.array_equal(bank.search(q, 2)[1], again.search(q, 2)[1])
    assert again.add(["next"], _vecs(1)) == [6]


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
