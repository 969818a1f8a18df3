"""The storage contract, run against every adapter: SQLite (a real file) and PostgreSQL (a real server).

PostgreSQL tests share one fresh database per module, so each test works in rooms of its own; the
tests that need an empty database make one.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from pycrdt import Doc, Text
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import create_async_engine

from pairroom.recorder.models import Base, SnapshotRow
from pairroom.recorder.sql import SqlStore, normalize_db_url
from pairroom.recorder.store import LoadedRoom, NewUpdate, Store, StoreError
from tests.support.postgres import database_fixture, fresh_database

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
UTC = timezone.utc

pg_module_url = database_fixture(scope="module")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def db_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A database that may already hold other tests' rooms (fresh per test on SQLite)."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path}/rooms.db"
    return request.getfixturevalue("pg_module_url")


@pytest.fixture
def empty_db_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A database nobody has touched: a file that does not exist yet, or a new PostgreSQL database."""
    if backend == "sqlite":
        path = tmp_path / "fresh" / "rooms.db"
        path.parent.mkdir()
        yield f"sqlite:///{path}"
        return
    with fresh_database() as url:
        yield url


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[SqlStore]:
    async with SqlStore(db_url) as opened:
        yield opened


@pytest.fixture
def room() -> str:
    return f"room-{uuid.uuid4().hex[:12]}"


def at(second: int, micro: int = 0) -> datetime:
    return datetime(2025, 3, 9, 1, 59, second, micro, tzinfo=UTC)


def batch(first: int, last: int, tag: bytes = b"u") -> list[NewUpdate]:
    return [NewUpdate(seq, at(seq % 60, seq), f"client:{seq}", tag + b"%d" % seq) for seq in range(first, last + 1)]


def seqs(updates: list) -> list[int]:
    return [u.seq for u in updates]


# --- opening ---------------------------------------------------------------------------------------


async def test_open_migrates_an_empty_database_and_reopening_changes_nothing(empty_db_url: str, room: str) -> None:
    store: Store = SqlStore(empty_db_url)
    await store.open()
    await store.open()
    await store.append(room, batch(1, 2))
    await store.close()

    async with SqlStore(empty_db_url) as reopened:
        assert seqs((await reopened.load(room)).updates) == [1, 2]


async def test_concurrent_opens_of_an_empty_database_both_succeed(empty_db_url: str) -> None:
    first, second = SqlStore(empty_db_url), SqlStore(empty_db_url)
    try:
        await asyncio.gather(first.open(), second.open())
        await first.ping()
        await second.ping()
    finally:
        await first.close()
        await second.close()


async def test_migrated_schema_matches_the_models(store: SqlStore, db_url: str) -> None:
    engine = create_async_engine(normalize_db_url(db_url))
    try:
        async with engine.connect() as conn:
            diff = await conn.run_sync(
                lambda sync_conn: compare_metadata(MigrationContext.configure(sync_conn), Base.metadata)
            )
    finally:
        await engine.dispose()
    assert diff == []


# --- append and load -------------------------------------------------------------------------------


async def test_append_then_load_returns_exact_bytes_seqs_origins_and_timestamps(store: SqlStore, room: str) -> None:
    india = timezone(timedelta(hours=5, minutes=30))
    written = [
        NewUpdate(1, datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC), "client:a", b"\x00\x01\xff"),
        NewUpdate(2, datetime(2025, 1, 2, 9, 0, 0, 1, tzinfo=india), "peer:n2", bytes(range(256))),
        NewUpdate(3, datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), "", b""),
        NewUpdate(4, datetime(1, 1, 1, tzinfo=UTC), "kernel", b"first"),
        NewUpdate(5, datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), "kernel", b"last"),
    ]
    await store.append(room, written)

    loaded = await store.load(room)

    assert loaded.snapshot is None
    assert loaded.last_seq == 5
    assert [(u.room, u.seq, u.at, u.origin, u.data) for u in loaded.updates] == [
        (room, w.seq, w.at, w.origin, w.data) for w in written
    ]
    assert all(u.at.tzinfo == UTC and isinstance(u.data, bytes) for u in loaded.updates)


