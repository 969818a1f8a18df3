"""The front door for /yjs (pairroom/web/door.py) against a real uvicorn server on a free port.

Each behaviour that reaches a client is checked through the door and through Starlette
(``yjs_door=False``, the old path): the same close codes for the same mistakes, real y-websocket
clients converging, HTTP and the other websocket routes still on Starlette on the same port, the
connection gauge and the room's members back to nothing when clients leave, 1012 on shutdown and the
keepalive's 1011 for a client that stops answering pings.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
import websockets
from pycrdt import Doc, Text

from pairroom.app import create_app
from pairroom.config import Settings
from pairroom.protocol.sync import CloseCode, sync_step1, sync_update
from pairroom.rooms.extension import Connection, Extension
from pairroom.web.auth import mint
from pairroom.web.door import DoorTransport
from pairroom.web.runner import Server, start_serving, uvicorn_config
from pairroom.web.websocket import StarletteTransport
from tests.conftest import RunningServer, StartServer
from tests.support.yjs_node import NodeClients, node_clients, wait_for  # noqa: F401
from tests.yclient import YClient, eventually

SECRET = "a-door-test-secret-of-32-bytes-or-more"
DOORS = [pytest.param(True, id="door"), pytest.param(False, id="starlette")]


def an_update(text: str) -> bytes:
    doc = Doc()
    doc.get("text", type=Text).insert(0, text)
    return doc.get_update()


async def close_code_of(url: str, *frames: bytes | str, **connect: Any) -> tuple[int | None, str]:
    """Connect, send ``frames``, and return the code and reason the server closes with."""
    async with websockets.connect(url, max_size=None, **connect) as ws:
        for frame in frames:
            try:
                await ws.send(frame)
            except websockets.ConnectionClosed:
                break
        async with asyncio.timeout(10):
            try:
                while True:
                    await ws.recv()
            except websockets.ConnectionClosed:
                pass
        return ws.close_code, ws.close_reason or ""


@dataclasses.dataclass(frozen=True)
class Refusal:
    id: str
    code: int
    settings: dict[str, Any]
    path: Callable[[RunningServer], str]
    frames: tuple[bytes | str, ...] = ()
    headers: dict[str, str] = dataclasses.field(default_factory=dict)


def token(room: str) -> str:
    return mint(SECRET, room, "editor", "Ada")


REFUSALS = [
    Refusal("empty-room", CloseCode.INVALID_ROOM, {}, lambda s: s.ws_base + "/"),
    Refusal("long-room", CloseCode.INVALID_ROOM, {"max_room_name": 8}, lambda s: s.ws("r" * 9)),
    Refusal("no-token", CloseCode.UNAUTHORIZED, {"secret": SECRET}, lambda s: s.ws("r")),
    Refusal("bad-token", CloseCode.UNAUTHORIZED, {"secret": SECRET}, lambda s: s.ws("r") + "?token=nonsense"),
    Refusal("other-room", CloseCode.FORBIDDEN, {"secret": SECRET}, lambda s: s.ws("r") + "?token=" + token("x")),
    Refusal(
        "origin",
        CloseCode.FORBIDDEN,
        {"allowed_origins": "https://good.example"},
        lambda s: s.ws("r"),
        headers={"Origin": "https://evil.example"},
    ),
    Refusal("text", CloseCode.UNSUPPORTED_DATA, {}, lambda s: s.ws("r"), frames=("hello",)),
    Refusal("malformed", CloseCode.MALFORMED, {}, lambda s: s.ws("r"), frames=(b"\x00",)),
    Refusal("unknown-type", CloseCode.UNKNOWN_TYPE, {}, lambda s: s.ws("r"), frames=(b"\x63\x00",)),
    Refusal(
        "too-big",
        CloseCode.MESSAGE_TOO_BIG,
        {"max_message_bytes": 1024},
        lambda s: s.ws("r"),
        frames=(sync_update(an_update("x" * 4096)),),
    ),
    Refusal(  # past the transport's own limit (twice pairroom's): websockets' parser refuses it
        "too-big-for-the-parser",
        CloseCode.MESSAGE_TOO_BIG,
        {"max_message_bytes": 1024},
        lambda s: s.ws("r"),
        frames=(b"\x00" * 5000,),
    ),
    Refusal(
        "rate",
        CloseCode.RATE_LIMITED,
        {"rate_limit": 1.0, "rate_burst": 3},
        lambda s: s.ws("r"),
        frames=tuple(sync_step1(Doc().get_state()) for _ in range(10)),
    ),
]


@pytest.mark.parametrize("door", DOORS)
@pytest.mark.parametrize("refusal", REFUSALS, ids=lambda r: r.id)
async def test_bad_input_is_closed_with_the_same_code_through_either_path(
    start_server: StartServer, door: bool, refusal: Refusal
) -> None:
    server = await start_server(yjs_door=door, **refusal.settings)
    code, reason = await close_code_of(refusal.path(server), *refusal.frames, additional_headers=refusal.headers)
    assert code == refusal.code
    assert reason  # every refusal says why
    await eventually(lambda: server.hub.metrics.connections._value.get() == 0, what="connection gauge back to 0")


@pytest.mark.parametrize("door", DOORS)
async def test_invalid_utf8_text_is_closed_with_1007(start_server: StartServer, door: bool) -> None:
    server = await start_server(yjs_door=door)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        await handshake(reader, writer, "/yjs/utf8")
        writer.write(masked_frame(0x81, b"\xff\xfe"))  # a text frame that is not UTF-8
        opcode, payload = await next_frame(reader, skip_binary=True)
        assert opcode == 0x8 and struct.unpack("!H", payload[:2])[0] == 1007
    finally:
        writer.close()


@pytest.mark.parametrize("door", DOORS)
async def test_a_full_room_refuses_with_4409(start_server: StartServer, door: bool) -> None:
    server = await start_server(yjs_door=door, max_members=1)
    first = await YClient.connect(server.ws("full"))
    try:
        await asyncio.wait_for(first.synced.wait(), 5)
        code, reason = await close_code_of(server.ws("full"))
        assert code == CloseCode.ROOM_FULL and "full" in reason
        assert len(server.hub.registry.rooms["full"].members) == 1  # the first member stays
    finally:
        await first.close()


async def test_the_door_serves_yjs_and_the_old_path_is_selectable(start_server: StartServer) -> None:
    for door, kind in ((True, DoorTransport), (False, StarletteTransport)):
        server = await start_server(yjs_door=door)
        client = await YClient.connect(server.ws("which"))
        try:
            await asyncio.wait_for(client.synced.wait(), 5)
            (member,) = server.hub.registry.rooms["which"].members.values()
            assert type(member.transport) is kind
        finally:
            await client.close()


async def test_a_connection_through_the_door_logs_one_joined_line_and_no_bare_handshake_line(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_server()
    caplog.set_level(logging.INFO)
    client = await YClient.connect(server.ws("logged"))
    try:
        await asyncio.wait_for(client.synced.wait(), 5)
        await eventually(lambda: any(r.getMessage() == "joined" for r in caplog.records))
    finally:
        await client.close()
    joined = [r for r in caplog.records if r.getMessage() == "joined"]
    assert [(r.room, r.user) for r in joined] == [("logged", joined[0].user)]  # type: ignore[attr-defined]
    assert not [r for r in caplog.records if r.getMessage() == "connection open"]


@pytest.mark.node
@pytest.mark.parametrize("door", DOORS)
async def test_y_websocket_clients_of_every_version_converge_through_the_door(
    start_server: StartServer, node_clients: NodeClients, door: bool
) -> None:
    server = await start_server(yjs_door=door)
    clients = [await node_clients.start(server.ws_base, "converge", version) for version in ("v1", "v2", "v3")]
    await asyncio.gather(*(client.wait_synced() for client in clients))
    for round_ in range(5):
        await asyncio.gather(*(c.insert(0, f"[{i}{round_}]") for i, c in enumerate(clients)))

    async def converged() -> bool:
        texts = {await c.text() for c in clients}
        return len(texts) == 1 and len(texts.pop()) == 3 * 5 * 4

    await wait_for(converged, timeout=15)
    room = server.hub.registry.rooms["converge"]
    assert str(room.doc.get("text", type=Text)) == await clients[0].text()
    for client in clients:
        await client.close()
    await eventually(lambda: not room.members, what="every member left")
    assert server.hub.metrics.connections._value.get() == 0


async def test_http_and_other_websocket_routes_stay_on_starlette(start_server: StartServer) -> None:
    server = await start_server()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
        assert (await http.get("/healthz")).json() == {"status": "alive"}
        assert (await http.get("/yjs/room")).status_code == 404  # not an upgrade: Starlette's router
    # another websocket route is Starlette's: /replay/{room} answers, an unknown path is refused
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/no-such-socket"):
            pass
    assert refused.value.response.status_code == 403
    with pytest.raises(websockets.InvalidStatus):
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/yjs"):  # no room segment: not the route
            pass


class SlowDoorkeeper(Extension):
    """Lets everyone in after a while, so that a client's first frames arrive before its join."""

    name = "slow-doorkeeper"

    def __init__(self) -> None:
        self.entered = asyncio.Event()

    async def on_authenticate(self, conn: Connection) -> None:
        self.entered.set()
        await asyncio.sleep(0.3)


