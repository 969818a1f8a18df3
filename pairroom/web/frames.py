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

The frames a connection is given in one pass of the event loop go out in one write at the end of
the pass (``_flush_corked``, scheduled once per pass for all connections): a write is a syscall,
the largest cost left per member, and a member often gets two messages in one pass (an edit and the
author's cursor, one from the room's broadcast and one from the presence relay). The order of a
connection's frames is kept: a send that has to take the ordinary path first writes what this
module holds for it, and so does the close (``StarletteTransport.close``). A close that uvicorn
starts itself (server shutdown with 1012, a failed keepalive, the client's own close) drops what
the pass held: nothing may follow a close frame, and the client resyncs when it reconnects.

A broadcast hands the same ``bytes`` object to every member one after the other, so one remembered
message (kept by reference, so its identity cannot be reused) makes the framing once per broadcast
without any change to the room's API.
"""

from __future__ import annotations

import logging
import struct
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

log = logging.getLogger("pairroom.ws")

EXTENSION = "pairroom.frames"

# Frames of at most this many bytes are remembered for the next member of a broadcast; a larger one
# (a first sync of a big document, sent to one member) is not kept alive after its send.
REMEMBER_AT_MOST = 256 * 1024

_OPEN = State.OPEN  # an enum member read per write: a module constant is ten times cheaper (3.11)


class FramingProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol, offering itself to the application for direct writes."""

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

    __slots__ = ("_protocol", "_pending")

    def __init__(self, protocol: WebSocketsSansIOProtocol) -> None:
        self._protocol = protocol
        self._pending: list[bytes] | None = None  # frames taken in this loop pass, not yet written

    @classmethod
    def for_scope(cls, scope: dict[str, Any]) -> FrameWriter | None:
        """The writer of an accepted connection, or None if its stack or extensions rule it out."""
        offered = (scope.get("extensions") or {}).get(EXTENSION)
        if not offered:
            return None
        protocol = offered["protocol"]
        if protocol.conn.extensions:  # permessage-deflate: frames differ per connection
            return None
        return cls(protocol)

    def _open(self) -> bool:
        protocol = self._protocol
        return not (
            protocol.close_sent
            or protocol.disconnected
            or protocol.conn.state is not _OPEN
            or protocol.transport.is_closing()
        )

    def write(self, message: bytes) -> bool:
        """Take ``message`` as one binary frame, for the socket at the end of this loop pass;
        False: it was not taken (the buffer is full, or the connection is closing), use the
        ordinary send, which then goes after every frame taken before it."""
        if not self._protocol.writable.is_set() or not self._open():
            self.flush()
            return False
        pending = self._pending
        if pending is None:
            self._pending = [framed(message)]
            _corked.append(self)
            if len(_corked) == 1:
                self._protocol.loop.call_soon(_flush_corked)
        else:
            pending.append(framed(message))
        return True

    def flush(self) -> None:
        """Write the frames taken in this loop pass in one write; a connection that started
        closing meanwhile gets none (nothing may follow a close frame; the client resyncs)."""
        pending = self._pending
        if pending is None:
            return
        self._pending = None
        if self._open():
            self._protocol.transport.write(pending[0] if len(pending) == 1 else b"".join(pending))


_corked: list[FrameWriter] = []  # writers with frames taken in this loop pass


def _flush_corked() -> None:
    """End of a loop pass: every connection's frames of the pass go out, one write each."""
    global _corked
    writers, _corked = _corked, []
    for writer in writers:
        try:
            writer.flush()
        except Exception as exc:  # its connection broke under the write; the others still get theirs
            log.info("write failed", extra={"error": repr(exc)})


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
