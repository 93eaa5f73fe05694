"""`latentmem bench serve` end to end: a real server child, interleaved rounds, per-round ratios."""

from __future__ import annotations

import json

from latentmem.cli import main


def test_bench_serve_reports_every_round_and_the_median(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    argv = ["bench", "serve", "--model", "tiny-qwen2", "--clients", "2", "--requests", "4"]
    assert main([*argv, "--max-tokens", "4", "--rounds", "2", "--json", "--timeout", "300"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["rounds"] == 2 and len(summary["speedups"]) == 2
    assert [level["clients"] for level in summary["levels"]] == [1, 2]  # the baseline runs though not asked
    for level in summary["levels"]:
        assert level["rounds"] == 2 and level["requests"] == 4
        assert 0 < level["completion_tokens"] <= 16
        assert level["tokens_per_s_min"] <= level["tokens_per_s"] <= level["tokens_per_s_max"]
        assert level["latency_p50_s"] <= level["latency_p95_s"]
    one, two = summary["levels"]
    assert summary["one_at_a_time_tokens_per_s"] == one["tokens_per_s"]
    assert summary["speedup_at_max_clients"] == round(two["tokens_per_s"] / one["tokens_per_s"], 2)
    assert min(summary["speedups"]) <= summary["speedup_at_max_clients"] * 1.01
