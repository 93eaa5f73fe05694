"""`latentmem bench TARGET ...`: benchmarks that time latentmem against a baseline in one run.

Each target lives in its own module with a `register(subparsers)`; results print as one JSON object with
`--json`. A target's module (most import torch) is imported only when that target is parsed, so that
`latentmem --help` and `latentmem bench --help` answer at once.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence
from typing import Any

from latentmem.cli.common import example
from latentmem.errors import ConfigError

# target -> (the module whose `register(targets)` adds it, the help `latentmem bench --help` lists without
# importing it; a test checks that it is the module's own).
BENCH_TARGETS: dict[str, tuple[str, str]] = {
    "generate": ("latentmem.memgen.bench", "MemGen generation vs plain generate vs re-prefill"),
    "train-step": ("latentmem.memgen.bench", "a weaver training step vs a plain LoRA-SFT step"),
    "init-harm": ("latentmem.memgen.harm", "answer NLL of the plain reasoner vs a fresh/warmed weaver"),
    "recall": ("latentmem.cli.recall_bench", "memory-bank top-k search: ms/query and recall@k vs exact"),
    "memory": ("latentmem.memory.bench", "embedded vector memory vs brute-force numpy (add/s, search ms)"),
    "serve": (
        "latentmem.serve.bench",
        "server throughput with concurrent streaming clients vs one request at a time",
    ),
    "agent-memory": (
        "latentmem.agent_memory.bench",
        "memory-manager policies: accuracy, recall, stale memories",
    ),
}
# Per target, the options that count something a benchmark divides by or indexes into (sizes, queries,
# repeats): 0 would fail deep inside the timing loop, so they are checked first. Options where 0 means
# "none" or "default" (--insertions, --latents, --nlist, --threads) are not listed.
COUNTS: dict[str, tuple[str, ...]] = {
    "generate": ("batch", "new_tokens", "repeats"),
    "train-step": ("batch", "answer_words", "repeats"),
    "init-harm": ("per_task",),
    "recall": ("bank_size", "dim", "queries", "k"),
    "memory": ("n", "dim", "queries", "k", "batch"),
    "serve": ("requests", "max_tokens"),
    "agent-memory": ("users", "k", "manager_k"),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench",
        help="benchmarks (ratios against a baseline, measured in one run)",
        epilog=example("latentmem bench memory --n 10000 --json", "latentmem bench TARGET --help"),
    )
    targets = p.add_subparsers(dest="target", metavar="TARGET", required=True, action=Targets)
    for name, (_, text) in BENCH_TARGETS.items():
        targets.add_parser(name, help=text)  # a placeholder until the target is parsed


class Targets(argparse._SubParsersAction):
    """The bench targets: each placeholder parser is replaced by its module's own when the target is parsed."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Sequence[Any],
        option_string: str | None = None,
    ) -> None:
        self.load(values[0])
        super().__call__(parser, namespace, values, option_string)

    def load(self, target: str) -> argparse.ArgumentParser | None:
        """Import `target`'s module and register its targets (once); its parser, None for an unknown name."""
        if target not in BENCH_TARGETS:
            return None  # argparse reports the invalid choice
        if self._name_parser_map[target].get_default("func") is None:  # still the placeholder
            module = BENCH_TARGETS[target][0]
            names = [n for n, (m, _) in BENCH_TARGETS.items() if m == module]
            for name in names:  # the module adds them all; argparse refuses a name twice
                del self._name_parser_map[name]
            listed = list(self._choices_actions)
            importlib.import_module(module).register(self)
            self._choices_actions[:] = listed  # `bench --help` keeps its order
            for name in names:
                if name not in self._name_parser_map:
                    raise RuntimeError(f"{module}.register added no bench target {name!r}")
                sub = self._name_parser_map[name]
                sub.epilog = sub.epilog or example(f"latentmem bench {name} --json")
                _require_counts(sub, COUNTS.get(name, ()))
        return self._name_parser_map[target]


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
            if value is not None and value < 1:  # None: the target picks its own default
                raise ConfigError(f"--{dest.replace('_', '-')}: must be >= 1, got {value}")
        return run(args)

    parser.set_defaults(func=checked)
