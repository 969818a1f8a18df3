"""pairroom on a real Redis Cluster (3 masters, 3 replicas, started by the fixture): rooms whose slots
live on every master converge across nodes, and a master killed while people type is healed by its
replica's promotion with nothing lost; ``/readyz`` says ``degraded`` meanwhile and ``ready`` after.
Then a pairroom node is killed: the other carries on and the database holds every edit."""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator

import httpx
import pytest
from redis.crc import key_slot

from pairroom.protocol import keys

from .support.nodes import ServeProcess, serve_processes  # noqa: F401
from .support.postgres import create_database, drop_database
from .support.redis_cluster import RedisCluster, redis_cluster  # noqa: F401
from .support.redis_server import redis_servers  # noqa: F401
from .support.storage import stored_text
from .yclient import YClient, eventually

pytestmark = pytest.mark.slow

FAST = {
    "PAIRROOM_HEARTBEAT_SECONDS": "0.5",
    "PAIRROOM_NODE_DEAD_AFTER_SECONDS": "3",
    "PAIRROOM_ANTI_ENTROPY_SECONDS": "2",
    "PAIRROOM_FLUSH_INTERVAL_MS": "50",
    "PAIRROOM_ROOM_IDLE_SECONDS": "60",
    "PAIRROOM_KERNELS": "false",
}


@pytest.fixture
async def pg() -> AsyncIterator[str]:
    url = await create_database()
    try:
        yield url
    finally:
        await drop_database(url)


async def rooms_on_every_master(cluster: RedisCluster) -> dict[int, str]:
    """master port -> a room whose channel's slot that master owns."""
    owners = await cluster.slot_owners()
    rooms: dict[int, str] = {}
    for i in range(1000):
        name = f"room-{i}"
        rooms.setdefault(owners[key_slot(keys.room_channel(name).encode())], name)
        if len(rooms) == len(set(owners.values())):
            return rooms
    raise AssertionError("no room name found for some master")


async def readyz(node: ServeProcess) -> tuple[int, dict]:
    async with httpx.AsyncClient(timeout=3) as http:
        response = await http.get(f"{node.http}/readyz")
    return response.status_code, response.json()


async def test_rooms_on_every_master_converge_and_survive_a_master_killed_mid_typing(
    serve_processes, redis_cluster, pg
):
    cluster = await redis_cluster()
    env = {**FAST, "PAIRROOM_DB": pg, "PAIRROOM_REDIS": cluster.url}
    nodes = list(await asyncio.gather(*(serve_processes({**env, "PAIRROOM_NODE_ID": f"node{i}"}) for i in (1, 2))))
    rooms = await rooms_on_every_master(cluster)
    assert len(rooms) == 3
    clients = {
        name: [await YClient.connect(node.ws(name)) for node in nodes] for name in rooms.values()
    }
    await asyncio.wait_for(asyncio.gather(*(c.synced.wait() for cs in clients.values() for c in cs)), 10)
    typed: dict[str, list[str]] = {name: [] for name in clients}

    def type_round(tag: str) -> None:
        for name, pair in clients.items():
            for side, client in enumerate(pair):
                token = f"<{tag}{side}.{len(typed[name])}>"
                client.insert(len(str(client.text)), token)
                typed[name].append(token)

    def converged() -> bool:
        return all(
            len({str(c.text) for c in pair}) == 1 and all(t in str(pair[0].text) for t in typed[name])
            for name, pair in clients.items()
        )

    for i in range(5):
        type_round("a")
        await asyncio.sleep(0.02)
    await eventually(converged, timeout=10, what="rooms on every master converge across nodes")
    for node in nodes:
        assert await readyz(node) == (200, {"status": "ready", "rooms": 3})

    # Kill -9 the master of the first room's slot while both nodes' clients keep typing.
    victim_port, victim_room = next(iter(rooms.items()))
    victim = cluster.by_port(victim_port)
    await victim.kill()
    killed_at = time.monotonic()
    degraded: set[int] = set()
    while time.monotonic() - killed_at < 20:
        type_round("b")
        for node in nodes:
            status, body = await readyz(node)
            if status == 503:
                assert body["status"] == "degraded" and body["broker"] != "disconnected, reconnecting", body
                degraded.add(node.port)
        owners = await cluster.slot_owners()
        promoted = owners[key_slot(keys.room_channel(victim_room).encode())] != victim_port
        if promoted and [(await readyz(node))[0] for node in nodes] == [200, 200]:
            break
        await asyncio.sleep(0.1)
    healed_after = time.monotonic() - killed_at
    assert promoted, "the replica was promoted"
    assert degraded == {node.port for node in nodes}, "every node said degraded while the slot was away"
    for i in range(5):
        type_round("c")
    await eventually(converged, timeout=15, what=f"every edit on every copy ({healed_after:.1f} s to heal)")

    # The killed master comes back (as a replica of its promoted one); nothing changes for rooms.
    await victim.restart(wipe=False)
    await cluster.wait_ok()
    type_round("d")
    await eventually(converged, timeout=10, what="typing goes on once the old master is back")

    # A pairroom node killed: the other one carries every room on, and stores what was typed on both.
    await nodes[1].kill()
    for name, pair in clients.items():
        await pair[1].close()
        clients[name] = [pair[0]]
    type_round("e")
    finals = {name: str(pair[0].text) for name, pair in clients.items()}
    witnesses = {name: await YClient.connect(nodes[0].ws(name)) for name in clients}
    await eventually(
        lambda: all(str(w.text) == finals[name] for name, w in witnesses.items()),
        timeout=10,
        what="the surviving node has every edit",
    )
    for witness in witnesses.values():
        await witness.close()
    for pair in clients.values():
        await pair[0].close()
    await nodes[0].terminate()
    for name, final in finals.items():
        assert all(token in final for token in typed[name])
        assert await stored_text(pg, name) == final
