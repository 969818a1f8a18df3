"""Interop with real Yjs clients: npm y-websocket v1, v2 and v3, and pycrdt-websocket's provider."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from httpx_ws import aconnect_ws
from pycrdt import Doc, Provider, Text
from pycrdt.websocket.websocket import HttpxWebsocket

from .support.yjs_node import NodeClients, node_clients, wait_for  # noqa: F401

VERSIONS = ["v1", "v2", "v3"]


@contextlib.asynccontextmanager
async def pycrdt_provider(url: str, room: str) -> AsyncIterator[Doc]:
    """pycrdt-websocket's Python provider connected to ``url/room``."""
    doc = Doc()
    async with aconnect_ws(f"{url}/{room}", max_message_size_bytes=64 * 1024 * 1024) as ws:
        async with Provider(doc, HttpxWebsocket(ws, room)) as provider:
            await asyncio.wait_for(provider.synced.wait(), 10)
            yield doc


def text_of(doc: Doc) -> str:
    return str(doc.get("text", type=Text))


async def test_clients_of_every_version_edit_concurrently_and_converge(server, node_clients):
    clients = await asyncio.gather(*(node_clients.start(server.ws_base, "mixed", version) for version in VERSIONS))
    await asyncio.gather(*(c.wait_synced() for c in clients))
    async with pycrdt_provider(server.ws_base, "mixed") as doc:
        for round_ in range(10):
            await asyncio.gather(*(c.insert(0, f"[{v}{round_}]") for c, v in zip(clients, VERSIONS)))
            doc.get("text", type=Text).insert(0, f"[py{round_}]")
        expected_len = sum(len(f"[{v}{r}]") for v in VERSIONS + ["py"] for r in range(10))

        async def converged() -> bool:
            texts = [await c.text() for c in clients] + [text_of(doc)]
            return len(set(texts)) == 1 and len(texts[0]) == expected_len

        await wait_for(converged, timeout=15)
        final = text_of(doc)
    # every edit survived, in one order that every client agrees on
    for v in VERSIONS + ["py"]:
        for r in range(10):
            assert f"[{v}{r}]" in final
    room = server.hub.registry.rooms["mixed"]
    await room.flush()
    stored = await server.hub.store.load("mixed")
    rebuilt = Doc()
    for update in stored.updates:
        rebuilt.apply_update(update.data)
    assert text_of(room.doc) == final == text_of(rebuilt)


@pytest.mark.parametrize("version", VERSIONS)
async def test_a_late_joiner_gets_the_full_state(server, node_clients, version):
    writer = await node_clients.start(server.ws_base, f"late-{version}", "v1")
    await writer.wait_synced()
    for i in range(20):
        await writer.insert(i, "ab"[i % 2])
    await writer.close()
    late = await node_clients.start(server.ws_base, f"late-{version}", version)
    await late.wait_synced()
    assert await late.text() == "abababababababababab"


async def test_pycrdt_provider_late_joiner(server, node_clients):
    writer = await node_clients.start(server.ws_base, "late-py", "v2")
    await writer.wait_synced()
    await writer.insert(0, "written by yjs")

    async def integrated() -> bool:
        return server.hub.registry.rooms["late-py"].integrated == 1

    await wait_for(integrated, timeout=5)
    async with pycrdt_provider(server.ws_base, "late-py") as doc:
        assert text_of(doc) == "written by yjs"


@pytest.mark.parametrize("leave", ["close", "kill"])
async def test_a_closed_clients_awareness_disappears_for_the_others(server, node_clients, leave):
    room = f"presence-{leave}"
    a, b, c = await asyncio.gather(*(node_clients.start(server.ws_base, room, version) for version in VERSIONS))
    await asyncio.gather(a.wait_synced(), b.wait_synced(), c.wait_synced())
    await a.set_awareness({"user": {"name": "Ada"}, "cursor": None})
    a_id = await a.client_id()

    async def seen_by(client, present: bool) -> bool:
        states = await client.awareness()
        has = any(int(cid) == a_id and st for cid, st in states.items())
        return has == present

    await wait_for(lambda: seen_by(b, True), timeout=10)
    await wait_for(lambda: seen_by(c, True), timeout=10)
    if leave == "close":
        await a.close()
    else:
        await a.kill()
    await wait_for(lambda: seen_by(b, False), timeout=10)
    await wait_for(lambda: seen_by(c, False), timeout=10)


@pytest.mark.parametrize("version", VERSIONS)
async def test_two_mib_updates_go_through(server, node_clients, version):
    room = f"big-{version}"
    a = await node_clients.start(server.ws_base, room, version)
    b = await node_clients.start(server.ws_base, room, "v1")
    await asyncio.gather(a.wait_synced(), b.wait_synced())
    await a.big_insert(2 * 1024 * 1024)

    async def b_has_it() -> bool:
        return len(await b.text()) == 2 * 1024 * 1024

    await wait_for(b_has_it, timeout=30)


async def test_two_mib_from_pycrdt_provider(server, node_clients):
    b = await node_clients.start(server.ws_base, "big-py", "v3")
    await b.wait_synced()
    async with pycrdt_provider(server.ws_base, "big-py") as doc:
        doc.get("text", type=Text).insert(0, "y" * (2 * 1024 * 1024))

        async def b_has_it() -> bool:
            return len(await b.text()) == 2 * 1024 * 1024

        await wait_for(b_has_it, timeout=30)
