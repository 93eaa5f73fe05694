"""The memory interface, run against both backends (embedded SQLite + FAISS, Qdrant local mode)."""

import contextlib

import numpy as np
import pytest

from latentmem.errors import ConfigError
from latentmem.memory import (
    MemoryInputError,
    MemoryNotFoundError,
    MemoryStoreError,
    Scope,
    ScopeError,
    VectorMemory,
    VectorMemoryConfig,
)

EMBEDDER = "hash:128"


def _open_embedded(path, config, embedder):
    return VectorMemory.open(path / "store", embedder=embedder, config=config)


def _open_qdrant(path, config, embedder):
    return VectorMemory.qdrant(path=path / "qdrant", embedder=embedder, config=config)


BACKENDS = {"embedded": _open_embedded, "qdrant": _open_qdrant}


@pytest.fixture(params=sorted(BACKENDS))
def opener(request, tmp_path):
    """A function (config, embedder) -> open store, the same place each call: reopening is a restart.

    Qdrant's local mode locks its directory, so close a store before opening it again.
    """
    opened = []

    def open_store(config=None, embedder=EMBEDDER):
        mem = BACKENDS[request.param](tmp_path, config, embedder)
        opened.append(mem)
        return mem

    open_store.kind = request.param
    yield open_store
    for mem in opened:
        with contextlib.suppress(Exception):  # a test may have closed it already
            mem.close()


@pytest.fixture
def mem(opener):
    return opener()


def texts(records):
    return [r.text for r in records]


# ---- the interface, case by case --------------------------------------------------------------------
def test_add_get_list_update_delete(mem):
    a = mem.add("Alice drinks green tea every morning", user="alice", metadata={"topic": "drink"})
    b = mem.add("Alice's cat is called Miso", user="alice", session="s1")
    c = mem.add("Bob collects old maps", user="bob")
    assert (a.event, b.event, c.event) == ("added", "added", "added")
    assert len({a.id, b.id, c.id}) == 3
    got = mem.get(a.id, user="alice")
    assert got.text == "Alice drinks green tea every morning"
    assert got.scope == Scope(user="alice") and got.metadata == {"topic": "drink"}
    assert got.vector.shape == (128,) and abs(float(np.linalg.norm(got.vector)) - 1) < 1e-5
    assert got.created_at == got.updated_at > 0
    assert texts(mem.list(user="alice")) == [a.record.text, b.record.text]  # every session of alice
    assert texts(mem.list(user="alice", session="s1")) == [b.record.text]
    assert texts(mem.list(user="alice", limit=1)) == [a.record.text]

    updated = mem.update(a.id, "Alice drinks black coffee", user="alice", metadata={"topic": "coffee"})
    assert mem.get(a.id, user="alice").text == updated.text == "Alice drinks black coffee"
    assert mem.get(a.id, user="alice").metadata == {"topic": "coffee"}
    assert mem.get(a.id, user="alice").updated_at >= got.updated_at
    assert mem.search("black coffee", user="alice", k=1)[0].record.id == a.id  # re-embedded

    mem.delete(b.id, user="alice")
    with pytest.raises(MemoryNotFoundError, match=f"no memory with id {b.id}"):
        mem.get(b.id, user="alice")
    with pytest.raises(MemoryNotFoundError):
        mem.delete(b.id, user="alice")
    assert texts(mem.list(user="alice")) == ["Alice drinks black coffee"]
    assert mem.search("cat Miso", user="alice", k=5)[0].record.id != b.id