async def test_frames_sent_before_the_join_are_handled_in_order(start_server: StartServer) -> None:
    """The door holds a client's frames (reading paused) until the member joined, then hands them
    to the room in order: a step 1, an update, and an update that only applies after the first."""
    keeper = SlowDoorkeeper()
    server = await start_server(extensions=[keeper])
    doc = Doc()
    text = doc.get("text", type=Text)
    text += "early"
    first = doc.get_update()
    before = doc.get_state()
    text += " and later"
    second = doc.get_update(before)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        await handshake(reader, writer, "/yjs/early")
        await asyncio.wait_for(keeper.entered.wait(), 5)  # the door is busy with this connection
        writer.write(masked_frame(0x82, sync_step1(b"\x00")))
        writer.write(masked_frame(0x82, sync_update(first)) + masked_frame(0x82, sync_update(second)))
        await writer.drain()
        await eventually(
            lambda: (
                "early" in server.hub.registry.rooms
                and str(server.hub.registry.rooms["early"].doc.get("text", type=Text)) == "early and later"
            ),
            what="both updates sent during the door were applied",
        )
        opcode, payload = await next_frame(reader, skip_binary=False)  # the room's greeting came after
        assert opcode == 0x2
    finally:
        writer.close()


@pytest.mark.parametrize("door", DOORS)
async def test_a_member_that_fell_behind_gets_every_edit_then_holds_no_sender(
    start_server: StartServer, door: bool
) -> None:
    """A full socket queues a member's frames and starts a sender task for them; once the client
    reads again it gets everything, the sender ends, and later frames go out directly again. The
    same on both paths: the member owns its sender."""
    server = await start_server(yjs_door=door)
    writer = await YClient.connect(server.ws("behind"))
    slow = await YClient.connect(server.ws("behind"))
    try:
        await asyncio.wait_for(writer.synced.wait(), 5)
        await asyncio.wait_for(slow.synced.wait(), 5)
        room = server.hub.registry.rooms["behind"]
        members = list(room.members.values())
        assert not any(m.sending for m in members), "an idle member holds no sender task"
        transport = slow.ws.transport
        transport.pause_reading()
        stalled = False
        for i in range(200):
            writer.insert(0, f"<{i}>" + "x" * 32 * 1024)
            await asyncio.sleep(0.005)
            if any(m.sending for m in members):
                stalled = True
                break
        assert stalled, "the slow member's socket never filled"
        for i in range(5):  # queued behind the backlog
            writer.insert(0, f"<late {i}>")
        transport.resume_reading()
        await eventually(lambda: str(slow.text) == str(writer.text), timeout=10, what="the slow member caught up")
        await eventually(lambda: not any(m.sending for m in members), what="the sender ended")
        assert all(m.queued == 0 for m in room.members.values())
        writer.insert(0, "direct ")
        await eventually(lambda: str(slow.text).startswith("direct <late 4>"))
    finally:
        await writer.close()
        await slow.close()


