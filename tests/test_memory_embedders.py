"""Embedders: MiniLM (the default) finds paraphrases; the reasoner's hidden states; the hashing embedder."""

import numpy as np
import pytest

from latentmem.memory import (
    HashingEmbedder,
    HiddenStateEmbedder,
    MemoryInputError,
    VectorMemory,
    VectorMemoryConfig,
    load_embedder,
)
from latentmem.models import load_model


@pytest.fixture(scope="session")
def minilm():
    """all-MiniLM-L6-v2 from its PyPI package, loaded once per test session."""
    return load_embedder("minilm")


def test_minilm_is_the_default_and_normalised(minilm, tmp_path):
    assert minilm.spec == "minilm" and minilm.dim == 384
    vecs = minilm.embed(["hello world", "a second sentence"])
    assert vecs.shape == (2, 384) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    with VectorMemory.open(tmp_path / "s") as mem:  # no embedder named: MiniLM
        assert mem.embedder is minilm


SENTENCES = [
    "The quarterly budget meeting was moved to Thursday afternoon.",
    "My sister adopted a small grey kitten last week.",
    "Python lists are mutable, tuples are not.",
    "The train to Lyon leaves from platform nine at 7 am.",
    "I am allergic to peanuts and shellfish.",
    "The museum is closed on Mondays.",
]
PARAPHRASES = [
    ("When is the budget review now happening?", 0),
    ("Which foods must I avoid because of allergies?", 4),
    ("what departure time does the Lyon rail service have", 3),
    ("Can you change the elements of a tuple in Python?", 2),
    ("Tell me about my sibling's new pet cat", 1),
]


def test_minilm_search_ranks_the_paraphrase_first(minilm, tmp_path):
    with VectorMemory.open(tmp_path / "s", embedder=minilm) as mem:
        ids = [r.id for r in mem.add_many(SENTENCES, user="alice")]
        mem.add_many(["Bob is allergic to cats."], user="bob")  # another scope: never returned for alice
        for query, want in PARAPHRASES:
            hits = mem.search(query, user="alice", k=3)
            assert hits[0].record.id == ids[want], (query, [h.record.text for h in hits])
            assert all(h.record.scope.user == "alice" for h in hits)


UPDATES = [
    ("Alice is allergic to peanuts.", "Alice is not allergic to peanuts."),
    ("Alice's phone number is 555-0134.", "Alice's phone number is 555-0178."),
    ("The weekly team meeting is on Tuesday.", "The weekly team meeting is on Wednesday."),
]


def test_minilm_keeps_changed_facts_by_default(minilm, tmp_path):
    with VectorMemory.open(tmp_path / "s", embedder=minilm) as mem:
        for old, new in UPDATES:
            assert mem.add(old, user="alice").event == "added"
            added = mem.add(new, user="alice")
            assert added.event == "added", (old, new)
        assert [r.text for r in mem.list(user="alice")] == [t for pair in UPDATES for t in pair]
    # What the old default (0.95) did: each update was taken for a rephrasing and dropped.
    config = VectorMemoryConfig(near_duplicate_threshold=0.95)
    with VectorMemory.open(tmp_path / "old", embedder=minilm, config=config) as mem:
        dropped = [mem.add(old, user="a").id == mem.add(new, user="a").id for old, new in UPDATES]
    assert all(dropped)  # cosines 0.96, 0.997 and 0.98


def test_minilm_near_duplicate_detection(minilm, tmp_path):
    config = VectorMemoryConfig(near_duplicate_threshold=0.95)
    with VectorMemory.open(tmp_path / "s", embedder=minilm, config=config) as mem:
        first = mem.add("The museum is closed on Mondays.", user="u")
        again = mem.add("On Mondays the museum is closed.", user="u")  # cosine 0.99 with MiniLM
        assert again.event == "near_duplicate" and again.id == first.id
        assert mem.add("The museum opens every day of the week.", user="u").event == "added"


def test_hidden_state_embedder_of_a_reasoner(tmp_path):
    model, tok = load_model("tiny-qwen2", seed=0)
    emb = HiddenStateEmbedder(model, tok, spec="hidden:tiny-qwen2")
    assert emb.dim == model.config.hidden_size
    one = emb.embed(["a short text"])
    both = emb.embed(["a short text", "a much longer text that forces padding on the first row"])
    np.testing.assert_allclose(np.linalg.norm(both, axis=1), 1.0, atol=1e-5)
    # Padding must not change a text's vector (pooling masks the pad positions).
    np.testing.assert_allclose(both[0], one[0], atol=1e-4)
    with VectorMemory.open(tmp_path / "s", embedder=emb) as mem:
        rec = mem.add("a short text", agent="reasoner").record
        assert mem.search("a short text", agent="reasoner", k=1)[0].record.id == rec.id


def test_hashing_embedder_is_deterministic_and_lexical():
    emb = HashingEmbedder(256)
    a, b, c = emb.embed(["green tea please", "please green tea", "quantum chromodynamics"])
    np.testing.assert_array_equal(a, HashingEmbedder(256).embed(["green tea please"])[0])
    assert float(a @ b) > float(a @ c)
    assert load_embedder("hash:32").dim == 32


@pytest.mark.parametrize(
    ("spec", "message"), [("nope", "unknown embedder 'nope'"), ("hash:x", "integer DIM")]
)
def test_unknown_embedder_spec_is_a_clear_error(spec, message):
    with pytest.raises(MemoryInputError, match=message):
        load_embedder(spec)


def test_hidden_spec_loads_a_reasoner_by_name():
    emb = load_embedder("hidden:tiny-gpt2")
    model, _ = load_model("tiny-gpt2", seed=0)
    assert emb.spec == "hidden:tiny-gpt2" and emb.dim == model.config.hidden_size
    assert emb.embed(["hello there"]).shape == (1, emb.dim)
