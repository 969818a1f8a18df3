"""pairroom on a real Redis Cluster (3 masters, 3 replicas, started by the fixture) with three real
pairroom nodes sharing it and PostgreSQL: rooms whose slots live on every master converge across
nodes; a master killed while people type is healed by its replica's promotion with nothing lost (what
was typed meanwhile is held and sent when the slot is back); ``/readyz`` says ``degraded`` meanwhile
and ``ready`` after; a slot resharded while people type loses nothing; a pairroom node killed, the
others carry on and the database holds every edit. Bad input: a cluster URL on a plain server or on a
cluster with slots not covered stops start-up with a clear message; a cluster that loses a majority
of masters is degraded with the reason, local members still served, and heals."""

from __future__ import annotations

import asyncio
import json
import os
import time

import httpx
import pytest
from redis.crc import key_slot

from pairroom.protocol import keys

from .support.nodes import PAIRROOM, ServeProcess, serve_processes  # noqa: F401
from .support.redis_cluster import RedisCluster, migrate_slot, redis_cluster  # noqa: F401
from .support.redis_cluster import _cluster_ports as cluster_ports
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


async def metric_total(node: ServeProcess, name: str, label: str = "") -> float:
    async with httpx.AsyncClient(timeout=3) as http:
        text = (await http.get(f"{node.http}/metrics")).text
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#") and label in line
    )


def logged(node: ServeProcess, msg: str) -> list[dict]:
    return [entry for entry in node.log if entry.get("msg") == msg]


async def test_three_nodes_on_every_master_survive_a_master_killed_a_reshard_and_a_node_killed_mid_typing(
    serve_processes, redis_cluster, pg
):
    cluster = await redis_cluster()
    env = {**FAST, "PAIRROOM_DB": pg, "PAIRROOM_REDIS": cluster.url}
    nodes = list(await asyncio.gather(*(serve_processes({**env, "PAIRROOM_NODE_ID": f"node{i}"}) for i in (1, 2, 3))))
    rooms = await rooms_on_every_master(cluster)
    assert len(rooms) == 3
    # Every room has a client on every node: each edit crosses the cluster to two other nodes.
    clients = {name: [await YClient.connect(node.ws(name)) for node in nodes] for name in rooms.values()}
    await asyncio.wait_for(asyncio.gather(*(c.synced.wait() for cs in clients.values() for c in cs)), 10)
    typed: dict[str, list[str]] = {name: [] for name in clients}

    def type_round(tag: str) -> None:
        for name, group in clients.items():
            for side, client in enumerate(group):
                token = f"<{tag}{side}.{len(typed[name])}>"
                client.insert(len(str(client.text)), token)
                typed[name].append(token)

    def converged() -> bool:
        return all(
            len({str(c.text) for c in group}) == 1 and all(t in str(group[0].text) for t in typed[name])
            for name, group in clients.items()
        )

    for _i in range(5):
        type_round("a")
        await asyncio.sleep(0.02)
    await eventually(converged, timeout=10, what="rooms on every master converge across three nodes")
    for node in nodes:
        assert await readyz(node) == (200, {"status": "ready", "rooms": 3})

    # Kill -9 the master of the first room's slot while every node's clients keep typing.
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
        if promoted and [(await readyz(node))[0] for node in nodes] == [200, 200, 200]:
            break
        await asyncio.sleep(0.1)
    healed_after = time.monotonic() - killed_at
    assert promoted, "the replica was promoted"
    assert degraded == {node.port for node in nodes}, "every node said degraded while the slot was away"
    for _i in range(5):
        type_round("c")
    await eventually(converged, timeout=15, what=f"every edit on every copy ({healed_after:.1f} s to heal)")
    converged_after = time.monotonic() - killed_at
    print(f"failover: every node ready {healed_after:.1f} s after the kill, converged {converged_after:.1f} s")
    # What was typed while the slot was away was held and sent when it came back, not dropped.
    assert all(logged(node, "held room messages sent") for node in nodes), "each node held and sent"
    for node in nodes:
        assert await metric_total(node, "pairroom_cluster_dropped_total") == 0

    # The killed master comes back (as a replica of its promoted one); nothing changes for rooms.
    await victim.restart(wipe=False)
    await cluster.wait_ok()
    type_round("d")
    await eventually(converged, timeout=10, what="typing goes on once the old master is back")

    # A reshard while people type: the second room's slot moves to another master.
    moving = list(rooms.values())[1]
    slot = key_slot(keys.room_channel(moving).encode())
    source = await cluster.master_of(keys.room_channel(moving))
    target = next(m for m in await cluster.masters() if m is not source)
    typing = asyncio.create_task(_keep_typing(type_round, "m"))
    try:
        await migrate_slot(cluster, slot, target)
        await asyncio.sleep(0.5)
    finally:
        typing.cancel()
        await asyncio.gather(typing, return_exceptions=True)
    assert (await cluster.master_of(keys.room_channel(moving))) is target
    await eventually(converged, timeout=15, what="every edit typed during the reshard on every copy")

    # A pairroom node killed: the others carry every room on and store what was typed on all three.
    await nodes[2].kill()
    for name, group in clients.items():
        await group[2].close()
        clients[name] = group[:2]
    type_round("e")
    await eventually(converged, timeout=10, what="the two surviving nodes converge")
    finals = {name: str(group[0].text) for name, group in clients.items()}
    witnesses = {name: await YClient.connect(nodes[1].ws(name)) for name in clients}
    await eventually(
        lambda: all(str(w.text) == finals[name] for name, w in witnesses.items()),
        timeout=10,
        what="a surviving node has every edit",
    )
    for witness in witnesses.values():
        await witness.close()
    for group in clients.values():
        for client in group:
            await client.close()
    await asyncio.gather(nodes[0].terminate(), nodes[1].terminate())
    for name, final in finals.items():
        assert all(token in final for token in typed[name])
        assert await stored_text(pg, name) == final


