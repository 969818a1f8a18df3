"""The front door for ``/yjs``: y-websocket connections served without the per-connection ASGI chain.

Why: every ``/yjs`` connection used to live inside an ASGI call (uvicorn's ``run_asgi``, Starlette's
error and exception middleware, its router, the endpoint), with a Starlette ``WebSocket``, uvicorn's
``asyncio.Queue`` between the socket and a reader task, and a task per connection for the reader and
one for the endpoint: about two dozen coroutine frames and 30 KiB of Python objects per idle
connection, and per incoming frame a queue put, a task wake-up and Starlette's state checks.

Here the websocket protocol that uvicorn's HTTP protocol hands an upgraded ``/yjs/...`` connection to
(``DoorHttpProtocol``) is ``YjsDoor``: uvicorn's own websockets-sansio protocol (the handshake, the
keepalive pings, the close handshake, the parser's limits and errors, graceful shutdown with 1012 are
all its code), with the ASGI part replaced by direct calls into the room:

- the handshake is completed at once, then one short task runs the door (``admit``: origin, token,
  room identity, the extensions' ``on_authenticate``) and the join, exactly as ``yjs_endpoint``
  does, with the same close codes; frames that arrive meanwhile wait (reading paused) and go in, in
  order, once the member has joined;
- each incoming binary message is handed to ``Room.receive`` from ``data_received``, after the same
  rate, size and text checks as ``websocket.read_frames``, so no queue and no reader task;
- a member's frames are written like ``StarletteTransport`` writes them (``frames.py``: built once
  per broadcast, one ``transport.write``), and a send that finds the socket's buffer full waits for
  uvicorn's ``writable``, so the member's bounded queue and its 4503 kick work as before;
- once joined, an idle connection holds no task at all: a member's frames are written at once, and
  a sender task exists only while frames wait for a full socket (``Member._start_sender``). Callbacks
  (the connection lost, the sender failed, the member kicked) end the membership; a kicked member
  gets its close frame from a short task bounded by ``CLOSE_TIMEOUT``.

Every other websocket path, and ``/yjs`` itself with ``yjs_door`` off, goes to the ASGI app as
before. Nothing of the ASGI middleware applied to ``/yjs`` websockets: ``BodyLimit`` and
``RoomIdentityDoor`` act on HTTP only (the room identity check is part of ``admit``), and Starlette's
error middleware only logs what escapes an endpoint (here: ``log.exception`` and 1011).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any
from urllib.parse import unquote

from starlette.requests import HTTPConnection
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State

from pairroom.protocol.sync import CloseCode, ProtocolError
from pairroom.rooms.limits import TokenBucket
from pairroom.rooms.member import Member, MemberState
from pairroom.rooms.room import Room
from pairroom.web.auth import AuthError, admit
from pairroom.web.frames import FrameWriter, framed
from pairroom.web.http_limits import TimedHttpToolsProtocol
from pairroom.web.hub import Hub
from pairroom.web.keepalive import KeepaliveWhileSending
from pairroom.web.websocket import (
    CLOSE_TIMEOUT,
    JoinRefused,
    client_error,
    join_room,
    report_task_failure,
    room_name_from_path,
    truncate_reason,
)

log = logging.getLogger("pairroom.ws")

PREFIX = "/yjs/"  # the route ``/yjs/{path:path}``: the room is the path's last segment
RAW_PREFIX = PREFIX.encode()
_OPEN = State.OPEN
_MEMBER_OPEN = MemberState.OPEN
_KICKED = MemberState.KICKED
_BINARY, _CONT, _TEXT = Opcode.BINARY, Opcode.CONT, Opcode.TEXT
_PING, _PONG, _CLOSE = Opcode.PING, Opcode.PONG, Opcode.CLOSE


class DoorHttpProtocol(TimedHttpToolsProtocol):
    """The HTTP protocol: a websocket upgrade to ``/yjs/...`` goes to ``YjsDoor`` (set as
    ``config.yjs_door``), every other upgrade to the configured websocket protocol and the ASGI app."""

    def handle_websocket_upgrade(self) -> None:
        door = getattr(self.config, "yjs_door", None)
        # the request target as sent (a spelling of /yjs/ in percent escapes reaches the same
        # endpoint through Starlette, with the same checks)
        if door is None or not self.url.startswith(RAW_PREFIX):
            super().handle_websocket_upgrade()
            return
        asgi_protocol = self.ws_protocol_class
        self.ws_protocol_class = door
        try:
            super().handle_websocket_upgrade()
        finally:
            self.ws_protocol_class = asgi_protocol


class _Discard:
    """Stands in for uvicorn's receive queue: the door hands frames to the room, so what uvicorn's
    code would queue for an ASGI app (disconnect events) has no reader."""

    __slots__ = ()

    def put_nowait(self, item: object) -> None:
        return None


_DISCARD = _Discard()


class Writable:
    """``asyncio.Event`` as uvicorn's ``writable`` uses it (``set``, ``clear``, ``is_set``, ``wait``),
    without the deque an Event makes at once (about 0.6 KiB per idle connection): a writer waits only
    on a full socket buffer, so the list of waiters is made then."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = True
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if self._set:
            return
        self._set = True
        for waiter in self._waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> bool:
        if self._set:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
            return True
        finally:
            self._waiters.remove(waiter)
            if not self._waiters:
                self._waiters = None


