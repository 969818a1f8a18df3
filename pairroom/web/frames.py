"""The send fast path: a server message is framed once and its bytes written straight to each socket.

Why: a profile of a room with 200 watchers spent 50-70 % of its busy samples sending per-member
websocket frames through four layers (Starlette's ``WebSocket.send``, its exception middleware's
wrapper, uvicorn's ``WebSocketsSansIOProtocol.send``, websockets' ``Frame.serialize``), each
building its own objects for bytes that are the same for every member of a broadcast. With
permessage-deflate off a server frame does not depend on the connection (servers never mask), so
this module builds the frame once per message and each member's send is one ``transport.write``.

What it relies on, all of it checked by ``tests/test_frames.py``:

- uvicorn's ``websockets-sansio`` protocol (the default ``ws_impl``), subclassed here as
  ``FramingProtocol`` only to hand the application its own protocol object through the ASGI scope
  (``scope["extensions"]["pairroom.frames"]``). The other stacks (``websockets``, ``wsproto``) do
  not offer it and take the ordinary ASGI path.
- Its state: ``transport`` (the asyncio transport), ``conn`` (websockets' ``ServerProtocol``),
  ``writable`` (cleared while the transport's buffer is above its high-water mark), ``close_sent``
  and ``disconnected``. ``send_binary`` on an open connection with no extension only appends
  ``Frame(OP_BINARY, data).serialize(mask=False)`` to the bytes to write, and changes no state, so
  writing those bytes ourselves is the same as going through it.
- The frame layout of RFC 6455 section 5.2 for an unfragmented, unmasked binary frame, the one
  websockets writes: ``0x82``, then the length in 7, 7+16 or 7+64 bits, then the payload.

Everything that is not the plain case goes the ordinary way, so every guarantee stays where it was:
a socket whose buffer is full (backpressure: the ASGI send waits on ``writable``, and the member's
bounded queue closes a reader that stays behind with 4503), a connection that is closing or gone
(the ASGI send raises, the member ends), a connection that negotiated compression, and close
frames, pings and pongs (uvicorn writes those itself; they interleave with our frames only between
whole frames, since each ``transport.write`` carries whole frames).

A broadcast hands the same ``bytes`` object to every member one after the other, so one remembered
message (kept by reference, so its identity cannot be reused) makes the framing once per broadcast
without any change to the room's API.
"""

from __future__ import annotations

import struct
from collections.abc import MutableMapping
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

from pairroom.web.keepalive import KeepaliveWhileSending

EXTENSION = "pairroom.frames"

# Frames of at most this many bytes are remembered for the next member of a broadcast; a larger one
# (a first sync of a big document, sent to one member) is not kept alive after its send.
REMEMBER_AT_MOST = 256 * 1024

_OPEN = State.OPEN  # an enum member read per write: a module constant is ten times cheaper (3.11)


class FramingProtocol(KeepaliveWhileSending):
    """uvicorn's websockets-sansio protocol, offering itself to the application for direct writes
    (with the keepalive of ``web/keepalive.py``)."""

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:  # the handshake went on to the app (the task has not started yet)
            scope["extensions"][EXTENSION] = {"protocol": self}


def binary_frame(payload: bytes) -> bytes:
    """The unmasked, unfragmented binary frame that carries ``payload`` (RFC 6455 section 5.2)."""
    length = len(payload)
    if length < 126:
        return bytes((0x82, length)) + payload
    if length < 65536:
        return struct.pack("!BBH", 0x82, 126, length) + payload
    return struct.pack("!BBQ", 0x82, 127, length) + payload


class FrameWriter:
    """Writes already-framed messages to one connection when that is the plain case."""

    __slots__ = ("_protocol",)

    def __init__(self, protocol: WebSocketsSansIOProtocol) -> None:
        self._protocol = protocol

    @classmethod
    def for_scope(cls, scope: MutableMapping[str, Any]) -> FrameWriter | None:
        """The writer of an accepted connection, or None if its stack or extensions rule it out."""
        offered = (scope.get("extensions") or {}).get(EXTENSION)
        if not offered:
            return None
        protocol = offered["protocol"]
        if protocol.conn.extensions:  # permessage-deflate: frames differ per connection
            return None
        return cls(protocol)

    def _plain(self) -> bool:
        """Whether the socket takes bytes now: open, not closing, its buffer under the high-water mark."""
        protocol = self._protocol
        return (
            protocol.writable.is_set()
            and not protocol.close_sent
            and not protocol.disconnected
            and protocol.conn.state is _OPEN
        )

    def write(self, message: bytes) -> bool:
        """Write ``message`` as one binary frame if the socket takes it now; False: it was not
        written (the buffer is full, or the connection is closing), use the ordinary send."""
        if not self._plain():
            return False
        self._protocol.transport.write(framed(message))
        return True

    def write_many(self, messages: list[bytes]) -> bool:
        """Write ``messages`` as consecutive binary frames in one socket write, as ``write`` does one."""
        if not self._plain():
            return False
        self._protocol.transport.write(framed_many(messages))
        return True


_last_message: bytes | None = None
_last_frame = b""


def framed(message: bytes) -> bytes:
    """``binary_frame(message)``, built once for the members of one broadcast."""
    global _last_message, _last_frame
    if message is _last_message:
        return _last_frame
    frame = binary_frame(message)
    if len(frame) <= REMEMBER_AT_MOST:
        _last_message, _last_frame = message, frame
    return frame


_last_messages: list[bytes] = []
_last_frames = b""


def framed_many(messages: list[bytes]) -> bytes:
    """The frames of ``messages`` back to back, built once for the members of one send pass that
    get the same messages (compared by identity, as ``framed`` does)."""
    global _last_messages, _last_frames
    last = _last_messages
    if len(messages) == len(last) and all(a is b for a, b in zip(messages, last, strict=True)):
        return _last_frames
    frames = b"".join([binary_frame(message) for message in messages])
    if len(frames) <= REMEMBER_AT_MOST:
        _last_messages, _last_frames = messages, frames
    return frames
