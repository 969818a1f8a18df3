"""One accepted signaling websocket: the gate on what comes in, a bounded queue for what goes out.

Both signaling endpoints (y-webrtc topics and room calls) run their sockets through here, so they
share one failure policy:

- fan-out never waits for a client: ``send`` queues text, and a client whose queue passes
  ``max_queue_messages`` is closed with 4503 (its pending messages are dropped, it reconnects);
- a refused message is answered with an error frame; after ``max_strikes`` the connection is closed
  with the last refusal's code, *after* the frames queued before it (the error frame included);
- the reader stops at a close request, so nothing is relayed from a connection that is closing.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
from typing import Any, Awaitable, Callable

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from pairroom.rtc.limits import Gate, Limits, Refused, CloseCode

log = logging.getLogger("pairroom.rtc")

MAX_CLOSE_REASON = 123  # bytes allowed in a close frame's reason
CLOSE_TIMEOUT = 5.0  # a client that does not read cannot take a close frame either

Handle = Callable[["Connection", dict[str, Any]], Awaitable[None]]


class Connection:
    def __init__(self, websocket: WebSocket, conn_id: str, limits: Limits, *, kind: str) -> None:
        self.websocket = websocket
        self.id = conn_id
        self.kind = kind  # "signal" or "call", for logs
        self.limits = limits
        self.gate = Gate(limits)
        self._pending: collections.deque[str] = collections.deque()
        self._wake = asyncio.Event()
        self.closing: tuple[int, str] | None = None

    # -- outbound -------------------------------------------------------------------------------

    def send(self, message: dict[str, Any] | str) -> None:
        """Queue a message; never waits. Overflow closes this connection with 4503."""
        if self.closing is not None:
            return
        if len(self._pending) >= self.limits.max_queue_messages:
            self.abort(CloseCode.SLOW_CONSUMER, "outbound queue overflowed; reconnect")
            return
        self._pending.append(message if isinstance(message, str) else json.dumps(message))
        self._wake.set()

    def close_after_pending(self, code: int, reason: str) -> None:
        """Close once the messages already queued are sent."""
        if self.closing is None:
            self.closing = (code, reason)
            self._wake.set()

    def abort(self, code: int, reason: str) -> None:
        """Close now, dropping whatever is queued."""
        self._pending.clear()
        self.closing = None
        self.close_after_pending(code, reason)

    async def _send_loop(self) -> None:
        while True:
            while self._pending:
                await self.websocket.send_text(self._pending.popleft())
            if self.closing is not None:
                await self._close(*self.closing)
                return
            self._wake.clear()
            await self._wake.wait()

    async def _close(self, code: int, reason: str) -> None:
        if self.websocket.application_state is WebSocketState.DISCONNECTED:
            return
        encoded = reason.encode()[:MAX_CLOSE_REASON].decode("utf-8", "ignore")
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await self.websocket.close(code, encoded)

    # -- inbound --------------------------------------------------------------------------------

    async def _read_loop(self, handle: Handle) -> None:
        while self.closing is None:
            event = await self.websocket.receive()
            if event["type"] == "websocket.disconnect":
                return
            try:
                message = self.gate.parse(event.get("text"), event.get("bytes"))
                await handle(self, message)
            except Refused as refused:
                self.refuse(refused)

    def refuse(self, refused: Refused) -> None:
        """Answer with an error frame; close when the strikes run out."""
        if refused.strike:
            log.warning(
                "client error",
                extra={"conn": self.id, "kind": self.kind, "code": int(refused.code), "reason": refused.reason},
            )
        self.send(refused.frame())
        if self.gate.strike(refused):
            self.close_after_pending(refused.code, f"too many bad messages: {refused.reason}")

    async def run(self, handle: Handle) -> None:
        """Serve until the client leaves or is closed; errors of a vanished socket end it quietly."""
        reader = asyncio.create_task(self._read_loop(handle), name=f"rtc-read-{self.id}")
        sender = asyncio.create_task(self._send_loop(), name=f"rtc-send-{self.id}")
        try:
            done, _ = await asyncio.wait({reader, sender}, return_when=asyncio.FIRST_COMPLETED)
            if reader in done and reader.exception() is None and self.closing is not None:
                # A close was requested: let the sender flush the queue and send the close frame.
                await asyncio.wait({sender}, timeout=CLOSE_TIMEOUT)
        finally:
            for task in (reader, sender):
                task.cancel()
            results = await asyncio.gather(reader, sender, return_exceptions=True)
        for result in results:
            if isinstance(result, (WebSocketDisconnect, OSError, RuntimeError, TimeoutError)):
                log.info("connection ended", extra={"conn": self.id, "kind": self.kind, "error": repr(result)})
            elif isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                raise result