@pytest.mark.parametrize("door", DOORS)
async def test_shutdown_closes_members_with_1012(start_server: StartServer, door: bool) -> None:
    server = await start_server(yjs_door=door)
    client = await YClient.connect(server.ws("bye"))
    await asyncio.wait_for(client.synced.wait(), 5)
    await server.stop()
    assert await client.closed() == CloseCode.SERVICE_RESTART


async def test_a_client_that_stops_answering_pings_is_closed_with_1011(db_url: str) -> None:
    settings = dataclasses.replace(Settings(), port=0, db=db_url, log_format="text", kernels=False)
    server = Server(uvicorn_config(create_app(settings), settings, signals=False))
    server.config.ws_ping_interval = 0.2
    server.config.ws_ping_timeout = 0.3
    task = await start_serving(server)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        await handshake(reader, writer, "/yjs/pings")
        async with asyncio.timeout(10):
            while True:  # pings come and go unanswered, then the keepalive gives up
                opcode, payload = await next_frame(reader, skip_binary=True)
                if opcode == 0x8:
                    assert struct.unpack("!H", payload[:2])[0] == 1011
                    break
                assert opcode == 0x9
        rooms = server.config.app.state.hub.registry.rooms
        await eventually(lambda: "pings" not in rooms or not rooms["pings"].members, what="the member left")
        writer.close()
    finally:
        server.should_exit = True
        await task


