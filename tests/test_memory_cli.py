"""`latentmem memory ...` and `latentmem bench memory`, end to end."""

import json

from latentmem.cli import main


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_memory_cli_round_trip(tmp_path, capsys):
    store = str(tmp_path / "store")
    code, out, _ = _run(
        capsys,
        *("memory", "add", "--store", store, "--user", "alice", "--embedder", "hash:128", "--json"),
        *(
            "Alice drinks green tea",
            "Alice owns a red bicycle",
            "--meta",
            "topic=prefs",
            "--meta-json",
            "n=2",
        ),
    )
    assert code == 0
    added = json.loads(out)
    assert [a["event"] for a in added] == ["added", "added"]
    assert added[0]["metadata"] == {"topic": "prefs", "n": 2} and added[0]["user"] == "alice"
    # The store remembers its embedder: no --embedder needed from here on.
    code, out, _ = _run(capsys, "memory", "add", "--store", store, "--user", "bob", "Bob drinks green tea")
    assert code == 0 and out.startswith("added [3] (user=bob) Bob drinks green tea")
    code, out, _ = _run(
        capsys, "memory", "add", "--store", store, "--user", "alice", "alice drinks GREEN tea"
    )
    assert out.startswith("duplicate [1]")

    code, out, _ = _run(
        capsys, "memory", "search", "--store", store, "--user", "alice", "--json", "green tea"
    )
    hits = json.loads(out)
    assert code == 0 and hits[0]["text"] == "Alice drinks green tea" and hits[0]["id"] == 1
    assert all(h["user"] == "alice" for h in hits) and hits[0]["score"] >= hits[-1]["score"]
    code, out, _ = _run(
        capsys, "memory", "search", "--store", store, "--user", "alice", "--filter", "n=3", "--json", "tea"
    )
    assert json.loads(out) == []

    code, out, _ = _run(capsys, "memory", "list", "--store", store, "--user", "alice")
    assert out.splitlines() == [
        '[1] (user=alice) Alice drinks green tea {"topic": "prefs", "n": 2}',
        '[2] (user=alice) Alice owns a red bicycle {"topic": "prefs", "n": 2}',
    ]
    code, _, err = _run(capsys, "memory", "delete", "--store", store, "--user", "bob", "1")
    assert code == 2 and "no memory with id 1 in scope" in err  # alice's record, not bob's
    code, out, _ = _run(capsys, "memory", "delete", "--store", store, "--user", "alice", "--json", "1")
    assert code == 0 and json.loads(out) == {"deleted": [1]}
    code, out, _ = _run(capsys, "memory", "list", "--store", store, "--user", "alice", "--json")
    assert [r["id"] for r in json.loads(out)] == [2]


def test_memory_cli_errors_are_clear_and_lose_nothing(tmp_path, capsys):
    store = str(tmp_path / "store")
    assert (
        _run(capsys, "memory", "add", "--store", store, "--embedder", "hash:8", "--agent", "a", "keep me")[0]
        == 0
    )
    code, _, err = _run(capsys, "memory", "add", "--store", store, "no scope")
    assert code == 2 and "a scope is required" in err and "--user" in err
    code, _, err = _run(capsys, "memory", "add", "--store", store, "--agent", "a", "  ")
    assert code == 2 and "must not be empty" in err
    code, _, err = _run(capsys, "memory", "delete", "--store", store, "--agent", "a", "99")
    assert code == 2 and "no memory with id 99" in err
    code, _, err = _run(capsys, "memory", "delete", "--store", store, "1")
    assert code == 2 and "a scope is required" in err
    code, _, err = _run(
        capsys, "memory", "search", "--store", store, "--agent", "a", "--embedder", "hash:16", "q"
    )
    assert code == 2 and "--embedder hash:8" in err
    code, out, _ = _run(capsys, "memory", "list", "--store", store, "--agent", "a", "--json")
    assert [r["text"] for r in json.loads(out)] == ["keep me"]


def test_memory_cli_near_duplicate_threshold(tmp_path, capsys):
    store = str(tmp_path / "store")
    add = ("memory", "add", "--store", store, "--embedder", "hash:128", "--user", "u", "--json")
    assert json.loads(_run(capsys, *add, "Alice likes green tea")[1])[0]["event"] == "added"
    # same words, other text: kept by default (exact duplicates only) ...
    assert json.loads(_run(capsys, *add, "Alice likes green tea!")[1])[0]["event"] == "added"
    # ... and a near duplicate when a threshold is given
    code, out, _ = _run(capsys, *add, "--near-duplicate-threshold", "0.9", "alice likes green tea?")
    assert code == 0 and json.loads(out)[0]["event"] == "near_duplicate"
    code, _, err = _run(capsys, *add, "--near-duplicate-threshold", "1.5", "x")
    assert code == 2 and "near_duplicate_threshold" in err


def test_bench_memory_reports_both_sides(capsys):
    argv = ["bench", "memory", "--n", "2000", "--dim", "64", "--queries", "20", "--batch", "500", "--json"]
    code, out, _ = _run(capsys, *argv)
    assert code == 0
    result = json.loads(out)
    assert "embedding time excluded" in result["vectors"]
    for side in ("embedded", "numpy"):
        assert result[side]["add_per_s"] > 0 and result[side]["search_ms"] > 0
    assert result["embedded"]["recall_at_k"] == 1.0  # below auto_threshold the default index is exact
    assert result["embedded"]["index"] == "exact" and result["embedded"]["add_one_ms"] > 0
