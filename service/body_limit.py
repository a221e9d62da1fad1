"""Request body limits answering in the service's error shape: size (413) and stalls (408).

A declared ``Content-Length`` above the size limit is refused before the body is read; a chunked
body is counted while it is read and refused as soon as it goes over. A body that stops arriving
before it is complete (shorter than its ``Content-Length``, or a chunked body never ended) is
answered 408 once no byte came for ``timeout_s``, and the connection is closed: otherwise the
server would wait for the rest as long as the client keeps the connection open.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import error_response


class _TooLarge(BaseException):
    """Raised from ``receive``; a BaseException so that no ``except Exception`` on the way
    (FastAPI's body parsing turns those into a 400) can swallow it before this middleware."""


class _Stalled(BaseException):
    """Raised from ``receive`` when the body stalls (a BaseException for the same reason)."""


class BodyLimitMiddleware:
    """Pure ASGI middleware: 413 ``payload_too_large`` for bodies over ``max_bytes``, 408
    ``request_timeout`` for a body that stalls ``timeout_s`` before it is complete."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float = 5.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", ())).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        seen = 0
        complete = False
        started = False

        async def counting_receive() -> Message:
            nonlocal seen, complete
            if complete:  # after the body: waiting for a disconnect may take any time
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.timeout_s)
            except TimeoutError:
                raise _Stalled from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge
                complete = not message.get("more_body", False)
            else:
                complete = True
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except (_TooLarge, _Stalled) as exc:
            if started:
                raise
            await self._answer(exc, scope, receive, send)
        except BaseExceptionGroup as group:
            matched, rest = group.split((_TooLarge, _Stalled))
            if rest is not None or started or matched is None:
                raise
            await self._answer(matched.exceptions[0], scope, receive, send)

    async def _answer(self, exc: BaseException, scope: Scope, receive: Receive,
                      send: Send) -> None:
        if isinstance(exc, _Stalled):
            await self._stalled(scope, receive, send)
        else:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            413, "payload_too_large", f"the request body is larger than {self.max_bytes} bytes",
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)

    async def _stalled(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            408, "request_timeout",
            f"body: no data for {self.timeout_s:g} s before the request body was complete "
            f"(is it shorter than its Content-Length?)",
            field="body", headers={"Connection": "close"},
        )
        await response(scope, receive, send)
