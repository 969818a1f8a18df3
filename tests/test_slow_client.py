"""A member that stops reading is cut off; the members that keep up never wait for it.

The stuck client is a raw TCP socket that performs the websocket handshake by hand, sends sync step 1
and then never reads again (with a small receive buffer, so the server's writes back up quickly). Two
normal clients meanwhile exchange edits; each edit must reach the other side within a second, the
whole time. Once its outbound queue overflows, the stuck member is disconnected with SLOW_CONSUMER,
and on reconnecting (as a fresh client) it gets the whole document.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import socket
import struct
import time
from collections.abc import AsyncIterator

import pytest
from pycrdt import Doc, Text

from pairroom.protocol.sync import CloseCode, sync_step1
from pairroom.rooms.member import Member, MemberState
from pairroom.rooms.room import Room
from pairroom.web.hub import Hub
from pairroom.web.websocket import CLOSE_TIMEOUT
from tests.conftest import RunningServer, StartServer
from tests.yclient import YClient, eventually

ROOM = "slow"
QUEUE_LIMIT = 64
EDIT_CHARS = 32 * 1024  # big edits fill the socket buffers sooner
MAX_EDITS = 2000
MAX_LATENCY = 1.0


class StuckClient:
    """A websocket client that joins a room and then never reads a byte."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    @classmethod
    async def join(cls, server: RunningServer, room: str) -> StuckClient:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: small window
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", server.port))
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET /yjs/{room} HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{server.port}\r\n"
            "Upgrade: websocket\r\n"
            "Connection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n"
            "\r\n"
        )
        await loop.sock_sendall(sock, request.encode())
        response = b""
        async with asyncio.timeout(5):
            while b"\r\n\r\n" not in response:
                chunk = await loop.sock_recv(sock, 1)  # byte by byte: stop right after the headers
                assert chunk, "server closed during the handshake"
                response += chunk
        assert response.startswith(b"HTTP/1.1 101"), response
        client = cls(sock)
        await client.send_binary(sync_step1(Doc().get_state()))
        return client

    async def send_binary(self, payload: bytes) -> None:
        mask = os.urandom(4)
        masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
        if len(payload) < 126:
            header = struct.pack("!BB", 0x82, 0x80 | len(payload))
        else:
            header = struct.pack("!BBH", 0x82, 0x80 | 126, len(payload))
        await asyncio.get_running_loop().sock_sendall(self.sock, header + mask + masked)

    def close(self) -> None:
        self.sock.close()


def slow_disconnects(hub: Hub) -> float:
    return hub.metrics.registry.get_sample_value("pairroom_slow_client_disconnects_total") or 0.0


async def edit_and_measure(writer: YClient, reader: YClient, marker: str) -> float:
    """Append ``marker`` plus filler on ``writer``; return how long until ``reader`` has it.

    Both clients only ever append and wait for each edit, so equal lengths mean it arrived.
    """
    started = time.monotonic()
    writer.insert(len(writer.text), marker + "." * EDIT_CHARS)
    expected = len(writer.text)
    await eventually(lambda: len(reader.text) == expected, timeout=5, what=f"{marker} arrives")
    return time.monotonic() - started


async def edit_until_kicked(a: YClient, b: YClient, member: Member) -> list[float]:
    """Alternate edits between ``a`` and ``b`` until ``member`` is kicked; return each latency."""
    latencies: list[float] = []
    while member.state is MemberState.OPEN:
        assert len(latencies) < MAX_EDITS, f"still not disconnected after {len(latencies)} edits"
        writer, reader = (a, b) if len(latencies) % 2 == 0 else (b, a)
        latencies.append(await edit_and_measure(writer, reader, f"<{len(latencies)}>"))
    return latencies


