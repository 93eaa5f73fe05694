"""The server's stores (vector memory, conversations) on one thread of their own.

SQLite connections belong to the thread that opened them, and the embedded store is not shared between
threads; so the stores are opened on a single worker thread and every call runs there, in arrival order.
That worker is also what serialises writers inside this process (the embedded store's file lock
serialises them across processes).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from latentmem.memory.conversation import ConversationStore
from latentmem.memory.vector import VectorMemory

T = TypeVar("T")
CONVERSATIONS_FILE = "conversations.sqlite"


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
