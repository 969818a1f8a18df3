"""Attacks on a real server, each followed by what a user relies on: the server answers, other rooms
carry on, the document and storage are intact (issue 22).

The kernel cases run real code in the real sandbox; the others use plain servers started on port 0
inside each test. Every test shares the module's event loop, as the kernel server does.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from pycrdt import Array, Doc, Map, Text

from pairroom.app import create_app
from pairroom.config import Settings
from pairroom.web.runner import Server, start_serving, uvicorn_config
from tests.test_kernels import (
    KernelServer,
    requires_sandbox,
    run_and_wait,
    run_code,
    start_kernel_server,
    stdout,
)
from tests.yclient import YClient, eventually

pytestmark = [pytest.mark.asyncio(loop_scope="module")]

NEIGHBOUR = "hardening-neighbour"


def room(prefix: str = "h") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# -- servers ------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Plain:
    """A pairroom server without kernels, on port 0."""

    server: Server
    settings: Settings
    task: asyncio.Task[None]

    @property
    def port(self) -> int:
        assert self.server.port is not None
        return self.server.port

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws(self, name: str) -> str:
        return f"ws://127.0.0.1:{self.port}/yjs/{name}"

    @property
    def hub(self) -> Any:
        return self.server.config.app.state.hub

    async def stop(self) -> None:
        self.server.should_exit = True
        await self.task


@contextlib.asynccontextmanager
async def plain_server(tmp: Path, **overrides: Any) -> AsyncIterator[Plain]:
    values: dict[str, Any] = {
        "port": 0,
        "db": f"sqlite:///{tmp / 'pairroom.db'}",
        "log_format": "text",
        "kernels": False,
    }
    values.update(overrides)
    settings = dataclasses.replace(Settings(), **values)
    server = Server(uvicorn_config(create_app(settings), settings, signals=False))
    task = await start_serving(server)
    running = Plain(server, settings, task)
    try:
        yield running
    finally:
        if not task.done():
            await running.stop()


# -- kernels: room code never reaches the event loop, and one room's kernel failing is its own ----------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def ks(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[KernelServer]:
    server = await start_kernel_server(tmp_path_factory.mktemp("hardening-kernels"))
    assert (await run_code(server, NEIGHBOUR, "survivor = 'still here'"))["status"] == "ok"
    yield server
    await server.stop()


async def assert_unaffected(ks: KernelServer) -> None:
    """The server answers, and a neighbour room's kernel (with its state) runs code at once."""
    assert (await ks.http.get("/healthz")).status_code == 200
    run = await run_code(ks, NEIGHBOUR, "print(survivor)")
    assert run["status"] == "ok" and stdout(run) == "still here\n", run


async def with_room_file(ks: KernelServer, name: str, path: str, content: str) -> YClient:
    client = await YClient.connect(ks.ws(name))
    await client.synced.wait()
    with client.doc.transaction():
        client.doc.get("files", type=Map)[path] = Text(content)

    def arrived() -> bool:
        loaded = ks.hub.registry.rooms.get(name)
        files = loaded.doc.get("files", type=Map) if loaded is not None else None
        return files is not None and path in files and str(files[path]) == content

    await eventually(arrived, what="the room file reached the server")
    return client


@requires_sandbox
@pytest.mark.timeout(120)
async def test_a_fifo_where_a_room_file_goes_does_not_freeze_the_server(ks: KernelServer) -> None:
    name = room("fifo")
    client = await with_room_file(ks, name, "helper.py", "WORD = 'from the room'\n")
    # the code swaps the room's file for a named pipe, and one it keeps open for reading
    plant = (
        "import os, threading\n"
        "os.remove('helper.py'); os.mkfifo('helper.py')\n"
        "os.mkfifo('held.txt')\n"
        "threading.Thread(target=lambda: open('held.txt').read(), daemon=True).start()\n"
        "print(oct(os.stat('helper.py').st_mode))"
    )
    run = await run_code(ks, name, plant)
    assert run["status"] == "ok" and stdout(run).startswith("0o1"), run  # S_IFIFO
    with client.doc.transaction():
        client.doc.get("files", type=Map)["held.txt"] = Text("replaced")

    # the next run writes the room's files over the pipes: while it does, the server answers
    response = await ks.http.post(
        f"/api/rooms/{name}/runs",
        json={
            "code": (
                "import helper, stat, os\n"
                "print(helper.WORD, stat.S_ISREG(os.stat('helper.py').st_mode), open('held.txt').read())"
            )
        },
    )
    assert response.status_code == 201, response.text
    health_started = time.monotonic()
    assert (await ks.http.get("/healthz")).status_code == 200
    assert time.monotonic() - health_started < 5
    run = await run_and_wait(ks, name, response.json()["id"])
    assert run["status"] == "ok", run
    assert stdout(run) == "from the room True replaced\n"
    await assert_unaffected(ks)
    await client.close()