class DoorTransport:
    """A member's connection through the door: what ``Member`` needs (``send``, ``send_now``, ``close``)."""

    __slots__ = ("door",)

    def __init__(self, door: YjsDoor) -> None:
        self.door = door

    @property
    def frame_writer(self) -> FrameWriter | None:
        """Whether this connection takes frames built once per broadcast (as ``StarletteTransport``
        says it); ``send_now`` does the same checks inline."""
        return None if self.door.compressed else FrameWriter(self.door)

    def send_now(self, data: bytes) -> Any:
        """Write now if the socket takes it (None), else a coroutine that waits for it to drain."""
        door = self.door
        if door.writable.is_set() and not door.close_sent and not door.disconnected and door.conn.state is _OPEN:
            if door.compressed:  # permessage-deflate: framed per connection
                door.conn.send_binary(data)
                door.transport.write(b"".join(door.conn.data_to_send()))
            else:
                door.transport.write(framed(data))
            return None
        return self.send(data)

    def send_now_many(self, messages: list[bytes]) -> bool:
        """Several messages in one socket write if the socket takes them now; False: not written."""
        writer = self.frame_writer
        return writer is not None and writer.write_many(messages)

    async def send(self, data: bytes) -> None:
        door = self.door
        await door.writable.wait()  # the socket's buffer is below its high-water mark again
        if door.disconnected:
            raise ConnectionError("connection lost")
        if door.close_sent or door.conn.state is not _OPEN:
            raise ConnectionError("connection closing")
        if door.compressed:  # permessage-deflate: framed per connection
            door.conn.send_binary(data)
            door.transport.write(b"".join(door.conn.data_to_send()))
        else:
            door.transport.write(framed(data))

    async def close(self, code: int, reason: str) -> None:
        door = self.door
        await door.writable.wait()
        door.send_close(code, reason)


# websockets' own log of a connection, which uvicorn points at ``uvicorn.error``: at INFO that is one
# bare "connection open" per handshake, which the room's "joined" line (room, connection, user)
# already says, and it cost a tenth of the server's work while 10,000 clients connected.
_HANDSHAKE_LOG = logging.getLogger("pairroom.door.websockets")
_HANDSHAKE_LOG.setLevel(logging.WARNING)


