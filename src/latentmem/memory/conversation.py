"""Conversation memory: the turns of each session, persisted in SQLite, shown to the model through a window.

    store = ConversationStore("chats.sqlite")
    conv = ConversationMemory(store, session="s1", window=LastTurns(6))
    conv.add("user", "My name is Alice.")
    conv.add("assistant", "Nice to meet you, Alice!")
    prompt = conv.render(tokenizer, system="You are helpful.")   # the model's chat template

A *turn* is one message (a role and its content). Windows decide which recent turns the model sees:

- `FullBuffer()`: every turn.
- `LastTurns(k)`: the last k turns.
- `TokenBudget(tokenizer, max_tokens)`: the most recent turns whose chat-templated rendering (what the model
  really reads, template overhead included) fits in `max_tokens`.

With a `summarizer` (`summarize(list_of_turns) -> str`; `ModelSummarizer` asks a chat model), the turns that
fall out of the window are not forgotten: they are folded into a running summary, persisted with the
session and shown as part of the system message. Only turns not yet summarised are sent to the summariser,
together with the previous summary, so each turn is summarised once.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from latentmem.chat import Message, render_chat
from latentmem.memory.base import MemoryInputError, MemoryStoreError

ROLES = ("system", "user", "assistant", "tool")
SUMMARY_ROLE = "summary"  # marks the previous summary in the list handed to a summariser

_SCHEMA = """
CREATE TABLE IF NOT EXISTS turns (
    session TEXT NOT NULL, idx INTEGER NOT NULL, role TEXT NOT NULL, content TEXT NOT NULL,
    created_at REAL NOT NULL, PRIMARY KEY (session, idx)
);
CREATE TABLE IF NOT EXISTS summaries (
    session TEXT PRIMARY KEY, summary TEXT NOT NULL, covers INTEGER NOT NULL, updated_at REAL NOT NULL
);
"""


@dataclasses.dataclass(frozen=True)
class Turn:
    """One message of a session; `index` is its position (0, 1, ...) in the session."""

    index: int
    role: str
    content: str
    created_at: float

    def message(self) -> Message:
        return {"role": self.role, "content": self.content}


class ConversationStore:
    """The turns and summaries of many sessions in one SQLite file (WAL: several processes may share it)."""

    def __init__(self, path: str | Path, *, timeout_s: float = 30.0) -> None:
        self.path = Path(path).expanduser()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, timeout=timeout_s, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.executescript(_SCHEMA)
        except (OSError, sqlite3.DatabaseError) as exc:
            raise MemoryStoreError(f"cannot open a conversation store at {self.path}: {exc}") from exc

    def append(self, session: str, role: str, content: str) -> Turn:
        """Add a turn at the end of `session` (atomic: concurrent appends get distinct indices)."""
        if role not in ROLES:
            raise MemoryInputError(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise MemoryInputError(f"turn content must be a string, got {type(content).__name__}")
        now = time.time()
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            (idx,) = self._conn.execute(
                "SELECT COALESCE(MAX(idx) + 1, 0) FROM turns WHERE session = ?", (session,)
            ).fetchone()
            self._conn.execute(
                "INSERT INTO turns (session, idx, role, content, created_at) VALUES (?, ?, ?, ?, ?)",
                (session, idx, role, content, now),
            )
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        return Turn(idx, role, content, now)

    def turns(self, session: str, start: int = 0) -> list[Turn]:
        rows = self._conn.execute(
            "SELECT idx, role, content, created_at FROM turns WHERE session = ? AND idx >= ? ORDER BY idx",
            (session, start),
        )
        return [Turn(*row) for row in rows]

    def summary(self, session: str) -> tuple[str | None, int]:
        """(summary text, number of leading turns it covers); (None, 0) before the first summary."""
        row = self._conn.execute(
            "SELECT summary, covers FROM summaries WHERE session = ?", (session,)
        ).fetchone()
        return (None, 0) if row is None else (row[0], int(row[1]))

    def set_summary(self, session: str, summary: str, covers: int) -> None:
        self._conn.execute(
            "INSERT OR REPLACE INTO summaries (session, summary, covers, updated_at) VALUES (?, ?, ?, ?)",
            (session, summary, covers, time.time()),
        )

    def sessions(self) -> list[str]:
        return [r[0] for r in self._conn.execute("SELECT DISTINCT session FROM turns ORDER BY session")]

    def clear(self, session: str) -> None:
        """Forget a session: its turns and its summary."""
        self._conn.execute("BEGIN IMMEDIATE")
        self._conn.execute("DELETE FROM turns WHERE session = ?", (session,))
        self._conn.execute("DELETE FROM summaries WHERE session = ?", (session,))
        self._conn.execute("COMMIT")

    def close(self) -> None:
        self._conn.close()


# ---- windows ---------------------------------------------------------------------------------------
class Window(Protocol):
    def select(self, turns: Sequence[Turn]) -> list[Turn]:
        """The suffix of `turns` the model should see."""
        ...


@dataclasses.dataclass(frozen=True)
class FullBuffer:
    """Every turn."""

    def select(self, turns: Sequence[Turn]) -> list[Turn]:
        return list(turns)


@dataclasses.dataclass(frozen=True)
class LastTurns:
    """The last `k` turns (messages, not user/assistant pairs)."""

    k: int

    def __post_init__(self) -> None:
        if self.k <= 0:
            raise MemoryInputError(f"LastTurns.k must be positive, got {self.k}")

    def select(self, turns: Sequence[Turn]) -> list[Turn]:
        return list(turns[-self.k :])


@dataclasses.dataclass(frozen=True)
class TokenBudget:
    """The longest suffix of turns whose chat-templated rendering is at most `max_tokens` tokens.

    The budget counts the turns as the template renders them alone (a template's default system prompt
    included); a summary or system prompt added by `ConversationMemory` comes on top.
    """

    tokenizer: object
    max_tokens: int

    def __post_init__(self) -> None:
        if self.max_tokens <= 0:
            raise MemoryInputError(f"TokenBudget.max_tokens must be positive, got {self.max_tokens}")

    def count(self, turns: Sequence[Turn]) -> int:
        """Tokens of `turns` rendered by the chat template (no generation prompt)."""
        if not turns:
            return 0
        text = render_chat(self.tokenizer, [t.message() for t in turns], add_generation_prompt=False)
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def select(self, turns: Sequence[Turn]) -> list[Turn]:
        # Token counts grow with the suffix length, so binary search the shortest start that fits:
        # O(log n) renderings instead of one per turn.
        lo, hi = 0, len(turns)  # the answer (first kept turn) lies in [lo, hi]
        while lo < hi:
            mid = (lo + hi) // 2
            if self.count(turns[mid:]) <= self.max_tokens:
                hi = mid
            else:
                lo = mid + 1
        return list(turns[lo:])


# ---- the memory ------------------------------------------------------------------------------------
Summarizer = Callable[[list[Turn]], str]


class ConversationMemory:
    """One session of a `ConversationStore`, seen through a window, optionally with a running summary."""

    def __init__(
        self,
        store: ConversationStore | str | Path,
        session: str,
        window: Window | None = None,
        *,
        summarizer: Summarizer | None = None,
    ) -> None:
        if not isinstance(session, str) or not session.strip():
            raise MemoryInputError(f"a conversation needs a non-empty session id, got {session!r}")
        self.store = store if isinstance(store, ConversationStore) else ConversationStore(store)
        self.session = session
        self.window = window or FullBuffer()
        self.summarizer = summarizer

    def add(self, role: str, content: str) -> Turn:
        return self.store.append(self.session, role, content)

    def turns(self) -> list[Turn]:
        """Every turn of the session, oldest first."""
        return self.store.turns(self.session)

    def summary(self) -> str | None:
        return self.store.summary(self.session)[0]

    def clear(self) -> None:
        self.store.clear(self.session)

    def visible(self) -> tuple[str | None, list[Turn]]:
        """(summary of the turns before the window or None, the turns in the window).

        With a summariser, the turns that left the window since the last summary are summarised now
        and the new summary is saved with the session.
        """
        turns = self.turns()
        shown = self.window.select(turns)
        first_shown = shown[0].index if shown else len(turns)
        if self.summarizer is None:
            return None, shown
        summary, covers = self.store.summary(self.session)
        if first_shown > covers:
            fresh = [t for t in turns if covers <= t.index < first_shown]
            previous = [Turn(-1, SUMMARY_ROLE, summary, 0.0)] if summary else []
            summary = self.summarizer(previous + fresh).strip()
            self.store.set_summary(self.session, summary, first_shown)
        return summary, shown

    def to_messages(self, system: str | None = None) -> list[Message]:
        """Chat messages for the model: one system message (the prompt and/or summary), then the window."""
        summary, shown = self.visible()
        parts = [p for p in (system, summary and f"Summary of the earlier conversation: {summary}") if p]
        head = [{"role": "system", "content": "\n\n".join(parts)}] if parts else []
        return head + [t.message() for t in shown]

    def render(self, tokenizer, *, system: str | None = None, add_generation_prompt: bool = True) -> str:
        """The prompt text: `to_messages` through the tokenizer's chat template."""
        return render_chat(tokenizer, self.to_messages(system), add_generation_prompt=add_generation_prompt)


class ModelSummarizer:
    """A `Summarizer` that asks a chat model (any `load_model` model) to summarise turns, greedily."""

    INSTRUCTION = (
        "Summarise the conversation below in a few sentences. Keep every fact about the user "
        "(names, preferences, plans) and any decisions made."
    )

    def __init__(self, model, tokenizer, *, max_new_tokens: int = 96) -> None:
        self.model, self.tokenizer, self.max_new_tokens = model, tokenizer, max_new_tokens

    def __call__(self, turns: list[Turn]) -> str:
        import torch

        transcript = "\n".join(
            f"Earlier summary: {t.content}" if t.role == SUMMARY_ROLE else f"{t.role}: {t.content}"
            for t in turns
        )
        prompt = render_chat(self.tokenizer, f"{self.INSTRUCTION}\n\n{transcript}")
        enc = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(self.model.device)
        with torch.no_grad():
            out = self.model.generate(
                **enc,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                top_p=None,
                top_k=None,
                temperature=None,
            )
        return self.tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip()