@requires_sandbox
async def test_a_link_planted_where_a_room_file_goes_is_replaced_not_written_through(
    ks: KernelServer, tmp_path: Path
) -> None:
    name = room("link")
    client = await with_room_file(ks, name, "notes.txt", "room text")
    # a symlink to a file outside, and a hard link to a file the code wrote itself but must keep
    plant = (
        "import os\n"
        "os.remove('notes.txt'); os.symlink('/etc/hostname', 'notes.txt')\n"
        "open('mine.txt', 'w').write('mine'); os.mkdir('sub')\n"
        "os.link('mine.txt', 'sub/linked.txt')\n"
    )
    assert (await run_code(ks, name, plant))["status"] == "ok"
    with client.doc.transaction():
        client.doc.get("files", type=Map)["sub/linked.txt"] = Text("from the room")
    await eventually(lambda: "sub/linked.txt" in ks.hub.registry.rooms[name].doc.get("files", type=Map))
    run = await run_code(
        ks,
        name,
        (
            "import os\n"
            "print(os.path.islink('notes.txt'), open('notes.txt').read(), open('mine.txt').read(), open('sub/linked.txt').read())"
        ),
    )
    assert run["status"] == "ok", run
    assert stdout(run) == "False room text mine from the room\n"
    await client.close()


@requires_sandbox
@pytest.mark.timeout(180)
async def test_a_folder_3000_levels_deep_where_a_room_file_goes_fails_nobody(ks: KernelServer) -> None:
    name = room("deep")
    client = await with_room_file(ks, name, "helper.py", "WORD = 'shallow'\n")
    plant = (
        "import os\n"
        "top = os.open('.', os.O_RDONLY)\n"
        "os.remove('helper.py'); os.mkdir('helper.py'); os.chdir('helper.py')\n"
        "for _ in range(3000):\n"
        "    os.mkdir('d'); os.chdir('d')\n"
        "os.fchdir(top)\n"
        "print(os.path.isdir('helper.py'))"
    )
    run = await run_code(ks, name, plant, timeout=60)
    assert run["status"] == "ok" and stdout(run) == "True\n", run
    run = await run_code(ks, name, "import helper\nprint(helper.WORD)")
    assert run["status"] == "ok" and stdout(run) == "shallow\n", run
    await assert_unaffected(ks)
    # and again, this time left for the room kernel's restart and removal to deal with
    assert (await run_code(ks, name, plant, timeout=60))["status"] == "ok"
    response = await ks.http.post(f"/api/rooms/{name}/kernel/restart")
    assert response.status_code == 200, response.text
    other = room("after-deep")
    assert (await run_code(ks, other, "print(1 + 1)"))["status"] == "ok"
    await assert_unaffected(ks)
    await client.close()


SIGNED = "k = get_ipython().kernel\nparent = k.get_parent('shell')\n"
RAW = (  # a message signed with the kernel's key, with parts the code chose byte for byte
    "def raw(header, parent_header, content):\n"
    "    parts = [header, parent_header, b'{}', content]\n"
    "    k.iopub_socket.send_multipart([b'<IDS|MSG>', k.session.sign(parts)] + parts)\n"
)


@requires_sandbox
@pytest.mark.parametrize(
    "attack",
    [
        pytest.param(
            SIGNED + "k.session.send(k.iopub_socket, 'stream', content=b'[1, 2, 3]', parent=parent)", id="list-content"
        ),
        pytest.param(
            SIGNED + "k.session.send(k.iopub_socket, 'stream', content={'name': {}, 'text': [1]}, parent=parent)",
            id="wrong-types",
        ),
        pytest.param(
            SIGNED
            + "k.session.send(k.iopub_socket, 'display_data', content=b'{\"data\": {\"application/json\": ' + b'[' * 100000 + b']' * 100000 + b'}}', parent=parent)",
            id="deep-json",
        ),
        pytest.param(
            SIGNED
            + "k.session.send(k.iopub_socket, 'display_data', content={'data': {'text/plain': 'x', 'application/json': {'n': float('nan')}}, 'metadata': 7}, parent=parent)",
            id="nan",
        ),
        pytest.param(
            SIGNED
            + "k.session.send(k.iopub_socket, 'status', content={'execution_state': 'idle'}, parent={'msg_id': ['x']})",
            id="list-parent",
        ),
        pytest.param(SIGNED + RAW + "raw(b'[1]', b'\"nope\"', b'{}')", id="string-parent-list-header"),
        pytest.param(
            SIGNED
            + RAW
            + "raw(b'{\"msg_type\": 5}', b'{\"msg_id\": \"' + parent['header']['msg_id'].encode() + b'\"}', b'{}')",
            id="number-type",
        ),
        pytest.param(SIGNED + RAW + "raw(b'{', b'{}', b'{}')", id="not-json"),
        pytest.param(
            SIGNED + "k.iopub_socket.send_multipart([b'<IDS|MSG>', b'bad signature', b'{}', b'{}', b'{}', b'{}'])",
            id="bad-signature",
        ),
    ],
)
async def test_a_signed_hostile_iopub_message_is_skipped(ks: KernelServer, attack: str) -> None:
    name = room("iopub")
    run = await run_code(ks, name, attack + "\nprint('after')")
    assert run["status"] == "ok", run["outputs"]
    assert "after\n" in stdout(run), run
    for output in run["outputs"]:  # what reached the document has the schema's shape
        if output["output_type"] == "stream":
            assert output["name"] in ("stdout", "stderr") and isinstance(output["text"], str)
    # the room's kernel lives on with its state, and every other room's runs answer 201
    assert (await run_code(ks, name, "x = 5\nprint(x)"))["status"] == "ok"
    await assert_unaffected(ks)


