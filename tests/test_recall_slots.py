"""Issue 14's options of recall memory: m-slot memories (train and generate agree), memories written after
training (retrieved by the head and injected), the `<recall>` decision metrics, the general split, and the
step-2 answer probe."""

import json

import numpy as np
import pytest
import torch

from latentmem.chat import render_chat
from latentmem.decoding import IGNORE
from latentmem.models import load_model
from latentmem.recall import MemoryBank, RecallGenerator, RecallMemory
from latentmem.recall.config import RecallTrainConfig
from latentmem.recall.data import MixedRecallData, general_task, make_facts, split_general
from latentmem.recall.evaluate import recall_decision, writer
from latentmem.recall.inject import inject
from latentmem.recall.train import Batch, collate, recall_at_1, recall_hidden, step2_losses, train_recall

SLOTS = 3


def _slot_setup():
    model, tok = load_model("tiny-qwen2", seed=0)
    memory = RecallMemory.attach(model, tok, 16, seed=0, slots=SLOTS)
    bank = MemoryBank(16)
    bank.add([f"memory number {i}" for i in range(4)], np.random.default_rng(0).standard_normal((4, 16)))
    return model, tok, memory, bank


@torch.no_grad()
def test_m_slot_memory_fills_m_pads_and_training_forward_matches_generation():
    model, tok, memory, bank = _slot_setup()
    prompt = render_chat(tok, "where is the river?") + "<recall>"
    out = RecallGenerator(model, tok, memory, bank).generate([prompt], max_new_tokens=SLOTS + 3)
    pad = memory.tokens.pad_id
    (event,) = out.recalls[0]
    generated = out.token_ids[0]
    assert event.step == 0 and generated[:SLOTS] == [pad] * SLOTS and pad not in generated[SLOTS:]

    # one memory vector -> m distinct input embeddings (not one embedding repeated)
    vector = torch.from_numpy(bank.get(event.memory_id).vector)[None]
    slots_embeds = memory.projector(vector)
    assert slots_embeds.shape == (1, SLOTS, model.config.hidden_size)
    assert not torch.allclose(slots_embeds[0, 0], slots_embeds[0, 1])

    # the training forward (step2_losses) on prompt + generated tokens, teacher-forced: its greedy tokens
    # after the pads are the generator's, and its token NLL is the one computed by hand
    prompt_ids = tok(prompt, add_special_tokens=False).input_ids
    ids = torch.tensor([prompt_ids + generated])
    embeds = inject(model.get_input_embeddings()(ids), ids == pad, slots_embeds)
    logits = model(inputs_embeds=embeds).logits[0]
    after = len(prompt_ids) + SLOTS - 1  # the last pad predicts the first token after the memory
    assert logits[after:-1].argmax(-1).tolist() == generated[SLOTS:]
    labels = torch.tensor([[IGNORE] * (len(prompt_ids) + SLOTS) + generated[SLOTS:]])
    batch = Batch(ids, labels, torch.ones_like(ids), torch.tensor([event.memory_id]), torch.tensor([True]))
    vectors = torch.nn.functional.normalize(bank.matrix()[1], dim=-1)
    token_nll, head_nll, _ = step2_losses(model, memory, batch, vectors)
    by_hand = torch.nn.functional.cross_entropy(
        logits[after:-1], torch.tensor(generated[SLOTS:]), reduction="sum"
    )
    assert token_nll.item() == pytest.approx(by_hand.item(), rel=1e-4)
    # the head reads the state at <recall>, right before the first of the m pads
    hidden = model(input_ids=torch.tensor([prompt_ids]), output_hidden_states=True).hidden_states[-1][:, -1]
    head_by_hand = torch.nn.functional.cross_entropy(
        memory.head.logits(hidden, vectors), torch.tensor([event.memory_id]), reduction="sum"
    )
    assert head_nll.item() == pytest.approx(head_by_hand.item(), rel=1e-4)


def test_m_slot_mixture_holds_m_consecutive_unlabelled_pads():
    model, tok, memory, _ = _slot_setup()
    t = memory.tokens
    facts, (pool, _) = make_facts(4), split_general(general_task(8))
    data = MixedRecallData(
        tok, t, facts, pool, ["ok"] * len(pool), samples_per_epoch=12, max_tokens=96, slots=SLOTS
    )
    samples = data.epoch(0)
    for s in samples:
        if s.memory < 0:
            assert t.pad_id not in s.input_ids
            continue
        r = s.input_ids.index(t.recall_id)
        assert s.input_ids[r + 1 : r + 1 + SLOTS] == [t.pad_id] * SLOTS
        assert s.input_ids.count(t.pad_id) == SLOTS
        assert all(s.labels[i] == IGNORE for i in range(r + 1, r + 1 + SLOTS))
    # the training forward runs on a mixed batch with m slots per memory
    vectors = torch.nn.functional.normalize(torch.randn(4, 16), dim=-1)
    token_nll, head_nll, _ = step2_losses(model, memory, collate(samples, tok.pad_token_id), vectors)
    assert torch.isfinite(token_nll) and torch.isfinite(head_nll)


