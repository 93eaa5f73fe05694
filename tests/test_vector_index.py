import numpy as np
import pytest

from latentmem.vector_index import VectorIndex, VectorIndexError


def _data(n, d=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)).astype(np.float32)


@pytest.mark.parametrize("kind", ["exact", "flat", "hnsw", "ivf"])
def test_search_matches_brute_force(kind, tmp_path):
    x = _data(300)
    index = VectorIndex(16, kind)
    index.add(np.arange(300) + 1000, x)
    q = _data(5, seed=1)
    scores, ids = index.search(q, 5)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    truth = np.argsort(-(qn @ xn.T), axis=1)[:, :5] + 1000
    assert (ids == truth).mean() >= 0.95
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    index.save(tmp_path / "ix")
    again = VectorIndex.load(tmp_path / "ix")
    s2, i2 = again.search(q, 5)
    assert np.array_equal(i2, ids) and np.allclose(s2, scores)


@pytest.mark.parametrize("kind", ["exact", "flat", "hnsw", "ivf"])
def test_remove_and_padding(kind):
    index = VectorIndex(16, kind)
    x = _data(3)
    index.add([1, 2, 3], x)
    index.remove([2])
    scores, ids = index.search(x[1], 5)
    assert set(ids[0, :2].tolist()) == {1, 3} and ids[0, 2:].tolist() == [-1, -1, -1]
    assert np.isneginf(scores[0, 2:]).all()
    assert len(index) == 2 and 2 not in index
    with pytest.raises(VectorIndexError, match="unknown ids"):
        index.remove([2])


def test_auto_switches_to_faiss_and_keeps_results():
    index = VectorIndex(16, "auto", auto_threshold=50)
    x = _data(80)
    index.add(np.arange(40), x[:40])
    assert index.backend == "exact"
    index.remove([0])
    index.add(np.arange(40, 80), x[40:])
    assert index.backend == "hnsw" and len(index) == 79
    _, ids = index.search(x[5], 1)
    assert ids[0, 0] == 5
    assert np.allclose(index.vector(7), x[7] / np.linalg.norm(x[7]), atol=1e-6)


def test_bad_input():
    index = VectorIndex(16, "exact")
    with pytest.raises(VectorIndexError, match=r"shape \(N, 16\)"):
        index.add([1], _data(1, d=8))
    with pytest.raises(VectorIndexError, match="zero"):
        index.add([1], np.zeros((1, 16)))
    index.add([1], _data(1))
    with pytest.raises(VectorIndexError, match="new and unique"):
        index.add([1], _data(1))
    with pytest.raises(VectorIndexError, match="does not match"):
        index.search(_data(1, d=4), 1)
    empty = VectorIndex(16, "exact")
    _, ids = empty.search(_data(1), 3)
    assert ids.tolist() == [[-1, -1, -1]]


@pytest.mark.parametrize("kind", ["exact", "hnsw", "ivf"])
def test_matrix_returns_live_vectors_in_order(kind):
    index = VectorIndex(16, kind)
    x = _data(200)
    index.add(np.arange(200) * 3, x)
    index.remove([3, 9])
    ids, vecs = index.matrix()
    keep = [i for i in range(200) if i not in (1, 3)]
    assert ids.tolist() == [3 * i for i in keep]
    assert np.allclose(vecs, x[keep] / np.linalg.norm(x[keep], axis=1, keepdims=True), atol=1e-6)


def test_ivf_trains_on_first_add_and_reloads(tmp_path):
    x = _data(2000, seed=3)
    index = VectorIndex(16, "ivf", ivf_nlist=8, ivf_nprobe=8)
    index.add(np.arange(2000), x)
    _, ids = index.search(x[:20], 1)
    assert ids[:, 0].tolist() == list(range(20))  # nprobe == nlist: exhaustive, so exact
    index.save(tmp_path / "ivf")
    again = VectorIndex.load(tmp_path / "ivf")
    assert again.ivf_nlist == 8 and np.array_equal(again.search(x[:5], 3)[1], index.search(x[:5], 3)[1])
    with pytest.raises(VectorIndexError, match="at least 8 vectors"):
        VectorIndex(16, "ivf", ivf_nlist=8).add(np.arange(3), x[:3])