@requires_sandbox
@pytest.mark.timeout(180)
async def test_shutdown_after_hostile_kernels_still_flushes_the_last_write(tmp_path: Path) -> None:
    server = await start_kernel_server(tmp_path)
    name = room("flush")
    try:
        attack = SIGNED + "k.session.send(k.iopub_socket, 'stream', content=b'[1]', parent=parent)\nprint('ok')"
        assert (await run_code(server, name, attack))["status"] == "ok"
        client = await YClient.connect(server.ws(name))
        await client.synced.wait()
        client.text.insert(0, "the last acknowledged edit")
        await eventually(
            lambda: str(server.hub.registry.rooms[name].doc.get("text", type=Text)) == "the last acknowledged edit"
        )
        await client.close()
    finally:
        await server.stop()
    async with plain_server(tmp_path, db=f"sqlite:///{server.db_path}") as again:
        reader = await YClient.connect(again.ws(name))
        await reader.synced.wait()
        assert str(reader.text) == "the last acknowledged edit"
        runs = reader.doc.get("runs", type=Map)
        assert len(runs) == 1
        await reader.close()


# -- presence is bounded ------------------------------------------------------------------------------

SECRET = "hardening-secret-of-at-least-32-bytes"


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def awareness_frame(entries: list[tuple[int, int, str]]) -> bytes:
    from pairroom.protocol import sync as protocol

    return protocol.awareness_message(protocol.encode_awareness([protocol.AwarenessEntry(*e) for e in entries]))


async def edit_latencies(writer: YClient, reader: YClient, count: int) -> list[float]:
    """Seconds from an edit on ``writer`` until ``reader`` has it, ``count`` times."""
    latencies = []
    for _i in range(count):
        before = len(str(reader.text))
        started = time.monotonic()
        writer.text.insert(len(str(writer.text)), "x")
        await eventually(lambda: len(str(reader.text)) > before, timeout=30, what="the edit arrived")
        latencies.append(time.monotonic() - started)
    return latencies


async def test_an_awareness_flood_from_a_viewer_is_refused_and_other_rooms_carry_on(tmp_path: Path) -> None:
    import statistics

    from pairroom.web.auth import mint

    async with plain_server(tmp_path, secret=SECRET) as s:
        calm, flooded = room("calm"), room("flood")
        a = await YClient.connect(s.ws(calm) + "?token=" + mint(SECRET, calm, "owner", "Ada"))
        b = await YClient.connect(s.ws(calm) + "?token=" + mint(SECRET, calm, "editor", "Bob"))
        await asyncio.gather(a.synced.wait(), b.synced.wait())
        before = await edit_latencies(a, b, 20)
        rss_before = rss_mib()

        viewer = await YClient.connect(s.ws(flooded) + "?token=" + mint(SECRET, flooded, "viewer", "Eve"))
        await viewer.synced.wait()
        flood = awareness_frame([(1000 + i, 1, "{}") for i in range(150_000)])
        assert len(flood) > 1_000_000
        sent = time.monotonic()
        await viewer.send_raw(flood)
        during = await edit_latencies(a, b, 20)
        print(
            f"awareness flood: another room's edit latency peaked at {max(during) * 1000:.1f} ms, "
            f"rss {rss_before:.1f} -> {rss_mib():.1f} MiB"
        )
        await eventually(lambda: viewer.close_code is not None, timeout=10, what="the flooder was closed")
        assert viewer.close_code == 4413 and "at most 16" in (viewer.close_reason or "")
        assert time.monotonic() - sent < 5

        # one id per message, each a new one: the ninth id on one connection is refused
        many = await YClient.connect(s.ws(flooded) + "?token=" + mint(SECRET, flooded, "viewer", "Mal"))
        await many.synced.wait()
        for i in range(9):
            with contextlib.suppress(Exception):
                await many.send_raw(awareness_frame([(5000 + i, 1, '{"cursor": 1}')]))
        await eventually(lambda: many.close_code is not None, timeout=10)
        assert many.close_code == 4413 and "at most 8 awareness client ids" in (many.close_reason or "")

        # one state of 1 MiB
        big = await YClient.connect(s.ws(flooded) + "?token=" + mint(SECRET, flooded, "editor", "Big"))
        await big.synced.wait()
        await big.send_raw(awareness_frame([(9000, 1, '{"x": "' + "y" * 2**20 + '"}')]))
        await eventually(lambda: big.close_code is not None, timeout=10)
        assert big.close_code == 4413 and "at most 16384" in (big.close_reason or "")

        # the room itself and a legitimate member's presence carry on
        honest = await YClient.connect(s.ws(flooded) + "?token=" + mint(SECRET, flooded, "editor", "Cy"))
        await honest.synced.wait()
        await honest.send_raw(awareness_frame([(honest.doc.client_id, 1, '{"file": "main.py"}')]))
        room_state = s.hub.registry.rooms[flooded]
        await eventually(lambda: honest.doc.client_id in room_state.awareness.states)
        assert len(room_state.awareness.states) <= 3  # the honest member (and the server's summary)
        after = await edit_latencies(a, b, 20)
        rss_after = rss_mib()
        figures = {
            "edit latency before, median ms": round(statistics.median(before) * 1000, 2),
            "during the flood, max ms": round(max(during) * 1000, 2),
            "after, median ms": round(statistics.median(after) * 1000, 2),
            "rss before MiB": round(rss_before, 1),
            "rss after MiB": round(rss_after, 1),
        }
        print("awareness flood figures:", figures)
        assert max(during) < 1.0, figures
        assert rss_after - rss_before < 100, figures
        for client in (a, b, honest, viewer, many, big):
            await client.close()