async def _keep_typing(type_round, tag: str) -> None:
    while True:
        type_round(tag)
        await asyncio.sleep(0.05)


async def serve_fails(env: dict[str, str]) -> tuple[int, str]:
    """Run ``pairroom serve`` expecting it to stop at start-up: its exit status and the error of its
    one-line reason."""
    full_env = {**os.environ, "PAIRROOM_KERNELS": "false", "PAIRROOM_LOG_FORMAT": "json", **env}
    proc = await asyncio.create_subprocess_exec(
        PAIRROOM, "serve", "--port", "0", env=full_env, stderr=asyncio.subprocess.PIPE
    )
    try:
        _out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    reasons = [
        entry.get("error", "")
        for entry in map(json.loads, err.decode(errors="replace").splitlines())
        if entry.get("msg") == "start-up stopped: the cluster broker cannot start"
    ]
    assert len(reasons) == 1, err.decode(errors="replace")[-3000:]
    return proc.returncode or 0, reasons[0]


async def test_a_cluster_url_on_a_plain_server_or_on_uncovered_slots_stops_start_up_with_a_clear_message(
    redis_servers,
):
    plain, partial = await asyncio.gather(
        redis_servers(1),
        redis_servers(1, port=cluster_ports()[0], extra_args=["--cluster-enabled", "yes"]),
    )
    (plain,), (partial,) = plain, partial
    client = partial.client()
    await client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 8191)  # half the slots have no master
    code, err = await serve_fails({"PAIRROOM_REDIS": f"redis+cluster://127.0.0.1:{plain.port}"})
    assert code != 0
    assert f"cannot use 127.0.0.1:{plain.port} as a Redis Cluster" in err and "Cluster mode is not enabled" in err
    code, err = await serve_fails({"PAIRROOM_REDIS": f"redis+cluster://127.0.0.1:{partial.port}"})
    assert code != 0
    assert f"cannot use 127.0.0.1:{partial.port} as a Redis Cluster" in err and "not covered" in err, err


async def test_a_cluster_without_a_majority_of_masters_says_why_serves_local_members_and_heals(
    serve_processes, redis_cluster, pg
):
    cluster = await redis_cluster()
    env = {**FAST, "PAIRROOM_DB": pg, "PAIRROOM_REDIS": cluster.url}
    nodes = list(await asyncio.gather(*(serve_processes({**env, "PAIRROOM_NODE_ID": f"node{i}"}) for i in (1, 2))))
    room = "majority"
    ada, bob, cy = [await YClient.connect(node.ws(room)) for node in (nodes[0], nodes[0], nodes[1])]
    await asyncio.wait_for(asyncio.gather(ada.synced.wait(), bob.synced.wait(), cy.synced.wait()), 10)
    masters = await cluster.masters()
    for master in masters[:2]:
        await master.kill()
    status, body = 200, {}
    deadline = time.monotonic() + 10
    while status == 200 and time.monotonic() < deadline:
        status, body = await readyz(nodes[0])
        await asyncio.sleep(0.1)
    assert status == 503 and body["status"] == "degraded", body
    assert "lost" in body["broker"] or "not fully reachable" in body["broker"], body
    # Members on one node still edit together while the cluster cannot carry anything.
    ada.insert(0, "typed while the cluster is down. ")
    await eventually(lambda: "while the cluster is down" in str(bob.text), timeout=5, what="local members served")
    for master in masters[:2]:
        await master.restart(wipe=False)
    await cluster.wait_ok()
    await eventually(
        lambda: "while the cluster is down" in str(cy.text), timeout=20, what="the other node gets it after healing"
    )

    async def both_ready() -> bool:
        return [(await readyz(node))[0] for node in nodes] == [200, 200]

    await eventually(both_ready, timeout=15, what="ready again on every node")
    for client in (ada, bob, cy):
        await client.close()
