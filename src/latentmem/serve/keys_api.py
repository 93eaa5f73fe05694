"""`/v1/keys`: key management over HTTP, for admin keys (or an open loopback server, to make the first one).

POST   /v1/keys          {"user": "alice", "agent": null, "admin": false} -> the key, shown once
GET    /v1/keys          every key (never a secret)
DELETE /v1/keys/{id}     revoke
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures' annotations, which
# name dependencies (`Caller`) defined in the router factory's scope.
from typing import Annotated

from fastapi import APIRouter, Depends

from latentmem.serve.auth import Authenticator, Principal
from latentmem.serve.errors import NotFoundError, ShapedErrorsRoute
from latentmem.serve.keys import ApiKey, KeyStore
from latentmem.serve.schemas import CreatedKey, KeyCreate, KeyInfo, Results


def _info(key: ApiKey) -> KeyInfo:
    return KeyInfo(**key.to_dict())


def keys_router(keys: KeyStore, auth: Authenticator) -> APIRouter:
    router = APIRouter(prefix="/v1/keys", tags=["keys"], route_class=ShapedErrorsRoute)
    Caller = Annotated[Principal, Depends(auth)]

    @router.post("", response_model=CreatedKey)
    def create(body: KeyCreate, principal: Caller) -> CreatedKey:
        principal.require_admin()
        secret, key = keys.create(user=body.user, agent=body.agent, admin=body.admin)
        return CreatedKey(**key.to_dict(), key=secret)

    @router.get("", response_model=Results[KeyInfo])
    def list_keys(principal: Caller) -> Results[KeyInfo]:
        principal.require_admin()
        return Results[KeyInfo](results=[_info(k) for k in keys.list()])

    @router.delete("/{key_id}", response_model=KeyInfo)
    def revoke(key_id: str, principal: Caller) -> KeyInfo:
        principal.require_admin()
        if not any(k.id == key_id and k.active for k in keys.list()):
            raise NotFoundError(f"no active key with id {key_id!r}", param="key_id")
        return _info(keys.revoke(key_id))

    return router