async def test_an_operator_sets_the_presence_caps(tmp_path: Path) -> None:
    """``--presence-*`` flags (``PAIRROOM_PRESENCE_*``) reach every room: tighter caps refuse what the
    defaults allow, with the operator's numbers in the close reason."""
    from pairroom.config import Settings
    from pairroom.web.auth import mint

    settings = Settings.from_env(
        {"PAIRROOM_PRESENCE_CLIENTS_PER_CONNECTION": "2"}, presence_state_bytes=512, presence_entries_per_message=4
    )
    assert settings.room_settings().presence_limits.clients_per_connection == 2
    async with plain_server(
        tmp_path,
        secret=SECRET,
        presence_state_bytes=settings.presence_state_bytes,
        presence_clients_per_connection=settings.presence_clients_per_connection,
    ) as s:
        name = room("caps")
        big = await YClient.connect(s.ws(name) + "?token=" + mint(SECRET, name, "editor", "Big"))
        await big.synced.wait()
        await big.send_raw(awareness_frame([(9000, 1, '{"x": "' + "y" * 600 + '"}')]))  # the default takes it
        await eventually(lambda: big.close_code is not None, timeout=10)
        assert big.close_code == 4413 and "at most 512" in (big.close_reason or "")
        many = await YClient.connect(s.ws(name) + "?token=" + mint(SECRET, name, "viewer", "Mal"))
        await many.synced.wait()
        for i in range(3):
            with contextlib.suppress(Exception):
                await many.send_raw(awareness_frame([(7000 + i, 1, '{"cursor": 1}')]))
        await eventually(lambda: many.close_code is not None, timeout=10)
        assert many.close_code == 4413 and "at most 2 awareness client ids" in (many.close_reason or "")
        honest = await YClient.connect(s.ws(name) + "?token=" + mint(SECRET, name, "editor", "Cy"))
        await honest.synced.wait()
        await honest.send_raw(awareness_frame([(honest.doc.client_id, 1, '{"file": "main.py"}')]))
        await eventually(lambda: honest.doc.client_id in s.hub.registry.rooms[name].awareness.states)
        for client in (big, many, honest):
            await client.close()


async def test_presence_a_viewer_records_is_bounded_per_connection(tmp_path: Path) -> None:
    """A viewer moving its cursor with huge states as fast as the rate limit allows: what the
    recording gets stays within the per-connection budget (the relay still carries every change)."""
    from pairroom.rooms.presence import Presence

    recorded: list[int] = []
    async with plain_server(tmp_path, secret=SECRET, rate_limit=10_000.0, rate_burst=10_000) as s:
        from pairroom.web.auth import mint

        name = room("rec")
        watcher = await YClient.connect(s.ws(name) + "?token=" + mint(SECRET, name, "owner", "Ada"))
        await watcher.synced.wait()
        presence: Presence = s.hub.registry.rooms[name].presence
        original = presence.on_member_states
        assert original is not None

        def counting(member: Any, states: dict[int, Any]) -> None:
            recorded.append(sum(len(repr(state)) for state in states.values()))
            original(member, states)

        presence.on_member_states = counting
        viewer = await YClient.connect(s.ws(name) + "?token=" + mint(SECRET, name, "viewer", "Eve"))
        await viewer.synced.wait()
        started = time.monotonic()
        state = '{"cursor": "' + "c" * 15_000 + '", "n": %d}'
        for clock in range(1, 400):
            await viewer.send_raw(awareness_frame([(viewer.doc.client_id, clock, state % clock)]))
        await eventually(
            lambda: (
                viewer.doc.client_id in presence.awareness.states
                and presence.awareness.meta[viewer.doc.client_id]["clock"] >= 399
            ),
            timeout=20,
        )
        elapsed = time.monotonic() - started
        limits = presence.limits
        allowed = limits.recorded_burst_bytes + limits.recorded_bytes_per_second * elapsed
        assert sum(recorded) <= allowed * 1.1, (sum(recorded), allowed)
        assert len(recorded) < 399
        await viewer.close()
        await watcher.close()


# -- HTTP is bounded ----------------------------------------------------------------------------------


