"""`latentmem bench serve`: the server's throughput with concurrent streaming clients, against the same
requests sent one at a time, in one run.

    latentmem bench serve --model tiny-qwen2 --clients 1,4,16 --requests 64 --json

It starts `latentmem serve` as a child process on a free loopback port (a store in a temporary
directory), sends a few warm-up requests, then, per client count, sends the same `--requests` streaming
chat completions (greedy, so every level generates the same tokens) from that many concurrent clients.
The one-at-a-time baseline is the 1-client level (run even when `--clients` omits it).

`--rounds` (3) runs every level that many times, the levels interleaved (1, 4, 16, 1, 4, 16, ...), so a
slow spell of a shared machine falls on every level alike instead of on one. Per level: the median (and
min, max) of the rounds' completion tokens/s, each over its round's wall time, and p50/p95 request latency
and time to the first content token over every round's requests. `speedup_at_max_clients` is the highest
client count's median tokens/s over the baseline's; `speedups` has each round's own ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from latentmem.cli.common import example
from latentmem.errors import ConfigError

EMBEDDER = "hash:64"  # the bench writes no memories: the cheapest embedder keeps the start-up short


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="server throughput with concurrent streaming clients vs one request at a time",
        epilog=example("latentmem bench serve --model tiny-qwen2 --clients 1,4,16 --requests 64 --json"),
    )
    p.add_argument("--model", default="tiny-qwen2", help="the reasoner to serve (tiny-qwen2)")
    p.add_argument("--clients", default="1,4,16", help="comma-separated client counts (1,4,16)")
    p.add_argument("--requests", type=int, default=64, help="requests per client count (64)")
    p.add_argument("--max-tokens", type=int, default=32, help="completion tokens asked per request (32)")
    p.add_argument("--rounds", type=int, default=3, help="times every level runs, interleaved (3)")
    p.add_argument(
        "--max-batch", type=int, default=None, help="the server's --max-batch (default: the most clients)"
    )
    p.add_argument("--dtype", default="float32", help="the server's --dtype")
    p.add_argument("--device", default="cpu", help="the server's --device")
    p.add_argument(
        "--engine", choices=("process", "thread"), default="process", help="the server's --engine (process)"
    )
    p.add_argument("--threads", type=int, default=None, help="the server's --threads (its default)")
    p.add_argument("--timeout", type=float, default=600, help="seconds the whole run may take (600)")
    p.add_argument("--json", action="store_true", help="a JSON line per client count, then the summary")
    p.set_defaults(func=run)


def _clients(spec: str) -> list[int]:
    try:
        counts = sorted({int(c) for c in spec.split(",") if c.strip()})
    except ValueError:
        raise ConfigError(f"--clients {spec!r}: expected comma-separated integers, e.g. 1,4,16") from None
    if not counts or counts[0] < 1:
        raise ConfigError(f"--clients {spec!r}: every count must be >= 1")
    return counts


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _server(args: argparse.Namespace, max_batch: int, store: Path) -> Iterator[str]:
    """The base URL of a `latentmem serve` child process, stopped (SIGTERM, drained) on exit."""
    import httpx

    port = _free_port()
    command = [sys.executable, "-m", "latentmem.cli", "serve", "--model", args.model, "--store", str(store)]
    command += ["--embedder", EMBEDDER, "--port", str(port), "--dtype", args.dtype, "--device", args.device]
    command += ["--engine", args.engine] + ([] if args.threads is None else ["--threads", str(args.threads)])
    command += ["--max-batch", str(max_batch), "--max-queue", str(max(64, args.requests))]
    log = open(store.parent / "server.log", "w")  # noqa: SIM115 - closed below, after the child
    child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if child.poll() is not None or time.monotonic() > deadline:
                log.flush()
                raise ConfigError(
                    f"the server did not start; its log:\n{(store.parent / 'server.log').read_text()[-2000:]}"
                )
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                    break
            time.sleep(0.2)
        yield url
    finally:
        child.terminate()
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            child.kill()
        log.close()


def _bodies(model: str, n: int, max_tokens: int) -> list[dict]:
    topics = ["bees", "rivers", "compilers", "tea", "glaciers", "chess", "bridges", "owls"]
    return [
        {
            "model": model,
            "messages": [
                {"role": "user", "content": f"Tell me one fact about {topics[i % len(topics)]} ({i})."}
            ],
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        for i in range(n)
    ]


async def _one(http, body: dict) -> tuple[float, float, int]:
    """(latency, time to first content token, completion tokens) of one streamed request."""
    start = time.perf_counter()
    first, tokens = None, 0
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise ConfigError(f"the server answered {response.status_code}: {await response.aread()!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[len("data: ") :])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - start
    latency = time.perf_counter() - start
    return latency, latency if first is None else first, tokens


async def _level(url: str, bodies: list[dict], clients: int) -> tuple[float, list[tuple[float, float, int]]]:
    """Send `bodies` from `clients` concurrent clients (each takes the next request when done): the wall
    time and each request's (latency, time to first content token, completion tokens)."""
    import httpx

    queue: asyncio.Queue[dict] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    results: list[tuple[float, float, int]] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as http:

        async def client() -> None:
            while not queue.empty():
                results.append(await _one(http, queue.get_nowait()))

        start = time.perf_counter()
        await asyncio.gather(*[client() for _ in range(clients)])
        return time.perf_counter() - start, results


