"""Agent memory: the operation format, the manager's policies, the answer agent, the benchmark data and
loaders, and the memory-manager GRPO recipe (tiny model, hash embedder)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from latentmem.agent_memory import (
    BenchmarkSchemaError,
    HeuristicPolicy,
    MemoryManager,
    Operation,
    apply_operations,
    generate_benchmark,
    load_locomo,
    load_longmemeval,
    longmemeval_episodes,
    parse_operation,
)
from latentmem.agent_memory.answer import AnswerAgent, answer_match
from latentmem.agent_memory.bench import evaluate_policy
from latentmem.agent_memory.constraint import OperationConstraint, operation_options, option_logprobs
from latentmem.agent_memory.generation import ChatGenerator
from latentmem.agent_memory.manager import (
    AddOnlyPolicy,
    ModelPolicy,
    manager_prompt,
    same_slot,
    shown_ids,
    store_line,
)
from latentmem.agent_memory.train import (
    MemoryManagerConfig,
    RewardScorer,
    build_manager_model,
    decision_rows,
    least_destructive,
    train_memory_manager,
)
from latentmem.errors import ConfigError
from latentmem.memory import MemoryStoreError, VectorMemory
from latentmem.training.checkpoint import latest_checkpoint, load_checkpoint

FIXTURES = Path(__file__).parent / "fixtures" / "agent_memory"
EMBEDDER = "hash:256"
SCOPE = {"user": "ana"}


@pytest.fixture
def store(tmp_path):
    with VectorMemory.open(tmp_path / "store", embedder=EMBEDDER) as mem:
        yield mem


# ---- operations ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("ADD", Operation("ADD", None, "The user lives in Lyon.")),
        ("add: The user moved to Lyon", Operation("ADD", None, ": The user moved to Lyon".strip(": "))),
        ("UPDATE 3", Operation("UPDATE", 3, "The user lives in Lyon.")),
        (
            "  UPDATE [3] The user lives in Lyon now.\nmore",
            Operation("UPDATE", 3, "The user lives in Lyon now."),
        ),
        ("DELETE #3", Operation("DELETE", 3)),
        ("NOOP because it is known", Operation("NOOP")),
    ],
)
def test_parse_valid_operations(raw, expected):
    parsed = parse_operation(raw, "The user lives in Lyon.", {3})
    assert parsed.rejected is None
    assert parsed.operation.kind == expected.kind and parsed.operation.memory_id == expected.memory_id
    if expected.text is not None:
        assert parsed.operation.text.endswith(expected.text.split()[-1])


@pytest.mark.parametrize(
    "raw", ["", "sure! here you go", "UPDATE", "UPDATE lyon", "DELETE 9", "UPDATE 7 x", "REMOVE 3"]
)
def test_malformed_or_unknown_id_is_noop(raw):
    parsed = parse_operation(raw, "The user lives in Lyon.", {3})
    assert parsed.operation.kind == "NOOP" and parsed.rejected


def test_rejected_operations_lose_nothing(store):
    first = store.add("The user lives in Porto.", SCOPE).id
    manager = MemoryManager(store, _Fixed(["DELETE 99", "UPDATE", "gibberish"]), k=5)
    for _ in range(3):
        decision = manager.observe("The user lives in Lyon.", SCOPE)
        assert decision.parsed.operation.kind == "NOOP"
    assert [r.text for r in store.list(SCOPE)] == ["The user lives in Porto."]
    assert store.get(first, SCOPE).text == "The user lives in Porto."


class _Fixed(AddOnlyPolicy):
    """A policy that answers with the given lines, one per decision."""

    def __init__(self, lines):
        self.lines = list(lines)

    def decide(self, requests):
        return [self.lines.pop(0) for _ in requests]


def test_update_keeps_history_and_batches_are_one_transaction(store):
    porto = store.add("The user lives in Porto.", SCOPE).id
    car = store.add("The user drives a Fiat.", SCOPE).id
    applied = apply_operations(
        store,
        [
            Operation("UPDATE", porto, "The user lives in Lyon."),
            Operation("DELETE", car),
            Operation("UPDATE", car, "x"),
        ],
        SCOPE,
    )
    assert applied[2].skipped  # deleted by the batch's DELETE: skipped, not a crash
    assert store.get(porto, SCOPE).text == "The user lives in Lyon."
    assert [v.text for v in store.history(porto, SCOPE)] == ["The user lives in Porto."]
    # a failing transaction leaves nothing behind
    with pytest.raises(RuntimeError), store.transaction():
        store.add("The user plays the cello.", SCOPE)
        raise RuntimeError("boom")
    assert [r.text for r in store.list(SCOPE)] == ["The user lives in Lyon."]
    with pytest.raises(MemoryStoreError), store.transaction(), store.transaction():
        pass


# ---- policies on the generated benchmark -------------------------------------------------------------
def test_same_slot():
    assert same_slot("The user lives in Porto.", "The user lives in Lyon.")
    assert same_slot("The user works as a nurse.", "The user works as an architect.")
    assert not same_slot("The user works as a nurse.", "The user works at Nimbus.")
    assert not same_slot("The user lives in Lyon.", "the user lives in lyon")


def test_heuristic_replaces_updates_and_add_only_leaves_stale(tmp_path):
    episodes = longmemeval_episodes(generate_benchmark(users=4, seed=0))
    results = {}
    for policy in (AddOnlyPolicy(), HeuristicPolicy()):
        with VectorMemory.open(tmp_path / policy.name, embedder=EMBEDDER) as mem:
            results[policy.name], decisions, _ = evaluate_policy(episodes, policy, mem, None)
        assert all(d["rejected"] is None for d in decisions)
    assert results["heuristic"]["stale_share"] == 0.0 and results["heuristic"]["duplicate_share"] == 0.0
    assert results["add-only"]["stale_share"] > 0.2
    assert results["heuristic"]["store_size"] < results["add-only"]["store_size"]
    assert (
        results["heuristic"]["operations"]["UPDATE"] > 0 and results["heuristic"]["operations"]["DELETE"] == 4
    )


def test_answer_agent_extractive_and_match(store):
    store.add("The user lives in Lyon.", SCOPE)
    agent = AnswerAgent(store, k=5, min_score=0.3)
    assert agent.answer("Which city does the user live in?", SCOPE).text == "The user lives in Lyon."
    assert answer_match("The user lives in Lyon.", "Lyon") and not answer_match("Lyonnais", "Lyon")
    assert answer_match("I don't know.", "unknown")


# ---- benchmark data and loaders -----------------------------------------------------------------------
def test_generated_benchmark_is_deterministic_and_in_schema():
    items = generate_benchmark(users=3, seed=7)
    assert items == generate_benchmark(users=3, seed=7) and items != generate_benchmark(users=3, seed=8)
    episodes = longmemeval_episodes(items)
    assert len(episodes) == 3
    cats = {q.category for ep in episodes for q in ep.questions}
    assert cats == {"single-fact", "updated-fact", "multi-hop", "temporal", "abstention"}
    for ep in episodes:  # every user changes a fact (twice, once) and retracts one
        values: dict[str, list] = {}
        for _, turn in ep.fact_turns():
            values.setdefault(turn.slot, []).append(turn.value)
        assert sorted(len(set(v)) for v in values.values() if None not in v)[-2:] == [2, 3]
        assert sum(None in v for v in values.values()) == 1


def test_loaders_read_the_fixtures():
    locomo = load_locomo(FIXTURES / "locomo10.json")
    assert [ep.id for ep in locomo] == ["conv-1", "conv-2"]
    conv = locomo[0]
    assert [s.date for s in conv.sessions] == ["1:56 pm on 8 May, 2023", "10:37 am on 27 June, 2023"]
    assert conv.sessions[1].turns[0].fact == "Caroline: Big news, I moved to Lyon last week."
    assert [q.category for q in conv.questions] == ["single-fact", "temporal", "multi-hop", "abstention"]
    assert conv.questions[3].answer == "unknown" and conv.questions[2].evidence == ("D1:3", "D2:1")
    lme = load_longmemeval(FIXTURES / "longmemeval_s.json")
    assert len(lme) == 2  # the first two items share a haystack
    assert [q.category for q in lme[0].questions] == ["updated-fact", "temporal"]
    assert lme[0].questions[0].evidence == ("answer_4be1b6b4_2:0",) and lme[0].questions[1].answer == "50"
    assert lme[1].questions[0].category == "abstention"
    assert next(t.fact for _, t in lme[0].fact_turns()) == "I live in Porto, can you suggest a weekend trip?"


@pytest.mark.parametrize(
    ("fixture", "break_it", "field"),
    [
        ("locomo10.json", lambda d: d[0]["qa"][1].pop("question"), "locomo10.json[0].qa[1].question"),
        (
            "locomo10.json",
            lambda d: d[1]["conversation"]["session_1"][0].pop("dia_id"),
            "session_1[0].dia_id",
        ),
        ("longmemeval_s.json", lambda d: d[2].pop("haystack_dates"), "longmemeval_s.json[2].haystack_dates"),
        ("longmemeval_s.json", lambda d: d[0].update(question_type="chat"), "[0].question_type"),
    ],
)
def test_schema_errors_name_the_field(tmp_path, fixture, break_it, field):
    data = json.loads((FIXTURES / fixture).read_text())
    break_it(data)
    path = tmp_path / fixture
    path.write_text(json.dumps(data))
    loader = load_locomo if fixture.startswith("locomo") else load_longmemeval
    with pytest.raises(BenchmarkSchemaError, match=field.replace("[", r"\[").replace("]", r"\]")):
        loader(path)


# ---- training the manager ------------------------------------------------------------------------------
def test_reward_is_outcome_driven(store):
    episodes = longmemeval_episodes(generate_benchmark(users=1, seed=3))
    rows = decision_rows(episodes, store, manager_k=5)
    scorer = RewardScorer(store, None, answer_k=20, min_score=0.2)  # hash embedder scores are low
    update_rows = [
        r
        for r in rows
        if any(q.category == "updated-fact" for q in r.questions) and r.fact.startswith("The user lives")
    ]
    row = update_rows[-1]
    stale = next(r.id for r in row.snapshot if same_slot(r.text, row.fact))
    assert scorer(row, f"UPDATE {stale}") > scorer(row, "NOOP")
    assert scorer(row, "UPDATE") == scorer(row, "NOOP")  # malformed: a NOOP
    assert store.count({"user": "rollout-1"}) == 0  # scratch scopes are emptied
    scored = []
    scorer._score = lambda row, parsed: scored.append(parsed) or 0.0  # cached: never scored again
    assert scorer(row, "NOOP because") == scorer(row, "NOOP") and scored == []


@pytest.mark.parametrize("objective", ["grpo", "best"])
def test_manager_grpo_two_steps_changes_lora_and_resumes(tmp_path, monkeypatch, objective):
    # the reward varies by output, so groups rarely tie (and never with every operation in the group)
    monkeypatch.setattr(RewardScorer, "__call__", lambda self, row, output: float(len(output) % 3))
    overrides = {
        "model": "tiny-qwen2", "output_dir": str(tmp_path / "run"),
        "data": {"users": 1, "eval_users": 1, "embedder": EMBEDDER},
        "grpo": {"num_generations": 2, "objective": objective},
        "train": {"steps": 2, "batch_size": 4, "lr": 1e-2, "save_every": 1},
    }  # fmt: skip
    run = train_memory_manager(MemoryManagerConfig.from_dict(overrides))
    ckpt = load_checkpoint(latest_checkpoint(run / "checkpoints"))
    assert ckpt.step == 2
    lora_b = [v for k, v in ckpt.weights.items() if "lora_B" in k]
    assert lora_b and any(float(v.abs().sum()) > 0 for v in lora_b)  # B starts at 0
    assert (run / "model" / "adapter_config.json").is_file()
    overrides["train"]["steps"] = 3
    train_memory_manager(MemoryManagerConfig.from_dict(overrides))
    steps = [
        m["step"] for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in m
    ]
    assert steps == [1, 2, 3]  # resumed after step 2, not restarted


# ---- constrained decoding -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_manager():
    cfg = MemoryManagerConfig.from_dict({"model": "tiny-qwen2"})
    return build_manager_model(cfg, torch.device("cpu"), cfg.lora.peft_config())


def test_constraint_allows_only_operations_over_the_shown_ids(tiny_manager):
    tok = tiny_manager.tokenizer
    constraint = OperationConstraint(tok, [{3, 12}])
    assert operation_options({12, 3}) == ["ADD", "NOOP", "UPDATE 3", "DELETE 3", "UPDATE 12", "DELETE 12"]
    # walking the trie from the empty prefix reaches exactly the options, each ended by EOS
    done, stack = [], [()]
    while stack:
        prefix = stack.pop()
        for token in constraint.allowed(0, prefix):
            if token == constraint.eos:
                done.append(tok.decode(list(prefix)))
            else:
                stack.append((*prefix, token))
    assert sorted(done) == sorted(operation_options({3, 12}))
    assert constraint.allowed(0, [constraint.eos, tok.pad_token_id]) == [constraint.eos]


def test_model_policy_writes_only_valid_operations(store, tiny_manager):
    # a random tiny model writes gibberish unconstrained; constrained, every output is an operation
    for text in ("The user lives in Porto.", "The user drives a Fiat."):
        store.add(text, SCOPE)
    policy = ModelPolicy(ChatGenerator(tiny_manager.peft, tiny_manager.tokenizer))
    manager = MemoryManager(store, policy, k=5)
    for fact in ("The user lives in Lyon.", "The user no longer drives a car.", "The user plays the cello."):
        decision = manager.observe(fact, SCOPE)
        assert decision.parsed.rejected is None
        assert decision.parsed.raw in operation_options(shown_ids(decision.request))


def test_prompts_number_the_memories_and_operations_map_back_to_store_ids(store, tiny_manager):
    """The model sees memories numbered 1..n whatever their store ids; its operation is mapped back, so the
    store is changed at the memory shown as that number."""
    store.add_many([f"Filler memory {i}." for i in range(40)], {"user": "other"})  # ids 1..40 elsewhere
    ids = [store.add(text, SCOPE).id for text in ("The user lives in Porto.", "The user drives a Fiat.")]
    request = MemoryManager(store, AddOnlyPolicy(), k=5).request("The user lives in Lyon.", SCOPE)
    prompt = manager_prompt(request.fact, request.related)
    assert "[1] The user lives in Porto." in prompt and "[2] The user drives a Fiat." in prompt
    assert all(f"[{i}]" not in prompt for i in ids)
    assert store_line("UPDATE 2", ids) == f"UPDATE {ids[1]}"
    assert store_line("DELETE 1 because", ids) == f"DELETE {ids[0]} because"
    assert store_line("ADD", ids) == "ADD" and store_line("NOOP", ids) == "NOOP"
    assert store_line("UPDATE 3", ids) == "UPDATE 3"  # no memory 3 shown: parse_operation rejects it
    decisions = [ModelPolicy(ChatGenerator(tiny_manager.peft, tiny_manager.tokenizer)).decide([request])[0]]
    decisions += [store_line(f"{kind} {n}", [h.record.id for h in request.related]) for kind in ("UPDATE", "DELETE") for n in (1, 2)]  # fmt: skip
    for line in decisions:
        assert line in operation_options(shown_ids(request))


def test_option_logprobs_are_the_constrained_samplers_distribution(tiny_manager):
    """GRPO samples its rollouts from `option_logprobs` (one prefill shared by every option): each
    option's log-prob must equal the sum of the token log-probs HF's constrained sampler drew it with,
    and a request's options must make up its whole distribution."""
    generator = ChatGenerator(tiny_manager.peft, tiny_manager.tokenizer)
    prompts = ["New fact: The user lives in Lyon.\nOperation:", "New fact: The user drives a Fiat."]
    shown = [frozenset({3, 12}), frozenset({7})]
    ids, mask = generator.encode([p for p in prompts for _ in range(3)])
    constraint = OperationConstraint(tiny_manager.tokenizer, [s for s in shown for _ in range(3)])
    torch.manual_seed(0)
    temperature = 0.7
    out = tiny_manager.peft.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=constraint.max_new_tokens, do_sample=True,
        temperature=temperature, top_k=0, top_p=1.0, logits_processor=constraint.processors(ids.shape[1]),
        pad_token_id=tiny_manager.tokenizer.pad_token_id, output_scores=True, return_dict_in_generate=True,
    )  # fmt: skip
    completion = out.sequences[:, ids.shape[1] :]
    tokens = torch.stack(out.scores, 1).float().log_softmax(-1).gather(2, completion[:, :, None]).squeeze(2)
    eos = tiny_manager.tokenizer.eos_token_id
    done = (completion == eos).long().cumsum(1) - (completion == eos).long() > 0  # after the first EOS
    rollout = tokens.masked_fill(done, 0.0).sum(1)
    with torch.no_grad():
        scores = option_logprobs(tiny_manager.peft, ids, mask, constraint, temperature)
    texts = generator.decode(completion)
    for b, text in enumerate(texts):
        idx, _ = scores.of_row(b)
        lines = [scores.lines[j] for j in idx]
        assert sorted(lines) == sorted(operation_options(shown[b // 3]))
        torch.testing.assert_close(scores.logp[idx].exp().sum(), torch.tensor(1.0), atol=1e-4, rtol=0)
        torch.testing.assert_close(scores.logp[idx[lines.index(text)]], rollout[b], atol=1e-4, rtol=1e-4)
    # the constraint matters: the free distribution puts mass elsewhere
    logits = tiny_manager(torch.cat([ids, completion], 1), torch.cat([mask, (~done).long()], 1))
    free = (logits[:, ids.shape[1] - 1 : -1].float() / temperature).log_softmax(-1)
    free = free.gather(2, completion[:, :, None]).squeeze(2).masked_fill(done, 0.0).sum(1)
    assert (free - rollout).abs().max() > 0.1


def test_model_policy_takes_the_most_probable_operation():
    """Inference reads the distribution GRPO trains: the operation is the one of highest constrained
    sequence log-prob, scored here option by option from a full forward of prompt + option (no shared
    cache). The model is steered so that greedy decoding misses it: its first token prefers DELETE, whose
    mass then splits over ten ids, each below NOOP."""
    cfg = MemoryManagerConfig.from_dict({"model": "tiny-qwen2"})
    model = build_manager_model(cfg, torch.device("cpu"), cfg.lora.peft_config())
    tok, base = model.tokenizer, model.peft.get_base_model()
    generator = ChatGenerator(model.peft, tok)
    prompt, shown = "New fact: The user lives in Lyon.", frozenset(range(10, 20))
    ids, _ = generator.encode([prompt])
    delete, noop = (tok.encode(w, add_special_tokens=False)[0] for w in ("DELETE", "NOOP"))
    with torch.no_grad():  # raise DELETE's first-token logit just past NOOP's at this prompt
        h = base.model(input_ids=ids).last_hidden_state[0, -1]
        z = base(input_ids=ids).logits[0, -1]
        base.get_output_embeddings().weight[delete] += (z[noop] - z[delete] + 0.15) * h / h.dot(h)
    constraint = OperationConstraint(tok, [shown])
    scored = {}
    for line, seq in constraint.options[0]:
        option = torch.tensor([seq])
        with torch.no_grad():
            logits = model.peft(torch.cat([ids, option], 1)).logits[:, ids.shape[1] - 1 : -1]
        scored[line] = float(constraint.logprobs(logits, option, 1.0).sum())
    best = max(scored, key=scored.get)
    greedy = generator.decode(
        model.peft.generate(
            input_ids=ids, max_new_tokens=constraint.max_new_tokens, do_sample=False,
            logits_processor=constraint.processors(ids.shape[1]), pad_token_id=tok.pad_token_id,
        )[:, ids.shape[1] :]
    )[0]  # fmt: skip
    assert greedy.startswith("DELETE") and best == "NOOP"  # the steering worked: greedy misses it
    assert generator.operations([prompt], [shown]) == [best]


def test_tied_best_operations_target_the_least_destructive():
    lines = ["ADD", "NOOP", "UPDATE 3", "DELETE 3", "UPDATE 9", "DELETE 9"]
    mask = lambda *on: torch.tensor([line in on for line in lines])  # noqa: E731
    assert torch.equal(least_destructive(lines, mask("ADD", "UPDATE 3")), mask("ADD"))
    assert torch.equal(least_destructive(lines, mask("NOOP", "DELETE 9")), mask("NOOP"))
    assert torch.equal(
        least_destructive(lines, mask("UPDATE 3", "UPDATE 9", "DELETE 3")), mask("UPDATE 3", "UPDATE 9")
    )
    assert torch.equal(least_destructive(lines, mask("DELETE 9")), mask("DELETE 9"))


def test_stale_penalty_and_probes_sharpen_the_reward(store):
    """The pure outcome reward lets ADD keep a stale memory for little cost and an UPDATE of a memory
    not asked about yet go free; the stale penalty and the slot probes make both cost reward."""
    episodes = longmemeval_episodes(generate_benchmark(users=1, seed=3))
    rows = {r.key: r for r in decision_rows(episodes, store, manager_k=5, probes=True)}
    plain = {r.key for r in decision_rows(episodes, store, manager_k=5)}
    assert plain < set(rows)  # probes: every fact is a row
    change = next(r for k, r in rows.items() if k in plain and r.fact.startswith("The user lives"))
    stale = next(r.id for r in change.snapshot if same_slot(r.text, change.fact))
    assert change.slots.is_stale(next(r.text for r in change.snapshot if r.id == stale))
    pure = RewardScorer(store, None, answer_k=20, min_score=0.2)
    shaped = RewardScorer(store, None, answer_k=20, min_score=0.2, stale_penalty=1.0)
    gap = pure(change, f"UPDATE {stale}") - pure(change, "ADD")
    assert shaped(change, f"UPDATE {stale}") - shaped(change, "ADD") > gap
    first = next(r for k, r in rows.items() if k not in plain and r.snapshot and r.questions)
    assert any(q.category == "probe" for q in first.questions)
    other = first.snapshot[0].id
    assert pure(first, f"UPDATE {other}") < pure(first, "ADD")  # the overwritten slot is probed
    with pytest.raises(ConfigError, match="reward.stale_penalty"):
        MemoryManagerConfig.from_dict({"reward": {"stale_penalty": -1}})


def test_probes_cover_every_fact_so_overwriting_the_employer_costs_reward(store):
    """Every slot stated so far is probed, the ones without a question of their own (employer, a
    company's city, an event's date) by their fact with the value cut out; so an unrelated fact that
    overwrites the employer memory loses reward instead of tying (or, with an answer agent that confuses
    "works at" with "works as", gaining)."""
    episodes = longmemeval_episodes(generate_benchmark(users=1, seed=3))
    rows = decision_rows(episodes, store, manager_k=5, probes=True)
    row = next(r for r in rows if r.fact.startswith("The user") and "based in" not in r.fact and any(
        m.text.startswith("The user works at") for m in r.snapshot) and not r.fact.startswith("The user works at"))  # fmt: skip
    employer = next(m for m in row.snapshot if m.text.startswith("The user works at"))
    probes = {q.id: q for q in row.questions if q.category == "probe"}
    assert probes["probe/employer"].question == "The user works at what?"
    assert probes["probe/employer"].answer in employer.text
    score = RewardScorer(store, None, answer_k=20, min_score=0.2)
    assert score(row, f"UPDATE {employer.id}") < score(row, "ADD")
