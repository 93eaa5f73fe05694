"""`latentmem serve`: the HTTP server; `latentmem serve keys create|list|revoke`: its API keys.

latentmem serve --model tiny-qwen2 --store ~/.latentmem/server
latentmem serve --model smollm2-135m-instruct --memgen weaver=runs/sft/final --recall facts=runs/recall
latentmem serve --model tiny-qwen2 --store qdrant://localhost:6333/memories --state-dir ~/.latentmem/server
latentmem serve keys create --store ~/.latentmem/server --user alice [--agent a1] [--admin]
latentmem serve keys list --store ~/.latentmem/server
latentmem serve keys revoke --store ~/.latentmem/server KEY_ID
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from latentmem.cli.common import DTYPE_NAMES, example
from latentmem.errors import ConfigError

DEFAULT_STORE = "~/.latentmem/server"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve chat with memory, the memory API and keys over HTTP",
        epilog=example("latentmem serve --model tiny-qwen2 --store ~/.latentmem/server --port 8000"),
    )
    p.add_argument("--model", default="smollm2-135m-instruct", help="the reasoner: a model name or HF dir")
    p.add_argument("--name", default=None, help="the reasoner's name in the API (default: --model)")
    p.add_argument(
        "--memgen",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="a saved MemGen weaver (repeatable; default: none)",
    )
    p.add_argument(
        "--recall",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="a recall memory run folder (repeatable; default: none)",
    )
    _store_arg(p)
    p.add_argument(
        "--embedder", default=None, help="the store's embedder (default: its own; minilm when new)"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1); others need API keys")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--dtype", default="float32", choices=DTYPE_NAMES, help="weights dtype")
    p.add_argument("--device", default="cpu", help="torch device of the models, e.g. cuda")
    p.add_argument("--seed", type=int, default=0, help="weights seed of the tiny models (0)")
    p.add_argument("--max-body-bytes", type=int, default=1_000_000, help="larger bodies get 413 (1000000)")
    p.add_argument("--max-tokens", type=int, default=256, help="completion length when a request gives none")
    p.add_argument("--session-turns", type=int, default=20, help="recent session turns the model sees (20)")
    p.add_argument(
        "--max-batch",
        type=int,
        default=16,
        help="requests the reasoner decodes together (16; 1: one at a time)",
    )
    p.add_argument(
        "--max-queue", type=int, default=64, help="requests that may wait for a row; more get 429 (64)"
    )
    p.add_argument(
        "--engine",
        choices=("process", "thread"),
        default="process",
        help="where the models decode: a process of their own, beside the HTTP server's (process), or "
        "a thread of the server's process (thread: one process, but decoding and HTTP take turns on "
        "Python's interpreter lock)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads of the models (default: with --engine process every core but one, which "
        "the HTTP server keeps; with thread, torch's default)",
    )
    p.set_defaults(func=run_serve)

    actions = p.add_subparsers(dest="action", metavar="keys")
    keys = actions.add_parser(
        "keys",
        help="create, list and revoke API keys",
        epilog=example("latentmem serve keys create --store ~/.latentmem/server --user alice"),
    )
    key_actions = keys.add_subparsers(dest="key_action", metavar="ACTION", required=True)
    create = key_actions.add_parser(
        "create",
        help="a new key, printed once",
        epilog=example("latentmem serve keys create --store ~/.latentmem/server --user alice --agent a1"),
    )
    _store_arg(create)
    create.add_argument("--user", help="the user the key is bound to (required unless --admin)")
    create.add_argument("--agent", help="also bind the key to this agent (default: every agent of the user)")
    create.add_argument("--admin", action="store_true", help="manages keys and reads any scope")
    create.add_argument("--json", action="store_true", help="print the key and its fields as JSON")
    create.set_defaults(func=run_keys_create)
    list_ = key_actions.add_parser(
        "list",
        help="every key (never a secret)",
        epilog=example("latentmem serve keys list --store ~/.latentmem/server --json"),
    )
    _store_arg(list_)
    list_.add_argument("--json", action="store_true", help="print JSON")
    list_.set_defaults(func=run_keys_list)
    revoke = key_actions.add_parser(
        "revoke",
        help="revoke a key by id",
        epilog=example("latentmem serve keys revoke --store ~/.latentmem/server KEY_ID"),
    )
    _store_arg(revoke)
    revoke.add_argument("key_id", help="the key's id, as `keys list` shows it")
    revoke.set_defaults(func=run_keys_revoke)


def _store_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--store",
        default=DEFAULT_STORE,
        metavar="DIR|URL",
        help=f"the memories: a directory (with sessions and keys beside them; {DEFAULT_STORE}), "
        "qdrant://HOST[:PORT][/COLLECTION] (a Qdrant server) or qdrant+local:///ABS/PATH (Qdrant's local mode)",
    )
    p.add_argument(
        "--state-dir",
        default=None,
        metavar="DIR",
        help=f"where keys and sessions (SQLite) live (default: the --store directory; {DEFAULT_STORE} "
        "for a Qdrant store)",
    )


def _pairs(items: list[str], flag: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for item in items:
        name, sep, directory = item.partition("=")
        if not sep or not name or not directory:
            raise ConfigError(f"{flag} {item!r}: expected NAME=DIR")
        out[name] = Path(directory).expanduser()
    return out


def _state_dir(args: argparse.Namespace) -> Path:
    from latentmem.serve.stores import StoreLocation

    return StoreLocation.parse(args.store).state_dir(args.state_dir)


def _keys(args: argparse.Namespace):
    from latentmem.serve.keys import KEYS_FILE, KeyStore

    return KeyStore(_state_dir(args) / KEYS_FILE)


def _backend_options(args: argparse.Namespace) -> dict:
    return {
        "max_batch": args.max_batch,
        "max_queue": args.max_queue,
        "name": args.name,
        "memgen": _pairs(args.memgen, "--memgen"),
        "recall": _pairs(args.recall, "--recall"),
        "dtype": args.dtype,
        "device": args.device,
        "seed": args.seed,
    }


def run_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from latentmem.serve.app import ServeSettings, create_app, is_loopback
        from latentmem.serve.batching import BatchingBackend
        from latentmem.serve.engine import EngineBackend
        from latentmem.serve.stores import CONVERSATIONS_FILE, StoreLocation, Stores
    except ImportError as exc:
        raise ConfigError(
            f"serving needs the serve extra ({exc.name} is missing): pip install 'latentmem[serve]'"
        ) from None

    location = StoreLocation.parse(args.store)  # a malformed URL fails here, before any model loads
    state = location.state_dir(args.state_dir)
    keys = _keys(args)
    if not keys.has_active():
        if not is_loopback(args.host):
            raise ConfigError(
                f"refusing to serve on {args.host} without API keys: anyone who can reach it could read and "
                f"write every memory. Create one first (latentmem serve keys create --store {args.store} "
                "--user NAME), or bind a loopback address (--host 127.0.0.1)"
            )
        print(
            f"latentmem serve: no API keys in {state}, so every request is trusted; listening on loopback only "
            f"({args.host}). Create keys with `latentmem serve keys create --store {args.store} --user NAME`.",
            file=sys.stderr,
        )
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads {args.threads}: must be >= 1")
    if args.engine == "process":
        backend = EngineBackend(args.model, threads=args.threads, **_backend_options(args))
    else:
        if args.threads is not None:
            import torch

            torch.set_num_threads(args.threads)
        backend = BatchingBackend.load(args.model, **_backend_options(args))
    stores = Stores(lambda: location.open_memory(args.embedder), state / CONVERSATIONS_FILE)
    settings = ServeSettings(
        host=args.host,
        max_body_bytes=args.max_body_bytes,
        default_max_tokens=args.max_tokens,
        session_turns=args.session_turns,
    )
    # On SIGTERM (or Ctrl-C) uvicorn stops accepting connections and waits for the open ones: every
    # in-flight reply, and the memory write after it, completes. It then re-raises the signal to the
    # handler that was there before it; this one ignores it, so that the `finally` below runs: the backend
    # finishes whatever it still holds and the stores close before the process exits (with status 0).
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        uvicorn.run(create_app(backend, stores, keys, settings), host=args.host, port=args.port)
    finally:
        signal.signal(signal.SIGTERM, previous)
        backend.close()
        stores.close()
        keys.close()
    return 0


def run_keys_create(args: argparse.Namespace) -> int:
    keys = _keys(args)
    secret, key = keys.create(user=args.user, agent=args.agent, admin=args.admin)
    if args.json:
        print(json.dumps({"key": secret, **key.to_dict()}))
    else:
        print(secret)
        print(f"(key {key.id}; shown once, store it now: only its hash is kept)", file=sys.stderr)
    return 0


def run_keys_list(args: argparse.Namespace) -> int:
    keys = _keys(args).list()
    if args.json:
        print(json.dumps([k.to_dict() for k in keys]))
        return 0
    for k in keys:
        bound = "admin" if k.admin else f"user={k.user}" + (f" agent={k.agent}" if k.agent else "")
        print(f"{k.id}  {bound}  {'revoked' if k.revoked_at else 'active'}")
    return 0


def run_keys_revoke(args: argparse.Namespace) -> int:
    key = _keys(args).revoke(args.key_id)
    print(f"revoked {key.id}")
    return 0
