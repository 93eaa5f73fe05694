"""`latentmem memory add|search|list|delete --store DIR`: the embedded vector memory from the shell.

latentmem memory add --store DIR --user alice "Alice is allergic to peanuts" --meta topic=health
latentmem memory add --store DIR --user alice "Alice is 31" --meta zip=01234 --meta-json age=31
latentmem memory search --store DIR --user alice --json "what can't alice eat?"
latentmem memory list --store DIR --user alice
latentmem memory delete --store DIR --user alice 3 4
latentmem memory add --store DIR --user alice --near-duplicate-threshold 0.98 "Alice likes tea"
latentmem memory add --store DIR --user alice --file facts.txt      (one memory per line; - reads stdin)
echo "Alice moved to Lyon" | latentmem memory add --store DIR --user alice -
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from latentmem.cli.common import example
from latentmem.memory.base import MemoryInputError, MemoryRecord

if TYPE_CHECKING:
    from latentmem.memory.vector import VectorMemory


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "memory",
        help="add, search, list and delete text memories in a store",
        epilog=example('latentmem memory add --store mem --user alice "Alice is allergic to peanuts"'),
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    add = actions.add_parser(
        "add",
        help="store texts (duplicates return the existing id)",
        epilog=example(
            'latentmem memory add --store mem --user alice "Alice is allergic to peanuts" --meta topic=health',
            "latentmem memory add --store mem --user alice --file facts.txt",
        ),
    )
    _store_args(add)
    add.add_argument(
        "text", nargs="*", help="texts, each one memory; - reads one memory from stdin (default: none)"
    )
    add.add_argument(
        "--file",
        action="append",
        default=[],
        metavar="PATH",
        help="a UTF-8 text file, one memory per non-empty line; - is stdin (repeatable; default: none)",
    )
    add.add_argument(
        "--meta",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="metadata, the value kept as a string (repeatable; default: none)",
    )
    add.add_argument(
        "--meta-json",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="metadata whose value is JSON: n=3, ok=true, x=null, s='\"a\"' (repeatable; default: none)",
    )
    add.add_argument(
        "--near-duplicate-threshold",
        type=float,
        default=None,
        metavar="X",
        help="also skip texts whose cosine with a record of the scope is >= X (default: exact duplicates "
        "only; a similar text is often a changed fact, e.g. a negation or a new number)",
    )
    add.set_defaults(func=run_add)

    search = actions.add_parser(
        "search",
        help="the memories most similar to a query",
        epilog=example('latentmem memory search --store mem --user alice -k 3 "what can\'t alice eat?"'),
    )
    _store_args(search)
    search.add_argument("query", help="the text to search for")
    search.add_argument("-k", "--k", type=int, default=5, help="how many results")
    _filter_args(search)
    search.set_defaults(func=run_search)

    list_ = actions.add_parser(
        "list",
        help="the memories in a scope, oldest first (loads no embedder)",
        epilog=example("latentmem memory list --store mem --user alice --limit 10"),
    )
    _store_args(list_)
    list_.add_argument("--limit", type=int, default=None, help="at most this many (default: all)")
    _filter_args(list_)
    list_.set_defaults(func=run_list)

    delete = actions.add_parser(
        "delete",
        help="remove memories by id (of the scope given; loads no embedder)",
        epilog=example("latentmem memory delete --store mem --user alice 3 4"),
    )
    _store_args(delete)
    delete.add_argument("ids", nargs="+", type=int, metavar="ID", help="ids, as add and list print them")
    delete.set_defaults(func=run_delete)


def _store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", required=True, metavar="DIR", help="the store directory (created when missing)")
    p.add_argument(
        "--embedder",
        default=None,
        help="minilm, hash[:DIM], hidden:MODEL or a sentence-transformers dir "
        "(default: the store's own; minilm for a new store)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--user", help="the scope's user (default: none)")
    p.add_argument("--agent", help="the scope's agent (default: none)")
    p.add_argument("--session", help="the scope's session (default: none)")


def _filter_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="metadata equality, to a string (repeatable; default: none)",
    )
    p.add_argument(
        "--filter-json",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="metadata equality to a JSON value, e.g. n=3, as --meta-json stored it (repeatable; default: none)",
    )


def _pairs(items: list[str], flag: str, *, as_json: bool = False) -> dict[str, Any]:
    """`["k=v", ...]` -> {k: v}. Values stay strings: guessing types (YAML reads `01234` as 668, `NO` as
    false, `1.10` as 1.1) would change what the user typed. `as_json` parses them as JSON scalars, for the
    `--*-json` flags that ask for it."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise MemoryInputError(f"{flag} {item!r}: expected KEY=VALUE")
        if not as_json:
            out[key] = raw
            continue
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            raise MemoryInputError(
                f"{flag} {item!r}: {raw!r} is not JSON; quote a string as '\"text\"', or use "
                f"{flag.removesuffix('-json')}"
            ) from None
        if value is not None and not isinstance(value, str | int | float | bool):
            raise MemoryInputError(f"{flag} {item!r}: expected a JSON number, string, true, false or null")
        out[key] = value
    return out


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    return {**_pairs(args.filter, "--filter"), **_pairs(args.filter_json, "--filter-json", as_json=True)}