def test_search_ranks_by_similarity_within_scope(mem):
    mem.add_many(["the red fox jumps", "a blue whale swims", "green tea is hot"], user="u1")
    mem.add("the red fox jumps high", user="u2")
    hits = mem.search("red fox", user="u1", k=3)
    assert hits[0].record.text == "the red fox jumps"
    assert all(h.record.scope.user == "u1" for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert mem.search("red fox", user="nobody") == []


def test_retrieve_returns_texts_and_vectors(mem):
    mem.add_many(["apples are red", "bananas are yellow", "the sea is blue"], agent="bot")
    found = mem.retrieve("red apples", agent="bot", k=2)
    assert found.texts[0] == "apples are red" and len(found.texts) == 2
    assert found.vectors.shape == (2, 128) and found.vectors.dtype == np.float32
    np.testing.assert_allclose(found.vectors[0], mem.get(found.ids[0], agent="bot").vector)
    assert found.scores.shape == (2,) and found.scores[0] >= found.scores[1]
    empty = mem.retrieve("anything", agent="other", k=3)
    assert empty.texts == [] and empty.vectors.shape == (0, 128)


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"kind": "fact"}, ["one", "three"]),
        ({"kind": "fact", "n": 3}, ["three"]),
        ({"n": 1.0}, ["one"]),  # numbers match by value
        ({"ok": True}, ["two"]),
        ({"ok": 1}, []),  # a bool is not a number
        ({"note": None}, ["three"]),
        ({"missing": "x"}, []),
    ],
)
def test_metadata_filters(mem, filters, expected):
    mem.add("one", user="f", metadata={"kind": "fact", "n": 1})
    mem.add("two", user="f", metadata={"kind": "event", "ok": True})
    mem.add("three", user="f", metadata={"kind": "fact", "n": 3, "note": None})
    assert texts(mem.list(user="f", filters=filters)) == expected
    assert sorted(
        h.record.text for h in mem.search("one two three", user="f", filters=filters, k=5)
    ) == sorted(expected)


def test_exact_and_near_duplicates(opener):
    mem = opener(VectorMemoryConfig(near_duplicate_threshold=0.9))
    first = mem.add("Alice likes green tea", user="alice")
    again = mem.add("  alice LIKES green   tea ", user="alice")
    assert again.event == "duplicate" and again.id == first.id
    near = mem.add("Alice likes green tea!", user="alice")  # same words: hash cosine 1.0, text differs
    assert near.event == "near_duplicate" and near.id == first.id
    other_scope = mem.add("Alice likes green tea", user="alice", session="s2")
    assert other_scope.event == "added" and other_scope.id != first.id
    batch = mem.add_many(["chess is fun", "Chess is fun", "chess is fun."], user="bob")
    assert [r.event for r in batch] == ["added", "duplicate", "near_duplicate"]
    assert len({r.id for r in batch}) == 1
    assert mem.count(user="alice") == 2 and mem.count(user="bob") == 1


def test_near_duplicates_can_be_turned_off(opener):
    mem = opener(VectorMemoryConfig(near_duplicate_threshold=None))
    assert mem.add("Alice likes green tea", user="a").event == "added"
    assert mem.add("Alice likes green tea!", user="a").event == "added"
    assert mem.add("alice likes green tea", user="a").event == "duplicate"


def test_near_duplicates_are_off_by_default(opener):
    mem = opener()
    assert mem.config.near_duplicate_threshold is None
    assert mem.add("Alice likes green tea", user="a").event == "added"
    assert mem.add("Alice likes green tea!", user="a").event == "added"  # hash cosine 1.0, text differs


