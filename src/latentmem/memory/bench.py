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
- `add_one_ms`: adding single texts to the full store with the default near-duplicate check, as an agent
  does (one transaction, one search, one insert each).
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
    p.add_argument("--seed", type=int, default=0)
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
            f"store: recall@{result['k']} {store['recall_at_k']:.3f}, one add with the near-duplicate check "
            f"{store['add_one_ms']:.2f} ms, reopen {store['reopen_s']:.2f} s ({store['index']} index)"
        )
    return 0


def bench(args: argparse.Namespace, directory: Path) -> dict:
    import faiss

    faiss.omp_set_num_threads(args.faiss_threads)
    rng = np.random.default_rng(args.seed)
    vectors = rng.standard_normal((args.n, args.dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    picks = rng.integers(0, args.n, args.queries)
    queries = vectors[picks] + 0.05 * rng.standard_normal((args.queries, args.dim), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    texts = [f"memory number {i}" for i in range(args.n)]

    # --- brute-force numpy ---
    start = time.perf_counter()
    buffer, size = np.empty((args.batch, args.dim), dtype=np.float32), 0
    for lo in range(0, args.n, args.batch):
        batch = vectors[lo : lo + args.batch]
        if size + len(batch) > len(buffer):  # capacity doubling: amortised O(1) per row, as a list does
            grown = np.empty((max(2 * len(buffer), size + len(batch)), args.dim), dtype=np.float32)
            grown[:size] = buffer[:size]
            buffer = grown
        buffer[size : size + len(batch)] = batch
        size += len(batch)
    numpy_add_s = time.perf_counter() - start
    matrix = buffer[:size]
    truth, numpy_search_s = [], 0.0
    for q in queries:
        start = time.perf_counter()
        sims = matrix @ q
        top = np.argpartition(-sims, args.k)[: args.k]
        top = top[np.argsort(-sims[top])]
        numpy_search_s += time.perf_counter() - start
        truth.append(set(top.tolist()))

    # --- the embedded store ---
    import_config = VectorMemoryConfig(index_kind=args.index, near_duplicate_threshold=None)
    config = VectorMemoryConfig(index_kind=args.index)  # the default near-duplicate check, for single adds
    embedder = HashingEmbedder(args.dim)  # names the vector space; the vectors are passed in precomputed
    mem = VectorMemory.open(directory, embedder=embedder, config=import_config)
    row_of_id: dict[int, int] = {}
    start = time.perf_counter()
    for lo in range(0, args.n, args.batch):
        results = mem.add_many(
            texts[lo : lo + args.batch], user="bench", vectors=vectors[lo : lo + args.batch]
        )
        row_of_id.update((r.id, lo + j) for j, r in enumerate(results))
    store_add_s = time.perf_counter() - start
    store_search_s, hits_found = 0.0, 0
    for q, want in zip(queries, truth, strict=True):
        start = time.perf_counter()
        hits = mem.search(q, user="bench", k=args.k)
        store_search_s += time.perf_counter() - start
        hits_found += len({row_of_id[h.record.id] for h in hits} & want)
    index_backend = mem.backend.index_backend
    mem.close()
    extra = rng.standard_normal((args.single_adds, args.dim), dtype=np.float32)
    with VectorMemory.open(directory, embedder=embedder, config=config) as mem:
        mem.search(queries[0], user="bench", k=args.k)  # load the index outside the timing
        start = time.perf_counter()
        for i, vector in enumerate(extra):
            mem.add(f"single add {i}", user="bench", vector=vector)
        add_one_s = (time.perf_counter() - start) / max(args.single_adds, 1)
    start = time.perf_counter()
    with VectorMemory.open(directory, embedder=embedder, config=config) as reopened:
        reopened.search(queries[0], user="bench", k=args.k)
    reopen_s = time.perf_counter() - start

    return {
        "n": args.n,
        "dim": args.dim,
        "k": args.k,
        "queries": args.queries,
        "batch": args.batch,
        "faiss_threads": args.faiss_threads,
        "vectors": VECTORS_NOTE,
        "embedded": {
            "add_per_s": args.n / store_add_s,
            "add_one_ms": 1000 * add_one_s,
            "search_ms": 1000 * store_search_s / args.queries,
            "recall_at_k": hits_found / (args.k * args.queries),
            "index": index_backend,
            "near_duplicate_threshold": config.near_duplicate_threshold,
            "reopen_s": reopen_s,
        },
        "numpy": {
            "add_per_s": args.n / numpy_add_s,
            "search_ms": 1000 * numpy_search_s / args.queries,
        },
    }
