"""`latentmem mcp --store DIR|qdrant://...`: the memory store as MCP tools over stdio, for agent hosts.

latentmem mcp --store ~/.latentmem/memory --user me
latentmem mcp --store qdrant://localhost:6333/memories --user me
"""

from __future__ import annotations

import argparse

from latentmem.cli.common import example
from latentmem.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "mcp",
        help="memory tools (add, search, list, delete) over MCP stdio",
        epilog=example("latentmem mcp --store ~/.latentmem/memory --user me"),
    )
    p.add_argument(
        "--store",
        required=True,
        metavar="DIR|URL",
        help="the memory store: a directory, qdrant://HOST[:PORT][/COLLECTION] or qdrant+local:///ABS/PATH "
        "(as `latentmem serve --store`)",
    )
    p.add_argument(
        "--embedder", default=None, help="the store's embedder (default: its own; minilm when new)"
    )
    p.add_argument("--user", default=None, help="the scope's user when a tool call names none")
    p.add_argument("--agent", default=None, help="the scope's agent when a tool call names none")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        from latentmem.serve.mcp_server import memory_server
    except ImportError as exc:
        raise ConfigError(
            f"`latentmem mcp` needs the serve extra ({exc.name} is missing): pip install 'latentmem[serve]'"
        ) from None
    from latentmem.serve.stores import StoreLocation

    location = StoreLocation.parse(args.store)  # a malformed URL: one line, exit 2
    # stdout is the protocol's channel: nothing else may print there.
    with location.open_memory(embedder=args.embedder) as memory:
        memory_server(memory, user=args.user, agent=args.agent).run("stdio")
    return 0