def _brute_force(x, q, k):
    """Ids (rows) of the k largest cosines of each query against x, by numpy: the reference."""
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    return np.argsort(-(qn @ xn.T), axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("kind", ["exact", "flat"])
def test_exact_kinds_equal_brute_force_through_growth_and_removal(kind):
    """Exact means equal to numpy, not close: after adds past the matrix's capacity, removals and a
    compaction, for one query and for a batch."""
    x = _data(3000, d=32, seed=4)
    index = VectorIndex(32, kind)
    for lo in range(0, 2000, 300):  # 300 at a time: the exact matrix regrows several times
        index.add(np.arange(lo, min(lo + 300, 2000)), x[lo : lo + 300][: 2000 - lo])
    gone = np.arange(0, 2000, 2)
    index.remove(gone)  # half the rows: the exact matrix compacts
    index.add(np.arange(2000, 3000), x[2000:])
    live = np.setdiff1d(np.arange(3000), gone)
    q = _data(20, d=32, seed=5)
    _, ids = index.search(q, 10)
    assert np.array_equal(ids, live[_brute_force(x[live], q, 10)])
    assert np.array_equal(index.search(q[3], 10)[1][0], ids[3])
    assert np.allclose(index.vector(2001), x[2001] / np.linalg.norm(x[2001]), atol=1e-6)


@pytest.mark.parametrize("kind", ["exact", "flat", "hnsw", "ivf"])
@pytest.mark.parametrize("subset", [30, 1500])  # the exact matrix gathers a few columns, scans for many
def test_search_among_ids_is_exact_on_every_backend(kind, subset):
    x = _data(2000, d=32, seed=6)
    index = VectorIndex(32, kind)
    index.add(np.arange(2000) + 10, x)
    index.remove([10, 11])
    rng = np.random.default_rng(7)
    among = rng.choice(2000, subset, replace=False) + 10
    q = _data(4, d=32, seed=8)
    scores, ids = index.search(q, 5, among=[*among.tolist(), 99_999])  # an unknown id is ignored
    known = np.array(sorted(set(among.tolist()) - {10, 11}))
    assert np.array_equal(ids, known[_brute_force(x[known - 10], q, 5)])
    assert np.all(np.diff(scores, axis=1) <= 0)
    _, none = index.search(q, 3, among=[])
    assert (none == -1).all()


def test_auto_ivf_leaves_exact_by_size_and_retrains_as_it_grows(tmp_path):
    index = VectorIndex(16, "auto", auto_threshold=400, auto_kind="ivf")
    x = _data(6000, seed=9)
    index.add(np.arange(300), x[:300])
    assert index.backend == "exact"
    index.add(np.arange(300, 500), x[300:500])
    assert index.backend == "ivf" and index.ivf_nlist == 12  # trained on all 500: min(sqrt 500, 500 // 39)
    index.remove([0])
    index.add(np.arange(500, 6000), x[500:])  # 5999 vectors: about sqrt(N) = 77 cells, no longer 12
    assert index.ivf_nlist == 77 and len(index) == 5999 and index.rows == 5999  # the tombstone went
    _, ids = index.search(x[1:21], 1)
    assert ids[:, 0].tolist() == list(range(1, 21))
    index.save(tmp_path / "auto")
    again = VectorIndex.load(tmp_path / "auto")
    assert (again.backend, again.ivf_nlist, again.auto_kind) == ("ivf", 77, "ivf")
    assert np.array_equal(again.search(x[:5], 3)[1], index.search(x[:5], 3)[1])
    fixed = VectorIndex(16, "ivf", ivf_nlist=8)
    fixed.add(np.arange(6000), x)
    assert fixed.ivf_nlist == 8  # a cell count given by the caller is kept


def test_ivf_recall_at_10_on_clustered_vectors():
    """The approximate index the embedded store switches to, on vectors with topical clusters (the bench's
    `clustered` data) at a small size: recall@10 against brute force of at least 0.95."""
    from latentmem.vector_index import l2_normalize, synthetic_bank

    rng = np.random.default_rng(0)
    x = synthetic_bank(20_000, 64, "clustered", rng)
    q = l2_normalize(x[rng.integers(0, len(x), 100)] + 0.5 * rng.standard_normal((100, 64)) / 8)
    index = VectorIndex(64, "auto", auto_threshold=5000, auto_kind="ivf")
    for lo in range(0, len(x), 2500):
        index.add(np.arange(lo, lo + 2500), x[lo : lo + 2500], normalized=True)
    assert index.backend == "ivf" and index.ivf_nlist > 100
    _, ids = index.search(q, 10)
    truth = _brute_force(x, q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, truth, strict=True)])
    assert recall >= 0.95
