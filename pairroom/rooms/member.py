"""A member of a room: one connection, its bounded outbound queue and the task that drains it.

Rooms never await a member. A broadcast appends the same encoded bytes to every member's queue and
returns; each member's sender task writes them at that client's pace. When a client falls so far
behind that its queue passes the limit (messages or bytes), the member is kicked with
``SLOW_CONSUMER``: its queue is dropped as a whole and the client resyncs on reconnect (sync step 1
and 2 carry everything it missed), so nothing is lost and no other member waits for it.

While the sender finds several updates waiting in a row, it merges them with ``merge_updates`` into
one message (clients decode one message per frame, so messages are never concatenated).

When nothing is queued and nothing is being written, ``send`` writes at once through the transport's
``send_now`` (when it has one) instead of waking the sender task: a socket that takes the bytes, the
usual case, costs no task switch. A write that has to wait finishes in the background, and what is
sent meanwhile queues behind it.

Inside ``one_write_each`` (a room's send pass that carries both an edit and presence) those direct
writes are gathered per member and go out together, several frames in one socket write: the
socket write is the largest cost of a broadcast, and an edit and the cursor that followed it then
arrive at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Protocol

from pycrdt import merge_updates

from pairroom.protocol import sync as protocol
from pairroom.protocol.origins import ClientOrigin
from pairroom.rooms.identity import Principal, Role

log = logging.getLogger("pairroom.member")


class Transport(Protocol):
    """What a member needs from its connection. Adapters raise on failure, never hide it.

    An adapter may also offer ``send_now(data) -> Awaitable[None] | None``: write without
    suspending if the socket takes the bytes (return None), else return what finishes the write."""

    async def send(self, data: bytes) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...


class MemberState(enum.Enum):
    OPEN = "open"
    KICKED = "kicked"  # closed by the server (slow consumer, protocol error, shutdown)
    GONE = "gone"  # the connection ended


# On Python 3.11 ``MemberState.OPEN`` goes through ``EnumType.__getattr__``, ten times the cost of a
# plain attribute; the per-member send path, run for every member of every broadcast, reads it here.
_OPEN = MemberState.OPEN

# The frames of the send pass under way (see ``one_write_each``), per member, in order; None outside one.
_held: dict[Member, list[tuple[bytes, bytes | None]]] | None = None


@contextlib.contextmanager
def one_write_each() -> Iterator[None]:
    """Gather the frames members would write at once, and write each member's together at the end.

    For synchronous code only (a room's send pass): nothing else writes to these members meanwhile,
    so a member that could write at the start of the pass still can at its end, and the order of its
    frames is kept. Nested passes join the outer one."""
    global _held
    if _held is not None:
        yield
        return
    _held = {}
    try:
        yield
    finally:
        held, _held = _held, None
        for member, frames in held.items():
            member._release(frames)


class Member:
    """One connection in one room."""

    # thousands of idle connections per node: no per-instance dict
    __slots__ = (
        "transport",
        "id",
        "principal",
        "role",
        "origin",
        "awareness_clients",
        "state",
        "close_code",
        "close_reason",
        "last_sent",
        "_max_messages",
        "_max_bytes",
        "_queue",
        "_queued_bytes",
        "_idle",
        "_send_now",
        "_inflight",
        "_writing",
        "_kicked",
        "_on_sent",
        "_sender",
        "on_kick",
        "on_send_failed",
    )

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
        # a list, not a deque: the sender takes the whole queue at once, never from its front, and an
        # empty list is 56 bytes where a deque is 0.6 KiB, per idle member
        self._queue: list[tuple[bytes, bytes | None]] = []
        self._queued_bytes = 0
        self._idle: asyncio.Future[None] | None = None  # the sender waits on it when the queue is empty
        self._send_now: Callable[[bytes], Awaitable[None] | None] | None = getattr(transport, "send_now", None)
        self._inflight: asyncio.Future[None] | None = None  # a direct write that had to wait
        self._writing = False  # the sender task is writing a batch
        self._kicked: asyncio.Future[None] | None = None  # made when first awaited (see ``kicked``)
        self._on_sent = on_sent
        self._sender: asyncio.Task[None] | None = None  # only while frames wait (see ``_start_sender``)
        self.on_kick: Callable[[Member, int, str], None] | None = None
        # Told the error when a queued frame could not be written: the connection is over (the member
        # is gone by then); the transport's owner reports it and leaves the room.
        self.on_send_failed: Callable[[BaseException], None] | None = None

    def __repr__(self) -> str:
        return f"Member({self.id!r}, {self.state.value})"

    @property
    def queued(self) -> int:
        return len(self._queue)

    def send(self, frame: bytes, update: bytes | None = None) -> None:
        """Queue one encoded message; ``update`` is its raw update when it may be merged."""
        if self.state is not _OPEN:
            return
        if self._send_now is not None and not self._queue and not self._writing and self._inflight is None:
            if _held is None:
                self._write_now(frame)
                return
            frames = _held.get(self)
            if frames is None:
                _held[self] = [(frame, update)]
            else:
                frames.append((frame, update))
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

    def _write_now(self, frame: bytes) -> None:
        assert self._send_now is not None
        try:
            pending = self._send_now(frame)
        except Exception as exc:  # noqa: BLE001 - the connection broke under the write: it is over
            log.info("write failed", extra={"conn": self.id, "error": repr(exc)})
            self.gone()
            return
        self.last_sent = time.monotonic()
        if self._on_sent is not None:
            self._on_sent(len(frame))
        if pending is not None:
            self._inflight = asyncio.ensure_future(pending)
            self._inflight.add_done_callback(self._inflight_done)

    def _release(self, frames: Sequence[tuple[bytes, bytes | None]]) -> None:
        """Write a send pass's frames: in one write when the transport can (``send_now_many``),
        else one by one through ``send``, which queues behind a write that has to wait."""
        if self.state is not _OPEN:
            return
        if len(frames) > 1:
            many = getattr(self.transport, "send_now_many", None)
            if many is not None:
                messages = [frame for frame, _ in frames]
                try:
                    written = many(messages)
                except Exception as exc:  # noqa: BLE001 - the connection broke under the write: it is over
                    log.info("write failed", extra={"conn": self.id, "error": repr(exc)})
                    self.gone()
                    return
                if written:
                    self.last_sent = time.monotonic()
                    if self._on_sent is not None:
                        for message in messages:
                            self._on_sent(len(message))
                    return
        for frame, update in frames:
            self.send(frame, update)

    def _inflight_done(self, write: asyncio.Future[None]) -> None:
        self._inflight = None
        if not write.cancelled() and write.exception() is not None:
            log.info("write failed", extra={"conn": self.id, "error": repr(write.exception())})
            self.gone()
        self._wake()  # frames queued behind it can go

    def _wake(self) -> None:
        idle = self._idle
        if idle is not None:
            self._idle = None
            if not idle.done():
                idle.set_result(None)
        else:
            self._start_sender()

    @property
    def sending(self) -> bool:
        """A sender task is writing frames that waited (they wait only for a full socket)."""
        return self._sender is not None

    def _start_sender(self) -> None:
        """Frames wait (behind a write that had to wait, or for a full socket): a task writes them as
        the socket drains and ends once they are written, so an idle member holds no task, coroutine
        and future (about 0.8 KiB per connection)."""
        if self._sender is not None or self.state is not _OPEN or not self._queue:
            return
        self._sender = asyncio.get_running_loop().create_task(self._drain(), name=f"send {self.id}")
        self._sender.add_done_callback(self._sender_done)

    def _sender_done(self, sender: asyncio.Task[None]) -> None:
        if sender is not self._sender:
            return
        self._sender = None
        if sender.cancelled():
            return
        error = sender.exception()
        if error is None:
            self._start_sender()  # frames queued after the sender's last look, before this callback
            return
        self.gone()
        if self.on_send_failed is not None:
            self.on_send_failed(error)
        else:
            log.info("write failed", extra={"conn": self.id, "error": repr(error)})

    def kick(self, code: int, reason: str) -> None:
        """Close this member from the server side; the queue is dropped, the client resyncs."""
        if self.state is not MemberState.OPEN:
            return
        self.state = MemberState.KICKED
        self.close_code, self.close_reason = code, reason
        self._queue.clear()
        self._queued_bytes = 0
        if self._kicked is not None and not self._kicked.done():
            self._kicked.set_result(None)
        self._wake()
        if self.on_kick is not None:
            self.on_kick(self, code, reason)

    def gone(self) -> None:
        """The connection ended; stop sending (a write that waits for the socket is cancelled)."""
        if self.state is MemberState.OPEN:
            self.state = MemberState.GONE
        self._queue.clear()
        self._queued_bytes = 0
        self._wake()
        sender = self._sender
        if sender is not None and sender is not asyncio.current_task() and not sender.done():
            sender.cancel()

    def kicked(self) -> asyncio.Future[None]:
        """Done once the server closes this member. A future rather than an event and a task waiting
        on it: per idle connection that is one object instead of five."""
        if self._kicked is None:
            self._kicked = asyncio.get_running_loop().create_future()
            if self.state is MemberState.KICKED:
                self._kicked.set_result(None)
        return self._kicked

    async def wait_kicked(self) -> None:
        await asyncio.shield(self.kicked())

    async def _drain(self) -> None:
        """Write the queue until nothing is queued or being written, or the member is kicked or gone.
        Send errors propagate (to ``_sender_done``)."""
        while True:
            if not self._queue or self._inflight is not None:
                if self.state is not MemberState.OPEN:
                    return
                if not self._queue and self._inflight is None:
                    return
                self._idle = asyncio.get_running_loop().create_future()
                await self._idle
                continue
            batch = self._queue
            self._queue = []
            self._queued_bytes = 0
            self._writing = True
            try:
                for frame in coalesce(batch):
                    await self.transport.send(frame)
                    self.last_sent = time.monotonic()
                    if self._on_sent is not None:
                        self._on_sent(len(frame))
                    if self.state is not _OPEN:
                        return
            finally:
                self._writing = False


def coalesce(batch: Sequence[tuple[bytes, bytes | None]]) -> list[bytes]:
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
