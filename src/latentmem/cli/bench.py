"""`latentmem bench TARGET ...`: benchmarks that time latentmem against a baseline in one run.

Each target lives in its own module with a `register(subparsers)`; results print as one JSON object with
`--json`.
"""

from __future__ import annotations

import argparse
import importlib

from latentmem.errors import ConfigError

BENCH_MODULES: tuple[str, ...] = (
    "latentmem.memgen.bench",
    "latentmem.cli.recall_bench",
    "latentmem.memory.bench",
)
# Per target, the options that count something a benchmark divides by or indexes into (sizes, queries,
# repeats): 0 would fail deep inside the timing loop, so they are checked first. Options where 0 means
# "none" or "default" (--insertions, --latents, --nlist, --threads) are not listed.
COUNTS: dict[str, tuple[str, ...]] = {
    "generate": ("batch", "new_tokens", "repeats"),
    "train-step": ("batch", "answer_words", "repeats"),
    "recall": ("bank_size", "dim", "queries", "k"),
    "memory": ("n", "dim", "queries", "k", "batch"),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bench", help="benchmarks (ratios against a baseline, measured in one run)")
    targets = p.add_subparsers(dest="target", metavar="TARGET", required=True)
    for name in BENCH_MODULES:
        importlib.import_module(name).register(targets)
    for target, parser in targets.choices.items():
        _require_counts(parser, COUNTS.get(target, ()))


def _require_counts(parser: argparse.ArgumentParser, counts: tuple[str, ...]) -> None:
    """Make `parser`'s command refuse a count option (by dest) below 1 with a one-line `ConfigError`."""
    dests = {a.dest for a in parser._actions}
    missing = sorted(set(counts) - dests)
    if missing:  # a renamed option would otherwise go unchecked
        raise RuntimeError(f"bench {parser.prog}: COUNTS names unknown options {missing}")
    run = parser.get_default("func")

    def checked(args: argparse.Namespace) -> int:
        for dest in counts:
            value = getattr(args, dest)
            if value < 1:
                raise ConfigError(f"--{dest.replace('_', '-')}: must be >= 1, got {value}")
        return run(args)

    parser.set_defaults(func=checked)
