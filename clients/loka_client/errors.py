"""Typed exceptions of the client, mapped from HTTP status codes and the server's error body.

The server answers errors with ``{"error": {"type": ..., "message": ..., "field": ...}}``;
:func:`error_from_response` turns such a response into the matching exception class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from loka_client.models import Job


class LokaClientError(Exception):
    """Base class of every error raised by the client.

    Attributes:
        status_code: HTTP status of the failed response (None for transport errors).
        type: The server's stable error type (e.g. ``"not_found"``), or a client-side one.
        message: Human-readable explanation.
        field: The request field the error is about, when the server names one.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        type: str | None = None,  # noqa: A002 - mirrors the error body's key
        field: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.type = type
        self.field = field

    def __str__(self) -> str:
        parts = []
        if self.status_code is not None:
            parts.append(str(self.status_code))
        if self.type:
            parts.append(self.type)
        prefix = f"[{' '.join(parts)}] " if parts else ""
        suffix = f" (field: {self.field})" if self.field else ""
        return f"{prefix}{self.message}{suffix}"


class BadRequest(LokaClientError):
    """400: the request could not be understood."""


class Unauthorized(LokaClientError):
    """401: no or an unknown token."""


class Forbidden(LokaClientError):
    """403: the token is valid but not allowed to do this (e.g. not the admin token)."""


class NotFound(LokaClientError):
    """404: no memory, piece, job or version with that id."""


class Conflict(LokaClientError):
    """409: the request conflicts with the current state."""


class PayloadTooLarge(LokaClientError):
    """413: the request exceeds a configured limit."""


class ValidationError(LokaClientError):
    """422: a request value is invalid; ``field`` names it when the server knows."""


class ServerError(LokaClientError):
    """5xx: the server failed."""


class ServiceUnavailable(ServerError):
    """503: the server is not ready (model loading) or overloaded."""


class ConnectionFailed(LokaClientError):
    """The server could not be reached or the connection broke (no HTTP status)."""


class JobFailed(LokaClientError):
    """A waited-for job ended ``failed`` or ``cancelled``; ``job`` holds its last state."""

    def __init__(self, job: Job) -> None:
        message = f"job {job.id} {job.status}" + (f": {job.error}" if job.error else "")
        super().__init__(message, type=f"job_{job.status}")
        self.job = job


class JobTimeout(LokaClientError, TimeoutError):
    """A waited-for job did not finish in time; ``job`` holds its last state."""

    def __init__(self, job: Job, timeout: float) -> None:
        super().__init__(f"job {job.id} still {job.status} after {timeout:g}s", type="job_timeout")
        self.job = job
        self.timeout = timeout


_BY_STATUS: dict[int, type[LokaClientError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: ValidationError,
    503: ServiceUnavailable,
}


def _parse_body(response: httpx.Response) -> tuple[str | None, str, str | None]:
    """(type, message, field) from an error response, tolerating non-standard bodies."""
    try:
        body: Any = response.json()
    except ValueError:
        text = response.text.strip()
        return None, text or response.reason_phrase or "error", None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        field = err.get("field")
        return err.get("type"), str(err.get("message", "")), str(field) if field else None
    if isinstance(body, dict) and "detail" in body:  # plain FastAPI / Starlette answers
        detail = body["detail"]
        if isinstance(detail, list) and detail and isinstance(detail[0], dict):
            loc = [str(p) for p in detail[0].get("loc", []) if p not in ("body", "query", "path")]
            return None, str(detail[0].get("msg", detail)), ".".join(loc) or None
        return None, str(detail), None
    return None, str(body), None


def error_from_response(response: httpx.Response) -> LokaClientError:
    """Build the typed exception for a failed (status >= 400) response."""
    type_, message, field = _parse_body(response)
    status = response.status_code
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else LokaClientError
    return cls(message, status_code=status, type=type_, field=field)
