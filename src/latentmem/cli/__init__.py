"""The `latentmem` command line. Each subcommand lives in its own module with a `register(subparsers)`."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from latentmem import __version__
from latentmem.cli.common import Parser, example
from latentmem.errors import LatentMemError

# One module per subcommand; `register(subparsers)` adds it. Listed in the order `--help` shows them. Each
# module imports torch and the like only inside its command function, so that `--help` answers at once.
COMMAND_MODULES = (
    "latentmem.cli.models",
    "latentmem.cli.generate",
    "latentmem.cli.demo",
    "latentmem.cli.train",
    "latentmem.cli.bench",
    "latentmem.cli.memory",
    "latentmem.cli.compare",
    "latentmem.cli.analyze",
    "latentmem.cli.serve",
    "latentmem.cli.mcp",
)


def build_parser() -> argparse.ArgumentParser:
    """The `latentmem` parser with every subcommand registered."""
    parser = Parser(
        prog="latentmem",
        description="Memory for language models and agents: latent (MemGen), recall, retrieval, conversation.",
        epilog=example('latentmem generate --model tiny-qwen2 "What is 2+3?"', "latentmem COMMAND --help"),
    )
    parser.add_argument("--version", action="version", version=f"latentmem {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line `argv` (default: `sys.argv[1:]`); the exit status."""
    parser = build_parser()
    # Config overrides (`key.sub=value` or `--key.sub=value`) may stand anywhere after the subcommand;
    # commands that take them declare `overrides` and receive every token argparse does not know.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides"):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    try:
        return int(args.func(args) or 0)
    except LatentMemError as exc:
        print(f"latentmem: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("latentmem: interrupted", file=sys.stderr)
        return 130
