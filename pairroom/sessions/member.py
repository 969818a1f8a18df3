"""A member of a room: one connection, its bounded outbound queue and the task that drains it.

Rooms never await a member. A broadcast appends the same encoded bytes to every member's queue and
returns; each member's sender task writes them at that client's pace. When a client falls so far
behind that its queue passes the limit (messages or bytes), the member is kicked with
``SLOW_CONSUMER``: its queue is dropped as a whole and the client resyncs on reconnect (sync step 1
and 2 carry everything it missed), so nothing is lost and no other member waits for it.

While the sender finds several updates waiting in a row, it merges them with ``merge_updates`` into
one message (clients decode one message per frame, so messages are never concatenated).
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import deque
from typing import Callable, Protocol

from pycrdt import merge_updates

from ..crdt import protocol
from ..crdt.origins import ClientOrigin
from .identity import Principal, Role


class Transport(Protocol):
    """What a member needs from its connection. Adapters raise on failure, never hide it."""

    async def send(self, data: bytes) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...


class MemberState(enum.Enum):
    OPEN = "open"
    KICKED = "kicked"  # closed by the server (slow consumer, protocol error, shutdown)
    GONE = "gone"  # the connection ended


class Member:
    """One connection in one room."""

    def __init__(
        self,
        transport: Transport,
        connection_id: str,
        *,
        principal: Principal | None = None,
        max_queue_messages: int = 2048,
        max_queue_bytes: int = 64 * 1024 * 1024,
        on_sent: Callable[[int], None] | None = None,
    ) -> None:
        self.transport = transport
        self.id = connection_id
        self.principal = principal
        self.role = principal.role if principal else Role.EDITOR  # effective; owners may change it
        self.origin = ClientOrigin(connection_id, principal.user_id if principal else None)
        self.awareness_clients: set[int] = set()  # awareness client ids this connection controls
        self.state = MemberState.OPEN
        self.close_code: int | None = None
        self.close_reason = ""
        self.last_sent = time.monotonic()
        self._max_messages = max_queue_messages
        self._max_bytes = max_queue_bytes
        self._queue: deque[tuple[bytes, bytes | None]] = deque()
        self._queued_bytes = 0
        self._idle: asyncio.Future[None] | None = None  # the sender waits on it when the queue is empty
        self._kicked = asyncio.Event()
        self._on_sent = on_sent
        self.on_kick: Callable[[Member, int, str], None] | None = None

    def __repr__(self) -> str:
        return f"Member({self.id!r}, {self.state.value})"

    @property
    def queued(self) -> int:
        return len(self._queue)

    def send(self, frame: bytes, update: bytes | None = None) -> None:
        """Queue one encoded message; ``update`` is its raw update when it may be merged."""
        if self.state is not MemberState.OPEN:
            return
        self._queue.append((frame, update))
        self._queued_bytes += len(frame)
        if len(self._queue) > self._max_messages or self._queued_bytes > self._max_bytes:
            self.kick(
                protocol.CloseCode.SLOW_CONSUMER,
                f"outbound queue overflow ({len(self._queue)} messages, {self._queued_bytes} bytes); "
                "reconnect to resync",
            )
            return
        self._wake()

    def _wake(self) -> None:
        idle = self._idle
        if idle is not None:
            self._idle = None
            if not idle.done():
                idle.set_result(None)

    def kick(self, code: int, reason: str) -> None:
        """Close this member from the server side; the queue is dropped, the client resyncs."""
        if self.state is not MemberState.OPEN:
            return
        self.state = MemberState.KICKED
        self.close_code, self.close_reason = code, reason
        self._queue.clear()
        self._queued_bytes = 0
        self._kicked.set()
        self._wake()
        if self.on_kick is not None:
            self.on_kick(self, code, reason)

    def gone(self) -> None:
        """The connection ended; stop sending."""
        if self.state is MemberState.OPEN:
            self.state = MemberState.GONE
        self._queue.clear()
        self._queued_bytes = 0
        self._wake()

    async def wait_kicked(self) -> None:
        await self._kicked.wait()

    async def run_sender(self) -> None:
        """Drain the queue until the member is kicked or gone. Send errors propagate."""
        while True:
            if not self._queue:
                if self.state is not MemberState.OPEN:
                    return
                self._idle = asyncio.get_running_loop().create_future()
                await self._idle
                continue
            batch = self._queue
            self._queue = deque()
            self._queued_bytes = 0
            for frame in coalesce(batch):
                await self.transport.send(frame)
                self.last_sent = time.monotonic()
                if self._on_sent is not None:
                    self._on_sent(len(frame))
                if self.state is not MemberState.OPEN:
                    return


def coalesce(batch: deque[tuple[bytes, bytes | None]]) -> list[bytes]:
    """Merge runs of consecutive mergeable updates into one update message each; keep the order."""
    if len(batch) == 1:
        return [batch[0][0]]
    frames: list[bytes] = []
    run: list[tuple[bytes, bytes]] = []
    for frame, update in batch:
        if update is not None:
            run.append((frame, update))
            continue
        if run:
            frames.append(_merged(run))
            run = []
        frames.append(frame)
    if run:
        frames.append(_merged(run))
    return frames


def _merged(run: list[tuple[bytes, bytes]]) -> bytes:
    if len(run) == 1:
        return run[0][0]
    return protocol.sync_update(merge_updates(*(update for _, update in run)))
