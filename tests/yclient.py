"""A minimal y-websocket client over a raw websocket, for protocol-level tests.

It speaks the protocol with pycrdt the way the npm client does: answers sync step 1 with step 2,
applies step 2 and updates, sends its own updates, and tracks awareness.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import websockets
from pycrdt import Awareness, Doc, Text
from websockets.asyncio.client import ClientConnection

from pairroom.protocol import sync as protocol


class YClient:
    def __init__(self, ws: ClientConnection, doc: Doc | None = None) -> None:
        self.ws = ws
        self.doc = doc or Doc()
        self.awareness = Awareness(self.doc)
        self.synced = asyncio.Event()
        self.received: list[bytes] = []
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self._sub = self.doc.observe(self._on_update)
        self._applying = False
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, url: str, doc: Doc | None = None, **kwargs: Any) -> YClient:
        ws = await websockets.connect(url, max_size=None, **kwargs)
        client = cls(ws, doc)
        await client._send(protocol.sync_step1(client.doc.get_state()))  # the server may refuse at once
        return client

    @property
    def text(self) -> Text:
        return self.doc.get("text", type=Text)

    def _on_update(self, event: Any) -> None:
        if self._applying:
            return
        asyncio.get_running_loop().create_task(self._send(protocol.sync_update(event.update)))

    async def _send(self, frame: bytes) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            await self.ws.send(frame)

    async def send_raw(self, frame: bytes | str) -> None:
        await self.ws.send(frame)

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                assert isinstance(frame, bytes)
                self.received.append(frame)
                msg = protocol.decode_message(frame)
                if msg.type is protocol.MessageType.SYNC:
                    if msg.step is protocol.SyncStep.STEP1:
                        await self._send(protocol.sync_step2(self.doc.get_update(msg.payload)))
                    else:
                        self._applying = True
                        try:
                            self.doc.apply_update(msg.payload)
                        finally:
                            self._applying = False
                        if msg.step is protocol.SyncStep.STEP2:
                            self.synced.set()
                elif msg.type is protocol.MessageType.AWARENESS:
                    self.awareness.apply_awareness_update(msg.payload, "remote")
        except websockets.ConnectionClosed:
            pass
        finally:
            if self.ws.close_code is not None or self.ws.state.name == "CLOSED":
                self.close_code = self.ws.close_code
                self.close_reason = self.ws.close_reason

    async def closed(self, timeout: float = 5.0) -> int | None:
        """Wait until the server closes the connection; return the close code."""
        async with asyncio.timeout(timeout):
            await asyncio.shield(self._reader)
        return self.close_code

    async def set_awareness(self, state: dict[str, Any] | None) -> None:
        self.awareness.set_local_state(state)
        payload = self.awareness.encode_awareness_update([self.awareness.client_id])
        await self.ws.send(protocol.awareness_message(payload))

    def insert(self, index: int, content: str) -> None:
        self.text.insert(index, content)

    async def close(self) -> None:
        """Close the connection; the doc stays usable (offline edits) and can reconnect later."""
        self.doc.unobserve(self._sub)
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
            await self.ws.close()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


async def eventually(check: Callable[[], bool | Awaitable[bool]], timeout: float = 5.0, what: str = "") -> None:
    """Retry ``check`` until it holds or the deadline passes (no fixed sleeps in tests)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result) or isinstance(result, Awaitable):
            result = await result  # type: ignore[misc]
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s: {what or check}")
        await asyncio.sleep(0.01)
