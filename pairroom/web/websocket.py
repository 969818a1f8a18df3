"""The y-websocket endpoint: ``/yjs/{room}``. Adapts a Starlette websocket to a room member.

Per connection a reader task runs (frames into ``Room.receive``) beside two futures: the member
being kicked, and a write that failed (the member's sender, which runs only while frames wait for a
full socket). Whichever ends first ends the connection; a kicked member is closed with its code and
reason. Client mistakes are logged as one warning line each, without a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Coroutine
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from pairroom.protocol.sync import CloseCode, ProtocolError
from pairroom.rooms.identity import Principal
from pairroom.rooms.limits import TokenBucket
from pairroom.rooms.member import Member, MemberState, Transport
from pairroom.rooms.registry import RoomLoadError
from pairroom.rooms.room import Room
from pairroom.web.auth import AuthError, admit
from pairroom.web.frames import EXTENSION, FrameWriter
from pairroom.web.hub import Hub

log = logging.getLogger("pairroom.ws")

MAX_CLOSE_REASON = 123  # bytes allowed in a close frame's reason
CLOSE_TIMEOUT = 5.0  # a client that does not read cannot take a close frame either


class StarletteTransport:
    """A member's connection. Messages go out through ``FrameWriter`` (framed once per broadcast,
    written straight to the socket; see ``pairroom/web/frames.py``) when the connection allows it,
    else through the ASGI send, which also waits while the socket's buffer is full."""

    __slots__ = ("websocket", "frame_writer", "inline")

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self.frame_writer = FrameWriter.for_scope(websocket.scope)
        # Driving the ASGI send by hand (``send_now``) relies on it waiting only on asyncio futures,
        # as uvicorn's does; another server's send may wait on its own awaitables (Granian's do).
        self.inline = EXTENSION in (websocket.scope.get("extensions") or {}) or _is_uvicorns(websocket)

    async def send(self, data: bytes) -> None:
        if self.frame_writer is not None and self.frame_writer.write(data):
            return
        await self.websocket.send({"type": "websocket.send", "bytes": data})

    def send_now(self, data: bytes) -> Awaitable[None] | None:
        """Start the send here rather than in a task: the ASGI send of a writable socket completes
        without suspending, so a broadcast to many members costs no task switch per member. If it
        does suspend (the socket's buffer is full), the rest runs as a task, returned to the caller."""
        if self.frame_writer is not None and self.frame_writer.write(data):
            return None
        send = self.websocket.send({"type": "websocket.send", "bytes": data})
        if not self.inline:
            return asyncio.ensure_future(send)
        try:
            blocker = send.send(None)
        except StopIteration:
            return None
        return asyncio.ensure_future(_finish(send, blocker))

    def send_now_many(self, messages: list[bytes]) -> bool:
        """Write several messages in one socket write when the fast path can; False: not written."""
        return self.frame_writer is not None and self.frame_writer.write_many(messages)

    async def close(self, code: int, reason: str) -> None:
        if self.websocket.application_state is WebSocketState.DISCONNECTED:
            return
        await self.websocket.close(code, truncate_reason(reason))


def _is_uvicorns(websocket: WebSocket) -> bool:
    """Whether the connection's ASGI send is a method of one of uvicorn's protocols."""
    owner = getattr(getattr(websocket, "_send", None), "__self__", None)
    return type(owner).__module__.startswith("uvicorn.")


async def _finish(coroutine: Coroutine[Any, Any, None], blocker: Any) -> None:
    """Drive a coroutine that suspended on ``blocker`` to its end, as a task would have."""
    while True:
        try:
            if blocker is None:  # a bare yield: give the loop one turn
                await asyncio.sleep(0)
            else:
                blocker._asyncio_future_blocking = False  # taken over, as Task.__step does
                await blocker
        except BaseException as exc:  # noqa: BLE001 - deliver the wait's failure where the coroutine waited
            try:
                blocker = coroutine.throw(exc)
            except StopIteration:
                return
            continue
        try:
            blocker = coroutine.send(None)
        except StopIteration:
            return


def truncate_reason(reason: str) -> str:
    encoded = reason.encode()
    if len(encoded) <= MAX_CLOSE_REASON:
        return reason
    return encoded[: MAX_CLOSE_REASON - 3].decode("utf-8", "ignore") + "..."


def room_name_from_path(path: str, max_length: int) -> str:
    """The room is the last path segment after /yjs/. Raises ProtocolError if it is unusable."""
    name = path.rsplit("/", 1)[-1]
    if not name:
        raise ProtocolError(CloseCode.INVALID_ROOM, "room name is empty")
    if len(name) > max_length:
        raise ProtocolError(CloseCode.INVALID_ROOM, f"room name longer than {max_length} characters")
    if not name.isprintable():
        raise ProtocolError(CloseCode.INVALID_ROOM, "room name has unprintable characters")
    return name


async def yjs_endpoint(websocket: WebSocket) -> None:
    hub: Hub = websocket.app.state.hub
    conn = secrets.token_hex(6)
    await websocket.accept()
    hub.metrics.connections.inc()
    transport = StarletteTransport(websocket)
    try:
        try:
            name = room_name_from_path(websocket.path_params["path"], hub.settings.max_room_name)
            # The door, before any document byte is sent: origin, then token.
            principal = await admit(websocket, name, "yjs")
        except (ProtocolError, AuthError) as exc:
            client_error(hub, conn, None, exc.code, exc.reason)
            await transport.close(exc.code, exc.reason)
            return
        try:
            room, member = await join_room(hub, name, conn, principal, transport)
        except JoinRefused as exc:
            await transport.close(exc.code, exc.reason)
            return
        try:
            await serve_member(hub, websocket, room, member)
        finally:
            hub.registry.leave(room, member)
            log.info("left", extra={"room": name, "conn": conn, "code": member.close_code})
    finally:
        hub.metrics.connections.dec()


