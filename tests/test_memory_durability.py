"""The embedded store under kills, concurrent writer processes and stale or damaged index files."""

import shutil
import signal
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

from latentmem.memory import MemoryStoreError, VectorMemory, VectorMemoryConfig
from latentmem.memory.embedded import DB_NAME

EMBEDDER = "hash:64"
BATCH = 200

# Adds `batches` batches of BATCH texts, printing each committed batch number. With a stall batch, that
# batch's rows reach SQLite inside its transaction, then the writer prints "inside" and waits to be killed.
_WRITER = textwrap.dedent(
    """
    import sys, time
    from latentmem.memory import VectorMemory, VectorMemoryConfig
    store, tag, batches, snapshot_every, stall = sys.argv[1:3] + [int(a) for a in sys.argv[3:6]]
    config = VectorMemoryConfig(snapshot_min_changes=snapshot_every, near_duplicate_threshold=None)
    mem = VectorMemory.open(store, embedder="{embedder}", config=config)
    insert = mem.backend.insert

    def insert_and_stall(rows):
        ids = insert(rows)
        print("inside", flush=True)
        time.sleep(120)
        return ids

    for b in range(batches):
        if b == stall:
            mem.backend.insert = insert_and_stall
        mem.add_many([f"{{tag}} batch {{b}} item {{i}}" for i in range({batch})], user=tag)
        print(b, flush=True)
    """
).format(embedder=EMBEDDER, batch=BATCH)


def _writer(store, tag, batches, snapshot_every=300, stall=-1):
    return subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(store), tag, str(batches), str(snapshot_every), str(stall)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _assert_consistent(mem):
    report = mem.backend.consistency_report()
    assert report["missing_from_index"] == [] and report["stale_in_index"] == [], report
    assert report["records"] == report["indexed"]
    return report["records"]


def test_kill_inside_a_write_leaves_committed_batches_intact(tmp_path):
    store = tmp_path / "store"
    proc = _writer(store, "k", batches=10, stall=5)  # snapshots land at batches 1, 3 (every 300 changes)
    lines = []
    while not lines or lines[-1] != "inside":
        line = proc.stdout.readline().strip()
        assert line, proc.stderr.read()  # the writer died on its own
        lines.append(line)
    # Batch 5's rows are in SQLite, uncommitted, and the writer holds the write lock: kill it now.
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert lines == ["0", "1", "2", "3", "4", "inside"]

    config = VectorMemoryConfig(lock_timeout_s=5)  # the dead writer's lock must be free, not waited on
    with VectorMemory.open(store, embedder=EMBEDDER, config=config) as mem:
        assert _assert_consistent(mem) == 5 * BATCH  # batches 0-4 whole, nothing of batch 5
        assert mem.list(user="k", limit=1)[0].text == "k batch 0 item 0"
        assert mem.search("k batch 4 item 3", user="k", k=1)[0].record.text == "k batch 4 item 3"
        assert mem.add("k batch 5 item 0", user="k").event == "added"
        assert _assert_consistent(mem) == 5 * BATCH + 1


def test_two_writer_processes_lose_nothing(tmp_path):
    store = tmp_path / "store"
    watcher = VectorMemory.open(store, embedder=EMBEDDER)  # open before: must see the others' writes
    assert watcher.count(user="a") == 0
    writers = [_writer(store, tag, batches=4, snapshot_every=250) for tag in ("a", "b")]
    for proc in writers:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    for tag in ("a", "b"):
        assert watcher.count(user=tag) == 4 * BATCH
        hit = watcher.search(f"{tag} batch 3 item 7", user=tag, k=1)[0]
        assert hit.record.text == f"{tag} batch 3 item 7" and hit.score > 0.99
    assert _assert_consistent(watcher) == 8 * BATCH
    watcher.close()


