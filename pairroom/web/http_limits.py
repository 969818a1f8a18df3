"""Bounds on HTTP requests, for every route at once: body size, and how long a request may take to
arrive.

**Body size.** ``BodyLimit`` refuses a request whose ``Content-Length`` is over ``max_body_bytes``
with 413 before reading a byte of it, and stops reading a body (chunked, or longer than it said) the
moment it passes the cap, answering 413 with ``Connection: close``. Routes still apply their own,
smaller caps (``api.read_body``); this is the floor nobody can forget.

**Time.** uvicorn 0.54 has a keep-alive timeout between requests but no timeout while a request
arrives: a client sending one header byte every few seconds (slowloris) holds a connection forever,
and before its first byte no timer runs at all. ``TimedHttpToolsProtocol`` is uvicorn's own httptools
protocol with two deadlines: the request line and headers must arrive within ``header_timeout`` of
the connection opening (or of the previous response), and the body within ``body_timeout`` of the
headers. Past either, the connection is closed (a 408 is written first when no response began). A
websocket upgrade clears both: websockets have their own pings and limits.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(Exception):
    """Raised from ``receive`` when a body passes the cap; ``BodyLimit`` answers 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body over {limit} bytes")
        self.limit = limit


class BodyLimit:
    """ASGI middleware: every HTTP request body is at most ``max_bytes``."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _too_large(send, limit)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, watched_send)
        except BodyTooLarge:
            if started:
                raise
            await _too_large(send, limit)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _too_large(send: Send, limit: int) -> None:
    body = json.dumps({"error": f"request body over {limit} bytes"}).encode()
    await send({
        "type": "http.response.start",
        "status": 413,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),  # the rest of the body is not read: end the connection
        ],
    })
    await send({"type": "http.response.body", "body": body})


class TimedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with deadlines for the headers and the body of each request.

    Set ``header_timeout`` and ``body_timeout`` on the uvicorn ``Config`` (``runner.uvicorn_config``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout: float = getattr(self.config, "header_timeout", 10.0)
        self.body_timeout: float = getattr(self.config, "body_timeout", 30.0)
        self._deadline: asyncio.TimerHandle | None = None
        self._awaiting_headers = False

    def _arm(self, seconds: float, headers: bool) -> None:
        self._disarm()
        self._awaiting_headers = headers
        self._deadline = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self._awaiting_headers and (self.cycle is None or self.cycle.response_complete):
            self.transport.write(
                b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            )
        elif self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True  # the app sees http.disconnect instead of more body
            self.cycle.message_event.set()
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.header_timeout, headers=True)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:  # a request after a response: its headers are on the clock now
            self._arm(self.header_timeout, headers=True)

    def on_headers_complete(self) -> None:
        self._arm(self.body_timeout, headers=False)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        self._disarm()
        super().handle_websocket_upgrade()
