"""`latentmem mcp --store DIR`: the memory store as MCP tools over stdio (the `mcp` package).

An agent host (Claude Desktop, an IDE, any MCP client) starts this process and calls four tools:
`add_memory`, `search_memories`, `list_memories`, `delete_memory`. Each acts in a scope (user, agent,
session); a tool call may name one, else the `--user`/`--agent` given at start apply. The process belongs
to whoever started it (stdio reaches no one else), so unlike the HTTP server there are no keys here.

The tools are coroutines on the server's one event loop thread: the embedded store's SQLite connection
belongs to the thread that opened it, so every call must run on that thread (and does, one at a time).
"""

from __future__ import annotations

from typing import Any

from mcp.server.mcpserver import MCPServer

from latentmem.memory.base import MemoryRecord, Scope
from latentmem.memory.vector import VectorMemory


def _record(record: MemoryRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "memory": record.text,
        "user": record.scope.user,
        "agent": record.scope.agent,
        "session": record.scope.session,
        "metadata": record.metadata,
    }


def memory_server(memory: VectorMemory, *, user: str | None = None, agent: str | None = None) -> MCPServer:
    """An MCP server whose tools act on `memory`; `user`/`agent`: the scope when a call names none."""
    server = MCPServer(
        "latentmem",
        instructions="Long-term memory: add what is worth remembering, search it before answering.",
    )

    def scope(call_user: str | None, call_agent: str | None, session: str | None) -> Scope:
        return Scope(call_user or user, call_agent or agent, session)

    @server.tool()
    async def add_memory(
        text: str,
        user: str | None = None,
        agent: str | None = None,
        session: str | None = None,
        metadata: dict[str, str | int | float | bool] | None = None,
    ) -> dict[str, Any]:
        """Store one memory in a scope; a duplicate of a stored one returns that one."""
        added = memory.add(text, scope(user, agent, session), metadata=metadata)
        return {"id": added.id, "memory": text, "event": added.event}

    @server.tool()
    async def search_memories(
        query: str,
        k: int = 5,
        user: str | None = None,
        agent: str | None = None,
        session: str | None = None,
        filters: dict[str, str | int | float | bool] | None = None,
    ) -> list[dict[str, Any]]:
        """The k stored memories of the scope most similar to `query`, best first, with their scores."""
        hits = memory.search(query, scope(user, agent, session), filters=filters, k=k)
        return [{**_record(h.record), "score": round(float(h.score), 4)} for h in hits]

    @server.tool()
    async def list_memories(
        user: str | None = None,
        agent: str | None = None,
        session: str | None = None,
        limit: int = 100,
        after: int | None = None,
    ) -> list[dict[str, Any]]:
        """The scope's memories, oldest first, at most `limit`; `after`: the last id of the previous page."""
        return [_record(r) for r in memory.list(scope(user, agent, session), limit=limit, after=after)]

    @server.tool()
    async def delete_memory(
        memory_id: int, user: str | None = None, agent: str | None = None, session: str | None = None
    ) -> dict[str, Any]:
        """Delete one memory of the scope (its history goes with it)."""
        memory.delete(memory_id, scope(user, agent, session))
        return {"id": memory_id, "deleted": True}

    return server
