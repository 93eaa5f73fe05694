"""Errors of the server, and the handlers that answer every error in OpenAI's shape.

Every error response is `{"error": {"message", "type", "param", "code"}}` with the status OpenAI's API uses
for the same problem, so that OpenAI clients raise their usual exceptions (`BadRequestError`,
`NotFoundError`, ...). The library raises `LatentMemError` subclasses; they become HTTP errors only here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from latentmem.errors import LatentMemError
from latentmem.memory.base import MemoryInputError, MemoryNotFoundError

log = logging.getLogger("latentmem.serve")


class ServeError(LatentMemError):
    """A request the server refuses; carries what the HTTP answer needs."""

    status = 400
    type = "invalid_request_error"
    code: str | None = None

    def __init__(
        self, message: str, *, param: str | None = None, code: str | None = None, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.message, self.param = message, param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    def headers(self) -> dict[str, str]:
        """Headers the answer carries besides the body."""
        return {}


class BadRequestError(ServeError):
    """The request cannot be served as sent (400)."""


class ContextLengthError(BadRequestError):
    """The prompt and the tokens asked for do not fit in the model's context (400)."""

    code = "context_length_exceeded"


class AuthenticationError(ServeError):
    """No API key, or one that is unknown or revoked (401)."""

    status = 401
    code = "invalid_api_key"


class PermissionDeniedError(ServeError):
    """The key is valid but not allowed to do this: another tenant's scope, or an admin-only action (403)."""

    status = 403
    type = "permission_error"
    code = "permission_denied"


class NotFoundError(ServeError):
    """No such model or memory, or one the caller may not see: both read the same (404)."""

    status = 404
    code = "not_found"


class ServerBusyError(ServeError):
    """Every decoding row and queue place is taken (429), or the server is shutting down (503); the
    client should come back after `retry_after` seconds."""

    status = 429
    type = "rate_limit_error"
    code = "server_busy"

    def __init__(self, message: str, *, retry_after: int = 1, status: int | None = None) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class InternalError(ServeError):
    """The server failed; the details go to its log, not to the client (500)."""

    status = 500
    type = "server_error"
    code = "internal_error"


class InvalidParameterError(ServeError):
    """A parameter has the wrong type or is out of range (422); `param` names it."""

    status = 422
    code = "invalid_value"


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(exc: ServeError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        error_body(exc.message, exc.type, exc.param, exc.code),
        status_code=exc.status,
        headers={**exc.headers(), **(headers or {})},
    )


def as_serve_error(exc: Exception) -> ServeError:
    """The HTTP meaning of an exception raised while serving a request."""
    if isinstance(exc, ServeError):
        return exc
    if isinstance(exc, MemoryNotFoundError):
        # The store's message names the scope that was searched; a 404 must not echo tenant details.
        return NotFoundError("no such memory")
    if isinstance(exc, MemoryInputError):
        return InvalidParameterError(str(exc))
    if isinstance(exc, LatentMemError):
        return BadRequestError(str(exc))
    log.error("internal error while serving a request", exc_info=exc)
    return InternalError("the server failed to handle this request; see its log")


def _param(loc: tuple) -> str | None:
    """A pydantic error location as OpenAI names parameters: `messages.0.role`, `max_tokens`."""
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or None


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error, expected or not, in OpenAI's error shape."""

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": "invalid"}
        # Not JSON at all, or JSON that is not an object (also what a body sent without a JSON
        # content type reads as): the request is malformed, not a parameter out of range.
        if first.get("type") == "json_invalid" or tuple(first.get("loc", ())) == ("body",):
            return error_response(
                BadRequestError(
                    f"the request body is not a JSON object: {first.get('msg')}", code="invalid_json"
                )
            )
        param = _param(tuple(first.get("loc", ())))
        message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
        return error_response(InvalidParameterError(message, param=param, code=first.get("type")))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else None
        error = ServeError(str(exc.detail), code=code, status=exc.status_code)
        return error_response(error, headers=getattr(exc, "headers", None))

    @app.exception_handler(LatentMemError)
    async def _library(request: Request, exc: LatentMemError) -> JSONResponse:
        return error_response(as_serve_error(exc))


class ShapedErrorsRoute(APIRoute):
    """A route that answers an unexpected exception with a 500 in OpenAI's shape itself. (Left to
    Starlette's last-resort handler, the exception would also close the client's keep-alive connection.)"""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except (LatentMemError, RequestValidationError, StarletteHTTPException):
                raise  # the app's handlers above answer these
            except Exception as exc:
                return error_response(as_serve_error(exc))

        return route
