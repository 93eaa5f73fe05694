"""The memory methods of `latentmem compare` (recall, xrag) and what they stand on: xRAG generation reads
the prompt's memory as the training forward does; the methods run through the harness on a fact task,
take `method_args`, and beat their untrained start; fact tasks read the user's own file."""

import json

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model

from latentmem.chat import render_chat
from latentmem.errors import ConfigError
from latentmem.eval.compare import CompareConfig, run_compare
from latentmem.eval.task import TASKS, Example, Task, TaskError, get_task
from latentmem.models import load_model
from latentmem.recall import MEMORY_PAD, MemoryBank, RecallError, RecallGenerator, RecallMemory, inject
from latentmem.recall.config import RecallTrainConfig
from latentmem.recall.train import train_recall
from latentmem.recall.xrag import XRAGConfig, XRAGData, XRAGRow, train_xrag, xrag_prompt


class HashEncoder:
    """A deterministic stand-in retriever (no MiniLM load): a text's vector from its words' hashes."""

    dim = 16

    def encode(self, texts):
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                out[i, sum(map(ord, word)) % self.dim] += 1.0
        return torch.nn.functional.normalize(torch.from_numpy(out) + 1e-3, dim=-1)


class Affirm(Task):
    """Every answer is "yes": a random model never says it, a few steps of training teach it."""

    name = "affirm-memory-test"
    max_new_tokens = 4

    def load(self, split):
        words = ["apple", "river", "green", "memory", "paris", "orange"]
        return [Example(f"Is {w} a word?", "yes") for w in (words if split == "train" else words[::-1])]

    def target(self, example):
        return "yes"

    def score(self, example, completion):
        return float(completion.strip().lower().startswith("yes"))


@torch.no_grad()
@pytest.mark.parametrize("name", ["tiny-qwen2", "tiny-llama"])
def test_xrag_generation_reads_the_prompt_memory_as_a_full_forward_does(name):
    model, tok = load_model(name, seed=0)
    memory = RecallMemory.attach(model, tok, HashEncoder.dim, seed=0)
    bank = MemoryBank(HashEncoder.dim)
    bank.add(["the river is green", "paris has a tower"], HashEncoder().encode(["a", "b"]))
    questions = ["What colour is the river?", "What does paris have? " + MEMORY_PAD]  # a user's pad is text
    prompts = [render_chat(tok, xrag_prompt(tok, q), allow=(MEMORY_PAD,)) for q in questions]
    gen = RecallGenerator(model, tok, memory, bank, recall="never")
    out = gen.generate(prompts, max_new_tokens=4, prompt_memories=[1, 0])
    for prompt, mid, got in zip(prompts, [1, 0], out.token_ids, strict=True):
        ids = tok(prompt, return_tensors="pt", add_special_tokens=False).input_ids
        assert int((ids == memory.tokens.pad_id).sum()) == 1  # only the background's pad is a slot
        vector = torch.from_numpy(bank.get(mid).vector)[None]
        want = []
        for _ in range(len(got)):  # greedy by full forwards, the memory injected as training injects it
            embeds = inject(
                model.get_input_embeddings()(ids), ids == memory.tokens.pad_id, memory.projector(vector)
            )
            nxt = int(model(inputs_embeds=embeds).logits[0, -1].argmax())
            want.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
        assert got == want[: len(got)]
    with pytest.raises(RecallError, match="one memory id per prompt"):
        gen.generate(prompts, max_new_tokens=1, prompt_memories=[0])
    with pytest.raises(RecallError, match="exactly 1"):
        gen.generate([render_chat(tok, "no pad here")], max_new_tokens=1, prompt_memories=[0])


