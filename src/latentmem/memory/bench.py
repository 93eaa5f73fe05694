"""`latentmem bench memory`: the embedded vector store against brute-force numpy, in one run.

Vectors are precomputed random unit vectors (queries are noisy copies of stored ones), so the numbers
measure storage and search, not the embedder: MiniLM embedded about 65 short texts per second on the
shared two-core machine of the README's table, so embedding 100k texts would take ~25 minutes and
dominate both sides equally.

- `add_per_s`: records stored per second, added in batches of `--batch` (a bulk import). The store commits
  each batch to SQLite (texts, scope, metadata, vectors), checks exact duplicates and updates its index
  (and now and then its index file); numpy appends rows to an array in memory, durable nowhere. The bulk
  import skips the near-duplicate check, which costs one search per added text: O(N) each with an exact
  index, so O(N^2) for a whole import.
- `add_one_ms`: adding single texts to the full store under the default duplicate rule (exact duplicates
  only), as an agent does (one transaction, one duplicate look-up, one insert each).
- `search_ms`: mean wall time of one top-k query. The store's includes the scope check and fetching the k
  records from SQLite; numpy's is a matrix-vector product and a partial sort over all vectors.
- `recall_at_k`: how many of numpy's exact top-k the store returns (1 with the exact `flat` index; below
  1 with `--index hnsw`).
- `reopen_s`: opening the store again and answering a first query (the index loads from its latest
  snapshot file and replays the writes logged after it).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from latentmem.memory.config import VectorMemoryConfig
from latentmem.memory.embedders import HashingEmbedder
from latentmem.memory.vector import VectorMemory

VECTORS_NOTE = "precomputed random unit vectors; embedding time excluded"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("memory", help="embedded vector memory vs brute-force numpy (add/s, search ms)")
    p.add_argument("--n", type=int, default=100_000, help="records to add (100000)")
    p.add_argument("--dim", type=int, default=384, help="vector dimension (384, MiniLM's)")
    p.add_argument("--queries", type=int, default=200, help="search queries timed (200)")
    p.add_argument("--k", type=int, default=10, help="results per query (10)")
    p.add_argument("--batch", type=int, default=1000, help="records per add call (1000)")
    p.add_argument(
        "--index", default="flat", choices=["auto", "exact", "flat", "hnsw"], help="index kind (flat)"
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
    else:
        print(f"n={result['n']} dim={result['dim']} k={result['k']} ({result['vectors']})")
        for side in ("embedded", "numpy"):
            r = result[side]
            print(f"{side:>9}: add {r['add_per_s']:>10.0f}/s   search {r['search_ms']:8.3f} ms")
        store = result["embedded"]
        print(
            f"store: recall@{result['k']} {store['recall_at_k']:.3f}, one add "
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
    def random(cls, n: int, dim: int, n_queries: int, seed: int) -> Workload:
        rng = np.random.default_rng(seed)
        vectors = rng.standard_normal((n, dim), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        picks = rng.integers(0, n, n_queries)
        queries = vectors[picks] + 0.05 * rng.standard_normal((n_queries, dim), dtype=np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        return cls(vectors, queries, [f"memory number {i}" for i in range(n)])


def bench_numpy(work: Workload, batch: int, k: int) -> tuple[float, float, list[set[int]]]:
    """Brute force: (add seconds, total search seconds, each query's exact top-k rows)."""
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
    add_s = time.perf_counter() - start
    matrix = buffer[:size]
    truth, search_s = [], 0.0
    for q in work.queries:
        start = time.perf_counter()
        sims = matrix @ q
        top = np.argpartition(-sims, k)[:k]
        top = top[np.argsort(-sims[top])]
        search_s += time.perf_counter() - start
        truth.append(set(top.tolist()))
    return add_s, search_s, truth


def bench_store(args: argparse.Namespace, work: Workload, truth: list[set[int]], directory: Path) -> dict:
    """The embedded store on the same workload: bulk import, search (and recall against `truth`), single
    adds under the default duplicate rule, reopen."""
    import_config = VectorMemoryConfig(index_kind=args.index, near_duplicate_threshold=None)
    config = VectorMemoryConfig(index_kind=args.index)  # the default duplicate rule, for single adds
    embedder = HashingEmbedder(args.dim)  # names the vector space; the vectors are passed in precomputed
    row_of_id: dict[int, int] = {}
    with VectorMemory.open(directory, embedder=embedder, config=import_config) as mem:
        start = time.perf_counter()
        for lo in range(0, args.n, args.batch):
            chunk = slice(lo, lo + args.batch)
            results = mem.add_many(work.texts[chunk], user="bench", vectors=work.vectors[chunk])
            row_of_id.update((r.id, lo + j) for j, r in enumerate(results))
        add_s = time.perf_counter() - start
        search_s, found = 0.0, 0
        for q, want in zip(work.queries, truth, strict=True):
            start = time.perf_counter()
            hits = mem.search(q, user="bench", k=args.k)
            search_s += time.perf_counter() - start
            found += len({row_of_id[h.record.id] for h in hits} & want)
        index_backend = mem.backend.index_backend
    extra = np.random.default_rng(args.seed + 1).standard_normal(
        (args.single_adds, args.dim), dtype=np.float32
    )
    with VectorMemory.open(directory, embedder=embedder, config=config) as mem:
        mem.search(work.queries[0], user="bench", k=args.k)  # load the index outside the timing
        start = time.perf_counter()
        for i, vector in enumerate(extra):
            mem.add(f"single add {i}", user="bench", vector=vector)
        add_one_s = (time.perf_counter() - start) / max(args.single_adds, 1)
    start = time.perf_counter()
    with VectorMemory.open(directory, embedder=embedder, config=config) as reopened:
        reopened.search(work.queries[0], user="bench", k=args.k)
    return {
        "add_per_s": args.n / add_s,
        "add_one_ms": 1000 * add_one_s,
        "search_ms": 1000 * search_s / args.queries,
        "recall_at_k": found / (args.k * args.queries),
        "index": index_backend,
        "near_duplicate_threshold": config.near_duplicate_threshold,
        "reopen_s": time.perf_counter() - start,
    }


def bench(args: argparse.Namespace, directory: Path) -> dict:
    """Both sides on one workload, in one process (the numbers are ratios of the same run)."""
    import faiss

    faiss.omp_set_num_threads(args.faiss_threads)
    work = Workload.random(args.n, args.dim, args.queries, args.seed)
    numpy_add_s, numpy_search_s, truth = bench_numpy(work, args.batch, args.k)
    return {
        "n": args.n,
        "dim": args.dim,
        "k": args.k,
        "queries": args.queries,
        "batch": args.batch,
        "faiss_threads": args.faiss_threads,
        "vectors": VECTORS_NOTE,
        "embedded": bench_store(args, work, truth, directory),
        "numpy": {"add_per_s": args.n / numpy_add_s, "search_ms": 1000 * numpy_search_s / args.queries},
    }
