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
