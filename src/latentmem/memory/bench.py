"""`latentmem bench memory`: the embedded vector store against brute-force numpy, in one run.

Vectors are precomputed synthetic unit vectors (`--data`, the generator of `latentmem bench recall`), so
the numbers measure storage and search, not the embedder: MiniLM embedded about 65 short texts per second
on the shared two-core machine of the README's table, so embedding 100k texts would take ~25 minutes and
dominate both sides equally. `clustered` (default) draws vectors around sqrt(N) centres, as text
embeddings form topical clusters; `uniform` draws i.i.d. directions, the worst case for an approximate
index. Queries are stored vectors plus noise (cosine about 0.9 to their source).

Two stores share one SQLite database: the one under test (`--index`, the store's default `auto`: exact up
to 50k records, IVF above) and an exact reference (`exact`). Reported:

- `add_per_s`: records stored per second, added in batches of `--batch` (a bulk import). The store commits
  each batch to SQLite (texts, scope, metadata, vectors), checks exact duplicates and updates its index
  (and now and then its index file); numpy appends rows to an array in memory, durable nowhere. The bulk
  import skips the near-duplicate check, which costs one search per added text.
- `search`: wall time of one top-k query (`min_ms`, `median_ms` over every query of every repeat) for
  numpy, the exact store and the store under test (`approximate`, which names the index that answered:
  below `auto_threshold` that is still `exact`), and the ratios store / numpy of the same run. The
  store's time includes the scope check and fetching the k records from SQLite; numpy's is a
  matrix-vector product and a partial sort. Each repeat times numpy, then the exact store, then the
  store under test, so a change of load on a shared machine reaches all three.
- `recall_at_k`: how many of numpy's exact top-k a store returns (the same in every repeat).
- `add_one_ms`: adding single texts to the full store under the default duplicate rule (exact duplicates
  only), as an agent does (one transaction, one duplicate look-up, one insert each).
- `reopen_s`: opening the store again and answering a first query (the index loads from its latest
  snapshot file and replays the writes logged after it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from latentmem.memory.config import VectorMemoryConfig
from latentmem.memory.embedders import HashingEmbedder
from latentmem.memory.vector import VectorMemory
from latentmem.vector_index import l2_normalize, synthetic_bank

VECTORS_NOTE = "precomputed synthetic unit vectors; embedding time excluded"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("memory", help="embedded vector memory vs brute-force numpy (add/s, search ms)")
    p.add_argument("--n", type=int, default=100_000, help="records to add (100000)")
    p.add_argument("--dim", type=int, default=384, help="vector dimension (384, MiniLM's)")
    p.add_argument(
        "--data", default="clustered", choices=["clustered", "uniform"], help="synthetic vectors (clustered)"
    )
    p.add_argument("--queries", type=int, default=200, help="search queries per repeat (200)")
    p.add_argument("--repeats", type=int, default=3, help="times every query is timed on each side (3)")
    p.add_argument("--k", type=int, default=10, help="results per query (10)")
    p.add_argument("--batch", type=int, default=1000, help="records per add call (1000)")
    p.add_argument(
        "--index",
        default="auto",
        choices=["auto", "exact", "flat", "hnsw", "ivf"],
        help="index kind of the store under test (auto, the store's default)",
    )
    p.add_argument("--single-adds", type=int, default=50, help="single adds timed after the import (50)")
    p.add_argument(
        "--faiss-threads",
        type=int,
        default=1,
        help="FAISS OpenMP threads (1: on a small shared machine, OpenMP spin-waiting makes a one-query "
        "search several times slower with more threads)",
    )
    p.add_argument("--seed", type=int, default=0, help="draws the vectors and the queries")
    p.add_argument("--store", default=None, help="store directory (default: a temporary one, removed after)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.store is None:
        with tempfile.TemporaryDirectory(prefix="latentmem-bench-") as tmp:
            result = bench(args, Path(tmp))
    else:
        result = bench(args, Path(args.store))
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"n={result['n']} dim={result['dim']} k={result['k']} {result['data']} ({result['vectors']})")
    search = result["search"]
    for side in ("numpy", "exact", "approximate"):
        s = search[side]
        recall = "" if side == "numpy" else f"   recall@{result['k']} {s['recall_at_k']:.3f} ({s['index']})"
        print(f"{side:>12}: search min {s['min_ms']:7.3f} ms  median {s['median_ms']:7.3f} ms{recall}")
    for side in ("exact", "approximate"):
        r = search[f"{side}_over_numpy"]
        print(f"{side:>12} / numpy: min {r['min']:.2f}  median {r['median']:.2f}")
    store = result["embedded"]
    print(
        f"store: add {store['add_per_s']:.0f}/s (numpy {result['numpy']['add_per_s']:.0f}/s), one add "
        f"{store['add_one_ms']:.2f} ms, reopen {store['reopen_s']:.2f} s ({store['index']} index)"
    )
    return 0


@dataclass
class Workload:
    """What both sides store and search: `vectors` (N, D) unit rows, `queries` (Q, D) noisy unit copies of
    stored rows, and one text per vector."""

    vectors: np.ndarray
    queries: np.ndarray
    texts: list[str]

    @classmethod
    def synthetic(cls, n: int, dim: int, n_queries: int, data: str, seed: int) -> Workload:
        """`data` vectors as `latentmem bench recall` draws them, and queries near stored ones."""
        rng = np.random.default_rng(seed)
        vectors = synthetic_bank(n, dim, data, rng)
        noise = rng.standard_normal((n_queries, dim), dtype=np.float32) / np.sqrt(dim)
        queries = l2_normalize(vectors[rng.integers(0, n, n_queries)] + 0.5 * noise)
        return cls(vectors, queries, [f"memory number {i}" for i in range(n)])


def numpy_add(work: Workload, batch: int) -> tuple[np.ndarray, float]:
    """Brute force's "store": the rows appended to one array in batches; (matrix, seconds)."""
    n, dim = work.vectors.shape
    start = time.perf_counter()
    buffer, size = np.empty((batch, dim), dtype=np.float32), 0
    for lo in range(0, n, batch):
        rows = work.vectors[lo : lo + batch]
        if size + len(rows) > len(buffer):  # capacity doubling: amortised O(1) per row, as a list does
            grown = np.empty((max(2 * len(buffer), size + len(rows)), dim), dtype=np.float32)
            grown[:size] = buffer[:size]
            buffer = grown
        buffer[size : size + len(rows)] = rows
        size += len(rows)
    return buffer[:size], time.perf_counter() - start