def test_a_stale_or_damaged_index_file_is_detected_and_repaired(tmp_path):
    store = tmp_path / "store"
    config = VectorMemoryConfig(snapshot_min_changes=10)
    with VectorMemory.open(store, embedder=EMBEDDER, config=config) as mem:
        mem.add_many([f"early fact {i}" for i in range(12)], user="s")
        (old_snapshot,) = store.glob("index-*.npz")
        shutil.copy(old_snapshot, tmp_path / "old.npz")
        late = mem.add_many([f"late fact {i}" for i in range(40)], user="s")
        mem.delete(late[0].id, user="s")
    # Put the old snapshot back in place of the newer one: the index file is now behind SQLite.
    for path in store.glob("index-*.npz"):
        path.unlink()
    shutil.copy(tmp_path / "old.npz", old_snapshot)
    with VectorMemory.open(store, embedder=EMBEDDER, config=config) as mem:
        assert _assert_consistent(mem) == 51
        assert mem.search("late fact 39", user="s", k=1)[0].record.text == "late fact 39"
    # A corrupt index file is only a cache: the store rebuilds from SQLite.
    for path in store.glob("index-*.npz"):
        path.write_bytes(b"not an index")
    with (
        pytest.warns(RuntimeWarning, match="ignoring index snapshot"),
        VectorMemory.open(store, embedder=EMBEDDER, config=config) as mem,
    ):
        assert _assert_consistent(mem) == 51
        assert mem.search("early fact 3", user="s", k=1)[0].record.text == "early fact 3"
    assert (store / DB_NAME).exists()


def test_an_error_inside_a_write_rolls_the_whole_batch_back(tmp_path, monkeypatch):
    with VectorMemory.open(tmp_path / "store", embedder=EMBEDDER) as mem:
        mem.add("kept", user="u")
        real_insert = mem.backend.insert

        def insert_then_fail(rows):
            real_insert(rows)  # the rows reach SQLite inside the transaction...
            raise RuntimeError("disk on fire")  # ...and then the write fails

        monkeypatch.setattr(mem.backend, "insert", insert_then_fail)
        with pytest.raises(RuntimeError, match="disk on fire"):
            mem.add_many(["first", "second"], user="u")
        monkeypatch.undo()
        assert [r.text for r in mem.list(user="u")] == ["kept"]
        assert _assert_consistent(mem) == 1
        assert mem.add("first", user="u").event == "added"


def test_index_is_compacted_after_many_updates(tmp_path):
    config = VectorMemoryConfig(snapshot_min_changes=20, near_duplicate_threshold=None)
    with VectorMemory.open(tmp_path / "store", embedder=EMBEDDER, config=config) as mem:
        ids = [r.id for r in mem.add_many([f"note {i}" for i in range(40)], user="u")]
        for round_ in range(3):
            for i in ids:
                mem.update(i, f"note {i} revised {round_}", user="u")
        report = mem.backend.consistency_report()
        # Without compaction the index would hold 40 live rows and 120 tombstones.
        assert report["indexed"] == 40 and report["index_rows"] < 40 + 60
        assert mem.search(mem.get(ids[7], user="u").vector, user="u", k=1)[0].record.id == ids[7]
        assert _assert_consistent(mem) == 40


def test_a_failed_snapshot_does_not_fail_the_committed_write(tmp_path, monkeypatch):
    config = VectorMemoryConfig(snapshot_min_changes=1)
    with VectorMemory.open(tmp_path / "store", embedder=EMBEDDER, config=config) as mem:
        mem.add("first", user="u")

        def disk_full(self, path):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr("latentmem.vector_index.VectorIndex.save", disk_full)
        with pytest.warns(RuntimeWarning, match="committed but updating the index failed"):
            second = mem.add("second", user="u")
        monkeypatch.undo()
        assert mem.get(second.id, user="u").text == "second"
        assert mem.search(second.record.vector, user="u", k=1)[0].record.id == second.id
        assert _assert_consistent(mem) == 2