async def raw_http(
    port: int, head: bytes, body_chunks: list[bytes] | None = None, read_timeout: float = 10
) -> tuple[bytes, bool]:
    """Send ``head`` then the chunks while reading the answer (the server may answer and close before
    the body is sent); the response and whether the whole body could be sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    received = bytearray()

    async def read() -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                received.extend(chunk)

    reading = asyncio.create_task(read())
    sent_all = True
    try:
        writer.write(head)
        await writer.drain()
        for chunk in body_chunks or []:
            if reading.done():
                sent_all = False
                break
            try:
                writer.write(chunk)
                await writer.drain()
            except (ConnectionError, OSError):
                sent_all = False
                break
        async with asyncio.timeout(read_timeout):
            while not received.endswith(b"}") and not reading.done():
                await asyncio.wait({reading}, timeout=0.05)
        return bytes(received), sent_all
    finally:
        reading.cancel()
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def test_request_bodies_are_capped_on_every_route_before_they_are_read(tmp_path: Path) -> None:
    async with plain_server(tmp_path, secret=SECRET) as s:
        rss_before = rss_mib()
        # a declared 150 MiB body: refused on the header, nothing read
        for path in ("/api/rooms", "/api/rooms/x/chat", "/rtc/x/whip", "/no/such/route"):
            head = (
                f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                f"content-length: {150 * 2**20}\r\n\r\n"
            ).encode()
            response, _ = await raw_http(s.port, head)
            assert response.startswith(b"HTTP/1.1 413"), (path, response[:200])
            assert b"connection: close" in response.lower()
        # a chunked body that never ends: reading stops past the cap
        from pairroom.web.lobby import mint_creator

        creator = mint_creator(SECRET, "ops").encode()
        head = (
            b"POST /api/rooms HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"authorization: Bearer " + creator + b"\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        chunk = b"%x\r\n%s\r\n" % (2**20, b" " * 2**20)
        response, sent_all = await raw_http(s.port, head, [chunk] * 150)
        assert response.startswith(b"HTTP/1.1 413"), response[:200]
        assert b"over 64 KiB" in response
        # a route's own cap is lower than the server's: 100 KiB of chat is refused with the route's reason
        async with httpx_client(s) as http:
            http.headers["authorization"] = "Bearer " + creator.decode()
            big = await http.post("/api/rooms", content=b'{"x": "' + b"y" * 100_000 + b'"}')
            assert big.status_code == 413 and "64 KiB" in big.json()["error"]
            deep = await http.post("/api/rooms", content=b"[" * 100_000 + b"]" * 100_000)
            assert deep.status_code in (400, 413)
            assert (await http.get("/healthz")).status_code == 200
            created = await http.post("/api/rooms", json={"room": room("ok")})
            assert created.status_code == 201, created.text
        assert rss_mib() - rss_before < 60, (rss_before, rss_mib())


@contextlib.asynccontextmanager
async def httpx_client(s: Plain) -> AsyncIterator[Any]:
    import httpx

    async with httpx.AsyncClient(base_url=s.http, timeout=30) as http:
        yield http


async def test_half_sent_requests_are_closed_at_their_deadline(tmp_path: Path) -> None:
    async with plain_server(tmp_path, http_header_timeout=1.0, http_body_timeout=1.0) as s:
        opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        for i in range(200):  # slowloris: a request line and one header, never finished
            reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
            writer.write(b"GET /healthz HTTP/1.1\r\nx-slow: " + str(i).encode())
            opened.append((reader, writer))
        silent = await asyncio.open_connection("127.0.0.1", s.port)  # never sends a byte
        body = await asyncio.open_connection("127.0.0.1", s.port)  # a body that stops half way
        body[1].write(b'POST /api/rooms HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{"room"')
        started = time.monotonic()
        async with httpx_client(s) as http:  # the server answers others meanwhile
            assert (await http.get("/healthz")).status_code == 200

        async def closed(reader: asyncio.StreamReader) -> bytes:
            async with asyncio.timeout(10):
                data = b""
                while chunk := await reader.read(4096):
                    data += chunk
                return data

        answers = await asyncio.gather(*(closed(r) for r, _ in opened))
        assert all(a.startswith(b"HTTP/1.1 408") for a in answers), answers[:3]
        assert await closed(silent[0]) in (
            b"",
            b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        )
        await closed(body[0])  # closed (the app saw a disconnect), not held
        assert time.monotonic() - started < 8
        assert len(s.server.server_state.connections) == 0
        for _, writer in [*opened, silent, body]:
            writer.close()
        # a slow but steady request that finishes in time is served
        reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
        for part in (b"GET /healthz HTTP/1.1\r\n", b"host: x\r\n", b"\r\n"):
            writer.write(part)
            await writer.drain()
        async with asyncio.timeout(5):
            assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 200")
        writer.close()


# -- an acknowledgement means stored ------------------------------------------------------------------


async def test_a_2xx_for_a_write_survives_a_kill_9_right_after(tmp_path: Path) -> None:
    import httpx

    from pairroom.web.auth import mint
    from tests.support.nodes import start_serve

    env = {
        "PAIRROOM_DB": f"sqlite:///{tmp_path / 'durable.db'}",
        "PAIRROOM_SECRET": SECRET,
        "PAIRROOM_FLUSH_INTERVAL_MS": "600000",  # nothing is written by the periodic flush in this test
    }
    from pairroom.web.lobby import mint_creator

    name = room("durable")
    node = await start_serve(env)
    creator = {"authorization": f"Bearer {mint_creator(SECRET, 'ops')}"}
    try:
        async with httpx.AsyncClient(base_url=node.http, timeout=30, headers=creator) as http:
            claimed = await http.post("/api/rooms", json={"room": name, "name": "Ada"})
            assert claimed.status_code == 201, claimed.text
            owner = next(i["token"] for i in claimed.json()["invites"] if i["role"] == "owner")
            auth = {"authorization": f"Bearer {owner}"}
            chat = await http.post(f"/api/rooms/{name}/chat", json={"text": "stored before the answer"}, headers=auth)
            assert chat.status_code == 201, chat.text
            demoted = await http.put(f"/api/rooms/{name}/roles/u-bob", json={"role": "viewer"}, headers=auth)
            assert demoted.status_code == 200, demoted.text
        await node.kill()  # SIGKILL: no final flush
        node = await start_serve(env)
        async with httpx.AsyncClient(base_url=node.http, timeout=30, headers=creator) as http:
            again = await http.post("/api/rooms", json={"room": name, "name": "Mallory"})
            assert again.status_code == 409, again.text  # nobody else can claim it
        reader = await YClient.connect(node.ws(name) + "?token=" + mint(SECRET, name, "viewer", "Vic"))
        await reader.synced.wait()
        await eventually(lambda: len(reader.doc.get("chat", type=Array)) == 1, what="the chat line was stored")
        assert reader.doc.get("chat", type=Array)[0]["text"] == "stored before the answer"
        roles = reader.doc.get("meta", type=Map).get("roles")
        assert isinstance(roles, Map) and roles.get("u-bob") == "viewer"
        await reader.close()
    finally:
        await node.kill()
        if node.drain is not None:
            node.drain.cancel()


# -- the lobby: who may create, what exists, which room a token is for ---------------------------------


async def test_the_lobby_needs_a_creator_token_with_a_secret(tmp_path: Path) -> None:
    from pairroom.web.auth import mint, verify
    from pairroom.web.lobby import mint_creator

    async with plain_server(tmp_path, secret=SECRET) as s, httpx_client(s) as http:
        anonymous = await http.post("/api/rooms", json={"room": room("nope")})
        assert anonymous.status_code == 401 and "pairroom token --creator" in anonymous.json()["error"]
        room_token = mint(SECRET, "some-room", "owner", "Ada")
        wrong = await http.post("/api/rooms", json={}, headers={"authorization": f"Bearer {room_token}"})
        assert wrong.status_code == 401 and "not a creator token" in wrong.json()["error"]
        creator = mint_creator(SECRET, "ops")
        made = await http.post(
            "/api/rooms", json={"room": (name := room("made"))}, headers={"authorization": f"Bearer {creator}"}
        )
        assert made.status_code == 201, made.text
        owner = next(i["token"] for i in made.json()["invites"] if i["role"] == "owner")
        assert verify(SECRET, owner, name).role.value == "owner"
        # a creator token opens no room
        with pytest.raises(Exception):
            verify(SECRET, creator, name)
        door = await YClient.connect(s.ws(name) + "?token=" + creator)
        await eventually(lambda: door.close_code is not None)
        assert door.close_code in (4401, 4403)
        # a thousand anonymous requests create nothing
        results = await asyncio.gather(*(http.post("/api/rooms", json={}) for _ in range(200)))
        assert {r.status_code for r in results} == {401}
        assert len(s.hub.registry.rooms) <= 2


async def test_an_open_lobby_is_rate_limited_per_address(tmp_path: Path) -> None:
    async with (
        plain_server(tmp_path, secret=SECRET, open_lobby=True, lobby_rooms_per_minute=5) as s,
        httpx_client(s) as http,
    ):
        answers = [await http.post("/api/rooms", json={}) for _ in range(12)]
        assert [a.status_code for a in answers[:5]] == [201] * 5
        assert {a.status_code for a in answers[5:]} == {429}
        assert "try again in" in answers[-1].json()["error"]
        assert (await http.get("/healthz")).status_code == 200


async def test_a_room_people_are_in_exists_before_anyone_types(tmp_path: Path) -> None:
    from pairroom.web.auth import mint
    from pairroom.web.lobby import mint_creator

    async with plain_server(tmp_path, secret=SECRET, room_idle_seconds=0.2) as s, httpx_client(s) as http:
        creator = {"authorization": f"Bearer {mint_creator(SECRET, 'ops')}"}
        name = room("quiet")
        quiet = await YClient.connect(s.ws(name) + "?token=" + mint(SECRET, name, "editor", "Bob"))
        await quiet.synced.wait()
        claim = await http.post("/api/rooms", json={"room": name}, headers=creator)
        assert claim.status_code == 409, claim.text
        await quiet.close()
        await eventually(lambda: name not in s.hub.registry.rooms, timeout=60, what="the room unloaded")
        # and one whose only stored update is empty of content (created, then left) stays taken
        made = await http.post("/api/rooms", json={"room": (other := room("kept"))}, headers=creator)
        assert made.status_code == 201
        again = await http.post("/api/rooms", json={"room": other}, headers=creator)
        assert again.status_code == 409


async def test_tokens_the_lobby_mints_carry_the_rooms_epoch(tmp_path: Path) -> None:
    from pairroom.web.auth import pyjwt
    from pairroom.web.lobby import mint_creator

    async with plain_server(tmp_path, secret=SECRET) as s, httpx_client(s) as http:
        creator = {"authorization": f"Bearer {mint_creator(SECRET, 'ops')}"}
        made = (await http.post("/api/rooms", json={"room": (name := room("epoch"))}, headers=creator)).json()
        epochs = {pyjwt().decode(i["token"], SECRET, algorithms=["HS256"])["epoch"] for i in made["invites"]}
        assert len(epochs) == 1
        reader = await YClient.connect(s.ws(name) + "?token=" + made["invites"][2]["token"])
        await reader.synced.wait()
        assert reader.doc.get("meta", type=Map).get("epoch") == epochs.pop()
        await reader.close()


# -- export and import ---------------------------------------------------------------------------------


async def test_export_skips_a_hostile_file_name_and_import_refuses_bytes_that_do_not_decode(tmp_path: Path) -> None:
    import base64
    import gzip
    import json
    import subprocess
    import sys

    from pairroom.recording import export

    db = f"sqlite:///{tmp_path / 'pairroom.db'}"
    name = room("export")
    hostile = ["../escape.py", "a", "a/inside.py", "n" * 300 + ".py", "nul\0.py", "/abs.py"]
    async with plain_server(tmp_path, db=db) as s:
        # The owner table refuses such paths from clients now; rooms stored before it, or imported
        # from an old export, can still hold them. The server's own write path puts them there.
        from pairroom.protocol.origins import LocalOrigin

        async with s.hub.registry.hold(name) as held:
            with held.local_change(LocalOrigin("test")) as doc:
                files = doc.get("files", type=Map)
                for path in ["ok.py", *hostile, "zz/last.py"]:
                    files[path] = Text(f"# {path[:20]}\n")
            await held.flush()
    out = tmp_path / "out"
    pairroom = str(Path(sys.executable).with_name("pairroom"))
    done = subprocess.run(
        [pairroom, "export", name, "--files", str(out), "--db", db], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert (out / "ok.py").read_text() == "# ok.py\n" and (out / "zz" / "last.py").exists()
    assert (out / "a").exists()  # "a" and "a/inside.py" cannot both be written: one is skipped
    assert "skipped '../escape.py'" in done.stderr and "skipped 'nul\\x00.py'" in done.stderr
    assert "skipped '/abs.py'" in done.stderr and "n" * 40 in done.stderr
    assert not (tmp_path / "escape.py").exists()
    assert "skipped 5" in done.stdout

    # an export whose update bytes do not decode is refused whole, and nothing is imported
    good = tmp_path / "room.jsonl.gz"
    await export.export_room(db, name, good)
    with gzip.open(good, "rt") as f:
        lines = [json.loads(line) for line in f]
    for line in lines:
        if line.get("type") == "update":
            line["data"] = base64.b64encode(b"\x01\x01\x05\x00\x84\x05\x04garbage").decode()
            break
    bad = tmp_path / "bad.jsonl.gz"
    with gzip.open(bad, "wt") as f:
        f.writelines(json.dumps(line) + "\n" for line in lines)
    refused = subprocess.run(
        [pairroom, "import", str(bad), "--as", "copy", "--db", db], capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 1 and "is not a Yjs update" in refused.stderr, refused.stderr
    async with plain_server(tmp_path, db=db) as s:
        reader = await YClient.connect(s.ws("copy"))
        await reader.synced.wait()
        assert len(reader.doc.get("files", type=Map)) == 0  # nothing of the damaged file was stored
        original = await YClient.connect(s.ws(name))
        await original.synced.wait()
        assert len(original.doc.get("files", type=Map)) == len(hostile) + 2
        await reader.close()
        await original.close()


async def test_tokens_of_a_deleted_room_do_not_open_a_room_created_later_under_its_name(tmp_path: Path) -> None:
    from pairroom.web.auth import mint
    from pairroom.web.lobby import mint_creator

    async with plain_server(tmp_path, secret=SECRET) as s, httpx_client(s) as http:
        creator = {"authorization": f"Bearer {mint_creator(SECRET, 'ops')}"}
        name = room("reborn")
        before_cli = mint(SECRET, name, "owner", "Old operator token", now=time.time() - 5)  # no epoch, issued before
        first = (await http.post("/api/rooms", json={"room": name}, headers=creator)).json()
        old_owner = first["invites"][0]["token"]
        old = {"authorization": f"Bearer {old_owner}"}
        invited = await http.post(f"/api/rooms/{name}/invites", json={"roles": ["editor"]}, headers=old)
        old_editor = invited.json()["invites"][0]["token"]
        assert (await http.post(f"/api/rooms/{name}/chat", json={"text": "first room"}, headers=old)).status_code == 201
        deleted = await http.delete(f"/api/rooms/{name}", headers=old)
        assert deleted.status_code in (200, 204), deleted.text
        again = await http.post("/api/rooms", json={"room": name}, headers=creator)
        assert again.status_code == 201, again.text
        new_owner = again.json()["invites"][0]["token"]
        after_cli = mint(SECRET, name, "editor", "New operator token")  # issued after the creation

        for stale in (old_owner, old_editor, before_cli):
            door = await YClient.connect(s.ws(name) + "?token=" + stale)
            await eventually(lambda: door.close_code is not None, what="the stale token was refused")
            assert door.close_code == 4403 and "earlier room" in (door.close_reason or "")
            assert len(door.doc.get("chat", type=Array)) == 0  # not a byte of the new room was sent
            chat = await http.post(
                f"/api/rooms/{name}/chat", json={"text": "hijack"}, headers={"authorization": f"Bearer {stale}"}
            )
            assert chat.status_code == 403 and "earlier room" in chat.json()["error"]
            reviews = await http.get(f"/api/rooms/{name}/reviews", headers={"authorization": f"Bearer {stale}"})
            assert reviews.status_code == 403 and "earlier room" in reviews.json()["error"]
        for fresh in (new_owner, after_cli):
            member = await YClient.connect(s.ws(name) + "?token=" + fresh)
            await asyncio.wait_for(member.synced.wait(), 10)
            assert member.close_code is None
            await member.close()
        assert (
            await http.get(f"/api/rooms/{name}/presence", headers={"authorization": f"Bearer {new_owner}"})
        ).status_code == 200


# -- updates waiting for missing changes are bounded ----------------------------------------------------


def gap_update(client_id: int, size: int = 1000) -> bytes:
    """A well-formed update whose structs start at clock 100 of a client nobody has seen."""
    doc = Doc(client_id=client_id)
    text = doc.get("text", type=Text)
    text.insert(0, "a" * 100)
    have = doc.get_state()
    text.insert(100, "x" * size)
    return doc.get_update(have)


async def test_updates_waiting_on_missing_changes_are_bounded_per_connection(tmp_path: Path) -> None:
    from pairroom.protocol import sync as protocol

    async with plain_server(tmp_path, rate_limit=100_000.0, rate_burst=100_000) as s:
        name, other = room("held"), room("calm")
        flooder = await YClient.connect(s.ws(name))
        honest = await YClient.connect(s.ws(name))
        a, b = await YClient.connect(s.ws(other)), await YClient.connect(s.ws(other))
        await asyncio.gather(*(c.synced.wait() for c in (flooder, honest, a, b)))
        rss_before = rss_mib()
        sent = 0
        for i in range(3000):  # 3 MB of updates that can never integrate
            if flooder.close_code is not None:
                break
            with contextlib.suppress(Exception):
                await flooder.send_raw(protocol.sync_update(gap_update(10_000 + i)))
                sent += 1
        await eventually(lambda: flooder.close_code is not None, timeout=20, what="the flooder was closed")
        assert flooder.close_code == 4422 and "waiting for changes" in (flooder.close_reason or "")
        held = s.hub.registry.rooms[name].held
        assert flooder_gone(held)
        # the room and another room carry on
        honest.text.insert(0, "still editing")
        watcher = await YClient.connect(s.ws(name))
        await eventually(lambda: str(watcher.text) == "still editing", what="the room carries on")
        assert await edit_latencies(a, b, 5)
        assert rss_mib() - rss_before < 60
        for client in (flooder, honest, watcher, a, b):
            await client.close()


def flooder_gone(held: Any) -> bool:
    return sum(w.size for waiting in held.waiting.values() for w in waiting) <= 1024 * 1024


async def test_an_update_that_arrives_before_what_it_builds_on_is_integrated_once_it_can(tmp_path: Path) -> None:
    """A client that got a peer's change another way (WebRTC) may send its own edit on top first."""
    from pairroom.protocol import sync as protocol

    async with plain_server(tmp_path) as s:
        name = room("order")
        base_doc, on_top = Doc(client_id=111), Doc(client_id=222)
        base_doc.get("text", type=Text).insert(0, "base ")
        base = base_doc.get_update()
        on_top.apply_update(base)
        have = on_top.get_state()
        on_top.get("text", type=Text).insert(5, "and more")
        dependent = on_top.get_update(have)
        early = await YClient.connect(s.ws(name))
        late = await YClient.connect(s.ws(name))
        await asyncio.gather(early.synced.wait(), late.synced.wait())
        await early.send_raw(protocol.sync_update(dependent))
        await late.send_raw(protocol.sync_update(base))
        reader = await YClient.connect(s.ws(name))
        await eventually(lambda: str(reader.text) == "base and more", what="both integrated")
        assert early.close_code is None and late.close_code is None
        for client in (early, late, reader):
            await client.close()