def test_xrag_training_moves_the_projector_only_and_lowers_the_loss(tmp_path):
    texts = ["the river is green", "paris has a tower", "apples are red"]
    rows = [XRAGRow(i, t, f"Tell me about memory {i}.", t) for i, t in enumerate(texts)]
    cfg = XRAGConfig(
        output_dir=str(tmp_path / "x"), steps=12, batch_size=3, lr=1e-2, restate_share=0.5, extra_memories=3
    )
    base, tok = load_model("tiny-qwen2", seed=0)
    fresh = RecallMemory.attach(base, tok, HashEncoder.dim, seed=0)  # what training started from
    trained = train_xrag(cfg, texts, rows, encoder=HashEncoder())
    assert trained.losses[-1] < trained.losses[0] and len(trained.losses) == 12
    after = dict(trained.model.named_parameters())
    for n, p in base.named_parameters():  # the reasoner, recall-token rows included, is untouched
        assert torch.equal(p, after[n]), n
    assert not torch.equal(fresh.projector.fc2.weight, trained.memory.projector.fc2.weight)
    assert torch.equal(fresh.head.proj.weight, trained.memory.head.proj.weight)  # xRAG has no head
    assert trained.trainable_params == sum(p.numel() for p in trained.memory.projector.parameters())
    assert (trained.run / "model" / "recall.safetensors").is_file()
    assert (trained.run / "config.yaml").is_file()
    assert trained.retrieve(["paris has a tower"]) == [1]


def test_xrag_rows_restate_the_extra_memories_after_the_task_rows():
    model, tok = load_model("tiny-qwen2", seed=0)
    memory = RecallMemory.attach(model, tok, HashEncoder.dim, seed=0)
    rows = [XRAGRow(i, f"fact {i}", f"question {i}?", f"answer {i}") for i in range(2)]
    extra = [XRAGRow(2 + j, f"other {j}", "", f"other {j}") for j in range(3)]
    data = XRAGData(tok, memory, rows, restate_share=0.0, max_tokens=160, seed=0, extra=extra)
    assert len(data) == 5
    assert [data.sample(0, i).kind for i in range(5)] == ["answer"] * 2 + ["restate"] * 3
    assert [data.sample(0, i).memory for i in range(5)] == [0, 1, 2, 3, 4]
    reply = tok.decode(
        [t for t, lab in zip(data.sample(0, 4).input_ids, data.sample(0, 4).labels, strict=True) if lab >= 0]
    )
    assert reply.startswith("other 2")
    assert {data.sample(s, 0).kind for s in range(40)} == {"answer"}  # restate_share 0: never on task rows
    half = XRAGData(tok, memory, rows, restate_share=0.5, max_tokens=160, seed=0)
    assert {half.sample(s, 0).kind for s in range(40)} == {"answer", "restate"}


def test_train_recall_takes_the_callers_facts_and_checks_their_count(tmp_path):
    from latentmem.recall.data import Fact

    facts = [
        Fact(f"Zor{i} lives in Kel{i}.", f"Where does Zor{i} live?", f"Zor{i}'s home?", f"Kel{i}")
        for i in range(3)
    ]
    cfg = RecallTrainConfig.from_dict(
        {"output_dir": str(tmp_path / "r"), "num_facts": 3, "num_general": 4, "num_val_general": 0,
         "step1": {"steps": 2, "batch_size": 3}, "step2": {"epochs": 0}}
    )  # fmt: skip
    trained = train_recall(cfg, facts)
    assert [trained.bank.text(i) for i in trained.bank.ids()] == [f.text for f in facts]
    with pytest.raises(ConfigError, match="num_facts"):
        train_recall(cfg, facts[:2])


def _cfg(tmp_path, methods, **kw):
    return CompareConfig.from_dict(
        {
            "task": "facts",
            "task_args": {"n_facts": 6},
            "model": "tiny-qwen2",
            "methods": methods,
            "out": str(tmp_path / "out"),
            "n_test": 6,
            "eval_batch_size": 6,
            "budget": {"steps": 2, "batch_size": 4, "lr": 1e-3},
            **kw,
        }
    )


