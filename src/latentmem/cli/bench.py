"""`latentmem bench TARGET ...`: benchmarks that time latentmem against a baseline in one run.

Each target lives in its own module with a `register(subparsers)`; results print as one JSON object with
`--json`.
"""

from __future__ import annotations

import argparse
import importlib

BENCH_MODULES: tuple[str, ...] = (
    "latentmem.memgen.bench",
    "latentmem.cli.recall_bench",
    "latentmem.memory.bench",
)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bench", help="benchmarks (ratios against a baseline, measured in one run)")
    targets = p.add_subparsers(dest="target", metavar="TARGET", required=True)
    for name in BENCH_MODULES:
        importlib.import_module(name).register(targets)