async def test_a_stale_token_is_refused_at_every_room_route_and_socket(tmp_path: Path) -> None:
    """Every route under ``/api/rooms/{room}`` and every websocket refuses a token of an earlier room
    of the same name, whatever the route does: the check lives at the door, not in each handler."""
    from starlette.routing import Route

    from pairroom.web.auth import mint
    from pairroom.web.lobby import mint_creator

    async with plain_server(tmp_path, secret=SECRET) as s, httpx_client(s) as http:
        creator = {"authorization": f"Bearer {mint_creator(SECRET, 'ops')}"}
        name = room("door")
        first = (await http.post("/api/rooms", json={"room": name}, headers=creator)).json()
        stale = first["invites"][0]["token"]
        assert (await http.delete(f"/api/rooms/{name}", headers={"authorization": f"Bearer {stale}"})).status_code in (
            200,
            204,
        )
        assert (await http.post("/api/rooms", json={"room": name}, headers=creator)).status_code == 201
        old = {"authorization": f"Bearer {stale}"}
        tried, let_in = [], []
        for route in s.server.config.app.routes:
            if not isinstance(route, Route) or "{room" not in route.path or route.path == "/api/rooms/{room}":
                continue
            if route.path.startswith("/r/"):
                continue  # the page itself is the same app shell for every room; its sockets are the door
            path = route.path
            for param in route.param_convertors:
                path = path.replace("{" + param + "}", name if param == "room" else "x").replace(
                    "{" + param + ":path}", "x"
                )
            for method in sorted((route.methods or {"GET"}) - {"HEAD"}):
                answer = await http.request(method, path, headers=old, json={})
                tried.append(f"{method} {route.path}")
                if answer.status_code != 403 or "earlier room" not in answer.text:
                    let_in.append(f"{method} {route.path}: {answer.status_code} {answer.text[:120]}")
        assert not let_in, "\n".join(let_in)
        assert len(tried) > 20
        for endpoint in ("/signal", f"/call/{name}", f"/yjs/{name}"):
            door = await YClient.connect(f"ws://127.0.0.1:{s.port}{endpoint}?token={stale}")
            await eventually(lambda: door.close_code is not None, what=f"{endpoint} refused the stale token")
            assert door.close_code == 4403 and "earlier room" in (door.close_reason or ""), endpoint
        fresh = mint(SECRET, name, "owner", "Owner")
        assert (
            await http.get(f"/api/rooms/{name}/presence", headers={"authorization": f"Bearer {fresh}"})
        ).status_code == 200