# ---- ids are scoped too -----------------------------------------------------------------------------
def test_get_update_delete_by_id_see_only_their_scope(mem):
    alice = mem.add("Alice's door code is 4711", user="alice", session="s1", metadata={"k": 1})
    bob = mem.add("Bob's door code is 1234", user="bob")
    for call in (
        lambda: mem.get(alice.id, user="bob"),
        lambda: mem.get(alice.id, user="alice", session="s2"),
        lambda: mem.update(alice.id, "Alice's door code is 0000", user="bob"),
        lambda: mem.update(alice.id, user="bob", metadata={"k": 2}),
        lambda: mem.delete(alice.id, user="bob"),
        lambda: mem.delete(alice.id, agent="bot"),
    ):
        with pytest.raises(MemoryNotFoundError, match=f"no memory with id {alice.id} in scope"):
            call()
    # another scope's record reads exactly like a missing id
    missing = max(alice.id, bob.id) + 1000
    with pytest.raises(MemoryNotFoundError) as gone:
        mem.get(missing, user="bob")
    with pytest.raises(MemoryNotFoundError) as other:
        mem.get(alice.id, user="bob")
    assert str(gone.value).replace(str(missing), "ID") == str(other.value).replace(str(alice.id), "ID")
    got = mem.get(alice.id, user="alice", session="s1")
    assert got.text == "Alice's door code is 4711" and got.metadata == {"k": 1}
    assert mem.get(alice.id, user="alice").id == alice.id  # a wider scope of the same user sees it
    with pytest.raises(ScopeError, match="a scope is required"):
        mem.get(alice.id)
    mem.update(alice.id, user="alice", metadata={"k": 3})
    mem.delete(bob.id, {"user": "bob"})
    assert [r.metadata for r in mem.list(user="alice")] == [{"k": 3}] and mem.list(user="bob") == []


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"a.b": 1}, "metadata key 'a.b' is not allowed"),
        ({"": 1}, "metadata key '' is not allowed"),
        ({"x" * 129: 1}, "is not allowed"),
        ({1: "x"}, "metadata key 1 is not allowed"),
        ({"blob": "x" * 20_000}, "longer than max_metadata_chars=16000"),
    ],
)
def test_metadata_keys_follow_the_filter_rule_and_size_is_capped(mem, metadata, message):
    kept = mem.add("kept", user="u", metadata={"ok-key_1": {"nested.keys": "are values"}})
    with pytest.raises(MemoryInputError, match=message):
        mem.add("rejected", user="u", metadata=metadata)
    with pytest.raises(MemoryInputError, match=message):
        mem.update(kept.id, user="u", metadata=metadata)
    assert [(r.text, r.metadata) for r in mem.list(user="u")] == [("kept", kept.record.metadata)]
    assert texts(mem.list(user="u", filters={"ok-key_1": None})) == []  # the stored key is filterable


# ---- bad input: clear errors, nothing lost ----------------------------------------------------------
@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda m: m.add("", user="u"), MemoryInputError, "must not be empty"),
        (lambda m: m.add("   \n\t", user="u"), MemoryInputError, "must not be empty"),
        (lambda m: m.add("x" * 40_000, user="u"), MemoryInputError, "longer than max_chars=32000"),
        (lambda m: m.add("text", user="u", vector=np.ones(7)), MemoryInputError, "dimension 128"),
        (lambda m: m.add("text", user="u", vector=np.zeros(128)), MemoryInputError, "non-zero"),
        (lambda m: m.add("text"), ScopeError, "a scope is required"),
        (lambda m: m.add("text", {"team": "x"}), ScopeError, "unknown scope field 'team'"),
        (lambda m: m.add("text", user=""), ScopeError, "non-empty string"),
        (lambda m: m.add("text", {"user": "a"}, user="b"), ScopeError, "not both"),
        (lambda m: m.search("query"), ScopeError, "a scope is required"),
        (lambda m: m.list(), ScopeError, "a scope is required"),
        (lambda m: m.search("q", user="u", k=0), MemoryInputError, "k must be a positive int"),
        (lambda m: m.search(np.ones(5), user="u"), MemoryInputError, "dimension 128"),
        (lambda m: m.search("q", user="u", filters={"a.b": 1}), MemoryInputError, "filter key"),
        (lambda m: m.search("q", user="u", filters={"a": [1]}), MemoryInputError, "only str, int"),
        (lambda m: m.add("text", user="u", metadata={"a": object()}), MemoryInputError, "JSON"),
        (lambda m: m.add_many(["ok", ""], user="u"), MemoryInputError, "must not be empty"),
        (
            lambda m: m.add_many(["a", "b"], user="u", vectors=np.ones((1, 128))),
            MemoryInputError,
            "1 vectors",
        ),
        (lambda m: m.get("1", user="u"), MemoryInputError, "ids are ints"),
    ],
)
def test_bad_input_is_a_clear_error_and_nothing_is_lost(mem, call, error, message):
    kept = mem.add("a memory that must survive", user="u")
    with pytest.raises(error, match=message):
        call(mem)
    assert [r.id for r in mem.list(user="u")] == [kept.id]
    assert mem.get(kept.id, user="u").text == "a memory that must survive"


