"""Errors of the HTTP layer and the handlers that give every error one JSON shape.

Every error response is ``{"error": {"type": str, "message": str, "field": str?}}`` with a
4xx/5xx status. Engine errors map by class; FastAPI's request validation errors become 422
naming the offending field (``"edits.0.prompt"``); bad input never yields a 500.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from memory_store.errors import (
    Cancelled,
    ConflictError,
    InvalidInput,
    LokaError,
    ModelMismatch,
    NotFound,
    NotReached,
    StoreError,
)
from memory_store.models.smollm2 import ModelUnavailable

logger = logging.getLogger(__name__)

# engine error class -> HTTP status (the first matching class in this order wins)
ENGINE_STATUS: tuple[tuple[type[LokaError], int], ...] = (
    (InvalidInput, 422),
    (NotFound, 404),
    (ConflictError, 409),
    (ModelMismatch, 409),
    (Cancelled, 409),
    (NotReached, 422),
    (StoreError, 500),
    (ModelUnavailable, 503),
)

_HTTP_TYPES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    503: "not_ready",
}


class ServiceError(Exception):
    """An error raised by the service itself, rendered as ``{"error": {...}}``."""

    def __init__(
        self,
        status_code: int,
        type: str,
        message: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.type = type
        self.message = message
        self.field = field
        self.headers = headers


def invalid(field: str, message: str) -> ServiceError:
    """A 422 naming ``field`` (a dotted path into the request body)."""
    return ServiceError(422, "validation_error", f"{field}: {message}", field=field)


def not_found(message: str) -> ServiceError:
    """A 404 ``not_found``."""
    return ServiceError(404, "not_found", message)


def error_body(type: str, message: str, field: str | None = None, **extra: Any) -> dict:
    """The JSON body of an error response."""
    error: dict[str, Any] = {"type": type, "message": message}
    if field is not None:
        error["field"] = field
    error.update(extra)
    return {"error": error}


def error_response(
    status_code: int,
    type: str,
    message: str,
    *,
    field: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """A JSON error response in the service's shape."""
    return JSONResponse(
        error_body(type, message, field, **extra), status_code=status_code, headers=headers
    )


def engine_status(exc: LokaError) -> int:
    """The HTTP status of an engine error."""
    for cls, status in ENGINE_STATUS:
        if isinstance(exc, cls):
            return status
    return 500


# the tag pydantic adds to a location for a member of a union ("str", "list[TextPart]")
_UNION_TAG = re.compile(r"^(str|int|float|bool|none|[A-Za-z_-]+\[.*\])$")


def field_path(loc: Sequence[str | int]) -> str:
    """``("body", "edits", 0, "prompt")`` -> ``"edits.0.prompt"`` (the body prefix and the tags
    of union members dropped)."""
    parts = [str(p) for p in loc]
    if len(parts) > 1 and parts[0] == "body":
        parts = parts[1:]
    parts = [p for i, p in enumerate(parts) if i == 0 or not _UNION_TAG.match(p)]
    return ".".join(parts) or "body"


def _validation_details(exc: RequestValidationError) -> list[dict[str, str]]:
    details = []
    for err in exc.errors():
        if err.get("type") == "json_invalid":  # loc is ("body", <offset>)
            ctx = err.get("ctx") or {}
            reason = ctx.get("error", "invalid JSON")
            details.append({"field": "body", "message": f"invalid JSON: {reason}"})
            continue
        loc = tuple(err.get("loc", ()))
        details.append({"field": field_path(loc), "message": str(err.get("msg", "invalid"))})
    return details


async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
    return error_response(
        exc.status_code, exc.type, exc.message, field=exc.field, headers=exc.headers
    )


async def _engine_error(_: Request, exc: LokaError) -> JSONResponse:
    status = engine_status(exc)
    if status >= 500:
        logger.error("engine error: %s: %s", exc.type, exc.message)
    field = exc.field
    if field is not None and field.startswith("body."):
        field = field[len("body.") :]
    return error_response(status, exc.type, exc.message, field=field)


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    details = _validation_details(exc)
    if not details:
        return error_response(422, "validation_error", "invalid request")
    first = details[0]
    message = f"{first['field']}: {first['message']}"
    if len(details) > 1:
        message += f" (and {len(details) - 1} more)"
    return error_response(
        422, "validation_error", message, field=first["field"], details=details
    )


def _unparsable_body(cause: BaseException | None) -> str:
    """Why FastAPI could not parse a body (the cause of its generic 400)."""
    if isinstance(cause, UnicodeDecodeError):
        return (f"body: not valid UTF-8 (byte 0x{cause.object[cause.start]:02x} at offset "
                f"{cause.start}); JSON bodies must be UTF-8")
    if isinstance(cause, RecursionError):
        return "body: the JSON is nested too deeply to parse"
    return "body: could not be parsed as JSON"


async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    type_ = _HTTP_TYPES.get(exc.status_code, "http_error")
    if exc.status_code == 400 and exc.__cause__ is not None:  # FastAPI's body parsing failed
        return error_response(400, type_, _unparsable_body(exc.__cause__), field="body",
                              headers=exc.headers)
    message = exc.detail if isinstance(exc.detail, str) else type_.replace("_", " ")
    return error_response(exc.status_code, type_, message, headers=exc.headers)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "internal server error")


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that give every error the ``{"error": {...}}`` shape."""
    # handlers typed with their own exception class (starlette dispatches by class)
    app.add_exception_handler(ServiceError, _service_error)  # type: ignore[arg-type]
    app.add_exception_handler(LokaError, _engine_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected)