async def test_load_after_a_snapshot_returns_it_and_only_the_later_updates(store: SqlStore, room: str) -> None:
    await store.append(room, batch(1, 5))
    before = datetime.now(UTC)
    await store.write_snapshot(room, 3, b"doc@3")

    loaded = await store.load(room)

    assert loaded.snapshot is not None
    assert (loaded.snapshot.room, loaded.snapshot.seq, loaded.snapshot.data) == (room, 3, b"doc@3")
    assert before <= loaded.snapshot.at <= datetime.now(UTC)
    assert seqs(loaded.updates) == [4, 5]
    assert loaded.last_seq == 5


async def test_snapshot_at_the_last_seq_leaves_no_updates_and_keeps_last_seq(store: SqlStore, room: str) -> None:
    await store.append(room, batch(1, 4))
    await store.write_snapshot(room, 4, b"doc@4")

    loaded = await store.load(room)

    assert loaded.updates == []
    assert loaded.last_seq == 4


async def test_load_uses_the_highest_snapshot_and_keeps_the_older_ones(
    store: SqlStore, room: str, db_url: str
) -> None:
    await store.append(room, batch(1, 6))
    await store.write_snapshot(room, 2, b"doc@2")
    await store.write_snapshot(room, 5, b"doc@5")
    await store.write_snapshot(room, 4, b"doc@4")
    await store.write_snapshot(room, 5, b"another encoding of doc@5")

    loaded = await store.load(room)

    assert loaded.snapshot is not None and (loaded.snapshot.seq, loaded.snapshot.data) == (5, b"doc@5")
    assert seqs(loaded.updates) == [6]
    assert await _snapshot_count(db_url, room) == 3


async def test_load_of_an_unknown_room_is_empty(store: SqlStore) -> None:
    assert await store.load("never-seen") == LoadedRoom(None, [], 0)


async def test_an_empty_batch_stores_nothing(store: SqlStore, room: str) -> None:
    await store.append(room, [])
    assert await store.load(room) == LoadedRoom(None, [], 0)


# --- retries and conflicts -------------------------------------------------------------------------


async def test_reappending_the_same_batch_is_a_no_op(store: SqlStore, room: str) -> None:
    await store.append(room, batch(1, 3))
    await store.append(room, batch(1, 3))
    await store.append(room, batch(2, 5))  # overlaps: 2 and 3 are retries, 4 and 5 are new

    assert [(u.seq, u.data) for u in await store.read_updates(room)] == [(s, b"u%d" % s) for s in range(1, 6)]


async def test_concurrent_identical_appends_store_one_copy(store: SqlStore, room: str) -> None:
    await asyncio.gather(*(store.append(room, batch(1, 20)) for _ in range(4)))
    assert seqs(await store.read_updates(room)) == list(range(1, 21))


async def test_conflicting_reappend_raises_and_stores_nothing_of_the_batch(store: SqlStore, room: str) -> None:
    await store.append(room, batch(1, 3))

    with pytest.raises(StoreError, match="seq 3"):
        await store.append(room, [*batch(4, 4), NewUpdate(3, at(3), "client:3", b"something else")])

    assert seqs(await store.read_updates(room)) == [1, 2, 3]
    assert (await store.read_updates(room, 2, 3))[0].data == b"u3"


async def test_a_batch_holding_one_seq_twice_with_different_data_raises(store: SqlStore, room: str) -> None:
    with pytest.raises(StoreError, match="seq 7"):
        await store.append(room, [NewUpdate(7, at(7), "a", b"one"), NewUpdate(7, at(7), "a", b"two")])
    assert await store.read_updates(room) == []


