"""`/v1/memories`: the memory API in mem0's shape, on the server's vector memory.

    POST   /v1/memories                 add (`text`, or `messages`: one memory per user/assistant message)
    GET    /v1/memories?user_id=..      list, oldest first: `limit` + the opaque `cursor` of the last page
    DELETE /v1/memories?user_id=..      delete every memory of a scope (the scope must be named)
    POST   /v1/memories/search          the `k` most similar to `query`, with metadata `filters`
    GET    /v1/memories/{id}            one memory
    PUT    /v1/memories/{id}            new text and/or metadata; the previous version is kept
    DELETE /v1/memories/{id}            delete it (and its history)
    GET    /v1/memories/{id}/history    every version, oldest first, the current one last

Scopes are mem0's `user_id`, `agent_id`, `run_id` (a session), checked against the caller's key
(`auth.Principal`). A memory outside the caller's scope answers exactly like one that does not exist.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures' annotations, which
# name dependencies (`Caller`) defined in the router factory's scope.
import base64
import binascii
import datetime
import json
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from latentmem.memory.base import MemoryNotFoundError, MemoryRecord, MemoryVersion, Scope
from latentmem.memory.vector import VectorMemory
from latentmem.serve.auth import Authenticator, Principal
from latentmem.serve.errors import BadRequestError, InvalidParameterError, NotFoundError, ShapedErrorsRoute
from latentmem.serve.schemas import (
    AddedMemory,
    Deleted,
    MemoryCreate,
    MemoryItem,
    MemoryPage,
    MemorySearch,
    MemoryUpdate,
    MemoryVersionItem,
    Results,
    ScoredMemory,
)
from latentmem.serve.stores import Stores

MAX_PAGE = 1000


def iso(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).isoformat()


def item(record: MemoryRecord) -> MemoryItem:
    return MemoryItem(**_fields(record))


def _fields(record: MemoryRecord) -> dict:
    return {
        "id": str(record.id),
        "memory": record.text,
        "user_id": record.scope.user,
        "agent_id": record.scope.agent,
        "run_id": record.scope.session,
        "metadata": record.metadata,
        "created_at": iso(record.created_at),
        "updated_at": iso(record.updated_at),
    }


def _version(v: MemoryVersion) -> MemoryVersionItem:
    return MemoryVersionItem(
        memory_id=str(v.memory_id),
        version=v.version,
        memory=v.text,
        metadata=v.metadata,
        updated_at=iso(v.updated_at),
        replaced_at=iso(v.replaced_at),
    )


def _memory_id(raw: str) -> int:
    """Ids are decimal ints; anything else names no memory (404, like a missing one)."""
    if not raw.isdigit():
        raise NotFoundError("no such memory")
    return int(raw)


# A cursor is the last id of a page plus the scope it was listed in, so that it cannot be replayed
# against another scope. It is opaque to clients (base64 of JSON) but not secret: it holds only the
# caller's own scope.
def encode_cursor(after: int, scope: Scope) -> str:
    raw = json.dumps({"after": after, "scope": scope.fields()}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, scope: Scope) -> int:
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        after, cursor_scope = data["after"], data["scope"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise BadRequestError("cursor: not a cursor this server returned", param="cursor") from None
    if not isinstance(after, int) or cursor_scope != scope.fields():
        raise BadRequestError("cursor: it belongs to another listing (scope)", param="cursor")
    return after


ScopeQuery = Annotated[str | None, Query(min_length=1, max_length=256)]


def memory_router(stores: Stores, auth: Authenticator) -> APIRouter:
    router = APIRouter(prefix="/v1/memories", tags=["memories"], route_class=ShapedErrorsRoute)
    Caller = Annotated[Principal, Depends(auth)]

    def memory() -> VectorMemory:
        return stores.memory

    def locate(memory_id: int, principal: Principal, user: str | None, agent: str | None, run: str | None):
        """The record `memory_id` as the caller may see it, or `MemoryNotFoundError` (on the store thread)."""
        scope = principal.scope(user, agent, run)
        if scope is not None:
            return memory().get(memory_id, scope)
        # An unrestricted caller without a scope: the record's own scope (the store refuses unscoped ids).
        found = memory().backend.fetch([memory_id]).get(memory_id)
        if found is None:
            raise MemoryNotFoundError("no such memory")
        return found

    @router.post("", response_model=Results[AddedMemory])
    async def add(body: MemoryCreate, principal: Caller) -> Results[AddedMemory]:
        scope = principal.require_scope(body.user_id, body.agent_id, body.run_id)
        if (body.text is None) == (body.messages is None):
            raise InvalidParameterError("give either text or messages", param="text")
        if body.text is not None:
            texts, metas = [body.text], [body.metadata]
        else:
            kept = [m for m in body.messages if m.role in ("user", "assistant") and m.text().strip()]
            if not kept:
                raise InvalidParameterError(
                    "messages: no user or assistant message with text", param="messages"
                )
            texts = [m.text() for m in kept]
            metas = [{**(body.metadata or {}), "role": m.role} for m in kept]
        results = await stores.run(memory().add_many, texts, scope, metadatas=metas)
        return Results[AddedMemory](
            results=[
                AddedMemory(**_fields(r.record), event="ADD" if r.event == "added" else "NONE")
                for r in results
            ]
        )

    @router.get("", response_model=MemoryPage)
    async def list_memories(
        principal: Caller,
        user_id: ScopeQuery = None,
        agent_id: ScopeQuery = None,
        run_id: ScopeQuery = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
        cursor: str | None = None,
    ) -> MemoryPage:
        scope = principal.require_scope(user_id, agent_id, run_id)
        after = None if cursor is None else decode_cursor(cursor, scope)
        # One more than the page: whether a next page exists without a second query.
        records = await stores.run(memory().list, scope, limit=limit + 1, after=after)
        page = records[:limit]
        next_cursor = encode_cursor(page[-1].id, scope) if len(records) > limit else None
        return MemoryPage(results=[item(r) for r in page], next_cursor=next_cursor)

    @router.delete("", response_model=Deleted)
    async def delete_all(
        principal: Caller, user_id: ScopeQuery = None, agent_id: ScopeQuery = None, run_id: ScopeQuery = None
    ) -> Deleted:
        # The scope must be named even for a tenant key: an empty query string must never wipe a tenant.
        if user_id is None and agent_id is None and run_id is None:
            raise InvalidParameterError(
                "name the scope to delete: give at least one of user_id, agent_id, run_id", param="user_id"
            )
        scope = principal.require_scope(user_id, agent_id, run_id)
        count = await stores.run(memory().delete_all, scope)
        return Deleted(message=f"deleted {count} memories", deleted=count)

    @router.post("/search", response_model=Results[ScoredMemory])
    async def search(body: MemorySearch, principal: Caller) -> Results[ScoredMemory]:
        scope = principal.require_scope(body.user_id, body.agent_id, body.run_id)
        hits = await stores.run(memory().search, body.query, scope, filters=body.filters, k=body.k)
        return Results[ScoredMemory](results=[ScoredMemory(**_fields(h.record), score=h.score) for h in hits])

    @router.get("/{memory_id}", response_model=MemoryItem)
    async def get(
        memory_id: str,
        principal: Caller,
        user_id: ScopeQuery = None,
        agent_id: ScopeQuery = None,
        run_id: ScopeQuery = None,
    ) -> MemoryItem:
        record = await stores.run(locate, _memory_id(memory_id), principal, user_id, agent_id, run_id)
        return item(record)

    @router.put("/{memory_id}", response_model=MemoryItem)
    async def update(
        memory_id: str,
        body: MemoryUpdate,
        principal: Caller,
        user_id: ScopeQuery = None,
        agent_id: ScopeQuery = None,
        run_id: ScopeQuery = None,
    ) -> MemoryItem:
        if body.text is None and body.metadata is None:
            raise InvalidParameterError("give text and/or metadata to update", param="text")
        mid = _memory_id(memory_id)

        def update_it() -> MemoryRecord:
            found = locate(mid, principal, user_id, agent_id, run_id)
            return memory().update(mid, body.text, found.scope, metadata=body.metadata)

        return item(await stores.run(update_it))

    @router.delete("/{memory_id}", response_model=Deleted)
    async def delete(
        memory_id: str,
        principal: Caller,
        user_id: ScopeQuery = None,
        agent_id: ScopeQuery = None,
        run_id: ScopeQuery = None,
    ) -> Deleted:
        mid = _memory_id(memory_id)

        def delete_it() -> None:
            memory().delete(mid, locate(mid, principal, user_id, agent_id, run_id).scope)

        await stores.run(delete_it)
        return Deleted(message="memory deleted", deleted=1)

    @router.get("/{memory_id}/history", response_model=Results[MemoryVersionItem])
    async def history(
        memory_id: str,
        principal: Caller,
        user_id: ScopeQuery = None,
        agent_id: ScopeQuery = None,
        run_id: ScopeQuery = None,
    ) -> Results[MemoryVersionItem]:
        mid = _memory_id(memory_id)

        def read() -> tuple[MemoryRecord, list[MemoryVersion]]:
            found = locate(mid, principal, user_id, agent_id, run_id)
            return found, memory().history(mid, found.scope)

        current, versions = await stores.run(read)
        results = [_version(v) for v in versions]
        results.append(
            MemoryVersionItem(
                memory_id=str(mid),
                version=len(versions),
                memory=current.text,
                metadata=current.metadata,
                updated_at=iso(current.updated_at),
                replaced_at=None,
            )
        )
        return Results[MemoryVersionItem](results=results)

    return router
