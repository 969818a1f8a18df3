"""The Node Yjs clients work: each y-websocket major syncs through a reference server.

The server here is pycrdt-websocket's ``ASGIServer`` under uvicorn, not pairroom. These tests keep
the harness in ``tests/support/yjs_node.py`` honest, so that when an interop test against pairroom
fails, the clients can be ruled out: if this file passes and the pairroom test fails, look at the
server.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import uvicorn
from pycrdt.websocket import ASGIServer, WebsocketServer
from websockets.asyncio.server import ServerConnection, serve

from tests.support.yjs_node import (
    VERSIONS,
    NodeClients,
    NodeCommandError,
    node_clients,  # noqa: F401  (fixture)
    wait_equal,
    wait_for,
)

pytestmark = [pytest.mark.node, pytest.mark.timeout(60)]

parametrize_version = pytest.mark.parametrize("version", VERSIONS)


class _Server(uvicorn.Server):
    """uvicorn's ``Server`` with an event for its ``started`` flag, so nobody polls or sleeps."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.started_event = asyncio.Event()

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            self.started_event.set()


async def _run_server(port: asyncio.Future[int], stop: asyncio.Event) -> None:
    """Serve pycrdt-websocket under uvicorn on a free port until ``stop`` is set.

    Runs as one task so that the anyio task group inside ``WebsocketServer`` is entered and
    exited in the same task (pytest-asyncio may tear fixtures down in another task).
    """
    async with WebsocketServer() as websocket_server:
        config = uvicorn.Config(
            ASGIServer(websocket_server), host="127.0.0.1", port=0, lifespan="off", log_level="warning"
        )
        server = _Server(config)
        serving = asyncio.create_task(server.serve())
        started = asyncio.create_task(server.started_event.wait())
        try:
            await asyncio.wait({serving, started}, return_when=asyncio.FIRST_COMPLETED)
            if not started.done():
                await serving  # raises the start-up failure (uvicorn raises SystemExit)
                raise RuntimeError("uvicorn stopped before it started")
            port.set_result(server.servers[0].sockets[0].getsockname()[1])
            await stop.wait()
        finally:
            started.cancel()
            server.should_exit = True
            await serving


@pytest.fixture
async def server_url() -> AsyncIterator[str]:
    """``ws://127.0.0.1:PORT/yjs`` of a pycrdt-websocket server on a free port."""
    port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    runner = asyncio.create_task(_run_server(port, stop))
    await asyncio.wait({port, runner}, return_when=asyncio.FIRST_COMPLETED)
    if not port.done():
        await runner  # raises why the server did not start
    try:
        yield f"ws://127.0.0.1:{port.result()}/yjs"
    finally:
        stop.set()
        await runner


@parametrize_version
async def test_concurrent_inserts_converge(server_url: str, node_clients: NodeClients, version: str) -> None:
    a, b = await asyncio.gather(*(node_clients.start(server_url, "converge", version) for _ in "ab"))
    assert a.package_version is not None and a.package_version.startswith(version[1])
    await asyncio.gather(a.wait_synced(), b.wait_synced())

    await asyncio.gather(a.insert(0, "alpha "), b.insert(0, "beta "))
    await asyncio.gather(a.insert(0, "A"), b.insert(0, "B"))

    async def converged() -> bool:
        text_a, text_b = await asyncio.gather(a.text(), b.text())
        return text_a == text_b and len(text_a) == len("alpha beta AB")

    await wait_for(converged, timeout=5)
    text = await a.text()
    for piece in ("alpha ", "beta ", "A", "B"):
        assert piece in text
    assert await a.state_vector() == await b.state_vector()


@parametrize_version
async def test_late_joiner_gets_full_text(server_url: str, node_clients: NodeClients, version: str) -> None:
    writer, witness = await asyncio.gather(*(node_clients.start(server_url, "late", version) for _ in "ab"))
    await asyncio.gather(writer.wait_synced(), witness.wait_synced())
    await writer.insert(0, "hello world")
    await writer.delete(5, 6)
    await writer.insert(5, ", late joiner")
    await writer.map_set("cursor", {"line": 3, "col": 7})
    # Once the witness has everything, so does the server, which relays only what it applied.
    await wait_equal(witness.text, "hello, late joiner", timeout=5)
    await wait_equal(lambda: witness.map_get("cursor"), {"line": 3, "col": 7}, timeout=5)

    late = await node_clients.start(server_url, "late", version)
    await late.wait_synced()
    # No waiting here: the initial sync alone must deliver the whole document.
    assert await late.text() == "hello, late joiner"
    assert await late.map() == {"cursor": {"line": 3, "col": 7}}