class YjsDoor(KeepaliveWhileSending):
    """One ``/yjs`` connection: uvicorn's websockets-sansio protocol calling the room directly."""

    # Slots for uvicorn's attributes as well as ours: with more than 30 of them an instance's dict
    # leaves the class's shared keys and costs about 1.5 KiB per connection; in slots it is never made.
    __slots__ = (
        # uvicorn's WebSocketsSansIOProtocol
        "app",
        "app_state",
        "asgi_version",
        "client",
        "close_sent",
        "close_timeout",
        "close_timer",
        "config",
        "conn",
        "connections",
        "curr_msg_data_type",
        "default_headers",
        "disconnected",
        "frames",
        "handshake_complete",
        "handshake_initiated",
        "initial_response",
        "last_ping_rtt",
        "logger",
        "loop",
        "pending_ping_payload",
        "ping_interval",
        "ping_sent_at",
        "ping_timeout",
        "ping_timer",
        "pong_timer",
        "queue",
        "read_paused",
        "request",
        "response",
        "root_path",
        "scheme",
        "scope",
        "server",
        "tasks",
        "transport",
        "writable",
        # the door's
        "yjs_app",
        "hub",
        "compressed",
        "member",
        "room",
        "waiting",
        "bucket",
        "finished",
    )

    def __init__(self, config: Any, server_state: Any, app_state: dict[str, Any], _loop: Any = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.conn.logger = _HANDSHAKE_LOG
        self.conn.debug = False
        self.queue = _DISCARD  # type: ignore[assignment]
        self.writable = Writable()  # type: ignore[assignment]
        self.yjs_app: Any = config.yjs_app  # the Starlette app: its state (the hub, the extensions)
        self.hub: Hub = self.yjs_app.state.hub
        self.compressed = False
        self.member: Member | None = None
        self.room: Room | None = None
        self.waiting: list[bytes] | None = []  # frames that came before the join; None once joined
        self.bucket: TokenBucket | None = None
        self.finished = False

    # -- the handshake, then the door and the join ------------------------------------------------

    def handle_connect(self, event: Request) -> None:
        response = self.conn.accept(event)
        self.handshake_initiated = True
        if response.status_code != 101:  # not a valid websocket handshake: websockets' answer, as uvicorn's
            self.handshake_complete = True
            self.close_sent = True
            self.conn.send_response(response)
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.transport.close()
            return
        del response.headers["Date"]
        response.headers.update(
            (name.decode("latin-1").lower(), value.decode("latin-1")) for name, value in self.default_headers
        )
        self.handshake_complete = True
        self.compressed = bool(self.conn.extensions)
        self.conn.send_response(response)
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.start_keepalive()
        task = self.loop.create_task(self.open(event))
        task.add_done_callback(self.on_task_complete)
        self.tasks.add(task)

    async def open(self, request: Request) -> None:
        try:
            await self.enter(request)
        except Exception:  # a bug on our side, as uvicorn reports an ASGI app's: loud, this connection only
            log.exception("error admitting a connection", extra={"path": request.path.partition("?")[0]})
            if self.close_timer is None:
                self.transport.close()
        finally:
            # websockets' parser keeps the handshake request in its generator's frame for the
            # connection's life; its headers (about 2 KiB) are read by now
            request.headers.clear()

    async def enter(self, request: Request) -> None:
        """``yjs_endpoint`` up to the member's first frame: the door, the join, the room's limits."""
        hub = self.hub
        conn = secrets.token_hex(6)
        hub.metrics.connections.inc()
        try:
            raw_path, _, query = request.path.partition("?")
            name = room_name_from_path(unquote(raw_path)[len(PREFIX) :], hub.settings.max_room_name)
            principal = await admit(self.connection(request, query), name, "yjs")
        except (ProtocolError, AuthError) as exc:
            client_error(hub, conn, None, exc.code, exc.reason)
            await self.refuse(exc.code, exc.reason)
            hub.metrics.connections.dec()
            return
        except BaseException:
            hub.metrics.connections.dec()
            raise
        if self.disconnected:  # the client left while the door checked it: no room to load for it
            hub.metrics.connections.dec()
            return
        try:
            room, member = await join_room(hub, name, conn, principal, DoorTransport(self))
        except JoinRefused as exc:
            await self.refuse(exc.code, exc.reason)
            hub.metrics.connections.dec()
            return
        except BaseException:
            hub.metrics.connections.dec()
            raise
        self.member, self.room = member, room
        member.on_kick = self.kicked
        self.bucket = TokenBucket(hub.settings.rate_limit, hub.settings.rate_burst)
        member.on_send_failed = self.send_failed
        if self.disconnected or self.close_sent:  # the connection ended or closed during the door
            member.gone()
            self.loop.call_soon(self.finish)
            return
        waiting, self.waiting = self.waiting or [], None
        for data in waiting:
            self.deliver(data)
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()

    def connection(self, request: Request, query: str) -> HTTPConnection:
        """What ``admit`` reads (headers, ``?token=``, the app), as a Starlette connection."""
        scope = {
            "type": "websocket",
            "path": unquote(request.path.partition("?")[0]),
            "headers": [
                (key.lower().encode("latin-1"), value.encode("latin-1")) for key, value in request.headers.raw_items()
            ],
            "query_string": query.encode("latin-1"),
            "app": self.yjs_app,
        }
        return HTTPConnection(scope)

    async def refuse(self, code: int, reason: str) -> None:
        """Close a connection that did not become a member; then the socket, as uvicorn does when an
        ASGI endpoint returns."""
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self.writable.wait()
        except TimeoutError:
            log.info("close frame not delivered", extra={"error": "timeout"})
        else:
            self.send_close(code, reason)
        if self.close_timer is None:
            self.transport.close()

    def send_close(self, code: int, reason: str) -> None:
        """Start the close handshake (uvicorn's ``websocket.close``): the peer's echo or a timer ends it."""
        if self.disconnected or self.close_sent or self.transport.is_closing() or self.conn.state is not _OPEN:
            return
        self.conn.send_close(code, truncate_reason(reason))
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        self.close_timer = self.loop.call_later(self.close_timeout, self.transport.close)

    # -- incoming messages --------------------------------------------------------------------------

    def handle_events(self) -> None:
        """uvicorn's dispatch, with the opcodes compared by identity to module constants (an enum
        member read through its class costs ten plain reads on Python 3.11), binary first; a frame
        counts as a sign of life for the keepalive (``web/keepalive.py``)."""
        self.heard = True
        for event in self.conn.events_received():
            if type(event) is not Frame:
                self.handle_connect(event)  # type: ignore[arg-type]
                continue
            opcode = event.opcode
            if opcode is _BINARY:
                self.handle_bytes(event)
            elif opcode is _CONT:
                self.handle_cont(event)
            elif opcode is _TEXT:
                self.handle_text(event)
            elif opcode is _PING:
                self.handle_ping()
            elif opcode is _PONG:
                self.handle_pong(event)
            elif opcode is _CLOSE:
                self.handle_close(event)

    def handle_bytes(self, event: Frame) -> None:
        if not event.fin:
            self.curr_msg_data_type = "bytes"
            self.frames = [event.data]  # type: ignore[list-item]
            return
        if self.waiting is None:
            self.deliver(event.data)  # type: ignore[arg-type]
        else:
            self.hold(event.data)  # type: ignore[arg-type]

    def send_receive_event_to_app(self) -> None:
        """A whole message (text, or binary in fragments): to the room, or refused if text."""
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        if self.close_sent:
            return
        if self.curr_msg_data_type == "text":
            try:
                data.decode()
            except UnicodeDecodeError:
                self.logger.info("Invalid UTF-8 sequence received from client.")
                self.conn.send_close(1007)
                self.handle_parser_exception()
                return
            data = None  # type: ignore[assignment]
        if self.waiting is None:
            self.deliver(data)
        else:
            self.hold(data)

    def hold(self, data: bytes | None) -> None:
        """A message before the member joined: kept in order, reading paused until the join."""
        assert self.waiting is not None
        self.waiting.append(data)  # type: ignore[arg-type]
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def deliver(self, data: bytes | None) -> None:
        """``websocket.read_frames``' checks, then the room; None stands for a text message."""
        member = self.member
        room = self.room
        if member is None or room is None or member.state is not _MEMBER_OPEN:
            return
        hub = self.hub
        try:
            if data is None:
                raise ProtocolError(CloseCode.UNSUPPORTED_DATA, "text frames are not supported; send binary messages")
            hub.metrics.received_frame(len(data))
            assert self.bucket is not None
            if not self.bucket.take():
                raise ProtocolError(
                    CloseCode.RATE_LIMITED,
                    f"more than {hub.settings.rate_limit:g} messages a second; slow down",
                )
            limit = hub.settings.max_message_bytes
            if len(data) > limit:
                raise ProtocolError(CloseCode.MESSAGE_TOO_BIG, f"message of {len(data)} bytes exceeds {limit}")
            room.receive(member, data)
        except ProtocolError as exc:
            client_error(hub, member.id, room.name, exc.code, exc.reason)
            member.kick(exc.code, exc.reason)
        except Exception:
            # A server bug, not the client's fault: say so loudly, close this connection only.
            log.exception("error handling a frame", extra={"room": room.name, "conn": member.id})
            member.kick(CloseCode.INTERNAL_ERROR, "internal error")

    # -- the end of a membership --------------------------------------------------------------------

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.member is not None:
            self.member.gone()
            self.loop.call_soon(self.finish)

    def handle_close(self, event: Frame) -> None:
        super().handle_close(event)
        if self.member is not None and not self.close_sent:  # the peer closed first
            self.member.gone()
            self.loop.call_soon(self.finish)

    def kicked(self, member: Member, code: int, reason: str) -> None:
        # Called inside ``Member.kick``, maybe in the middle of a broadcast over the room's members:
        # leaving the room waits for the next loop turn.
        self.loop.call_soon(self.finish)

    def send_failed(self, error: BaseException) -> None:
        """A frame that waited for the socket could not be written: the membership is over."""
        member, room = self.member, self.room
        assert member is not None and room is not None
        report_task_failure(room, member, "send", error)
        self.finish()

    def finish(self) -> None:
        """Leave the room once, whichever way the membership ended; close a kicked member with its code."""
        if self.finished:
            return
        self.finished = True
        member, room, hub = self.member, self.room, self.hub
        assert member is not None and room is not None
        member.gone()
        hub.registry.leave(room, member)
        log.info("left", extra={"room": room.name, "conn": member.id, "code": member.close_code})
        hub.metrics.connections.dec()
        if member.state is _KICKED:
            if member.close_code == CloseCode.SLOW_CONSUMER:
                hub.metrics.slow_client_disconnects.inc()
                log.warning(
                    "slow client disconnected",
                    extra={"room": room.name, "conn": member.id, "reason": member.close_reason},
                )
            task = self.loop.create_task(self.close_kicked(member))
            task.add_done_callback(self.on_task_complete)
            self.tasks.add(task)
        elif self.close_timer is None and not self.disconnected:
            self.transport.close()

    async def close_kicked(self, member: Member) -> None:
        """Send the kick's close frame; a client that does not read cannot take it (bounded wait)."""
        assert member.close_code is not None
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await member.transport.close(member.close_code, member.close_reason)
        except TimeoutError as exc:
            log.info("close frame not delivered", extra={"conn": member.id, "error": repr(exc)})
        if self.close_timer is None:
            self.transport.close()
