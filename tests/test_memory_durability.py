"""The embedded store under kills, concurrent writer processes and stale or damaged index files."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from latentmem.memory import VectorMemory, VectorMemoryConfig
from latentmem.memory.embedded import DB_NAME

EMBEDDER = "hash:64"
BATCH = 200

# Adds batches of BATCH texts forever, printing each committed batch number; the test kills it.
_WRITER = textwrap.dedent(
    """
    import sys
    from latentmem.memory import VectorMemory, VectorMemoryConfig
    store, tag, batches = sys.argv[1], sys.argv[2], int(sys.argv[3])
    config = VectorMemoryConfig(snapshot_min_changes=int(sys.argv[4]), near_duplicate_threshold=None)
    mem = VectorMemory.open(store, embedder="{embedder}", config=config)
    print("ready", flush=True)
    b = 0
    while batches < 0 or b < batches:
        mem.add_many([f"{{tag}} batch {{b}} item {{i}}" for i in range({batch})], user=tag)
        print(b, flush=True)
        b += 1
    """
).format(embedder=EMBEDDER, batch=BATCH)


def _writer(store, tag, batches, snapshot_every=300):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(store), tag, str(batches), str(snapshot_every)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _assert_consistent(mem):
    report = mem.backend.consistency_report()
    assert report["missing_from_index"] == [] and report["stale_in_index"] == [], report
    assert report["records"] == report["indexed"]
    return report["records"]


def test_kill_during_writes_leaves_committed_batches_intact(tmp_path):
    store = tmp_path / "store"
    proc = _writer(store, "k", batches=-1)
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    committed = -1
    while committed < 6:  # let several batches (and index snapshots) land, then kill mid-stream
        committed = int(proc.stdout.readline())
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    committed = max([committed, *(int(line) for line in proc.stdout.read().split())])

    with VectorMemory.open(store, embedder=EMBEDDER) as mem:
        n = _assert_consistent(mem)
        # Batches are atomic: whole batches only, and every reported one is there.
        assert n % BATCH == 0 and n >= (committed + 1) * BATCH
        for b in range(committed + 1):
            assert mem.add(f"k batch {b} item {BATCH - 1}", user="k").event == "duplicate"
        assert mem.search(f"k batch {committed} item 3", user="k", k=1)[0].record.text == (
            f"k batch {committed} item 3"
        )
        assert mem.add("written after the crash", user="k").event == "added"
        assert _assert_consistent(mem) == n + 1


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
        mem.delete(late[0].id)
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
    with VectorMemory.open(store, embedder=EMBEDDER, config=config) as mem:
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
                mem.update(i, f"note {i} revised {round_}")
        index = mem.backend._index
        # Without compaction the index would hold 40 live rows and 120 tombstones.
        assert len(index) == 40 and len(index._ids) < 40 + 60
        assert mem.search(mem.get(ids[7]).vector, user="u", k=1)[0].record.id == ids[7]
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
        assert mem.get(second.id).text == "second"
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