def test_changing_the_index_kind_rebuilds_the_index(tmp_path):
    flat = VectorMemoryConfig(snapshot_min_changes=1)
    with VectorMemory.open(tmp_path / "store", embedder=EMBEDDER, config=flat) as mem:
        mem.add_many([f"item {i}" for i in range(5)], user="u")
    exact = VectorMemoryConfig(index_kind="exact")
    with VectorMemory.open(tmp_path / "store", embedder=EMBEDDER, config=exact) as mem:
        assert mem.backend.index_backend == "exact"
        assert _assert_consistent(mem) == 5


def _store_with_snapshot(store, texts, user="s"):
    """The only index snapshot of a closed store that holds `texts` (written at once)."""
    config = VectorMemoryConfig(snapshot_min_changes=1)
    with VectorMemory.open(store, embedder=EMBEDDER, config=config) as mem:
        mem.add_many(texts, user=user)
    (snapshot,) = store.glob("index-*.npz")
    return snapshot


def _truncate(path):
    path.write_bytes(path.read_bytes()[:1000])


def _empty(path):
    path.write_bytes(b"")


def _plain_npy(path):
    with path.open("wb") as f:
        np.save(f, np.ones((3, 64), dtype=np.float32))


@pytest.mark.parametrize("damage", [_truncate, _empty, _plain_npy])
def test_a_truncated_empty_or_foreign_format_snapshot_is_rebuilt_from_sqlite(tmp_path, damage):
    store = tmp_path / "store"
    snapshot = _store_with_snapshot(store, [f"fact number {i}" for i in range(50)])
    damage(snapshot)
    config = VectorMemoryConfig(snapshot_min_changes=1)
    with pytest.warns(RuntimeWarning, match="ignoring index snapshot"):
        mem = VectorMemory.open(store, embedder=EMBEDDER, config=config)
        hit = mem.search("fact number 7", user="s", k=1)[0]
    with mem:
        assert hit.record.text == "fact number 7"
        assert _assert_consistent(mem) == 50
        mem.add("a new fact", user="s")
        mem.delete(mem.list(user="s")[0].id, user="s")
        assert _assert_consistent(mem) == 50
    # The damaged file was replaced by a good snapshot: the next open loads it without a warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with VectorMemory.open(store, embedder=EMBEDDER, config=config) as mem:
            assert _assert_consistent(mem) == 50


def test_an_empty_database_beside_another_stores_snapshot_is_refused(tmp_path):
    store = tmp_path / "store"
    snapshot = _store_with_snapshot(store, [f"old fact {i}" for i in range(20)])
    for path in store.glob(f"{DB_NAME}*"):  # the database is lost; its snapshot stays behind
        path.unlink()
    with pytest.raises(MemoryStoreError, match="holds index snapshots .* is new or empty"):
        VectorMemory.open(store, embedder=EMBEDDER)
    assert snapshot.exists()  # nothing was deleted
    snapshot.unlink()  # what the message says to do for a new store
    with VectorMemory.open(store, embedder=EMBEDDER) as mem:
        mem.add("a fresh start", user="s")
        assert _assert_consistent(mem) == 1


def test_a_snapshot_of_another_database_is_ignored(tmp_path):
    # Two stores with the same write history (so the same sequence numbers), different vectors.
    snapshot_a = _store_with_snapshot(tmp_path / "a", [f"apple {i}" for i in range(30)])
    snapshot_b = _store_with_snapshot(tmp_path / "b", [f"zebra {i}" for i in range(30)])
    assert snapshot_a.name == snapshot_b.name
    shutil.copy(snapshot_a, snapshot_b)  # b's database beside a's index file
    config = VectorMemoryConfig(exact_filter_limit=0)  # search through the index, never around it
    with pytest.warns(RuntimeWarning, match="belongs to store"):
        mem = VectorMemory.open(tmp_path / "b", embedder=EMBEDDER, config=config)
        hit = mem.search("zebra 12", user="s", k=1)[0]
    with mem:
        assert hit.record.text == "zebra 12" and hit.score > 0.99
        assert _assert_consistent(mem) == 30