@pytest.mark.parametrize(
    ("make_room", "update"),
    [
        (lambda room: room, NewUpdate(1, datetime(2025, 1, 1), "client", b"naive timestamp")),
        (lambda room: room, NewUpdate(0, at(0), "client", b"seq starts at 1")),
        (lambda room: room, NewUpdate(1, at(0), "x" * 256, b"origin too long")),
        (lambda room: "", NewUpdate(1, at(0), "client", b"empty room")),
        (lambda room: "r" * 256, NewUpdate(1, at(0), "client", b"room too long")),
        (lambda room: room + "\x00", NewUpdate(1, at(0), "client", b"NUL in room")),
    ],
)
async def test_input_no_database_could_store_raises_value_error(
    store: SqlStore, room: str, make_room, update: NewUpdate
) -> None:
    with pytest.raises(ValueError):
        await store.append(make_room(room), [update])
    assert await store.read_updates(room) == []


# --- reading ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("after_seq", "upto_seq", "expected"),
    [
        (0, None, list(range(1, 11))),
        (3, 6, [4, 5, 6]),
        (7, None, [8, 9, 10]),
        (0, 1, [1]),
        (5, 5, []),
        (6, 2, []),
        (10, None, []),
        (8, 1000, [9, 10]),
    ],
)
async def test_read_updates_returns_the_half_open_range_in_order(
    store: SqlStore, room: str, after_seq: int, upto_seq: int | None, expected: list[int]
) -> None:
    await store.append(room, batch(6, 10))  # out of order on purpose: reads sort by seq
    await store.append(room, batch(1, 5))
    assert seqs(await store.read_updates(room, after_seq, upto_seq)) == expected


async def test_rooms_lists_every_room_with_a_log_or_a_snapshot(store: SqlStore, room: str) -> None:
    await store.append(f"{room}/b", batch(1, 2))
    await store.append(f"{room}/a", batch(1, 1))
    await store.write_snapshot(f"{room}/c", 0, b"empty doc")
    await store.append(f"{room}/b", batch(3, 3))

    names = [name for name in await store.rooms() if name.startswith(room)]

    assert names == [f"{room}/a", f"{room}/b", f"{room}/c"]


async def test_a_two_mebibyte_update_and_snapshot_round_trip(store: SqlStore, room: str) -> None:
    big = os.urandom(2 * 1024 * 1024)
    await store.append(room, [NewUpdate(1, at(1), "client", big)])
    await store.write_snapshot(room, 1, big[::-1])
    await store.append(room, [NewUpdate(2, at(2), "client", big[:12345])])

    loaded = await store.load(room)

    assert loaded.snapshot is not None and loaded.snapshot.data == big[::-1]
    assert [u.data for u in loaded.updates] == [big[:12345]]
    assert (await store.read_updates(room, 0, 1))[0].data == big


async def test_rooms_are_isolated_from_each_other(store: SqlStore, room: str) -> None:
    names = [f"{room}-{i}" for i in range(25)]
    await asyncio.gather(*(store.append(name, batch(1, 3, tag=name.encode() + b":")) for name in names))
    await store.write_snapshot(names[0], 2, b"only room 0")

    loaded = {name: await store.load(name) for name in names}

    for name in names:
        assert loaded[name].last_seq == 3
        assert [(u.room, u.data) for u in loaded[name].updates if u.seq == 3] == [(name, name.encode() + b":3")]
    assert [name for name in names if loaded[name].snapshot is not None] == [names[0]]
    assert seqs(loaded[names[0]].updates) == [3]
    assert all(seqs(loaded[name].updates) == [1, 2, 3] for name in names[1:])


# --- availability ----------------------------------------------------------------------------------


@pytest.fixture
def unreachable_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A database nobody can open: a file in a missing directory, or a port bound but not listening."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path}/missing/dir/rooms.db"
        return
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))  # refuses connections, and no other process can take the port
        yield f"postgresql://postgres@127.0.0.1:{bound.getsockname()[1]}/postgres"