@parametrize_version
async def test_awareness_is_shared(server_url: str, node_clients: NodeClients, version: str) -> None:
    a, b = await asyncio.gather(*(node_clients.start(server_url, "presence", version) for _ in "ab"))
    await asyncio.gather(a.wait_synced(), b.wait_synced())
    a_id = await a.client_id()
    assert a_id == a.initial_client_id

    await a.set_awareness({"user": {"name": "ada", "color": "#f0f"}})
    await a.set_awareness_field("cursor", {"anchor": 4, "head": 9})
    expected = {"user": {"name": "ada", "color": "#f0f"}, "cursor": {"anchor": 4, "head": 9}}

    async def b_sees_a() -> bool:
        return (await b.awareness()).get(a_id) == expected

    await wait_for(b_sees_a, timeout=5)

    # Leaving the room clears a's state at b: the provider sends a null state before closing.
    await a.close()

    async def b_forgot_a() -> bool:
        return a_id not in await b.awareness()

    await wait_for(b_forgot_a, timeout=5)


@parametrize_version
async def test_offline_edits_sync_after_reconnect(
    server_url: str, node_clients: NodeClients, version: str
) -> None:
    a, b = await asyncio.gather(*(node_clients.start(server_url, "offline", version) for _ in "ab"))
    await asyncio.gather(a.wait_synced(), b.wait_synced())

    await a.disconnect()
    await a.wait_event(lambda e: e["event"] == "ws-close" and e["local"], timeout=5)
    status = await a.status()
    assert not status["connected"] and not status["shouldConnect"] and not status["synced"]
    assert status["closeCount"] == 1

    await a.insert(0, "written offline")
    await a.connect()
    await a.wait_synced()
    await wait_equal(b.text, "written offline", timeout=5)
    assert (await a.status())["connected"]


async def test_update_round_trip_and_command_errors(server_url: str, node_clients: NodeClients) -> None:
    size = 2 * 1024 * 1024
    a, b = await asyncio.gather(
        node_clients.start(server_url, "updates", "v1"),
        node_clients.start(server_url, "updates", "v3", connect=False),
    )
    await a.wait_synced()
    await a.big_insert(size)
    # An update applied by hand goes out to the server like a local edit.
    await b.apply_update(await a.encode_state())
    assert len(await b.text()) == size
    await b.connect()
    await b.wait_synced()
    await b.insert(0, "b")

    async def a_got_b() -> bool:
        text = await a.text()
        return len(text) == size + 1 and text.startswith("bx")

    await wait_for(a_got_b, timeout=5)

    with pytest.raises(NodeCommandError, match="index must be a non-negative integer"):
        await a.insert(-1, "nope")
    with pytest.raises(NodeCommandError, match="unknown command"):
        await a.call("noSuchCommand")


@pytest.fixture
async def closing_server_url() -> AsyncIterator[str]:
    """A websocket server that accepts and at once closes with 4403, to observe close handling."""

    async def close_at_once(connection: ServerConnection) -> None:
        await connection.close(4403, "forbidden room")

    async with serve(close_at_once, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/yjs"


@parametrize_version
async def test_close_code_is_reported(
    closing_server_url: str, node_clients: NodeClients, version: str
) -> None:
    client = await node_clients.start(closing_server_url, "denied", version, max_backoff_ms=50)
    event = await client.wait_event(lambda e: e["event"] == "ws-close", timeout=5)
    assert (event["code"], event["reason"], event["local"]) == (4403, "forbidden room", False)
    if version == "v3":
        # 4400-4499 is terminal for v3: it reports `closed` and stops reconnecting.
        assert await client.wait_event(lambda e: e["event"] == "closed", timeout=5) == {
            "event": "closed",
            "code": 4403,
            "reason": "forbidden room",
        }
        status = await client.status()
        assert not status["shouldConnect"]
        assert status["terminalClose"] == {"code": 4403, "reason": "forbidden room"}
    else:
        # v1 and v2 retry whatever the code.
        async def reconnected() -> bool:
            return (await client.status())["closeCount"] >= 2

        await wait_for(reconnected, timeout=5)
    status = await client.status()
    assert (status["lastCloseCode"], status["lastCloseReason"]) == (4403, "forbidden room")