class Scene:
    """Two normal members and a stuck one in ROOM."""

    def __init__(self, server: RunningServer, a: YClient, b: YClient) -> None:
        self.server = server
        self.a, self.b = a, b
        self.room: Room = server.hub.registry.rooms[ROOM]
        self.normal_ids = set(self.room.members)
        self.stuck: StuckClient | None = None
        self.stuck_id = ""

    @classmethod
    @contextlib.asynccontextmanager
    async def start(cls, start_server: StartServer) -> AsyncIterator[Scene]:
        server = await start_server(max_queue_messages=QUEUE_LIMIT)
        a = await YClient.connect(server.ws(ROOM))
        b = await YClient.connect(server.ws(ROOM))
        try:
            async with asyncio.timeout(5):
                await a.synced.wait()
                await b.synced.wait()
            scene = cls(server, a, b)
            scene.stuck = await StuckClient.join(server, ROOM)
            try:
                await eventually(lambda: len(scene.room.members) == 3, what="the stuck client joined")
                (scene.stuck_id,) = set(scene.room.members) - scene.normal_ids
                yield scene
            finally:
                scene.close_stuck()
        finally:
            await a.close()
            await b.close()

    @property
    def stuck_member(self) -> Member:
        return self.room.members[self.stuck_id]

    def close_stuck(self) -> None:
        if self.stuck is not None:
            self.stuck.close()
            self.stuck = None


async def test_stuck_reader_is_disconnected_and_others_stay_fast(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with Scene.start(start_server) as scene:
        a, b, room, hub = scene.a, scene.b, scene.room, scene.server.hub
        stuck_member = scene.stuck_member
        assert slow_disconnects(hub) == 0

        latencies = await edit_until_kicked(a, b, stuck_member)
        kicked_after = len(latencies)
        assert kicked_after > QUEUE_LIMIT  # it was the queue limit, not the first edit, that did it
        # Keep editing for a while after the kick: nothing may slow down then either.
        for extra in range(20):
            writer, reader = (a, b) if extra % 2 == 0 else (b, a)
            latencies.append(await edit_and_measure(writer, reader, f"<after {extra}>"))

        assert stuck_member.state is MemberState.KICKED
        assert stuck_member.close_code == CloseCode.SLOW_CONSUMER
        assert "queue" in stuck_member.close_reason
        assert stuck_member.queued == 0  # its backlog was dropped, not kept growing
        assert slow_disconnects(hub) == 1
        slow_warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "slow client" in r.getMessage()]
        assert len(slow_warnings) == 1
        assert max(latencies) < MAX_LATENCY, f"slowest of {len(latencies)} edits: {max(latencies):.3f}s"

        # The normal members converge with each other and with the room.
        await eventually(lambda: str(a.text) == str(b.text) == str(room.doc.get("text", type=Text)))
        assert len(a.text) >= len(latencies) * EDIT_CHARS
        assert scene.normal_ids <= set(room.members)

        # The stuck client comes back as a fresh client and resyncs everything it missed.
        scene.close_stuck()
        back = await YClient.connect(scene.server.ws(ROOM))
        try:
            await eventually(lambda: back.synced.is_set() and str(back.text) == str(a.text))
            assert f"<{kicked_after - 1}>" in str(back.text) and "<after 19>" in str(back.text)
            a.insert(0, "welcome back ")
            await eventually(lambda: str(back.text).startswith("welcome back "))
            back.insert(0, "thanks, ")
            await eventually(lambda: str(b.text).startswith("thanks, welcome back "))
        finally:
            await back.close()
        assert slow_disconnects(hub) == 1


async def test_kicked_stuck_reader_leaves_the_room_while_its_socket_stays_open(
    start_server: StartServer,
) -> None:
    async with Scene.start(start_server) as scene:
        await edit_until_kicked(scene.a, scene.b, scene.stuck_member)
        await eventually(
            lambda: scene.stuck_id not in scene.room.members,
            timeout=3,
            what="the kicked member is removed from room.members",
        )
        assert set(scene.room.members) == scene.normal_ids
        # the connection itself ends once the close frame gives up on the stuck socket
        await eventually(
            lambda: scene.server.hub.metrics.registry.get_sample_value("pairroom_connections") == 2,
            timeout=CLOSE_TIMEOUT + 3,
        )


async def test_kicked_stuck_reader_going_away_logs_no_traceback(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with Scene.start(start_server) as scene:
        await edit_until_kicked(scene.a, scene.b, scene.stuck_member)
        scene.close_stuck()
        await eventually(
            lambda: scene.stuck_id not in scene.room.members,
            what="the member is removed once its connection is gone",
        )
        await still_in_sync(scene.a, scene.b)
        tracebacks = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.exc_info]
        assert not tracebacks
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def still_in_sync(a: YClient, b: YClient) -> None:
    latency = await edit_and_measure(a, b, "<still>")
    assert latency < MAX_LATENCY
    assert str(a.text) == str(b.text)