def test_long_text_within_the_limit_is_stored_whole(mem):
    long_text = " ".join(f"word{i}" for i in range(5000))[:30_000]
    rec = mem.add(long_text, user="u").record
    assert mem.get(rec.id, user="u").text == long_text
    assert mem.search(long_text[:100], user="u", k=1)[0].record.id == rec.id


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="near_duplicate_threshold"):
        VectorMemoryConfig(near_duplicate_threshold=1.5)
    with pytest.raises(ConfigError, match="max_chars"):
        VectorMemoryConfig(max_chars=0)


# ---- persistence ------------------------------------------------------------------------------------
def test_restart_keeps_everything(opener):
    mem = opener()
    ids = [r.id for r in mem.add_many([f"fact number {i} about things" for i in range(20)], user="p")]
    mem.update(ids[0], "a changed fact", user="p")
    mem.delete(ids[1], user="p")
    before = mem.list(user="p")
    mem.close()
    again = opener()
    after = again.list(user="p")
    assert [(r.id, r.text, r.metadata, r.scope) for r in after] == [
        (r.id, r.text, r.metadata, r.scope) for r in before
    ]
    np.testing.assert_allclose(
        np.stack([r.vector for r in after]), np.stack([r.vector for r in before]), atol=1e-6
    )
    assert again.search("a changed fact", user="p", k=1)[0].record.id == ids[0]
    assert again.add("fact number 5 about things", user="p").event == "duplicate"
    assert again.embedder.spec == EMBEDDER


def test_reopening_with_another_embedder_is_refused(opener):
    mem = opener()
    mem.add("hello", user="u")
    mem.close()
    with pytest.raises(MemoryStoreError, match="embedder 'hash:128'.*--embedder hash:128"):
        opener(embedder="hash:64")
    reopened = opener(embedder=None)  # no embedder given: the store's own
    assert reopened.embedder.spec == EMBEDDER
    assert texts(reopened.list(user="u")) == ["hello"]


@pytest.mark.parametrize("exact_filter_limit", [0, 5, 2000])
def test_pre_and_post_filtered_search_agree(tmp_path, exact_filter_limit):
    """Embedded store: scoring the few in-scope records directly, or searching the whole index and
    dropping the rest (fetching more until k remain), give the same hits."""
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((300, 128)).astype(np.float32)
    config = VectorMemoryConfig(exact_filter_limit=exact_filter_limit, near_duplicate_threshold=None)
    with VectorMemory.open(tmp_path / "s", embedder=EMBEDDER, config=config) as mem:
        mem.add_many([f"bulk {i}" for i in range(290)], user="big", vectors=vectors[:290])
        rare = mem.add_many([f"rare {i}" for i in range(10)], user="rare", vectors=vectors[290:])
        for q in rng.standard_normal((5, 128)).astype(np.float32):
            hits = mem.search(q, user="rare", k=4)
            sims = vectors[290:] @ (q / np.linalg.norm(q))
            sims /= np.linalg.norm(vectors[290:], axis=1)
            want = [rare[j].id for j in np.argsort(-sims)[:4]]
            assert [h.record.id for h in hits] == want
            np.testing.assert_allclose([h.score for h in hits], np.sort(sims)[::-1][:4], atol=1e-5)