SMALL = {
    "num_facts": 6,
    "num_general": 4,
    "reply_tokens": 2,
    "step1": {"steps": 3, "batch_size": 6, "lr": 0.01, "train_model": False},
    "step2": {"epochs": 2, "samples_per_epoch": 8, "batch_size": 4, "lr": 0.01, "max_tokens": 80},
    "lora": {"r": 2, "alpha": 4},
}


def test_memories_written_after_training_are_retrieved_and_injected(tmp_path):
    cfg = RecallTrainConfig.from_dict({**SMALL, "output_dir": str(tmp_path / "run")})
    trained = train_recall(cfg)
    with torch.no_grad():
        _check_new_memories(cfg, trained)


def _check_new_memories(cfg, trained):
    model, tok, memory, bank = trained.model, trained.tokenizer, trained.memory, trained.bank
    # the writer of new memories writes in the trained bank's space (the base model's hidden states)
    enc = writer(cfg)
    texts_a = [f.text for f in trained.facts]
    assert torch.allclose(enc.encode(texts_a), bank.matrix()[1], atol=1e-5)

    # set B, written after training: the head scores it with A; a memory whose vector is the query of a
    # question is that question's top memory, and generation injects that very memory
    new = make_facts(cfg.num_facts + 2)[cfg.num_facts :]
    questions = [f.question for f in new]
    queries = memory.head.query(recall_hidden(model, tok, questions))
    first = len(bank)
    ids = bank.add([f.text for f in new], queries.cpu())
    assert ids == [first, first + 1]
    vectors = bank.matrix()[1]
    assert recall_at_1(model, tok, memory, vectors, questions, first=first) == 1.0
    gen = RecallGenerator(model, tok, memory, bank)
    out = gen.generate(gen.render(questions, recall_first=True), max_new_tokens=2)
    assert [r[0].memory_id for r in out.recalls] == ids
    # the injected embedding is the new memory's projection: the next token is the one it makes
    prompt_ids = tok(gen.render(questions[:1], recall_first=True)[0], add_special_tokens=False).input_ids
    embeds = model.get_input_embeddings()(torch.tensor([prompt_ids]))
    injected = memory.projector(vectors[first : first + 1]).flatten(0, 1)[None]
    nxt = model(inputs_embeds=torch.cat([embeds, injected.to(embeds)], 1)).logits[0, -1].argmax()
    assert out.token_ids[0] == [memory.tokens.pad_id, int(nxt)]


def test_recall_decision_on_a_hand_made_case():
    on_facts = [True, True, False, True]  # 3 of 4 fact questions recalled
    on_general = [False, True, False, False, False]  # 1 of 5 general questions recalled
    assert recall_decision(on_facts, on_general) == {
        "precision": 3 / 4,
        "recall": 3 / 4,
        "general_no_recall": 4 / 5,
    }
    assert recall_decision([False, False], [False]) == {
        "precision": None,  # nothing recalled: no precision to speak of
        "recall": 0.0,
        "general_no_recall": 1.0,
    }


def test_both_halves_of_the_general_split_hold_capitals_and_sums():
    for n in (8, 16, 32):
        for half in split_general(general_task(n)):
            kinds = {"capital" if "capital" in q.question else "sum" for q in half}
            assert kinds == {"capital", "sum"}, (n, half)
    # set B extends set A: the first facts do not change when more are made
    assert make_facts(12) == make_facts(20)[:12]


def test_step2_probe_logs_answer_accuracy_against_steps(tmp_path):
    step2 = {**SMALL["step2"], "eval_every": 2}
    cfg = RecallTrainConfig.from_dict({**SMALL, "step2": step2, "output_dir": str(tmp_path / "run")})
    trained = train_recall(cfg)
    lines = [json.loads(x) for x in (trained.run / "step2" / "metrics.jsonl").read_text().splitlines()]
    probes = [(m["step"], m["probe_answer_accuracy"]) for m in lines if "probe_answer_accuracy" in m]
    assert [s for s, _ in probes] == [0, 2, 4] and all(0 <= a <= 1 for _, a in probes)
    assert np.isfinite(trained.metrics["step2_loss_first"])


def test_slots_and_projector_width_survive_save_and_load(tmp_path):
    model, tok = load_model("tiny-qwen2", seed=0)
    memory = RecallMemory.attach(model, tok, 16, slots=SLOTS, projector_width=40)
    assert memory.projector.fc1.out_features == 40  # the projector's capacity, apart from D
    memory.save(tmp_path, model)
    fresh, fresh_tok = load_model("tiny-qwen2", seed=0)
    loaded = RecallMemory.load(tmp_path, fresh, fresh_tok)
    assert (loaded.slots, loaded.projector.width) == (SLOTS, 40)
    vector = torch.nn.functional.normalize(torch.randn(2, 16), dim=-1)
    assert torch.equal(loaded.projector(vector), memory.projector(vector))