def numpy_search(matrix: np.ndarray, query: np.ndarray, k: int) -> list[int]:
    """Brute force: the rows of the k largest inner products, best first."""
    sims = matrix @ query
    top = np.argpartition(-sims, k)[:k]
    return top[np.argsort(-sims[top])].tolist()


def timed(
    search: Callable[[np.ndarray], list[int]], queries: np.ndarray
) -> tuple[list[float], list[list[int]]]:
    """Each query's wall time (ms) and answer (rows of the workload)."""
    times, answers = [], []
    for q in queries:
        start = time.perf_counter()
        answers.append(search(q))
        times.append(1000 * (time.perf_counter() - start))
    return times, answers


def store_import(args: argparse.Namespace, work: Workload, directory: Path, embedder) -> tuple[float, dict]:
    """Bulk-import the workload into the store under test; (seconds, record id -> workload row)."""
    config = VectorMemoryConfig(index_kind=args.index, near_duplicate_threshold=None)
    row_of_id: dict[int, int] = {}
    with VectorMemory.open(directory, embedder=embedder, config=config) as mem:
        start = time.perf_counter()
        for lo in range(0, args.n, args.batch):
            chunk = slice(lo, lo + args.batch)
            results = mem.add_many(work.texts[chunk], user="bench", vectors=work.vectors[chunk])
            row_of_id.update((r.id, lo + j) for j, r in enumerate(results))
        return time.perf_counter() - start, row_of_id