def test_recall_and_xrag_run_through_compare_with_their_method_args(tmp_path):
    torch.set_num_threads(1)
    cfg = _cfg(
        tmp_path,
        ["vanilla", "recall", "xrag"],
        method_args={"recall": {"step2": {"retention_kl": 0.0}}, "xrag": {"restate_share": 0.25}},
    )
    saved = run_compare(cfg)["methods"]
    assert saved.keys() == {"vanilla", "recall", "xrag"}
    recall, xrag = saved["recall"]["training"], saved["xrag"]["training"]
    assert recall["steps"] == recall["step1_steps"] == 2 and "weight 0.0" in recall["loss_type"]
    assert xrag["steps"] == 2 and xrag["restate_share"] == 0.25 and xrag["rows_seen"] == 8
    model, tok = load_model("tiny-qwen2", seed=0)
    memory = RecallMemory.attach(model, tok, model.config.hidden_size, seed=0)
    lora = get_peft_model(model, LoraConfig(r=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    rows = 3 * model.config.hidden_size * (1 if model.config.tie_word_embeddings else 2)
    expected = sum(p.numel() for p in memory.parameters()) + rows + lora.get_nb_trainable_parameters()[0]
    assert saved["recall"]["trainable_params"] == expected  # the head, projector, recall rows and LoRA
    assert saved["xrag"]["trainable_params"] > 0
    # xrag reads the question, its background's one pad and a few words of framing; recall the question
    assert saved["recall"]["context_tokens_per_sample"] == saved["vanilla"]["context_tokens_per_sample"]
    assert (
        0 < saved["xrag"]["context_tokens_per_sample"] - saved["vanilla"]["context_tokens_per_sample"] < 20
    )  # tiny: ~char-level
    lines = [
        json.loads(x) for x in (tmp_path / "out" / "xrag" / "completions.jsonl").read_text().splitlines()
    ]
    assert len(lines) == 6 and saved["recall"]["n"] == 6
    with pytest.raises(ConfigError, match="method_args"):
        _cfg(tmp_path, ["vanilla"], method_args={"xrag": {}})


def test_xrag_beats_its_untrained_start(tmp_path, monkeypatch):
    """On a task a few steps teach (always "yes"), xrag trained from scratch must beat the frozen model."""
    torch.set_num_threads(1)
    monkeypatch.setitem(TASKS, "affirm-memory-test", Affirm)
    cfg = _cfg(
        tmp_path,
        ["vanilla", "xrag"],
        task="affirm-memory-test",
        task_args={},
        budget={"steps": 40, "batch_size": 6, "lr": 1e-2, "num_generations": 2},
        method_args={"xrag": {"restate_share": 0.0}},
    )
    acc = {k: v["accuracy"] for k, v in run_compare(cfg)["methods"].items()}
    assert acc["vanilla"] == 0.0 and acc["xrag"] >= 0.75, acc


def test_facts_task_reads_the_users_file(tmp_path):
    path = tmp_path / "facts.jsonl"
    records = [
        {"fact": "Zorbel is the capital of Quenia.", "question": "What is the capital of Quenia?",
         "paraphrase": "Which city is Quenia's capital?", "answer": ["Zorbel", "Zorbel City"]},
        {"statement": "Mirt invented the glowpen.", "question": "Who invented the glowpen?", "answer": "Mirt"},
    ]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    task = get_task("facts", path=str(path))
    train, test = task.load("train"), task.load("test")
    assert [e.prompt for e in train] == ["What is the capital of Quenia?", "Who invented the glowpen?"]
    assert [e.prompt for e in test] == ["Which city is Quenia's capital?", "Who invented the glowpen?"]
    assert task.target(train[0]) == "Zorbel is the capital of Quenia."
    assert task.score(test[0], "It is Zorbel City.") == 1.0 and task.score(test[1], "Nobody.") == 0.0
    assert len(get_task("facts", path=str(path), n_facts=1).load("train")) == 1
    path.write_text(json.dumps({"question": "Who?", "answer": "Mirt"}) + "\n")
    with pytest.raises(TaskError, match="record 0: missing field 'fact' or 'statement'"):
        get_task("facts", path=str(path)).load("train")
    assert len(get_task("facts").load("train")) == 100  # the generated task keeps its default


def test_unseen_facts_are_written_after_training_and_scored_apart(tmp_path):
    task = get_task("facts", n_facts=6, unseen=3)
    train, test, new = task.load("train"), task.load("test"), task.memories()
    assert [e.prompt for e in train] == [e.prompt for e in get_task("facts", n_facts=6).load("train")]
    assert len(test) == 9 and [e.columns["group"] for e in test] == ["seen"] * 6 + ["unseen"] * 3
    assert {e.columns["statement"] for e in new} == {e.columns["statement"] for e in test[6:]}
    assert not {e.prompt for e in new} & {e.prompt for e in train}
    torch.set_num_threads(1)
    cfg = _cfg(
        tmp_path, ["vanilla", "retrieval", "recall", "xrag"], task_args={"n_facts": 6, "unseen": 3}, n_test=0
    )
    saved = run_compare(cfg)["methods"]
    for name in saved:
        groups = saved[name]["by_group"]
        assert {g: e["n"] for g, e in groups.items()} == {"seen": 6, "unseen": 3}
        lines = [
            json.loads(x) for x in (tmp_path / "out" / name / "completions.jsonl").read_text().splitlines()
        ]
        unseen = [x["score"] for x in lines if x["prompt"] in {e.prompt for e in test[6:]}]
        assert groups["unseen"]["accuracy"] == sum(unseen) / 3
        if name in ("vanilla", "retrieval"):  # no reads reported: no memory@1
            assert "memory_at_1" not in saved[name] and "read" not in lines[0]
            continue
        # memory@1: the first memory read is the asked fact's, per item as completions.jsonl records it
        asks = {e.prompt: e.columns["statement"] for e in test}  # (scored in the split's order)
        hits = {x["prompt"]: float(bool(x["read"]) and x["read"][0] == asks[x["prompt"]]) for x in lines}
        found = saved[name]["memory_at_1"]
        assert found["n"] == 9 and found["accuracy"] == sum(hits.values()) / 9
        assert found["by_group"]["unseen"]["accuracy"] == sum(hits[e.prompt] for e in test[6:]) / 3
    # xrag's MiniLM top-1 finds most facts from their paraphrases; every item reads exactly one memory
    assert saved["xrag"]["memory_at_1"]["accuracy"] >= 0.5
    # the retrieval store holds the training examples and, written after training, the unseen facts
    from latentmem.memory import VectorMemory

    store = VectorMemory.open(tmp_path / "out" / "retrieval" / "seed-0" / "retrieval_store")
    texts = [r.text for r in store.list(agent="solved-examples", limit=100)]
    assert len(texts) == 9 and all(any(e.columns["statement"] in t for t in texts) for e in new)
    report = (tmp_path / "out" / "results.md").read_text()
    assert "| unseen (n = 3) [95% CI] |" in report and "| memory@1 (n = 9) [95% CI] |" in report
    with pytest.raises(TaskError, match="unseen"):
        get_task("facts", path=str(tmp_path / "x.jsonl"), unseen=2)


def test_facts_validate_on_a_third_wording_and_keep_every_fact_in_training(tmp_path):
    task = get_task("facts", n_facts=6, unseen=2)
    train, test, val = task.load("train"), task.load("test"), task.validation()
    assert len(val) == 8 and [e.columns["group"] for e in val] == ["seen"] * 6 + ["unseen"] * 2
    for i, v in enumerate(val):
        assert v.answer == test[i].answer and v.prompt != test[i].prompt
        assert i >= 6 or v.prompt != train[i].prompt
    assert get_task("facts", path=str(tmp_path / "any.jsonl")).validation() is None  # a file: carved
    torch.set_num_threads(1)
    saved = run_compare(_cfg(tmp_path, ["vanilla", "retrieval"], val_fraction=0.5, n_test=0, n_train=0))
    assert saved["n_train"] == 6 and saved["n_val"] == 3  # no fact left the training rows
    rows = [json.loads(x) for x in (tmp_path / "out" / "val.jsonl").read_text().splitlines()]
    val_prompts = {e.prompt for e in get_task("facts", n_facts=6).validation()}
    assert len(rows) == 3 and {r["prompt"] for r in rows} <= val_prompts
    assert not {r["prompt"] for r in rows} & {e.prompt for e in get_task("facts", n_facts=6).load("test")}


def test_memory_hits_score_the_first_memory_read_against_the_asked_fact():
    from latentmem.eval.compare import memory_hits
    from latentmem.eval.method import Completions

    asked = [Example(f"q{i}", "a", {"statement": f"fact {i}"}) for i in range(3)]
    read = [["fact 0", "fact 2"], ["fact 2", "fact 1"], []]  # right first; right but second; nothing read
    assert memory_hits(asked, Completions(["", "", ""], 0.0, 0, 0, read)) == [1.0, 0.0, 0.0]
    assert memory_hits(asked, Completions(["", "", ""], 0.0, 0, 0)) is None  # reads not reported
    assert memory_hits([*asked[:2], Example("q", "a")], Completions(["", "", ""], 0.0, 0, 0, read)) is None