def _rate(measured: tuple[float, list[tuple[float, float, int]]]) -> float:
    """One round's completion tokens/s over its wall time."""
    wall, results = measured
    return sum(tokens for _, _, tokens in results) / wall


def _summary(clients: int, rounds: list[tuple[float, list[tuple[float, float, int]]]]) -> dict:
    """One level's rounds as a row: tokens/s per round (median, min, max), percentiles over every request."""
    rates = [_rate(r) for r in rounds]
    latency, ttft, tokens = (
        np.array(x) for x in zip(*[r for _, results in rounds for r in results], strict=True)
    )
    walls = [wall for wall, _ in rounds]
    return {
        "clients": clients,
        "rounds": len(rounds),
        "requests": len(rounds[0][1]),
        "completion_tokens": int(tokens.sum()) // len(rounds),
        "seconds": round(float(np.median(walls)), 3),
        "tokens_per_s": round(float(np.median(rates)), 1),
        "tokens_per_s_min": round(min(rates), 1),
        "tokens_per_s_max": round(max(rates), 1),
        "requests_per_s": round(len(rounds[0][1]) / float(np.median(walls)), 2),
        "latency_p50_s": round(float(np.percentile(latency, 50)), 4),
        "latency_p95_s": round(float(np.percentile(latency, 95)), 4),
        "ttft_p50_s": round(float(np.percentile(ttft, 50)), 4),
        "ttft_p95_s": round(float(np.percentile(ttft, 95)), 4),
    }


def run(args: argparse.Namespace) -> int:
    counts = _clients(args.clients)
    if args.rounds < 1:
        raise ConfigError(f"--rounds: must be >= 1, got {args.rounds}")
    levels_to_run = sorted({1, *counts})  # 1 client: the same requests, one at a time
    bodies = _bodies(args.model, args.requests, args.max_tokens)
    max_batch = args.max_batch or counts[-1]

    measured: dict[int, list] = {clients: [] for clients in levels_to_run}

    async def measure(url: str) -> None:
        await _level(url, _bodies(args.model, 4, args.max_tokens), 2)  # warm-up: first-call costs
        for _ in range(args.rounds):
            for clients in levels_to_run:
                measured[clients].append(await _level(url, bodies, clients))

    with tempfile.TemporaryDirectory(prefix="latentmem-bench-serve-") as tmp:
        store = Path(tmp) / "store"
        with _server(args, max_batch, store) as url:
            try:
                asyncio.run(asyncio.wait_for(measure(url), timeout=args.timeout))
            except TimeoutError:
                done = {c: _summary(c, r) for c, r in measured.items() if r}
                raise ConfigError(
                    f"the bench ran past --timeout {args.timeout:g}s; levels measured so far: "
                    f"{json.dumps(done)}. Use fewer --rounds, --requests or --max-tokens, or a longer "
                    "--timeout"
                ) from None
    levels = [_summary(clients, rounds) for clients, rounds in measured.items()]
    baseline = levels[0]["tokens_per_s"]
    top = next(level for level in levels if level["clients"] == counts[-1])
    per_round = [_rate(t) / _rate(b) for b, t in zip(measured[1], measured[counts[-1]], strict=True)]
    summary = {
        "bench": "serve",
        "model": args.model,
        "engine": args.engine,
        "threads": args.threads,
        "max_tokens": args.max_tokens,
        "max_batch": max_batch,
        "one_at_a_time_tokens_per_s": baseline,
        "max_clients": counts[-1],
        "rounds": args.rounds,
        "speedup_at_max_clients": round(top["tokens_per_s"] / baseline, 2),
        "speedups": [round(x, 2) for x in per_round],
        "levels": levels,
    }
    if args.json:
        for level in levels:
            print(json.dumps(level))
        print(json.dumps(summary))
        return 0
    print(
        f"{args.model}: {args.requests} streamed requests, max_tokens={args.max_tokens}, max_batch={max_batch}, "
        f"{args.rounds} rounds (tokens/s: median [min-max])"
    )
    print("clients  tokens/s               req/s  latency p50/p95 (s)  ttft p50/p95 (s)")
    for r in levels:
        spread = f"[{r['tokens_per_s_min']:.0f}-{r['tokens_per_s_max']:.0f}]"
        print(
            f"{r['clients']:>7}  {r['tokens_per_s']:>8.1f} {spread:<13} {r['requests_per_s']:>5.2f}  "
            f"{r['latency_p50_s']:>8.3f} / {r['latency_p95_s']:<8.3f}  {r['ttft_p50_s']:>6.3f} / {r['ttft_p95_s']:.3f}"
        )
    print(
        f"speedup at {counts[-1]} clients vs one at a time: {summary['speedup_at_max_clients']}x "
        f"(per round: {', '.join(f'{x:.2f}' for x in per_round)})"
    )
    return 0
