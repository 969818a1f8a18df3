"""The send fast path (``pairroom/web/frames.py``) puts on the wire exactly what the ordinary ASGI path
puts there, and keeps its backpressure: a reader that stops reading still fills its bounded queue
and is closed with SLOW_CONSUMER (4503), after the whole frames already written.

The wire is read by a raw TCP client that parses the frames itself, so nothing between the server's
bytes and the assertion could re-frame or repair them.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct

import pytest
import websockets
from pycrdt import Doc, Text
from websockets.frames import Frame, Opcode

from pairroom.protocol import sync as protocol
from pairroom.protocol.sync import AwarenessEntry, CloseCode
from pairroom.rooms.member import MemberState
from pairroom.web import frames as frames_module
from pairroom.web.frames import binary_frame, framed_many
from tests.conftest import RunningServer, StartServer
from tests.test_slow_client import QUEUE_LIMIT, Scene, edit_until_kicked
from tests.yclient import eventually

# uvicorn's own websockets-sansio protocol: the ordinary path, without the fast one
ORDINARY = "uvicorn.protocols.websockets.websockets_sansio_impl:WebSocketsSansIOProtocol"
ROOM = "frames"


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_binary_frame_is_what_websockets_writes(size: int) -> None:
    payload = (bytes(range(256)) * (size // 256 + 1))[:size]
    assert binary_frame(payload) == Frame(Opcode.BINARY, payload).serialize(mask=False, extensions=[])


class RawReader:
    """A websocket client that does the handshake by hand and returns each frame's raw bytes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def join(cls, server: RunningServer, room: str) -> RawReader:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET /yjs/{room} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        client = cls(reader, writer)
        client.send(protocol.sync_step1(Doc().get_state()))
        return client

    def send(self, *payloads: bytes) -> None:
        """Each payload as one masked frame, all of them in one socket write."""
        frames = b""
        for payload in payloads:
            mask = os.urandom(4)
            masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
            assert len(payload) < 126
            frames += struct.pack("!BB", 0x82, 0x80 | len(payload)) + mask + masked
        self.writer.write(frames)

    async def frame(self) -> bytes:
        """The next frame, header and payload, exactly as received."""
        head = await self.reader.readexactly(2)
        length = head[1] & 0x7F
        extra = b""
        if length == 126:
            extra = await self.reader.readexactly(2)
            (length,) = struct.unpack("!H", extra)
        elif length == 127:
            extra = await self.reader.readexactly(8)
            (length,) = struct.unpack("!Q", extra)
        return head + extra + await self.reader.readexactly(length)

    async def frames_until(self, marker: bytes) -> list[bytes]:
        """Frames up to and including the first that holds ``marker``."""
        frames: list[bytes] = []
        async with asyncio.timeout(10):
            while not frames or marker not in frames[-1]:
                frames.append(await self.frame())
        return frames

    def close(self) -> None:
        self.writer.close()


def fixed_updates() -> list[bytes]:
    """Updates of a fixed client id, so both servers integrate and send the same bytes: a small one,
    one between 126 bytes and 64 KiB, and one above 64 KiB (the three length encodings)."""
    doc = Doc(client_id=4242)
    text = doc.get("text", type=Text)
    updates = []
    for chunk in ("<small>", "m" * 300 + "<mid>", "L" * 70_000 + "<end>"):
        before = doc.get_state()
        text += chunk
        updates.append(doc.get_update(before))
    return updates


async def wire_of_a_session(server: RunningServer) -> tuple[list[bytes], bool]:
    """What a reader receives while a writer sends the fixed updates and a cursor, and whether the
    reader's member went through the fast path."""
    reader = await RawReader.join(server, ROOM)
    try:
        room = await eventually_room(server)
        (member,) = room.members.values()
        fast = member.transport.frame_writer is not None
        async with websockets.connect(server.ws(ROOM), max_size=None) as writer:
            cursor = AwarenessEntry(99, 1, '{"cursor":{"line":3}}')
            await writer.send(protocol.awareness_message(protocol.encode_awareness([cursor])))
            wire: list[bytes] = []
            for update, marker in zip(fixed_updates(), (b"<small>", b"<mid>", b"<end>"), strict=True):
                await writer.send(protocol.sync_update(update))  # one at a time: none merged
                wire += await reader.frames_until(marker)
            return wire, fast
    finally:
        reader.close()


async def eventually_room(server: RunningServer):  # type: ignore[no-untyped-def]
    await eventually(lambda: ROOM in server.hub.registry.rooms and server.hub.registry.rooms[ROOM].members)
    return server.hub.registry.rooms[ROOM]


async def test_fast_path_sends_the_bytes_of_the_ordinary_path(start_server: StartServer) -> None:
    fast_wire, fast = await wire_of_a_session(await start_server())
    ordinary_wire, ordinary_fast = await wire_of_a_session(await start_server(ws_impl=ORDINARY))
    assert fast and not ordinary_fast
    assert fast_wire == ordinary_wire
    # every length encoding was on the wire: 7-bit, 16-bit and 64-bit
    assert {frame[1] & 0x7F for frame in fast_wire} >= {126, 127} and min(len(f) for f in fast_wire) < 127


