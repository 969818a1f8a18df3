"""Presence renewals across two nodes sharing a real Redis: gathered at both ends, not N x N."""

from __future__ import annotations

import asyncio
from typing import Any

from pairroom.protocol import sync as protocol
from tests.conftest import RunningServer, StartServer
from tests.yclient import YClient, eventually

from .support.redis_server import redis_servers  # noqa: F401

ROOM = "renewals"


def awareness_frames(client: YClient, since: int) -> list[list[protocol.AwarenessEntry]]:
    out = []
    for frame in client.received[since:]:
        message = protocol.decode_message(frame)
        if message.type is protocol.MessageType.AWARENESS:
            out.append(protocol.decode_awareness(message.payload))
    return out


async def renew(client: YClient) -> None:
    """What y-protocols does every 15 s: the state it shows, again, at a newer clock."""
    await client.set_awareness(client.awareness.get_local_state())


def published_awareness(node: RunningServer) -> int:
    return node.hub.metrics.hot.bus_published[("awareness", "true")]


async def test_renewals_from_another_node_reach_a_member_gathered_with_local_ones(
    redis_servers: Any, start_server: StartServer
) -> None:
    (redis,) = await redis_servers(1)
    node_a = await start_server(redis=redis.url, node_id="node-a")
    node_b = await start_server(redis=redis.url, node_id="node-b")
    ada = await YClient.connect(node_a.ws(ROOM))
    dan = await YClient.connect(node_a.ws(ROOM))
    bob = await YClient.connect(node_b.ws(ROOM))
    cy = await YClient.connect(node_b.ws(ROOM))
    clients = (ada, dan, bob, cy)
    await asyncio.wait_for(asyncio.gather(*(c.synced.wait() for c in clients)), 5)
    for client, name in zip(clients, ("ada", "dan", "bob", "cy"), strict=True):
        await client.set_awareness({"user": {"name": name}, "file": f"{name}.py"})
    # each takes its stamped state (with its colour) as its own, as a browser's awareness does
    await eventually(
        lambda: all((c.awareness.get_local_state() or {}).get("user", {}).get("color") for c in clients),
        what="every client got its colour",
    )
    others = {ada.doc.client_id, dan.doc.client_id, cy.doc.client_id}
    await eventually(lambda: others <= set(bob.awareness.states), what="bob sees everyone across the nodes")
    room_a, room_b = node_a.hub.registry.rooms[ROOM], node_b.hub.registry.rooms[ROOM]
    room_a.presence.publish_renew_tick = 0.2
    room_b.presence.renew_tick = 0.6
    await asyncio.sleep(0.3)  # the colour echoes settle
    published = published_awareness(node_a)
    seen = len(bob.received)

    for client in (ada, dan, cy):
        await renew(client)
    await asyncio.sleep(0.1)
    assert awareness_frames(bob, seen) == [], "renewals are not relayed at once, local or remote"
    assert published_awareness(node_a) == published, "nor published to the other node at once"

    await eventually(lambda: awareness_frames(bob, seen), timeout=3, what="the renewals, gathered")
    await asyncio.sleep(0.2)
    (entries,) = awareness_frames(bob, seen)  # one message: the remote renewals with the local one
    assert {e.client_id for e in entries} == others
    assert {e.client_id: e.clock for e in entries} == {cid: room_b.awareness.meta[cid]["clock"] for cid in others}
    assert published_awareness(node_a) == published + 1, "ada's and dan's renewals in one bus message"

    await ada.set_awareness({**(ada.awareness.get_local_state() or {}), "file": "z.py"})  # a change: at once
    await eventually(
        lambda: (bob.awareness.states.get(ada.doc.client_id) or {}).get("file") == "z.py",
        timeout=0.5,
        what="a change crosses at once",
    )
    for client in clients:
        await client.close()