class JoinRefused(Exception):
    """A member the door let in that the room cannot take: the close code and reason to send."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


async def join_room(hub: Hub, name: str, conn: str, principal: Principal, transport: Transport) -> tuple[Room, Member]:
    """The join after the door, the same for both ``/yjs`` paths (this endpoint and ``door.py``):
    the member, its room loaded, the room's size limit. Raises ``JoinRefused``."""
    member = Member(
        transport,
        conn,
        principal=principal,
        max_queue_messages=hub.settings.max_queue_messages,
        max_queue_bytes=hub.settings.max_queue_bytes,
        on_sent=hub.metrics.sent,
    )
    try:
        room = await hub.registry.join(name, member)
    except RoomLoadError as exc:
        hub.metrics.room_load_failures.inc()
        log.error("join refused", extra={"room": name, "conn": conn, "error": str(exc)})
        raise JoinRefused(CloseCode.TRY_AGAIN_LATER, "room could not be loaded; try again") from exc
    if len(room.members) > hub.settings.max_members:
        hub.registry.leave(room, member)
        reason = f"room is full ({hub.settings.max_members} members)"
        client_error(hub, conn, name, CloseCode.ROOM_FULL, reason)
        raise JoinRefused(CloseCode.ROOM_FULL, reason)
    log.info("joined", extra={"room": name, "conn": conn, "user": principal.user_id})
    return room, member


# What a vanished peer raises from a read or a write; anything else is our own error.
PEER_GONE = (OSError, WebSocketDisconnect, RuntimeError, ConnectionError)


async def serve_member(hub: Hub, websocket: WebSocket, room: Room, member: Member) -> None:
    reader = asyncio.create_task(read_frames(hub, websocket, room, member))
    kicked = member.kicked()  # a future: cancelling it below does not touch the member
    send_failed: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

    def failed(error: BaseException) -> None:
        if not send_failed.done():
            send_failed.set_result(error)

    member.on_send_failed = failed
    waits: set[asyncio.Future[Any]] = {reader, kicked, send_failed}
    try:
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        member.gone()
        for waiting in waits:
            waiting.cancel()
        read = await asyncio.gather(reader, return_exceptions=True)
    if reader in done and isinstance(read[0], Exception):
        report_task_failure(room, member, "read", read[0])
    if send_failed in done:
        report_task_failure(room, member, "send", send_failed.result())
    # Leave before closing: a kicked client that stopped reading may hold the close for a while,
    # and the others must not see its presence meanwhile.
    hub.registry.leave(room, member)
    if member.state is MemberState.KICKED:
        if member.close_code == CloseCode.SLOW_CONSUMER:
            hub.metrics.slow_client_disconnects.inc()
            log.warning(
                "slow client disconnected",
                extra={"room": room.name, "conn": member.id, "reason": member.close_reason},
            )
        await close_quietly(member, websocket)


def report_task_failure(room: Room, member: Member, task: str, error: BaseException) -> None:
    """A connection's ``task`` (reading or sending) that ended with ``error``: a vanished peer
    (mid-send or mid-read) ends the connection with nothing to report; anything else is a bug on our
    side, logged with its traceback."""
    if isinstance(error, PEER_GONE):
        log.info("connection ended", extra={"room": room.name, "conn": member.id, "error": repr(error)})
    else:
        log.error(
            "connection task failed",
            exc_info=error,
            extra={"room": room.name, "conn": member.id, "task": task},
        )


async def close_quietly(member: Member, websocket: WebSocket) -> None:
    """Send the kick's close frame; a socket that is already gone cannot receive it."""
    assert member.close_code is not None
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await member.transport.close(member.close_code, member.close_reason)
    except (RuntimeError, OSError, WebSocketDisconnect, TimeoutError) as exc:
        log.info("close frame not delivered", extra={"conn": member.id, "error": repr(exc)})


async def read_frames(hub: Hub, websocket: WebSocket, room: Room, member: Member) -> None:
    limit = hub.settings.max_message_bytes
    metrics = hub.metrics
    bucket = TokenBucket(hub.settings.rate_limit, hub.settings.rate_burst)
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        data = message.get("bytes")
        try:
            if data is None:
                raise ProtocolError(CloseCode.UNSUPPORTED_DATA, "text frames are not supported; send binary messages")
            metrics.received_frame(len(data))
            if not bucket.take():
                raise ProtocolError(
                    CloseCode.RATE_LIMITED,
                    f"more than {hub.settings.rate_limit:g} messages a second; slow down",
                )
            if len(data) > limit:
                raise ProtocolError(CloseCode.MESSAGE_TOO_BIG, f"message of {len(data)} bytes exceeds {limit}")
            room.receive(member, data)
        except ProtocolError as exc:
            client_error(hub, member.id, room.name, exc.code, exc.reason)
            member.kick(exc.code, exc.reason)
            return
        except Exception:
            # A server bug, not the client's fault: say so loudly, close this connection only.
            log.exception("error handling a frame", extra={"room": room.name, "conn": member.id})
            member.kick(CloseCode.INTERNAL_ERROR, "internal error")
            return


def client_error(hub: Hub, conn: str, room: str | None, code: int, reason: str) -> None:
    hub.metrics.client_errors.labels(code=str(int(code))).inc()
    log.warning("client error", extra={"room": room, "conn": conn, "code": int(code), "reason": reason})
