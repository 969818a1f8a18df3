"""Authorship travels with the update: the stored log names the person who typed, whichever node
stores the update first. Two real ``pairroom serve`` nodes share a real Redis and one PostgreSQL
database, with a real y-websocket client on each, each signed in as a different user."""

from __future__ import annotations

import re

import httpx
import pytest

from pairroom.protocol.sync import read_var_uint
from pairroom.storage.sql import SqlStore
from pairroom.storage.store import StoredUpdate
from pairroom.web.auth import Role, mint

from .support.nodes import serve_processes  # noqa: F401
from .support.redis_server import RedisProcess, redis_servers  # noqa: F401
from .support.yjs_node import node_clients, wait_for  # noqa: F401

pytestmark = pytest.mark.slow

SECRET = "authorship-secret-of-thirty-two-bytes"
ROOM = "authors"
COMMON = {
    "PAIRROOM_SECRET": SECRET,
    "PAIRROOM_HEARTBEAT_SECONDS": "0.5",
    "PAIRROOM_NODE_DEAD_AFTER_SECONDS": "2",
    "PAIRROOM_ROOM_IDLE_SECONDS": "60",
    "PAIRROOM_KERNELS": "false",
}


async def stored_rows(db: str, room: str) -> list[StoredUpdate]:
    store = SqlStore(db)
    await store.open()
    try:
        return list((await store.load(room)).updates)
    finally:
        await store.close()


def yjs_clients_in(update: bytes) -> set[int]:
    """The Yjs client ids whose items an update holds: the first struct block's client (lib0 update
    v1: number of blocks, then per block its number of structs, client and clock). Rows are one
    transaction each, so one block; a row with several would hold several people's edits."""
    blocks, pos = read_var_uint(update, 0)
    if blocks == 0:
        return set()
    assert blocks == 1, f"an update with items of {blocks} clients"
    _structs, pos = read_var_uint(update, pos)
    client, _ = read_var_uint(update, pos)
    return {client}


async def test_every_stored_row_of_an_edit_names_its_typist_whichever_node_stored_it(
    serve_processes, redis_servers, pg, node_clients
):
    (redis,) = await redis_servers(1)
    # Node 1 stores every 50 ms; node 2 would only store after ten minutes (or at shutdown). So
    # what Grace types on node 2 reaches the database through node 1, a peer of her node.
    node1, node2 = [
        await serve_processes({**COMMON, "PAIRROOM_DB": pg, "PAIRROOM_REDIS": redis.url,
                               "PAIRROOM_NODE_ID": node_id, "PAIRROOM_FLUSH_INTERVAL_MS": flush_ms})
        for node_id, flush_ms in (("node1", "50"), ("node2", "600000"))
    ]  # fmt: skip
    ada_token = mint(SECRET, ROOM, Role.EDITOR, "Ada Lovelace", user_id="u-ada")
    grace_token = mint(SECRET, ROOM, Role.EDITOR, "Grace Hopper", user_id="u-grace")
    ada = await node_clients.start(node1.ws_base, ROOM, "v2", params={"token": ada_token})
    grace = await node_clients.start(node2.ws_base, ROOM, "v3", params={"token": grace_token})
    await ada.wait_synced()
    await grace.wait_synced()
    user_of = {await ada.client_id(): "u-ada", await grace.client_id(): "u-grace"}

    typed = []
    for i in range(12):
        for name, client in (("ada", ada), ("grace", grace)):
            token = f"<{name}{i}>"
            await client.insert(0, token)
            typed.append(token)

    async def both_have_everything() -> bool:
        a, g = await ada.text(), await grace.text()
        return a == g and all(t in a for t in typed)

    await wait_for(both_have_everything, timeout=15)

    async def stored_everything() -> list[StoredUpdate]:
        rows = await stored_rows(pg, ROOM)
        authored = [row for row in rows if yjs_clients_in(row.data) & user_of.keys()]
        return rows if len(authored) == len(typed) else []

    rows = await wait_for(stored_everything, timeout=15, message="every edit stored by node 1")
    authors: dict[str, int] = {}
    for row in rows:
        clients = yjs_clients_in(row.data) & user_of.keys()
        if not clients:
            continue  # the server's own changes (none of the typists' items)
        assert len(clients) == 1, f"row {row.seq} mixes two typists' edits: {row.origin}"
        user = user_of[next(iter(clients))]
        assert re.fullmatch(rf"client:[^:]+:{user}", row.origin), (row.seq, row.origin, user)
        authors[user] = authors.get(user, 0) + 1
    assert authors == {"u-ada": 12, "u-grace": 12}
    assert not any(row.origin.startswith("peer:") for row in rows)
    # Grace's rows were stored by node 1, a peer of her node: node 2 has stored nothing yet.
    async with httpx.AsyncClient() as http:
        scraped = (await http.get(f"{node2.http}/metrics")).text
    assert re.search(r"^pairroom_updates_stored_total 0\.0$", scraped, re.M), scraped

    # At shutdown node 2 stores its copies: the same uids, so the same rows, nothing relabelled.
    await node2.terminate()
    after = {r.uid: r.origin for r in await stored_rows(pg, ROOM)}
    assert all(after[r.uid] == r.origin for r in rows)