@pytest.mark.parametrize("door", DOORS)
async def test_a_client_still_sending_keeps_its_connection_while_its_pong_waits_then_silence_closes_it_with_1011(
    start_server: StartServer, door: bool
) -> None:
    """A client uploading faster than the room integrates (a 10 MiB document seeded in one go) has
    its pong queued behind its own frames: both paths keep it while frames keep coming, and close it
    with 1011 one ping timeout after they stop."""
    server = await start_server(yjs_door=door, ws_ping_interval=0.2, ws_ping_timeout=0.3)
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    await handshake(reader, writer, "/yjs/uploading")
    frames: list[tuple[float, int, bytes]] = []

    async def read_until_closed() -> None:
        while True:
            opcode, payload = await next_frame(reader, skip_binary=True)
            frames.append((loop.time(), opcode, payload))
            if opcode == 0x8:
                return

    reading = asyncio.create_task(read_until_closed())
    step1 = masked_frame(0x82, sync_step1(Doc().get_state()))
    for _ in range(40):  # 2 s of frames, never a pong: several ping timeouts long
        writer.write(step1)
        await writer.drain()
        await asyncio.sleep(0.05)
        assert not reading.done(), f"closed while the client was still sending: {frames[-1:]}"
    stopped = loop.time()
    async with asyncio.timeout(10):
        await reading
    assert [opcode for _, opcode, _ in frames if opcode == 0x9], "no ping was sent"
    closed_at, _, payload = frames[-1]
    assert struct.unpack("!H", payload[:2])[0] == 1011
    assert closed_at - stopped < 2.0  # one timeout (0.3 s) after the last frame, give or take a tick
    writer.close()


# -- a raw client, for what websockets' client will not send -------------------------------------------


def handshake_request(path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


async def read_response(reader: asyncio.StreamReader) -> bytes:
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return head


async def handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> None:
    writer.write(handshake_request(path))
    await read_response(reader)


def masked_frame(first_byte: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    assert len(payload) < 126
    return struct.pack("!BB", first_byte, 0x80 | len(payload)) + mask + masked


async def next_frame(reader: asyncio.StreamReader, *, skip_binary: bool) -> tuple[int, bytes]:
    """The next frame's opcode and payload (the room's own binary messages skipped if asked)."""
    read: Callable[[int], Awaitable[bytes]] = reader.readexactly
    while True:
        async with asyncio.timeout(10):
            head = await read(2)
            length = head[1] & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", await read(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", await read(8))
            payload = await read(length)
        opcode = head[0] & 0x0F
        if opcode == 0x2 and skip_binary:
            continue
        return opcode, payload


def test_the_switch_reaches_the_server_config() -> None:
    """``--no-yjs-door`` (or ``PAIRROOM_YJS_DOOR=0``) and another websocket stack put /yjs back on
    Starlette; the default is the door."""
    from starlette.applications import Starlette

    from pairroom.cli import build_parser
    from pairroom.web.door import DoorHttpProtocol, YjsDoor

    def door_of(settings: Settings) -> object:
        return uvicorn_config(Starlette(), settings).yjs_door  # type: ignore[attr-defined]

    assert door_of(Settings()) is YjsDoor
    assert uvicorn_config(Starlette(), Settings()).http is DoorHttpProtocol
    flags = vars(build_parser().parse_args(["serve", "--no-yjs-door"]))
    flags.pop("command")
    assert door_of(Settings.from_env({}, **flags)) is None
    assert door_of(Settings.from_env({"PAIRROOM_YJS_DOOR": "0"})) is None
    assert door_of(Settings(ws_impl="wsproto")) is None
