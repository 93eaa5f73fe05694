"""The `latentmem` command line. Each subcommand lives in its own module with a `register(subparsers)`."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from latentmem.errors import LatentMemError

# One module per subcommand; `register(subparsers)` adds it. Listed in the order `--help` shows them.
COMMAND_MODULES = (
    "latentmem.cli.models",
    "latentmem.cli.generate",
    "latentmem.cli.demo",
    "latentmem.cli.train",
    "latentmem.cli.bench",
    "latentmem.cli.memory",
    "latentmem.cli.compare",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latentmem",
        description="Memory for language models and agents: latent (MemGen), recall, retrieval, conversation.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except LatentMemError as exc:
        print(f"latentmem: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("latentmem: interrupted", file=sys.stderr)
        return 130
