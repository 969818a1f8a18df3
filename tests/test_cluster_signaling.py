"""Signaling across two real nodes sharing a real Redis: y-webrtc topics and room calls reach the
other node's subscribers, never another room's, and a killed node's call peers leave.

"Nothing else arrived" is checked as in test_signaling.py: a ping answered by the next frame.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from pairroom.web.auth import mint

from .cluster.nodes import cluster_nodes  # noqa: F401
from .support.nodes import ServeProcess
from .support.redis_server import RedisProcess, redis_servers  # noqa: F401

pytestmark = pytest.mark.slow

SECRET = "cluster-signaling-secret-of-32-bytes-or-more"
TIMEOUT = 5.0
NODE_ENV = {
    "PAIRROOM_SECRET": SECRET,
    "PAIRROOM_KERNELS": "false",
    "PAIRROOM_HEARTBEAT_SECONDS": "0.5",
    "PAIRROOM_NODE_DEAD_AFTER_SECONDS": "2",
}


async def two_nodes(cluster_nodes, tmp_path, redis: RedisProcess) -> list[ServeProcess]:
    # Signaling never touches storage: each node may keep its own SQLite file.
    return await cluster_nodes(
        *(
            {
                **NODE_ENV,
                "PAIRROOM_REDIS": redis.url,
                "PAIRROOM_NODE_ID": name,
                "PAIRROOM_DB": f"sqlite:///{tmp_path / name}.db",
            }
            for name in ("node-a", "node-b")
        )
    )


@pytest.fixture
async def open_ws() -> AsyncIterator[Callable[[str], Awaitable[ClientConnection]]]:
    opened: list[ClientConnection] = []

    async def open_(url: str) -> ClientConnection:
        ws = await websockets.connect(url, open_timeout=TIMEOUT)
        opened.append(ws)
        return ws

    yield open_
    for ws in opened:
        await ws.close()


def ws_url(node: ServeProcess, path: str, room: str, name: str) -> str:
    return f"ws://127.0.0.1:{node.port}{path}?token={mint(SECRET, room, 'editor', name)}"


async def send(ws: ClientConnection, message: dict[str, Any]) -> None:
    await ws.send(json.dumps(message))


async def recv(ws: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(TIMEOUT):
        data = await ws.recv()
    assert isinstance(data, str)
    return json.loads(data)  # type: ignore[no-any-return]


async def nothing_else(ws: ClientConnection) -> None:
    await send(ws, {"type": "ping"})
    assert await recv(ws) == {"type": "pong"}


async def test_ywebrtc_publishes_cross_nodes_within_the_room_only(cluster_nodes, tmp_path, redis_servers, open_ws):
    (redis,) = await redis_servers(1)
    a, b = await two_nodes(cluster_nodes, tmp_path, redis)
    ann = await open_ws(ws_url(a, "/signal", "lesson", "ann"))
    bob = await open_ws(ws_url(b, "/signal", "lesson", "bob"))
    eve = await open_ws(ws_url(b, "/signal", "other", "eve"))  # another room, on bob's node
    for ws, topics in ((ann, ["lesson"]), (bob, ["lesson"]), (eve, ["other"])):
        await send(ws, {"type": "subscribe", "topics": topics})
        await nothing_else(ws)  # the subscription is live in Redis once the pong comes

    announce = {"type": "publish", "topic": "lesson", "data": {"type": "announce", "from": "peer-ann"}}
    await send(ann, announce)
    assert await recv(bob) == {**announce, "clients": 1}  # one receiver on the delivering node
    assert await recv(ann) == {**announce, "clients": 1}  # the sender too, as y-webrtc's server does
    reply = {"type": "publish", "topic": "lesson", "data": {"type": "signal", "from": "peer-bob", "to": "peer-ann"}}
    await send(bob, reply)
    assert await recv(ann) == {**reply, "clients": 1}
    assert await recv(bob) == {**reply, "clients": 1}

    # eve's token is for room "other": she cannot listen to "lesson", nor publish into it.
    await send(eve, {"type": "subscribe", "topics": ["lesson"]})
    assert (await recv(eve))["type"] == "error"
    await send(eve, {"type": "publish", "topic": "lesson", "data": {"type": "announce", "from": "eve"}})
    assert (await recv(eve))["type"] == "error"
    await nothing_else(ann)
    await nothing_else(bob)
    await send(ann, {"type": "publish", "topic": "lesson", "data": {"type": "signal", "from": "peer-ann"}})
    assert (await recv(bob))["data"]["from"] == "peer-ann"
    await nothing_else(eve)  # nothing of room "lesson" ever reached her


async def until(ws: ClientConnection, kind: str, timeout: float = TIMEOUT) -> dict[str, Any]:
    """The next message of type ``kind`` (call events of other peers may come in between)."""
    async with asyncio.timeout(timeout):
        while True:
            message = await recv(ws)
            if message["type"] == kind:
                return message


async def test_calls_span_nodes_and_a_killed_nodes_peers_leave(cluster_nodes, tmp_path, redis_servers, open_ws):
    (redis,) = await redis_servers(1)
    a, b = await two_nodes(cluster_nodes, tmp_path, redis)
    ann = await open_ws(ws_url(a, "/call/lesson", "lesson", "ann"))
    await send(ann, {"type": "join", "audio": True})
    ann_id = (await until(ann, "joined"))["peer"]

    bob = await open_ws(ws_url(b, "/call/lesson", "lesson", "bob"))
    await send(bob, {"type": "join", "audio": True})
    joined = await until(bob, "joined")
    bob_id = joined["peer"]
    # Node b asked node a who is in the call; ann comes in ``joined`` or right after it.
    if not any(p["peer"] == ann_id for p in joined["peers"]):
        assert (await until(bob, "peer-joined"))["peer"] == ann_id
    assert (await until(ann, "peer-joined"))["peer"] == bob_id

    offer = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    await send(ann, {"type": "offer", "to": bob_id, "sdp": offer})
    assert await until(bob, "offer") == {"type": "offer", "from": ann_id, "sdp": offer}
    await send(bob, {"type": "answer", "to": ann_id, "sdp": offer})
    assert await until(ann, "answer") == {"type": "answer", "from": bob_id, "sdp": offer}

    # A call in another room, on node b, hears nothing of this one.
    eve = await open_ws(ws_url(b, "/call/other", "other", "eve"))
    await send(eve, {"type": "join", "audio": True})
    assert (await until(eve, "joined"))["peers"] == []
    await send(ann, {"type": "state", "muted": True})
    assert (await until(bob, "state"))["peer"] == ann_id
    await nothing_else(eve)

    await a.kill()  # kill -9: ann never says leave
    killed_at = time.monotonic()
    assert (await until(bob, "peer-left", timeout=10))["peer"] == ann_id
    assert time.monotonic() - killed_at < 6
    await send(bob, {"type": "offer", "to": ann_id, "sdp": offer})
    error = await until(bob, "error")
    assert "not in the call" in json.dumps(error)
