"""`latentmem bench recall`: the memory bank's top-k search at scale, against exact search.

    latentmem bench recall --bank-size 1000000 --dim 576 --json

Builds a bank of synthetic unit vectors, times top-k queries one at a time (batch 1, as a `<recall>` step
issues them) and measures recall@k of the approximate index against exact inner-product search.

Data (`--data`): `clustered` (default) draws vectors around `sqrt(N)` random centres, like sentence or
hidden-state embeddings, which form topical clusters; queries are bank vectors plus noise, like a
`<recall>` query near its target memory. `uniform` draws i.i.d. Gaussian directions: no structure at all,
the worst case for any approximate index (reported honestly, it needs a large `--nprobe`).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from latentmem.cli.common import example
from latentmem.vector_index import VectorIndex, l2_normalize, synthetic_bank


def register(targets: argparse._SubParsersAction) -> None:
    p = targets.add_parser(
        "recall",
        help="memory-bank top-k search: ms/query and recall@k vs exact",
        epilog=example("latentmem bench recall --bank-size 1000000 --dim 576 --json"),
    )
    p.add_argument("--bank-size", type=int, default=100_000, help="memory vectors in the bank")
    p.add_argument("--dim", type=int, default=576, help="vector dimension (576, SmolLM2's hidden size)")
    p.add_argument("--index", default="ivf", choices=["ivf", "hnsw", "flat", "exact"], help="index kind")
    p.add_argument("--queries", type=int, default=200, help="timed queries, one at a time (200)")
    p.add_argument("--k", type=int, default=10, help="results per query")
    p.add_argument("--nlist", type=int, default=0, help="IVF cells (0 = about sqrt(bank size))")
    p.add_argument("--nprobe", type=int, default=16, help="IVF cells scanned per query (16)")
    p.add_argument("--ef-search", type=int, default=64, help="HNSW search breadth (64)")
    p.add_argument(
        "--data", default="clustered", choices=["clustered", "uniform"], help="synthetic bank (see above)"
    )
    p.add_argument("--threads", type=int, default=0, help="FAISS threads (0 = FAISS's default)")
    p.add_argument("--seed", type=int, default=0, help="draws the bank and the queries")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import faiss

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    data = synthetic_bank(args.bank_size, args.dim, args.data, rng)
    targets = rng.integers(0, args.bank_size, args.queries)
    queries = l2_normalize(
        data[targets] + 0.5 * rng.standard_normal((args.queries, args.dim)) / np.sqrt(args.dim)
    )
    data_s = time.perf_counter() - t0

    index = VectorIndex(
        args.dim, args.index, ivf_nlist=args.nlist, ivf_nprobe=args.nprobe, ef_search=args.ef_search
    )
    t0 = time.perf_counter()
    index.add(np.arange(args.bank_size), data)
    build_s = time.perf_counter() - t0

    index.search(queries[:5], args.k)  # warm-up
    times = []
    found = np.empty((args.queries, args.k), dtype=np.int64)
    for q in range(args.queries):
        t = time.perf_counter()
        found[q] = index.search(queries[q : q + 1], args.k)[1][0]
        times.append(time.perf_counter() - t)

    truth = faiss.IndexFlatIP(args.dim)
    truth.add(data)
    _, exact = truth.search(queries, args.k)
    recall = float(np.mean([len(set(f) & set(e)) / args.k for f, e in zip(found, exact, strict=True)]))
    result = {
        "bank_size": args.bank_size,
        "dim": args.dim,
        "index": args.index,
        "data": args.data,
        "k": args.k,
        "queries": args.queries,
        "ms_per_query": round(1000 * float(np.mean(times)), 3),
        "ms_per_query_p95": round(1000 * float(np.percentile(times, 95)), 3),
        "recall_at_10_vs_exact" if args.k == 10 else f"recall_at_{args.k}_vs_exact": round(recall, 4),
        "build_seconds": round(build_s, 2),
        "data_seconds": round(data_s, 2),
        "faiss_threads": faiss.omp_get_max_threads(),
        **({"nlist": index.ivf_nlist, "nprobe": args.nprobe} if args.index == "ivf" else {}),
        **({"hnsw_m": index.hnsw_m, "ef_search": args.ef_search} if args.index == "hnsw" else {}),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>24}: {value}")
    return 0
