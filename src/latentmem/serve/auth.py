"""Who is calling, and which memory scopes the caller may touch.

A request carries its key as `Authorization: Bearer lmk_...` (what OpenAI clients send) or `X-Api-Key`.
A tenant key fixes the user (and, when it has one, the agent) of every scope the request uses: a `user`
or `user_id` the client sends must be the key's own, or the request is refused; the client may only
narrow the scope further (a session, or an agent when the key has none). Admin keys may use any scope.

With no active key at all the server is open, which it allows only on a loopback address: every request
is trusted as an admin, and the scope is whatever the client sends.
"""

from __future__ import annotations

import dataclasses

from fastapi import Request

from latentmem.memory.base import Scope
from latentmem.serve.errors import AuthenticationError, InvalidParameterError, PermissionDeniedError
from latentmem.serve.keys import KeyStore


@dataclasses.dataclass(frozen=True)
class Principal:
    """The caller: a key (tenant or admin), or `key_id=None` for an open server."""

    key_id: str | None
    user: str | None = None
    agent: str | None = None
    admin: bool = False

    @property
    def unrestricted(self) -> bool:
        """Admin keys and open servers act in any scope."""
        return self.admin or self.key_id is None

    def scope(self, user: str | None, agent: str | None, session: str | None) -> Scope | None:
        """The scope a request acts in, from the fields the client sent, checked against the key.
        None when an unrestricted caller named no field (the caller decides whether that is allowed)."""
        if self.unrestricted:
            if user is None and agent is None and session is None:
                return None
            return Scope(user, agent, session)
        if user is not None and user != self.user:
            raise PermissionDeniedError("this API key is bound to another user", param="user")
        if self.agent is not None and agent is not None and agent != self.agent:
            raise PermissionDeniedError("this API key is bound to another agent", param="agent")
        return Scope(self.user, self.agent or agent, session)

    def require_scope(self, user: str | None, agent: str | None, session: str | None) -> Scope:
        scope = self.scope(user, agent, session)
        if scope is None:
            raise InvalidParameterError(
                "name the scope: give at least one of user_id, agent_id, run_id", param="user_id"
            )
        return scope

    def require_admin(self) -> None:
        if not self.unrestricted:
            raise PermissionDeniedError("this needs an admin key (latentmem serve keys create --admin)")


def _token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.headers.get("x-api-key") or None


class Authenticator:
    """The FastAPI dependency that turns a request into a `Principal` (or a 401)."""

    def __init__(self, keys: KeyStore, *, loopback: bool) -> None:
        self.keys, self.loopback = keys, loopback

    def open(self) -> bool:
        """Whether requests go without keys now: no active key, and only loopback clients can connect.
        Checked per request, so a key created while the server runs takes effect at once."""
        return self.loopback and not self.keys.has_active()

    async def __call__(self, request: Request) -> Principal:
        # On the event loop, not FastAPI's thread pool: a SHA-256 and an indexed SQLite lookup take
        # microseconds, less than the hand-off to a pool thread that every request would otherwise pay.
        if self.open():  # clients must send some key (OpenAI's does), which an open server ignores
            return Principal(None)
        token = _token(request)
        if token is None:
            raise AuthenticationError("no API key: send `Authorization: Bearer lmk_...`")
        return self.principal(token)

    def principal(self, token: str) -> Principal:
        """The caller a key stands for; `AuthenticationError` (401) for an unknown or revoked one."""
        key = self.keys.verify(token)
        if key is None:
            raise AuthenticationError("the API key is unknown or revoked")
        return Principal(key.id, key.user, key.agent, key.admin)