def compare_search(
    args: argparse.Namespace, work: Workload, matrix: np.ndarray, stores: dict, row_of_id: dict
) -> dict:
    """numpy and each store (name -> open `VectorMemory`) on the same queries, `--repeats` times in turn."""

    def store_search(mem: VectorMemory) -> Callable[[np.ndarray], list[int]]:
        return lambda q: [row_of_id[h.record.id] for h in mem.search(q, user="bench", k=args.k)]

    searches = {"numpy": lambda q: numpy_search(matrix, q, args.k)}
    searches.update({name: store_search(mem) for name, mem in stores.items()})
    for mem in stores.values():
        mem.search(work.queries[0], user="bench", k=args.k)  # load the index outside the timing
    times: dict[str, list[float]] = {name: [] for name in searches}
    answers: dict[str, list[list[int]]] = {}
    for _ in range(args.repeats):
        for name, search in searches.items():
            ms, answers[name] = timed(search, work.queries)
            times[name] += ms
    out = {name: {"min_ms": min(ms), "median_ms": statistics.median(ms)} for name, ms in times.items()}
    for name, mem in stores.items():
        found = sum(len(set(a) & set(t)) for a, t in zip(answers[name], answers["numpy"], strict=True))
        out[name].update(recall_at_k=found / (args.k * len(work.queries)), index=mem.backend.index_backend)
        out[f"{name}_over_numpy"] = {
            stat: out[name][f"{stat}_ms"] / out["numpy"][f"{stat}_ms"] for stat in ("min", "median")
        }
    return out


def single_adds_and_reopen(args: argparse.Namespace, directory: Path, embedder) -> tuple[float, float]:
    """(ms per single add under the default duplicate rule, seconds to reopen and answer a first query)."""
    config = VectorMemoryConfig(index_kind=args.index)
    extra = np.random.default_rng(args.seed + 1).standard_normal(
        (args.single_adds, args.dim), dtype=np.float32
    )
    query = extra[0]
    with VectorMemory.open(directory, embedder=embedder, config=config) as mem:
        mem.search(query, user="bench", k=args.k)  # load the index outside the timing
        start = time.perf_counter()
        for i, vector in enumerate(extra):
            mem.add(f"single add {i}", user="bench", vector=vector)
        add_one_s = (time.perf_counter() - start) / max(args.single_adds, 1)
    start = time.perf_counter()
    with VectorMemory.open(directory, embedder=embedder, config=config) as reopened:
        reopened.search(query, user="bench", k=args.k)
    return 1000 * add_one_s, time.perf_counter() - start


def bench(args: argparse.Namespace, directory: Path) -> dict:
    """Both sides on one workload, in one process (the ratios are of the same run)."""
    import faiss

    faiss.omp_set_num_threads(args.faiss_threads)
    work = Workload.synthetic(args.n, args.dim, args.queries, args.data, args.seed)
    matrix, numpy_add_s = numpy_add(work, args.batch)
    embedder = HashingEmbedder(args.dim)  # names the vector space; the vectors are passed in precomputed
    add_s, row_of_id = store_import(args, work, directory, embedder)
    configs = {
        "exact": VectorMemoryConfig(index_kind="exact"),
        "approximate": VectorMemoryConfig(index_kind=args.index),
    }
    stores = {name: VectorMemory.open(directory, embedder=embedder, config=c) for name, c in configs.items()}
    try:
        search = compare_search(args, work, matrix, stores, row_of_id)
    finally:
        for mem in stores.values():
            mem.close()
    add_one_ms, reopen_s = single_adds_and_reopen(args, directory, embedder)
    tested = search["approximate"]
    return {
        "n": args.n,
        "dim": args.dim,
        "data": args.data,
        "k": args.k,
        "queries": args.queries,
        "repeats": args.repeats,
        "batch": args.batch,
        "faiss_threads": args.faiss_threads,
        "vectors": VECTORS_NOTE,
        "search": search,
        "embedded": {
            "add_per_s": args.n / add_s,
            "add_one_ms": add_one_ms,
            "search_ms": tested["median_ms"],
            "recall_at_k": tested["recall_at_k"],
            "index": tested["index"],
            "near_duplicate_threshold": VectorMemoryConfig().near_duplicate_threshold,
            "reopen_s": reopen_s,
        },
        "numpy": {"add_per_s": args.n / numpy_add_s, "search_ms": search["numpy"]["median_ms"]},
    }