async def test_open_and_ping_on_unreachable_storage_raise_store_error(unreachable_url: str) -> None:
    store = SqlStore(unreachable_url)
    with pytest.raises(StoreError, match="does not exist|Connect call failed"):
        await store.open()
    with pytest.raises(StoreError):
        await store.ping()


async def test_every_method_of_a_closed_store_raises_store_error(db_url: str, room: str) -> None:
    store = SqlStore(db_url)
    with pytest.raises(StoreError, match="not open"):
        await store.ping()
    await store.open()
    await store.ping()
    await store.close()
    await store.close()

    calls = [
        store.ping,
        lambda: store.load(room),
        lambda: store.append(room, batch(1, 1)),
        lambda: store.write_snapshot(room, 1, b"doc"),
        lambda: store.read_updates(room),
        store.rooms,
    ]
    for call in calls:
        with pytest.raises(StoreError, match="not open"):
            await call()


# --- with real documents ---------------------------------------------------------------------------


async def test_a_pycrdt_document_rebuilds_from_snapshot_and_log(store: SqlStore, room: str) -> None:
    doc = Doc()
    text = doc.get("text", type=Text)
    edits = [
        (0, 0, "hello world"),
        (5, 5, ","),
        (12, 12, "!"),
        (0, 1, "H"),
        (13, 13, " ✓ ünïcödé"),
        (6, 12, ""),
        (6, 6, " there"),
        (0, 0, ""),  # an update that changes nothing is still logged
    ]
    snapshot_after = 4
    for seq, (start, stop, insert) in enumerate(edits, start=1):
        state = doc.get_state()
        with doc.transaction():
            if stop > start:
                del text[start:stop]
            if insert:
                text.insert(start, insert)
        await store.append(room, [NewUpdate(seq, datetime.now(UTC), "client:1", doc.get_update(state))])
        if seq == snapshot_after:
            await store.write_snapshot(room, seq, doc.get_update())

    loaded = await store.load(room)
    assert loaded.snapshot is not None and loaded.snapshot.seq == snapshot_after
    assert seqs(loaded.updates) == list(range(snapshot_after + 1, len(edits) + 1))

    rebuilt = Doc()
    rebuilt.apply_update(loaded.snapshot.data)
    for update in loaded.updates:
        rebuilt.apply_update(update.data)
    replayed = Doc()
    for update in await store.read_updates(room):
        replayed.apply_update(update.data)

    assert str(rebuilt.get("text", type=Text)) == str(text) == "Hello, there! ✓ ünïcödé"
    assert str(replayed.get("text", type=Text)) == str(text)


# --- URLs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("sqlite:///./x.db", "sqlite+aiosqlite:///./x.db"),
        ("sqlite:////abs/x.db", "sqlite+aiosqlite:////abs/x.db"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("postgresql://u:p%40ss@h:5432/db?ssl=require", "postgresql+asyncpg://u:p%40ss@h:5432/db?ssl=require"),
        ("postgres://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("PostgreSQL://u@h/db", "postgresql+asyncpg://u@h/db"),
    ],
)
def test_normalize_db_url_picks_the_async_driver(given: str, expected: str) -> None:
    assert normalize_db_url(given) == expected


@pytest.mark.parametrize("url", ["mysql://u@h/db", "postgresql+psycopg2://u@h/db", "sqlite+pysqlite:///x.db", "rooms.db"])
def test_normalize_db_url_refuses_other_drivers(url: str) -> None:
    with pytest.raises(ValueError):
        normalize_db_url(url)


async def _snapshot_count(url: str, room: str) -> int:
    engine = create_async_engine(normalize_db_url(url))
    try:
        async with engine.connect() as conn:
            query = select(func.count()).select_from(SnapshotRow).where(SnapshotRow.room == room)
            return (await conn.execute(query)).scalar_one()
    finally:
        await engine.dispose()
