"""Rooms survive restarts: one contract suite over SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from pairroom.storage.store import NewUpdate

from .support.postgres import create_database, drop_database
from .support.storage import stored_text
from .yclient import YClient, eventually


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def any_db(request: pytest.FixtureRequest, db_url: str) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield db_url
        return
    url = await create_database()
    try:
        yield url
    finally:
        await drop_database(url)


async def test_document_survives_a_restart(start_server, any_db):
    server = await start_server(db=any_db)
    a = await YClient.connect(server.ws("keep"))
    await asyncio.wait_for(a.synced.wait(), 5)
    for i in range(20):
        a.insert(len(str(a.text)), f"line {i}\n")
    expected = str(a.text)
    await eventually(lambda: server.hub.registry.rooms["keep"].integrated == 20, what="all integrated")
    await a.close()
    await server.stop()
    assert await stored_text(any_db, "keep") == expected

    again = await start_server(db=any_db)
    b = await YClient.connect(again.ws("keep"))
    await eventually(lambda: str(b.text) == expected, what="reloaded after restart")
    await b.close()


async def test_snapshots_keep_loads_short_and_the_log_whole(start_server, any_db):
    server = await start_server(db=any_db, snapshot_every=10, flush_max_updates=5)
    a = await YClient.connect(server.ws("snap"))
    await asyncio.wait_for(a.synced.wait(), 5)
    for i in range(35):
        a.insert(len(str(a.text)), str(i % 10))
    expected = str(a.text)
    room = server.hub.registry.rooms["snap"]
    await eventually(
        lambda: room.integrated == 35 and room.stored_seq == 35 and room.snapshot_seq >= 30,
        what="flushed with snapshots",
    )
    loaded = await server.hub.store.load("snap")
    assert loaded.snapshot is not None and loaded.snapshot.seq >= 30
    assert len(loaded.updates) == 35 - loaded.snapshot.seq
    log = await server.hub.store.read_updates("snap")
    assert [u.seq for u in log] == list(range(1, 36)), "the log is kept whole beside snapshots"
    assert all(u.origin.startswith("client:") for u in log)
    await a.close()
    await server.stop()
    assert await stored_text(any_db, "snap") == expected


async def test_writes_are_batched_not_one_transaction_per_keystroke(start_server, any_db):
    server = await start_server(db=any_db, flush_interval_ms=200)
    a = await YClient.connect(server.ws("batch"))
    await asyncio.wait_for(a.synced.wait(), 5)
    for i in range(50):
        a.insert(i, "k")
    room = server.hub.registry.rooms["batch"]
    await eventually(lambda: server.hub.metrics.stored_updates._value.get() == 50, what="flushed")
    assert room.integrated == 50
    flushes = server.hub.metrics.flush_seconds.collect()[0].samples
    count = next(s.value for s in flushes if s.name.endswith("_count"))
    assert 1 <= count <= 5, f"50 keystrokes took {count} flushes"
    await a.close()


async def test_one_rooms_unwritable_batch_does_not_hold_back_the_others(start_server):
    """Rooms are written together, one transaction a flush; when that fails, each is written alone."""
    server = await start_server(flush_interval_ms=30)
    names = ("poisoned", "healthy-1", "healthy-2")
    clients = [await YClient.connect(server.ws(name)) for name in names]
    await asyncio.wait_for(asyncio.gather(*(c.synced.wait() for c in clients)), 5)
    now = datetime.now(UTC)
    # a uid the log already holds with other bytes: the database refuses the poisoned room's batch
    await server.hub.store.append("poisoned", [NewUpdate("clash", now, "test", b"\x00\x00")])
    poisoned = server.hub.registry.rooms["poisoned"]
    poisoned.pending.append(NewUpdate("clash", now, "test", b"\x00\x01"))
    for name, client in zip(names, clients):
        client.insert(0, f"text of {name}")

    async def healthy_stored() -> bool:
        return all([await stored_text(server.settings.db, name) == f"text of {name}" for name in names[1:]])

    await eventually(healthy_stored, what="the healthy rooms are stored")
    assert server.hub.registry.storage_failing
    assert [u.uid for u in poisoned.pending][0] == "clash"  # kept in memory, retried, not dropped
    assert len(poisoned.pending) == 2
    for client in clients:
        await client.close()