def _open(args: argparse.Namespace) -> VectorMemory:
    from latentmem.memory.config import VectorMemoryConfig
    from latentmem.memory.vector import VectorMemory

    config = VectorMemoryConfig(near_duplicate_threshold=getattr(args, "near_duplicate_threshold", None))
    return VectorMemory.open(args.store, embedder=args.embedder, config=config)


def _scope(args: argparse.Namespace) -> dict[str, str | None]:
    return {"user": args.user, "agent": args.agent, "session": args.session}


def _line(record: MemoryRecord, score: float | None = None) -> str:
    scope = " ".join(f"{k}={v}" for k, v in record.scope.fields().items())
    head = f"[{record.id}]" + (f" {score:.3f}" if score is not None else "")
    meta = f" {json.dumps(record.metadata)}" if record.metadata else ""
    return f"{head} ({scope}) {record.text}{meta}"


def _read(path: str) -> str:
    """The text of `path` (`-`: stdin), as one-line errors for a missing or non-UTF-8 file."""
    try:
        return sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise MemoryInputError(f"--file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise MemoryInputError(f"{'stdin' if path == '-' else path}: not UTF-8 text") from None


def _texts(args: argparse.Namespace) -> list[str]:
    """The memories to add: each text (`-`: all of stdin, one memory), then each `--file`'s lines."""
    texts = [_read("-").strip() if t == "-" else t for t in args.text]
    for path in args.file:
        texts += [line.strip() for line in _read(path).splitlines() if line.strip()]
    if not texts:
        raise MemoryInputError("nothing to add: give a text, - (read stdin) or --file PATH")
    return texts


def run_add(args: argparse.Namespace) -> int:
    metadata = {**_pairs(args.meta, "--meta"), **_pairs(args.meta_json, "--meta-json", as_json=True)}
    texts = _texts(args)
    with _open(args) as mem:
        results = mem.add_many(texts, **_scope(args), metadatas=[metadata] * len(texts))
    if args.json:
        print(json.dumps([{"event": r.event, **r.record.to_dict()} for r in results]))
    else:
        for r in results:
            print(f"{r.event} {_line(r.record)}")
    return 0


def run_search(args: argparse.Namespace) -> int:
    with _open(args) as mem:
        hits = mem.search(args.query, **_scope(args), filters=_filters(args), k=args.k)
    if args.json:
        print(json.dumps([{"score": h.score, **h.record.to_dict()} for h in hits]))
    else:
        for h in hits:
            print(_line(h.record, h.score))
    return 0


def run_list(args: argparse.Namespace) -> int:
    with _open(args) as mem:
        records = mem.list(**_scope(args), filters=_filters(args), limit=args.limit)
    if args.json:
        print(json.dumps([r.to_dict() for r in records]))
    else:
        for r in records:
            print(_line(r))
    return 0


def run_delete(args: argparse.Namespace) -> int:
    with _open(args) as mem:
        for memory_id in args.ids:  # every id must exist in the scope before any is deleted
            mem.get(memory_id, **_scope(args))
        for memory_id in args.ids:
            mem.delete(memory_id, **_scope(args))
    if args.json:
        print(json.dumps({"deleted": args.ids}))
    else:
        print(f"deleted {len(args.ids)} memor{'y' if len(args.ids) == 1 else 'ies'}")
    return 0