async def test_fast_path_is_off_where_frames_differ_per_connection(start_server: StartServer) -> None:
    server = await start_server(ws_compression=True)
    async with websockets.connect(server.ws(ROOM), compression="deflate") as client:
        room = await eventually_room(server)
        (member,) = room.members.values()
        assert member.transport.frame_writer is None  # permessage-deflate was negotiated
        await client.send(protocol.sync_step1(Doc().get_state()))
        await eventually(lambda: member.state is MemberState.OPEN)


async def test_stuck_reader_on_the_fast_path_is_closed_with_slow_consumer(start_server: StartServer) -> None:
    async with Scene.start(start_server) as scene:
        member = scene.stuck_member
        assert member.transport.frame_writer is not None
        latencies = await edit_until_kicked(scene.a, scene.b, member)
        assert len(latencies) > QUEUE_LIMIT  # the bounded queue did it, not the first write
        assert member.close_code == CloseCode.SLOW_CONSUMER
        # Reading again, the client gets whole frames, then the close frame with 4503.
        assert scene.stuck is not None
        sock = scene.stuck.sock
        loop = asyncio.get_running_loop()
        buffered = b""

        async def fill(n: int) -> bytes:
            nonlocal buffered
            while len(buffered) < n:
                chunk = await loop.sock_recv(sock, 65536)
                assert chunk, "connection ended before the close frame"
                buffered += chunk
            out, buffered = buffered[:n], buffered[n:]
            return out

        async with asyncio.timeout(10):
            while True:
                head = await fill(2)
                assert head[1] & 0x80 == 0  # a server frame is never masked
                length = head[1] & 0x7F
                if length == 126:
                    (length,) = struct.unpack("!H", await fill(2))
                elif length == 127:
                    (length,) = struct.unpack("!Q", await fill(8))
                payload = await fill(length)
                if head[0] == 0x88:
                    (code,) = struct.unpack("!H", payload[:2])
                    assert code == CloseCode.SLOW_CONSUMER
                    break
                assert head[0] == 0x82  # whole binary frames only, until the close


def test_fast_path_module_is_used_by_the_default_stack() -> None:
    from starlette.applications import Starlette

    from pairroom.config import Settings
    from pairroom.web.frames import FramingProtocol
    from pairroom.web.runner import uvicorn_config

    assert uvicorn_config(Starlette(), Settings()).ws is FramingProtocol


async def test_messages_of_one_pass_arrive_whole_and_in_order(server: RunningServer) -> None:
    reader = await RawReader.join(server, ROOM)
    try:
        room = await eventually_room(server)
        (member,) = room.members.values()
        greeting = {(await reader.frame())[2:4] for _ in range(2)}  # its sync step 1, our step 2
        assert greeting == {bytes([0, 0]), bytes([0, 1])}
        assert member.transport.frame_writer is not None
        messages = [protocol.sync_update(f"message {i}".encode() * (1 + i * 40)) for i in range(30)]
        for message in messages:  # one loop pass: the broadcast path, synchronously
            room.broadcast(message, None)
        wire: list[bytes] = []
        async with asyncio.timeout(10):
            while len(wire) < len(messages):
                wire.append(await reader.frame())
        assert wire == [binary_frame(message) for message in messages]
    finally:
        reader.close()


async def test_an_edit_and_the_cursor_behind_it_go_out_in_one_write_text_first(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    watcher = await RawReader.join(server, ROOM)
    editor = await RawReader.join(server, ROOM)
    try:
        room = await eventually_room(server)
        await eventually(lambda: len(room.members) == 2)
        for client in (watcher, editor):
            assert {(await client.frame())[2:4] for _ in range(2)} == {bytes([0, 0]), bytes([0, 1])}
        written: list[int] = []  # frames per socket write of several, as built for the watcher
        monkeypatch.setattr(
            frames_module, "framed_many", lambda messages: written.append(len(messages)) or framed_many(messages)
        )
        doc = Doc(client_id=7)
        doc.get("text", type=Text).insert(0, "<typed>")
        cursor = AwarenessEntry(77, 1, '{"cursor":5}')
        # what an editor sends for one keystroke: the edit, then the cursor it moved, back to back
        editor.send(
            protocol.sync_update(doc.get_update()), protocol.awareness_message(protocol.encode_awareness([cursor]))
        )
        frames = await watcher.frames_until(b"<typed>")
        frames.append(await watcher.frame())
        messages = [protocol.decode_message(frame[2:]) for frame in frames]
        assert [m.type for m in messages] == [protocol.MessageType.SYNC, protocol.MessageType.AWARENESS]
        assert b'"cursor":5' in messages[1].payload
        assert written == [2]  # the pair, in one socket write
    finally:
        watcher.close()
        editor.close()
