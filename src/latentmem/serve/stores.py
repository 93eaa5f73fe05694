"""The server's stores (vector memory, conversations) on one thread of their own, and where they live.

SQLite connections belong to the thread that opened them, and the embedded store is not shared between
threads; so the stores are opened on a single worker thread and every call runs there, in arrival order.
That worker is also what serialises writers inside this process (the embedded store's file lock
serialises them across processes).

`StoreLocation.parse` reads `--store`: a directory (the embedded store: SQLite + FAISS, with the keys
and sessions beside it), `qdrant://HOST[:PORT][/COLLECTION]` (a Qdrant server; port 6333, collection
`latentmem` by default) or `qdrant+local:///ABS/PATH` (the Qdrant client's local mode on disk: one
process, no server, what the tests use). Qdrant holds only the memories: the keys and the server-side
sessions stay in SQLite files in the state directory (`--state-dir`, by default `~/.latentmem/server`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import re
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

from latentmem.errors import ConfigError
from latentmem.memory.base import MemoryStoreError
from latentmem.memory.conversation import ConversationStore
from latentmem.memory.vector import VectorMemory

T = TypeVar("T")
CONVERSATIONS_FILE = "conversations.sqlite"
DEFAULT_STATE_DIR = "~/.latentmem/server"
QDRANT_PORT = 6333
QDRANT_COLLECTION = "latentmem"
_COLLECTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,255}")
_FORMS = "a directory, qdrant://HOST[:PORT][/COLLECTION] or qdrant+local:///ABS/PATH"


class StoreLocation(BaseModel):
    """Where the memories live: `kind` embedded (`path`: its directory), qdrant (`url` of the server,
    `collection`) or qdrant-local (`path`: the local-mode directory, `collection`)."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["embedded", "qdrant", "qdrant-local"]
    path: Path | None = None
    url: str | None = None
    collection: str = QDRANT_COLLECTION

    @classmethod
    def parse(cls, spec: str) -> StoreLocation:
        """`--store`'s value; `ConfigError` (one line) for a URL that is none of the three forms."""
        if "://" not in spec:
            return cls(kind="embedded", path=Path(spec).expanduser())

        def refuse(why: str) -> ConfigError:
            return ConfigError(f"--store {spec!r}: {why}; expected {_FORMS}")

        try:
            parts = urllib.parse.urlsplit(spec)
            port = parts.port
        except ValueError as exc:  # a port that is not a number, or out of range
            raise refuse(str(exc)) from None
        if parts.query or parts.fragment:
            raise refuse("a query or fragment means nothing here")
        if parts.scheme == "qdrant":
            if not parts.hostname or parts.username or parts.password:
                raise refuse("give the server's host (and no user or password)")
            collection = parts.path.removeprefix("/") or QDRANT_COLLECTION
            if not _COLLECTION_NAME.fullmatch(collection):
                raise refuse(f"collection {collection!r}: use letters, digits, '_' and '-'")
            host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
            return cls(kind="qdrant", url=f"http://{host}:{port or QDRANT_PORT}", collection=collection)
        if parts.scheme == "qdrant+local":
            if parts.netloc or not parts.path.startswith("/") or parts.path == "/":
                raise refuse("local mode takes an absolute directory after three slashes")
            return cls(kind="qdrant-local", path=Path(parts.path))
        raise refuse(f"unknown scheme {parts.scheme!r}")

    def state_dir(self, given: str | Path | None = None) -> Path:
        """Where the keys and sessions (SQLite) live: `given`, else beside an embedded store (its own
        directory), else `DEFAULT_STATE_DIR`."""
        if given is not None:
            return Path(given).expanduser()
        if self.kind == "embedded":
            assert self.path is not None
            return self.path
        return Path(DEFAULT_STATE_DIR).expanduser()

    def open_memory(self, embedder: str | None = None) -> VectorMemory:
        """The `VectorMemory` at this location (created when missing)."""
        if self.kind == "embedded":
            assert self.path is not None
            return VectorMemory.open(self.path, embedder=embedder)
        where = self.url or f"local mode in {self.path}"
        try:
            if self.kind == "qdrant":
                return VectorMemory.qdrant(url=self.url, collection=self.collection, embedder=embedder)
            return VectorMemory.qdrant(path=self.path, collection=self.collection, embedder=embedder)
        except MemoryStoreError as exc:  # the client is missing, the server unreachable or refusing
            raise MemoryStoreError(f"cannot use Qdrant at {where}: {exc}") from None


class Stores:
    """`memory` (a `VectorMemory`) and `conversations` (a `ConversationStore`); use them only through
    `run`, which executes a call on the stores' thread."""

    def __init__(self, open_memory: Callable[[], VectorMemory], conversations: str | Path) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="latentmem-store")
        self.memory, self.conversations = self._executor.submit(
            lambda: (open_memory(), ConversationStore(conversations))
        ).result()

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` on the stores' thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        def close_all() -> None:
            self.memory.close()
            self.conversations.close()

        self._executor.submit(close_all).result()
        self._executor.shutdown(wait=True)
