"""The FastAPI application: routes, authentication, error shapes, body limit, metrics.

    app = create_app(backend, stores, keys, ServeSettings(host="127.0.0.1"))
    uvicorn.run(app, host="127.0.0.1", port=8000)

`latentmem serve` builds the parts from its flags (`cli/serve.py`); tests build them directly.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures' annotations, which
# name dependencies (`Caller`) defined in the router factory's scope.
import dataclasses
import ipaddress
import json
import time
from typing import Annotated

from fastapi import Depends, FastAPI
from fastapi.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from latentmem.serve.auth import Authenticator, Principal
from latentmem.serve.backend import GenerationBackend
from latentmem.serve.chat_api import chat_router
from latentmem.serve.errors import error_body, install_error_handlers
from latentmem.serve.keys import KeyStore
from latentmem.serve.keys_api import keys_router
from latentmem.serve.memory_api import memory_router
from latentmem.serve.metrics import CONTENT_TYPE_LATEST, Metrics
from latentmem.serve.schemas import Health
from latentmem.serve.stores import Stores
from latentmem.serve.ui import RecentChats, ui_router


@dataclasses.dataclass(frozen=True)
class ServeSettings:
    """host: the address the server binds (an open server, without keys, must be a loopback one);
    max_body_bytes: larger request bodies are refused with 413; default_max_tokens: the completion
    length when a request gives none (capped by the room left in the context); session_turns: how many
    recent turns of a server-side session the model sees."""

    host: str = "127.0.0.1"
    max_body_bytes: int = 1_000_000
    default_max_tokens: int = 256
    session_turns: int = 20


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything


class _BodyLimit:
    """Refuse request bodies over `limit` bytes (413): at once from Content-Length; a body sent without
    one (chunked) is read up to the limit first, then handed on."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if length.isdigit() and int(length) > self.limit:
                await self._refuse(send)
                return
            await self.app(scope, receive, send)  # the server holds the body to its Content-Length
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                await self._refuse(send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send) -> None:
        message = (
            f"the request body is larger than this server accepts ({self.limit} bytes, --max-body-bytes)"
        )
        body = json.dumps(error_body(message, "invalid_request_error", None, "payload_too_large")).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class _Measured:
    """Count every answered request and its latency, by route template (not by raw path: ids vary)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def watched(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watched)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            self.metrics.requests.labels(scope["method"], path, str(status)).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - start)


def create_app(
    backend: GenerationBackend, stores: Stores, keys: KeyStore, settings: ServeSettings | None = None
) -> FastAPI:
    """The server over `backend` (generation), `stores` (memories, sessions) and `keys`."""
    settings = settings or ServeSettings()
    metrics = Metrics(backend.load_now)
    auth = Authenticator(keys, loopback=is_loopback(settings.host))
    recent = RecentChats()
    app = FastAPI(title="latentmem", summary="Memory for agents over HTTP", version="0.1.0")
    app.state.settings, app.state.metrics, app.state.auth = settings, metrics, auth
    install_error_handlers(app)
    app.include_router(
        chat_router(
            backend,
            stores,
            auth,
            metrics,
            default_max_tokens=settings.default_max_tokens,
            session_turns=settings.session_turns,
            recent=recent,
        )
    )
    app.include_router(memory_router(stores, auth))
    app.include_router(keys_router(keys, auth))
    app.include_router(ui_router(stores, auth, recent))

    @app.get("/healthz", response_model=Health)
    def healthz() -> Health:
        return Health(models=[m.name for m in backend.models()], auth="open" if auth.open() else "keys")

    # /metrics is for the operator's scraper: on a keyed server it needs an admin key.
    @app.get("/metrics")
    def prometheus(principal: Annotated[Principal, Depends(auth)]) -> Response:
        principal.require_admin()
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(_BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(_Measured, metrics=metrics)
    return app