@pytest.mark.parametrize("index_kind", ["auto", "exact", "flat"])
@pytest.mark.parametrize("exact_filter_limit", [0, 2000])  # post-filtered through the index; pre-filtered
def test_embedded_top_k_equals_numpy_brute_force(tmp_path, index_kind, exact_filter_limit):
    """The store's exact search returns exactly numpy's top-k over the records a scope and filter see:
    the same ids in the same order, with their cosines."""
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((1200, 128)).astype(np.float32)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    users, sessions = rng.integers(0, 3, 1200), rng.integers(0, 2, 1200)
    tags = rng.integers(0, 2, 1200)
    config = VectorMemoryConfig(
        index_kind=index_kind, exact_filter_limit=exact_filter_limit, near_duplicate_threshold=None
    )
    with VectorMemory.open(tmp_path / "s", embedder=EMBEDDER, config=config) as mem:
        ids = np.empty(1200, dtype=np.int64)
        for u in range(3):
            for s in range(2):
                rows = np.flatnonzero((users == u) & (sessions == s))
                added = mem.add_many(
                    [f"text {i}" for i in rows],
                    user=f"u{u}",
                    session=f"s{s}",
                    metadatas=[{"tag": int(tags[i])} for i in rows],
                    vectors=vectors[rows],
                )
                ids[rows] = [r.id for r in added]
        gone = rng.choice(1200, 100, replace=False)
        with mem.transaction():
            for i in gone:
                mem.delete(int(ids[i]), user=f"u{users[i]}")
        alive = np.ones(1200, dtype=bool)
        alive[gone] = False
        cases = [
            ({"user": "u0"}, alive & (users == 0)),
            ({"user": "u1", "session": "s1"}, alive & (users == 1) & (sessions == 1)),
        ]
        for q in rng.standard_normal((6, 128)).astype(np.float32):
            sims = unit @ (q / np.linalg.norm(q))
            for scope, seen in cases:
                for filters, tag_ok in ((None, True), ({"tag": 1}, tags == 1)):
                    rows = np.flatnonzero(seen & tag_ok)
                    want = rows[np.argsort(-sims[rows], kind="stable")[:7]]
                    hits = mem.search(q, **scope, filters=filters, k=7)
                    assert [h.record.id for h in hits] == ids[want].tolist()
                    np.testing.assert_allclose([h.score for h in hits], sims[want], atol=1e-5)


def test_auto_store_switches_to_ivf_by_size(tmp_path):
    """`index_kind="auto"` searches exactly up to `auto_threshold` records and through IVF above it, on
    reopening too; on clustered vectors the IVF answers at least 0.95 of the exact top-10."""
    from latentmem.vector_index import synthetic_bank

    rng = np.random.default_rng(2)
    vectors = synthetic_bank(3000, 128, "clustered", rng)
    queries = vectors[rng.integers(0, 3000, 40)] + 0.5 * rng.standard_normal((40, 128)) / np.sqrt(128)
    config = VectorMemoryConfig(auto_threshold=1000, exact_filter_limit=0, near_duplicate_threshold=None)
    store = tmp_path / "s"
    with VectorMemory.open(store, embedder=EMBEDDER, config=config) as mem:
        ids = [r.id for r in mem.add_many([f"t{i}" for i in range(900)], user="u", vectors=vectors[:900])]
        assert mem.backend.index_backend == "exact"
        for lo in range(900, 3000, 700):
            chunk = slice(lo, lo + 700)
            ids += [
                r.id
                for r in mem.add_many(
                    [f"t{i}" for i in range(lo, lo + 700)], user="u", vectors=vectors[chunk]
                )
            ]
        assert mem.backend.index_backend == "ivf"
    truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    with VectorMemory.open(store, embedder=EMBEDDER, config=config) as mem:
        assert mem.backend.index_backend == "ivf"
        found = [{ids.index(h.record.id) for h in mem.search(q, user="u", k=10)} for q in queries]
    recall = np.mean([len(f & set(t)) / 10 for f, t in zip(found, truth, strict=True)])
    assert recall >= 0.95
