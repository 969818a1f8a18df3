"""The storage contract, run against every adapter: memory, SQLite (a real file) and PostgreSQL (a
real server). What only a database has (migrations, its schema, its own constraints, an unreachable
server) is tested on SQLite and PostgreSQL.

PostgreSQL tests share one fresh database per module, so each test works in rooms of its own; the
tests that need an empty database make one. A memory "database" is a ``MemoryTables``: every
``MemoryStore`` made on it sees the same rows, as every ``SqlStore`` on one URL does.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
import sqlalchemy
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from pycrdt import Doc, Text
from sqlalchemy import func, insert, inspect, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import create_async_engine

from pairroom.recording.history_store import Event, HistoryStore, Version, history_store_for
from pairroom.storage import sql
from pairroom.storage.compaction import compact
from pairroom.storage.memory import MemoryStore, MemoryTables
from pairroom.storage.migrate import upgrade_to_head
from pairroom.storage.models import UID_MAX_LENGTH, Base, SnapshotRow, UpdateRow
from pairroom.storage.sql import SqlStore, normalize_db_url
from pairroom.storage.store import (
    ORIGIN_MAX_LENGTH,
    LoadedRoom,
    NewUpdate,
    Snapshot,
    Store,
    StoredUpdate,
    StoreError,
    clip_label,
    open_store,
)
from pairroom.storage.writer import Backoff, BatchWriter
from pairroom.web.auth import mint
from tests.support.postgres import database_fixture, fresh_database
from tests.support.storage import stored_text
from tests.yclient import YClient, eventually

SQL_BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
BACKENDS = ["memory", *SQL_BACKENDS]
UTC = UTC

pg_module_url = database_fixture(scope="module")

Database = str | MemoryTables  # a database URL, or the rows memory stores share


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(params=SQL_BACKENDS)
def sql_backend(request: pytest.FixtureRequest) -> str:
    return request.param


def store_on(database: Database) -> Store:
    """A new store (not open) on ``database``."""
    return MemoryStore(database) if isinstance(database, MemoryTables) else SqlStore(database)


def _sql_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path}/rooms.db"
    return request.getfixturevalue("pg_module_url")


def _empty_sql_url(backend: str, tmp_path: Path) -> Iterator[str]:
    if backend == "sqlite":
        path = tmp_path / "fresh" / "rooms.db"
        path.parent.mkdir()
        yield f"sqlite:///{path}"
        return
    with fresh_database() as url:
        yield url


@pytest.fixture
def database(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Database:
    """A database that may already hold other tests' rooms (fresh per test on memory and SQLite)."""
    if backend == "memory":
        return MemoryTables()
    return _sql_url(backend, tmp_path, request)


@pytest.fixture
def empty_database(backend: str, tmp_path: Path) -> Iterator[Database]:
    """A database nobody has touched: new memory, a file that does not exist yet, or a new
    PostgreSQL database."""
    if backend == "memory":
        yield MemoryTables()
        return
    yield from _empty_sql_url(backend, tmp_path)


@pytest.fixture
def sql_url(sql_backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A SQL database that may already hold other tests' rooms (fresh per test on SQLite)."""
    return _sql_url(sql_backend, tmp_path, request)


@pytest.fixture
def empty_sql_url(sql_backend: str, tmp_path: Path) -> Iterator[str]:
    """A SQL database nobody has touched."""
    yield from _empty_sql_url(sql_backend, tmp_path)


@pytest.fixture
async def store(database: Database) -> AsyncIterator[Store]:
    opened = store_on(database)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def room() -> str:
    return f"room-{uuid.uuid4().hex[:12]}"


def at(second: int, micro: int = 0) -> datetime:
    return datetime(2025, 3, 9, 1, 59, second, micro, tzinfo=UTC)


def batch(first: int, last: int, tag: bytes = b"u", node: str = "n1") -> list[NewUpdate]:
    """Updates ``first..last`` as node ``node`` would log them: uid ``node:i``, data ``tag + i``."""
    return [NewUpdate(f"{node}:{i}", at(i % 60, i), f"client:{i}", tag + b"%d" % i) for i in range(first, last + 1)]


def seqs(updates: list) -> list[int]:
    return [u.seq for u in updates]


def logged(updates: list) -> list[tuple[int, str, bytes]]:
    return [(u.seq, u.uid, u.data) for u in updates]


# --- opening ---------------------------------------------------------------------------------------


async def test_open_prepares_an_empty_database_and_reopening_changes_nothing(
    empty_database: Database, room: str
) -> None:
    store = store_on(empty_database)
    await store.open()
    await store.open()
    assert await store.append(room, batch(1, 2)) == 2
    await store.close()

    reopened = store_on(empty_database)
    await reopened.open()
    try:
        assert logged((await reopened.load(room)).updates) == [(1, "n1:1", b"u1"), (2, "n1:2", b"u2")]
        assert await reopened.append(room, batch(3, 3)) == 3
    finally:
        await reopened.close()
    await store.open()  # the first store, opened again, sees what the second one wrote
    assert (await store.load(room)).last_seq == 3
    await store.close()


async def test_concurrent_opens_of_an_empty_database_both_succeed(empty_database: Database) -> None:
    first, second = store_on(empty_database), store_on(empty_database)
    try:
        await asyncio.gather(first.open(), second.open())
        await first.ping()
        await second.ping()
    finally:
        await first.close()
        await second.close()


async def test_three_stores_opening_one_new_sqlite_file_at_once_all_open(tmp_path: Path) -> None:
    """Switching a new file to WAL is refused at once, without SQLite's busy wait, while another
    connection switches it too: before the pragma was retried, 8 of 60 such three-way opens failed
    with "database is locked"."""
    for attempt in range(60):
        path = tmp_path / f"fresh-{attempt}" / "rooms.db"
        path.parent.mkdir()
        stores = [SqlStore(f"sqlite:///{path}") for _ in range(3)]
        try:
            await asyncio.gather(*(store.open() for store in stores))
            for store in stores:
                await store.ping()
        finally:
            for store in stores:
                await store.close()


async def _schema_of(url: str) -> tuple[list, dict, set, list]:
    """(differences from the models, the updates table's columns and unique constraints, the stamp)."""
    engine = create_async_engine(normalize_db_url(url))
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(
                lambda sync_conn: (
                    compare_metadata(MigrationContext.configure(sync_conn), Base.metadata),
                    {c["name"]: c for c in inspect(sync_conn).get_columns("updates")},
                    {tuple(u["column_names"]) for u in inspect(sync_conn).get_unique_constraints("updates")},
                    [row[0] for row in sync_conn.execute(text("SELECT version_num FROM alembic_version"))],
                )
            )
    finally:
        await engine.dispose()


async def _migrate_with_alembic(url: str, to: str = "head") -> None:
    """Run the migration scripts themselves (``open()`` creates a new database from the models)."""
    engine = create_async_engine(normalize_db_url(url))

    def upgrade(sync_conn) -> None:  # type: ignore[no-untyped-def]
        config = Config()
        config.set_main_option("script_location", str(Path(sql.__file__).with_name("migrations")))
        config.attributes["connection"] = sync_conn
        command.upgrade(config, to)

    try:
        async with engine.begin() as conn:
            await conn.run_sync(upgrade)
    finally:
        await engine.dispose()


def test_head_revision_names_the_newest_migration() -> None:
    config = Config()
    config.set_main_option("script_location", str(Path(sql.__file__).with_name("migrations")))
    assert ScriptDirectory.from_config(config).get_current_head() == sql.HEAD_REVISION


@pytest.mark.parametrize("made_by", ["migrations", "open"])
async def test_the_schema_matches_the_models_whether_migrated_or_created(empty_sql_url: str, made_by: str) -> None:
    if made_by == "migrations":
        await _migrate_with_alembic(empty_sql_url)
    else:
        async with SqlStore(empty_sql_url):
            pass
    diff, columns, uniques, stamp = await _schema_of(empty_sql_url)
    assert diff == []
    assert stamp == [sql.HEAD_REVISION]
    # What the store's numbering and deduplication rest on, spelled out (compare_metadata would also
    # pass if both the models and the migration lacked them).
    assert columns["uid"]["nullable"] is False
    assert getattr(columns["uid"]["type"], "length", None) == UID_MAX_LENGTH
    assert {("room", "seq"), ("room", "uid")} <= uniques
    await _migrate_with_alembic(empty_sql_url)  # a created database is at head for Alembic too


def _sqlite_schema(path: Path) -> list[tuple[str, str, str, str | None]]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name").fetchall()
    conn.close()
    return rows


async def test_a_new_sqlite_file_gets_exactly_the_schema_sqlalchemy_creates_from_the_models(tmp_path: Path) -> None:
    """A SQLite store creates its tables from DDL kept in the tree (no SQLAlchemy at run time): the
    DDL must be what ``create_all`` makes of the models, statement for statement."""
    async with SqlStore(f"sqlite:///{tmp_path}/by-store.db"):
        pass
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path}/by-models.db")
    try:
        with engine.begin() as conn:
            upgrade_to_head(conn)
    finally:
        engine.dispose()
    by_store, by_models = _sqlite_schema(tmp_path / "by-store.db"), _sqlite_schema(tmp_path / "by-models.db")
    assert {name for _, name, _, _ in by_store} >= {"updates", "snapshots", "events", "versions", "alembic_version"}
    assert by_store == by_models


def test_a_sqlite_node_stores_and_reads_history_without_importing_sqlalchemy(tmp_path: Path) -> None:
    """SQLAlchemy is 26 MiB resident; a SQLite node imports it only to upgrade an older file."""
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from datetime import UTC, datetime
        from pairroom.recording.history_store import Event, Version, history_store_for
        from pairroom.storage.store import NewUpdate, open_store

        async def main():
            store = open_store("sqlite:///{tmp_path}/rooms.db")
            await store.open()
            now = datetime.now(UTC)
            assert await store.append("r", [NewUpdate("n:1", now, "o", b"u1")]) == 1
            await store.write_snapshot("r", 1, b"doc")
            history = history_store_for(store)
            await history.append_events([Event("r", now, "join", "u", {{}})], [Version("r", "v", 1, now, "u", False)])
            assert [e.kind for e in await history.events("r")] == ["join"]
            assert (await history.snapshot_at_or_before("r", 1)).data == b"doc"
            assert await history.seq_at("r", now) == 1 and await store.rooms() == ["r"]
            assert (await store.load("r")).last_seq == 1
            await store.close()
            print(sorted(m for m in sys.modules if m.split(".")[0] in ("sqlalchemy", "alembic", "aiosqlite")))

        asyncio.run(main())
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


async def test_an_in_memory_sqlite_store_keeps_its_rows_while_open(room: str) -> None:
    """``sqlite://`` is one connection: its reads and writes share one thread, so loads see appends."""
    async with SqlStore("sqlite://") as store:
        assert await store.append(room, batch(1, 2)) == 2
        assert logged((await store.load(room)).updates) == [(1, "n1:1", b"u1"), (2, "n1:2", b"u2")]
        history = history_store_for(store)
        assert await history.last_seq(room) == 2


@pytest.mark.parametrize("url", ["sqlite:///rooms.db?timeout=5", "sqlite:rooms.db", "sqlite://host/rooms.db"])
def test_a_sqlite_url_with_options_or_without_its_three_slashes_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="sqlite:///|scheme://"):
        SqlStore(url)


async def test_open_migrates_an_older_schema_to_head(empty_sql_url: str, room: str) -> None:
    await _migrate_with_alembic(empty_sql_url, "0001")
    async with SqlStore(empty_sql_url) as store:
        assert await store.append(room, batch(1, 2)) == 2
    diff, _, _, stamp = await _schema_of(empty_sql_url)
    assert diff == [] and stamp == [sql.HEAD_REVISION]


async def test_the_database_itself_refuses_a_second_row_with_the_same_room_and_uid(sql_url: str, room: str) -> None:
    async with SqlStore(sql_url) as store:
        await store.append(room, batch(1, 1))
        await _insert_a_second_row_with_the_same_uid(sql_url, room)
        assert logged(await store.read_updates(room)) == [(1, "n1:1", b"u1")]


async def _insert_a_second_row_with_the_same_uid(sql_url: str, room: str) -> None:
    engine = create_async_engine(normalize_db_url(sql_url))
    try:
        with pytest.raises(IntegrityError):
            async with engine.begin() as conn:
                await conn.execute(
                    insert(UpdateRow),
                    {"room": room, "seq": 2, "uid": "n1:1", "at": at(2), "origin": "x", "data": b"u1"},
                )
    finally:
        await engine.dispose()


# --- append and load -------------------------------------------------------------------------------


async def test_append_then_load_returns_exact_bytes_seqs_uids_origins_and_timestamps(store: Store, room: str) -> None:
    india = timezone(timedelta(hours=5, minutes=30))
    written = [
        NewUpdate("n1:1", datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC), "client:a", b"\x00\x01\xff"),
        NewUpdate("n2:1", datetime(2025, 1, 2, 9, 0, 0, 1, tzinfo=india), "peer:n2", bytes(range(256))),
        NewUpdate("ü/\u2713 uid", datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), "", b""),
        NewUpdate("x", datetime(1, 1, 1, tzinfo=UTC), "kernel", b"first"),
        NewUpdate("u" * UID_MAX_LENGTH, datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), "kernel", b"last"),
    ]
    assert await store.append(room, written) == 5

    loaded = await store.load(room)

    assert loaded.snapshot is None
    assert loaded.last_seq == 5
    assert [(u.room, u.seq, u.uid, u.at, u.origin, u.data) for u in loaded.updates] == [
        (room, seq, w.uid, w.at, w.origin, w.data) for seq, w in enumerate(written, start=1)
    ]
    assert await store.read_updates(room) == loaded.updates
    assert all(u.at.tzinfo == UTC and isinstance(u.data, bytes) for u in loaded.updates)


async def test_the_store_numbers_a_fresh_room_from_one_and_continues_across_batches(store: Store, room: str) -> None:
    assert await store.append(room, batch(1, 3)) == 3
    assert await store.append(room, batch(1, 1, node="n2")) == 4
    assert await store.append(room, batch(7, 9, tag=b"v")) == 7

    assert logged(await store.read_updates(room)) == [
        (1, "n1:1", b"u1"),
        (2, "n1:2", b"u2"),
        (3, "n1:3", b"u3"),
        (4, "n2:1", b"u1"),
        (5, "n1:7", b"v7"),
        (6, "n1:8", b"v8"),
        (7, "n1:9", b"v9"),
    ]
    assert (await store.load(room)).last_seq == 7


async def test_numbering_follows_batch_order_not_uid_or_timestamp(store: Store, room: str) -> None:
    updates = [
        NewUpdate("z", at(59), "c", b"first"),
        NewUpdate("a", at(0), "c", b"second"),
        NewUpdate("m", at(30), "c", b"third"),
    ]
    assert await store.append(room, updates) == 3
    assert logged(await store.read_updates(room)) == [(1, "z", b"first"), (2, "a", b"second"), (3, "m", b"third")]


async def test_numbering_continues_after_a_snapshot(store: Store, room: str) -> None:
    await store.append(room, batch(1, 3))
    await store.write_snapshot(room, 3, b"doc@3")

    assert await store.append(room, batch(4, 5)) == 5

    loaded = await store.load(room)
    assert logged(loaded.updates) == [(4, "n1:4", b"u4"), (5, "n1:5", b"u5")]
    assert loaded.last_seq == 5


async def test_load_after_a_snapshot_returns_it_and_only_the_later_updates(store: Store, room: str) -> None:
    await store.append(room, batch(1, 5))
    before = datetime.now(UTC)
    await store.write_snapshot(room, 3, b"doc@3")

    loaded = await store.load(room)

    assert loaded.snapshot is not None
    assert (loaded.snapshot.room, loaded.snapshot.seq, loaded.snapshot.data) == (room, 3, b"doc@3")
    assert before <= loaded.snapshot.at <= datetime.now(UTC)
    assert seqs(loaded.updates) == [4, 5]
    assert loaded.last_seq == 5


async def test_snapshot_at_the_last_seq_leaves_no_updates_and_keeps_last_seq(store: Store, room: str) -> None:
    await store.append(room, batch(1, 4))
    await store.write_snapshot(room, 4, b"doc@4")

    loaded = await store.load(room)

    assert loaded.updates == []
    assert loaded.last_seq == 4


async def test_load_uses_the_highest_snapshot_and_keeps_the_older_ones(
    store: Store, room: str, database: Database
) -> None:
    await store.append(room, batch(1, 6))
    await store.write_snapshot(room, 2, b"doc@2")
    await store.write_snapshot(room, 5, b"doc@5")
    await store.write_snapshot(room, 4, b"doc@4")
    await store.write_snapshot(room, 5, b"another encoding of doc@5")

    loaded = await store.load(room)

    assert loaded.snapshot is not None and (loaded.snapshot.seq, loaded.snapshot.data) == (5, b"doc@5")
    assert seqs(loaded.updates) == [6]
    assert await _snapshot_count(database, room) == 3


async def test_load_of_an_unknown_room_is_empty(store: Store) -> None:
    assert await store.load("never-seen") == LoadedRoom(None, [], 0)


async def test_an_empty_batch_stores_nothing_and_returns_the_last_seq(store: Store, room: str) -> None:
    assert await store.append(room, []) == 0
    assert await store.load(room) == LoadedRoom(None, [], 0)
    assert room not in await store.rooms()

    await store.append(room, batch(1, 3))
    assert await store.append(room, []) == 3
    assert seqs(await store.read_updates(room)) == [1, 2, 3]


# --- retries and conflicts -------------------------------------------------------------------------


async def test_reappending_the_same_batch_is_a_no_op(store: Store, room: str) -> None:
    assert await store.append(room, batch(1, 3)) == 3
    assert await store.append(room, batch(1, 3)) == 3
    assert await store.append(room, batch(2, 5)) == 5  # overlaps: 2 and 3 are retries, 4 and 5 are new

    assert logged(await store.read_updates(room)) == [(s, f"n1:{s}", b"u%d" % s) for s in range(1, 6)]


async def test_a_retry_of_an_older_batch_returns_the_rooms_last_seq(store: Store, room: str) -> None:
    await store.append(room, batch(1, 3))
    await store.append(room, batch(1, 2, node="n2"))

    assert await store.append(room, batch(1, 3)) == 5
    assert seqs(await store.read_updates(room)) == [1, 2, 3, 4, 5]


async def test_a_skipped_retry_keeps_the_first_writes_timestamp_and_origin(store: Store, room: str) -> None:
    first = NewUpdate("n1:1", at(1), "client:1", b"same")
    await store.append(room, [first])

    # The same update logged by a second node, later and under its own origin: only data is compared.
    assert await store.append(room, [NewUpdate("n1:1", at(40), "peer:n2", b"same")]) == 1

    [stored] = await store.read_updates(room)
    assert (stored.seq, stored.uid, stored.at, stored.origin, stored.data) == (1, "n1:1", at(1), "client:1", b"same")


async def test_a_uid_repeated_in_one_batch_with_the_same_data_is_stored_once(store: Store, room: str) -> None:
    updates = [
        NewUpdate("a", at(1), "c", b"A"),
        NewUpdate("b", at(2), "c", b"B"),
        NewUpdate("a", at(3), "other", b"A"),
        NewUpdate("c", at(4), "c", b"C"),
    ]
    assert await store.append(room, updates) == 3
    assert [(u.seq, u.uid, u.origin, u.data) for u in await store.read_updates(room)] == [
        (1, "a", "c", b"A"),
        (2, "b", "c", b"B"),
        (3, "c", "c", b"C"),
    ]


async def test_concurrent_identical_appends_store_one_copy(store: Store, room: str) -> None:
    results = await asyncio.gather(*(store.append(room, batch(1, 20)) for _ in range(4)))

    assert results == [20] * 4
    assert logged(await store.read_updates(room)) == [(s, f"n1:{s}", b"u%d" % s) for s in range(1, 21)]


async def test_conflicting_reappend_raises_naming_the_uid_and_stores_nothing_of_the_batch(
    store: Store, room: str
) -> None:
    await store.append(room, batch(1, 3))

    with pytest.raises(StoreError, match="n1:3"):
        await store.append(room, [*batch(4, 4), NewUpdate("n1:3", at(3), "client:3", b"something else")])

    assert logged(await store.read_updates(room)) == [(s, f"n1:{s}", b"u%d" % s) for s in range(1, 4)]
    assert (await store.load(room)).last_seq == 3
    # The failed batch used no sequence numbers: the next one continues without a gap.
    assert await store.append(room, batch(4, 4)) == 4
    assert logged(await store.read_updates(room, 3)) == [(4, "n1:4", b"u4")]


async def test_a_batch_holding_one_uid_twice_with_different_data_raises(store: Store, room: str) -> None:
    with pytest.raises(StoreError, match="uid-7"):
        await store.append(
            room,
            [
                NewUpdate("ok", at(1), "a", b"fine"),
                NewUpdate("uid-7", at(7), "a", b"one"),
                NewUpdate("uid-7", at(7), "a", b"two"),
            ],
        )
    assert await store.read_updates(room) == []
    assert await store.append(room, [NewUpdate("uid-7", at(7), "a", b"two")]) == 1


async def test_uids_are_per_room(store: Store, room: str) -> None:
    assert await store.append(f"{room}-a", batch(1, 2)) == 2
    assert await store.append(f"{room}-b", batch(1, 3, tag=b"different data, same uids ")) == 3
    assert await store.append(f"{room}-a", batch(1, 2)) == 2

    assert logged(await store.read_updates(f"{room}-a")) == [(1, "n1:1", b"u1"), (2, "n1:2", b"u2")]
    assert [u.uid for u in await store.read_updates(f"{room}-b")] == ["n1:1", "n1:2", "n1:3"]


@pytest.mark.parametrize(
    ("make_room", "update"),
    [
        (lambda room: room, NewUpdate("n1:1", datetime(2025, 1, 1), "client", b"naive timestamp")),
        (lambda room: room, NewUpdate("", at(0), "client", b"empty uid")),
        (lambda room: room, NewUpdate("u" * (UID_MAX_LENGTH + 1), at(0), "client", b"uid too long")),
        (lambda room: room, NewUpdate("n1:\x001", at(0), "client", b"NUL in uid")),
        (lambda room: room, NewUpdate(1, at(0), "client", b"uid not a string")),  # type: ignore[arg-type]
        (lambda room: room, NewUpdate("n1:1", at(0), "x" * 256, b"origin too long")),
        (lambda room: "", NewUpdate("n1:1", at(0), "client", b"empty room")),
        (lambda room: "r" * 256, NewUpdate("n1:1", at(0), "client", b"room too long")),
        (lambda room: room + "\x00", NewUpdate("n1:1", at(0), "client", b"NUL in room")),
    ],
)
async def test_input_no_database_could_store_raises_value_error(
    store: Store, database: Database, room: str, make_room, update: NewUpdate
) -> None:
    with pytest.raises(ValueError):
        await store.append(make_room(room), [update])
    with pytest.raises(ValueError):  # also after valid updates in the same batch
        await store.append(make_room(room), [*batch(1, 2, node="valid"), update])
    with pytest.raises(ValueError):  # before touching the database: a closed store says ValueError too
        await store_on(database).append(make_room(room), [update])
    assert await store.read_updates(room) == []


async def test_an_origin_label_clipped_at_the_door_fits_every_adapter(store: Store, room: str) -> None:
    long_label = "client:conn:" + "ü" * 300  # a token whose sub is 300 characters long
    other = "client:conn:" + "ü" * 299 + "x"

    assert (
        await store.append(
            room, [NewUpdate("a", at(1), clip_label(long_label), b"A"), NewUpdate("b", at(2), clip_label(other), b"B")]
        )
        == 2
    )

    stored = [u.origin for u in await store.read_updates(room)]
    assert [len(origin) for origin in stored] == [ORIGIN_MAX_LENGTH] * 2
    assert stored[0] != stored[1] and stored[0].startswith("client:conn:ü")
    assert clip_label("client:c:ada") == "client:c:ada"


# --- several writers -------------------------------------------------------------------------------


async def test_concurrent_appends_to_one_room_get_consecutive_seqs(store: Store, room: str) -> None:
    batches = [batch(1, 5, tag=b"w%d:" % w, node=f"w{w}") for w in range(12)]

    results = await asyncio.gather(*(store.append(room, b) for b in batches))

    stored = await store.read_updates(room)
    assert seqs(stored) == list(range(1, 61))
    assert sorted(u.uid for u in stored) == sorted(u.uid for b in batches for u in b)
    assert sorted(results) == list(range(5, 61, 5))
    # Each batch was numbered in one piece, in batch order, ending at the seq its append returned.
    by_seq = {u.seq: u for u in stored}
    for b, last in zip(batches, results):
        assert [(by_seq[s].uid, by_seq[s].data) for s in range(last - 4, last + 1)] == [(u.uid, u.data) for u in b]


async def test_two_stores_on_one_database_append_to_one_room_without_gaps_or_duplicates(
    database: Database, room: str
) -> None:
    node1, node2 = store_on(database), store_on(database)
    await node1.open()
    await node2.open()
    try:
        # Each node logs its own updates and, like every node holding the room, the other's as well.
        own = {n: [batch(i * 3 + 1, i * 3 + 3, node=n) for i in range(8)] for n in ("n1", "n2")}
        calls = []
        for i in range(8):
            calls += [
                node1.append(room, own["n1"][i]),
                node2.append(room, own["n2"][i]),
                node2.append(room, own["n1"][i]),
                node1.append(room, own["n2"][7 - i]),
            ]
        results = await asyncio.gather(*calls)

        stored = await node1.read_updates(room)
        assert await node2.read_updates(room) == stored
        assert seqs(stored) == list(range(1, 49))
        uids = [u.uid for u in stored]
        assert len(set(uids)) == len(uids) == 48
        assert set(uids) == {u.uid for n in own for b in own[n] for u in b}
        assert all(u.data == b"u" + u.uid.split(":")[1].encode() for u in stored)
        assert max(results) == 48 and all(3 <= r <= 48 for r in results)
        assert (await node2.load(room)).last_seq == 48
    finally:
        await node1.close()
        await node2.close()


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
    store: Store, room: str, after_seq: int, upto_seq: int | None, expected: list[int]
) -> None:
    # Uids out of order on purpose: reads sort by the store's seq, the batch order, not by uid.
    await store.append(room, batch(6, 10, tag=b"v"))
    await store.append(room, batch(1, 5, tag=b"v"))
    numbered = {seq: f"n1:{n}" for seq, n in enumerate([6, 7, 8, 9, 10, 1, 2, 3, 4, 5], start=1)}

    got = await store.read_updates(room, after_seq, upto_seq)

    assert seqs(got) == expected
    assert [u.uid for u in got] == [numbered[s] for s in expected]


async def test_rooms_lists_every_room_with_a_log_or_a_snapshot(store: Store, room: str) -> None:
    await store.append(f"{room}/b", batch(1, 2))
    await store.append(f"{room}/a", batch(1, 1))
    await store.write_snapshot(f"{room}/c", 0, b"empty doc")
    await store.append(f"{room}/b", batch(3, 3))

    names = [name for name in await store.rooms() if name.startswith(room)]

    assert names == [f"{room}/a", f"{room}/b", f"{room}/c"]


async def test_a_two_mebibyte_update_and_snapshot_round_trip(store: Store, room: str) -> None:
    big = os.urandom(2 * 1024 * 1024)
    assert await store.append(room, [NewUpdate("big", at(1), "client", big)]) == 1
    await store.write_snapshot(room, 1, big[::-1])
    assert await store.append(room, [NewUpdate("part", at(2), "client", big[:12345])]) == 2
    assert await store.append(room, [NewUpdate("big", at(3), "client", big)]) == 2  # a 2 MiB retry

    loaded = await store.load(room)

    assert loaded.snapshot is not None and loaded.snapshot.data == big[::-1]
    assert [(u.seq, u.uid, u.data) for u in loaded.updates] == [(2, "part", big[:12345])]
    assert (await store.read_updates(room, 0, 1))[0].data == big
    with pytest.raises(StoreError, match="big"):
        await store.append(room, [NewUpdate("big", at(3), "client", big[:-1] + b"!")])


async def test_rooms_are_isolated_from_each_other(store: Store, room: str) -> None:
    names = [f"{room}-{i}" for i in range(25)]
    results = await asyncio.gather(*(store.append(name, batch(1, 3, tag=name.encode() + b":")) for name in names))
    await store.write_snapshot(names[0], 2, b"only room 0")

    loaded = {name: await store.load(name) for name in names}

    assert results == [3] * 25  # same uids in every room: numbered per room, none skipped
    for name in names:
        assert loaded[name].last_seq == 3
        assert [(u.room, u.uid, u.data) for u in loaded[name].updates if u.seq == 3] == [
            (name, "n1:3", name.encode() + b":3")
        ]
    assert [name for name in names if loaded[name].snapshot is not None] == [names[0]]
    assert seqs(loaded[names[0]].updates) == [3]
    assert all(seqs(loaded[name].updates) == [1, 2, 3] for name in names[1:])


async def test_sqlite_appends_and_loads_run_on_threads_of_their_own_that_end_with_the_store(
    tmp_path: Path, room: str
) -> None:
    def sqlite_threads() -> list[str]:
        return [t.name for t in threading.enumerate() if t.name.startswith("pairroom-sqlite-")]

    before = sqlite_threads()
    store = SqlStore(f"sqlite:///{tmp_path}/rooms.db")
    await store.open()
    assert await store.append_many({room: batch(1, 3)}) == {room: 3}
    assert logged((await store.load(room)).updates) == [(1, "n1:1", b"u1"), (2, "n1:2", b"u2"), (3, "n1:3", b"u3")]
    assert {name.rsplit("_", 1)[0] for name in sqlite_threads()} - {n.rsplit("_", 1)[0] for n in before} == {
        "pairroom-sqlite-append",
        "pairroom-sqlite-read",
    }
    # what one connection wrote, the other reads, and the other way round
    assert await store.query("reading", "SELECT max(seq) FROM updates WHERE room = :room", {"room": room}) == [(3,)]
    await store.write_snapshot(room, 3, b"doc")
    assert (await store.load(room)).snapshot.data == b"doc"  # type: ignore[union-attr]
    await store.close()
    for _ in range(100):
        if sqlite_threads() == before:
            break
        await asyncio.sleep(0.02)
    assert sqlite_threads() == before
    with pytest.raises(StoreError, match="not open"):
        await store.append(room, batch(4, 4))
    async with SqlStore(f"sqlite:///{tmp_path}/rooms.db") as again:  # reopened: new threads, same log
        assert (await again.append(room, batch(4, 4))) == 4


async def test_a_sqlite_flush_of_fresh_updates_skips_the_stored_lookup_and_a_retry_still_stores_nothing_twice(
    tmp_path: Path, room: str
) -> None:
    """The appender writes first without looking the uids up; a batch already stored fails on the
    (room, uid) constraint, is rolled back and written again the full way, with the same result."""
    async with SqlStore(f"sqlite:///{tmp_path}/rooms.db") as store:
        assert await store.append_many({room: batch(1, 2)}) == {room: 2}
        appender = store._driver._writer  # type: ignore[attr-defined]
        assert appender is not None and appender._conn is not None
        statements: list[str] = []
        appender._conn.set_trace_callback(statements.append)
        assert list(appender._conn.execute("PRAGMA wal_autocheckpoint")) == [(10_000,)]
        statements.clear()

        assert await store.append_many({room: batch(3, 4)}) == {room: 4}
        assert not [s for s in statements if s.startswith("SELECT room, uid, data")], statements
        assert "ROLLBACK" not in statements

        statements.clear()
        assert await store.append_many({room: batch(3, 5)}) == {room: 5}  # 3 and 4 again, and 5
        assert "ROLLBACK" in statements
        assert [s for s in statements if s.startswith("SELECT room, uid, data")]
        assert logged(await store.read_updates(room)) == [(s, f"n1:{s}", b"u%d" % s) for s in range(1, 6)]


async def test_append_many_writes_several_rooms_in_one_transaction(store: Store, room: str) -> None:
    a, b, c = f"{room}-a", f"{room}-b", f"{room}-c"
    await store.append(a, batch(1, 2))

    assert await store.append_many({b: batch(1, 3), a: batch(3, 4), c: []}) == {a: 4, b: 3, c: 0}

    assert logged(await store.read_updates(a)) == [(s, f"n1:{s}", b"u%d" % s) for s in range(1, 5)]
    assert logged(await store.read_updates(b)) == [(s, f"n1:{s}", b"u%d" % s) for s in range(1, 4)]
    assert await store.read_updates(c) == []


async def test_append_many_stores_nothing_when_one_room_conflicts(store: Store, room: str) -> None:
    good, bad = f"{room}-good", f"{room}-bad"
    await store.append(bad, batch(1, 1))

    with pytest.raises(StoreError, match="n1:1"):
        await store.append_many({good: batch(1, 2), bad: [NewUpdate("n1:1", at(1), "client:1", b"other")]})

    assert await store.read_updates(good) == []
    assert await store.append_many({good: batch(1, 2)}) == {good: 2}


# --- availability ----------------------------------------------------------------------------------


@pytest.fixture
def unreachable_url(sql_backend: str, tmp_path: Path) -> Iterator[str]:
    """A database nobody can open: a file in a missing directory, or a port bound but not listening."""
    if sql_backend == "sqlite":
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


async def test_every_method_of_a_closed_store_raises_store_error(database: Database, room: str) -> None:
    store = store_on(database)
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
        lambda: store.append_many({room: batch(1, 1)}),
        lambda: store.write_snapshot(room, 1, b"doc"),
        lambda: store.read_updates(room),
        store.rooms,
    ]
    for call in calls:
        with pytest.raises(StoreError, match="not open"):
            await call()


# --- with real documents ---------------------------------------------------------------------------


async def _edit(store: Store, room: str, doc: Doc, edits: list[tuple[int, int, str]], node: str = "n1") -> None:
    """Make each edit on ``doc`` and log its update under a fresh uid of ``node``."""
    text = doc.get("text", type=Text)
    for start, stop, added in edits:
        state = doc.get_state()
        with doc.transaction():
            if stop > start:
                del text[start:stop]
            if added:
                text.insert(start, added)
        uid = f"{node}:{uuid.uuid4().hex}"
        await store.append(room, [NewUpdate(uid, datetime.now(UTC), "client:1", doc.get_update(state))])


def _rebuild(*updates: bytes) -> str:
    doc = Doc()
    for update in updates:
        doc.apply_update(update)
    return str(doc.get("text", type=Text))


async def test_a_pycrdt_document_rebuilds_from_snapshot_and_log(store: Store, room: str) -> None:
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
    await _edit(store, room, doc, edits[:snapshot_after])
    await store.write_snapshot(room, snapshot_after, doc.get_update())
    await _edit(store, room, doc, edits[snapshot_after:])

    loaded = await store.load(room)
    assert loaded.snapshot is not None and loaded.snapshot.seq == snapshot_after
    assert seqs(loaded.updates) == list(range(snapshot_after + 1, len(edits) + 1))

    rebuilt = _rebuild(loaded.snapshot.data, *(u.data for u in loaded.updates))
    replayed = _rebuild(*(u.data for u in await store.read_updates(room)))

    assert rebuilt == str(text) == "Hello, there! ✓ ünïcödé"
    assert replayed == str(text)


# --- compaction ------------------------------------------------------------------------------------


async def test_compact_folds_the_snapshot_and_the_tail_into_a_snapshot_at_the_last_seq(
    store: Store, room: str, database: Database
) -> None:
    doc = Doc()
    await _edit(store, room, doc, [(0, 0, "hello world"), (5, 5, ",")])
    await store.write_snapshot(room, 2, doc.get_update())
    await _edit(store, room, doc, [(12, 12, "!"), (0, 1, "H"), (6, 12, " ünïcödé")])
    expected = str(doc.get("text", type=Text))
    assert expected == "Hello, ünïcödé!"

    assert await compact(store, room) == 5

    loaded = await store.load(room)
    assert loaded.snapshot is not None and loaded.snapshot.seq == 5
    assert loaded.updates == []
    assert loaded.last_seq == 5
    assert _rebuild(loaded.snapshot.data) == expected
    assert await _snapshot_count(database, room) == 2  # the older snapshot is kept for seeking
    assert seqs(await store.read_updates(room)) == [1, 2, 3, 4, 5]  # the log is never rewritten


async def test_compact_of_a_log_without_a_snapshot_folds_the_whole_log(store: Store, room: str) -> None:
    doc = Doc()
    await _edit(store, room, doc, [(0, 0, "abc"), (3, 3, "def"), (1, 2, "")], node="n1")
    await _edit(store, room, doc, [(0, 0, ">")], node="n2")

    assert await compact(store, room) == 4

    loaded = await store.load(room)
    assert loaded.snapshot is not None and loaded.snapshot.seq == 4 and loaded.updates == []
    assert _rebuild(loaded.snapshot.data) == str(doc.get("text", type=Text)) == ">acdef"


async def test_compact_returns_none_when_nothing_follows_the_newest_snapshot(
    store: Store, room: str, database: Database
) -> None:
    assert await compact(store, room) is None  # a room never seen
    assert await store.load(room) == LoadedRoom(None, [], 0)

    doc = Doc()
    await _edit(store, room, doc, [(0, 0, "x"), (1, 1, "y")])
    await store.write_snapshot(room, 2, doc.get_update())

    assert await compact(store, room) is None
    assert await _snapshot_count(database, room) == 1

    assert await compact(store, room) is None  # and again: still nothing to fold


async def test_compact_after_compact_folds_only_the_new_tail_and_numbering_continues(
    store: Store, room: str, database: Database
) -> None:
    doc = Doc()
    await _edit(store, room, doc, [(0, 0, "one")])
    assert await compact(store, room) == 1
    assert await compact(store, room) is None

    await _edit(store, room, doc, [(3, 3, " two"), (7, 7, " three")])
    loaded = await store.load(room)
    assert loaded.snapshot is not None and loaded.snapshot.seq == 1 and seqs(loaded.updates) == [2, 3]

    assert await compact(store, room) == 3

    loaded = await store.load(room)
    assert loaded.snapshot is not None and loaded.snapshot.seq == 3 and loaded.updates == []
    assert _rebuild(loaded.snapshot.data) == str(doc.get("text", type=Text)) == "one two three"
    assert await _snapshot_count(database, room) == 2
    assert await store.append(room, batch(1, 1, node="later")) == 4


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


@pytest.mark.parametrize(
    "url", ["mysql://u@h/db", "postgresql+psycopg2://u@h/db", "sqlite+pysqlite:///x.db", "rooms.db"]
)
def test_normalize_db_url_refuses_other_drivers(url: str) -> None:
    with pytest.raises(ValueError):
        normalize_db_url(url)


@pytest.mark.parametrize(
    ("url", "adapter"),
    [
        ("memory://", MemoryStore),
        ("MEMORY://", MemoryStore),
        ("sqlite:///./x.db", SqlStore),
        ("postgres://u@h/db", SqlStore),
    ],
)
def test_open_store_picks_the_adapter_the_url_names(url: str, adapter: type) -> None:
    assert type(open_store(url)) is adapter


@pytest.mark.parametrize("url", ["memory://somewhere", "mysql://u@h/db", "rooms.db"])
def test_open_store_refuses_other_urls(url: str) -> None:
    with pytest.raises(ValueError):
        open_store(url)


async def _snapshot_count(database: Database, room: str) -> int:
    """How many snapshots of ``room`` the database holds, read from the database itself."""
    if isinstance(database, MemoryTables):
        return len(database.log(room).snapshots)
    engine = create_async_engine(normalize_db_url(database))
    try:
        async with engine.connect() as conn:
            query = select(func.count()).select_from(SnapshotRow).where(SnapshotRow.room == room)
            return (await conn.execute(query)).scalar_one()
    finally:
        await engine.dispose()


# --- the recorder's port beside the log (recording/history_store.py) ------------------------------


@pytest.fixture
def history(store: Store) -> HistoryStore:
    return history_store_for(store)


def ev(room: str, second: int, kind: str = "join", user: str = "u", **data: object) -> Event:
    return Event(room, at(second), kind, user, dict(data))


async def test_history_events_come_back_by_time_ties_in_write_order_filtered(history: HistoryStore, room: str) -> None:
    india = timezone(timedelta(hours=5, minutes=30))
    written = [
        ev(room, 5, "leave", conn="c1"),
        ev(room, 1, "join", conn="c1", pair=("a", 1)),
        Event(room, at(5).astimezone(india), "chat", "u2", {"text": "ünï", "n": {"b": 2, "a": [1, None]}}),
        ev(room, 3, "presence", "u" * 300, state=None),
        ev(f"{room}-other", 2, "join"),
    ]
    await history.append_events(written[:2])
    await history.append_events(written[2:])

    got = await history.events(room)

    assert [(e.at, e.kind) for e in got] == [(at(1), "join"), (at(3), "presence"), (at(5), "leave"), (at(5), "chat")]
    assert all(e.at.tzinfo == UTC and e.room == room for e in got)
    assert got[0].data == {"conn": "c1", "pair": ["a", 1]}  # what JSON gives back
    assert got[1].user == "u" * 255  # shortened to the column
    assert got[3].data == {"text": "ünï", "n": {"a": [1, None], "b": 2}}
    assert [e.kind for e in await history.events(room, since=at(3), until=at(5))] == ["presence", "leave", "chat"]
    assert [e.kind for e in await history.events(room, kinds=("join", "chat"))] == ["join", "chat"]
    assert await history.events(room, since=at(6)) == []
    assert await history.events("never-seen") == []


async def test_history_versions_by_seq_ties_in_write_order_written_with_events_at_once(
    history: HistoryStore, room: str
) -> None:
    await history.add_version(Version(room, "later", 9, at(9), "ada", False))
    await history.append_events(
        [ev(room, 1)],
        [Version(room, "checkpoint", 4, at(4), "", True), Version(room, "same seq", 4, at(5), "bob", False)],
    )

    assert [(v.name, v.seq, v.at, v.by, v.auto) for v in await history.versions(room)] == [
        ("checkpoint", 4, at(4), "", True),
        ("same seq", 4, at(5), "bob", False),
        ("later", 9, at(9), "ada", False),
    ]
    assert len(await history.events(room)) == 1


async def test_history_answers_questions_about_the_log_by_time_and_seq(
    store: Store, history: HistoryStore, room: str
) -> None:
    assert (await history.last_seq(room), await history.first_seq(room), await history.seq_at(room, at(59))) == (
        0,
        0,
        0,
    )
    assert await history.time_of(room, 1) is None and await history.snapshot_at_or_before(room, 5) is None
    times = [at(10), at(20), at(20), at(15), at(30)]  # a node with a clock behind: 15 after 20
    origins = ["client:a:ada", "client:b:bob", "client:a:ada", "peer:n2", "client:a:ada"]
    await store.append(
        room, [NewUpdate(f"n1:{i}", t, o, b"u%d" % i) for i, (t, o) in enumerate(zip(times, origins), 1)]
    )
    await store.write_snapshot(room, 2, b"doc@2")
    await store.write_snapshot(room, 4, b"doc@4")

    assert (await history.last_seq(room), await history.first_seq(room)) == (5, 1)
    assert [await history.seq_at(room, at(s)) for s in (9, 10, 16, 20, 25, 59)] == [0, 1, 4, 3, 3, 5]
    assert [await history.time_of(room, s) for s in (0, 1, 4, 6)] == [None, at(10), at(15), None]
    assert [
        (await history.snapshot_at_or_before(room, s) or Snapshot(room, 0, at(0), b"")).data for s in (1, 3, 4, 9)
    ] == [b"", b"doc@2", b"doc@4", b"doc@4"]
    assert [(s.seq, s.data) for s in await history.snapshots(room)] == [(2, b"doc@2"), (4, b"doc@4")]
    assert await history.edit_counts(room, at(15), at(20)) == {"client:b:bob": 1, "client:a:ada": 1, "peer:n2": 1}
    assert await history.edit_counts(room, at(0), None) == {"client:a:ada": 3, "client:b:bob": 1, "peer:n2": 1}
    assert [u.seq for u in await history.read_updates_page(room, 1, 3)] == [2, 3, 4]
    assert await history.read_updates_page(room, 0, 10) == await store.read_updates(room)


async def test_history_deletes_a_whole_room_and_nothing_else(store: Store, history: HistoryStore, room: str) -> None:
    other = f"{room}-other"
    for name in (room, other):
        await store.append(name, batch(1, 3))
        await store.write_snapshot(name, 2, b"doc@2")
        await history.append_events([ev(name, 1), ev(name, 2)], [Version(name, "v", 2, at(2), "u", False)])
    assert await history.has_anything(room) and not await history.has_anything("never-seen")

    assert await history.delete_room(room) == 3 + 1 + 2 + 1

    assert not await history.has_anything(room)
    assert await store.load(room) == LoadedRoom(None, [], 0)
    assert room not in await store.rooms() and other in await store.rooms()
    assert await history.events(room) == [] and await history.versions(room) == []
    assert (await store.load(other)).last_seq == 3 and len(await history.events(other)) == 2
    assert await history.delete_room(room) == 0
    assert await store.append(room, batch(1, 1)) == 1  # a new room of that name starts afresh


async def test_history_purge_keeps_the_document_whole(store: Store, history: HistoryStore, room: str) -> None:
    await store.append(room, batch(1, 6))
    await store.write_snapshot(room, 2, b"doc@2")
    await store.write_snapshot(room, 4, b"doc@4")
    await history.append_events(
        [ev(room, 1), ev(room, 4), ev(room, 9)],
        [Version(room, "old", 3, at(3), "u", False), Version(room, "new", 5, at(5), "u", False)],
    )

    removed = await history.purge_before(room, 4, at(4))

    assert removed == 3 + 1 + 1 + 1  # seqs 1-3, the snapshot at 2, the event at 1, the version at 3
    loaded = await store.load(room)
    assert loaded.snapshot is not None and loaded.snapshot.seq == 4 and seqs(loaded.updates) == [5, 6]
    assert seqs(await store.read_updates(room)) == [4, 5, 6]
    assert await history.first_seq(room) == 4 and await history.last_seq(room) == 6
    assert [e.at for e in await history.events(room)] == [at(4), at(9)]
    assert [v.name for v in await history.versions(room)] == ["new"]
    assert await store.append(room, batch(7, 7)) == 7  # numbering goes on after the purge


async def test_history_imports_a_room_exactly_and_never_merges(store: Store, history: HistoryStore, room: str) -> None:
    source = f"{room}-source"
    await store.append(source, batch(1, 4))
    await store.write_snapshot(source, 3, b"doc@3")
    await history.append_events(
        [ev(source, 2, "chat", text="hi"), ev(source, 1)], [Version(source, "v", 2, at(2), "u", True)]
    )
    updates, snapshots = await store.read_updates(source), await history.snapshots(source)
    events, versions = await history.events(source), await history.versions(source)

    await history.import_room(room, updates, snapshots, events, versions)

    def rows(items: list, *fields: str) -> list[tuple]:
        return [tuple(getattr(item, f) for f in fields) for item in items]

    assert rows(await store.read_updates(room), "seq", "uid", "at", "origin", "data") == rows(
        updates, "seq", "uid", "at", "origin", "data"
    )
    assert rows(await history.snapshots(room), "seq", "at", "data") == rows(snapshots, "seq", "at", "data")
    assert rows(await history.events(room), "at", "kind", "user", "data") == rows(events, "at", "kind", "user", "data")
    assert rows(await history.versions(room), "name", "seq", "at", "by", "auto") == rows(
        versions, "name", "seq", "at", "by", "auto"
    )
    with pytest.raises(ValueError, match="already exists"):
        await history.import_room(room, updates, [], [], [])
    assert await store.append(room, batch(5, 5)) == 5


async def test_history_import_with_a_repeated_seq_stores_nothing(
    history: HistoryStore, store: Store, room: str
) -> None:
    twice = [StoredUpdate(room, 1, at(1), "c", b"a", "n1:1"), StoredUpdate(room, 1, at(2), "c", b"b", "n1:2")]

    with pytest.raises(StoreError):
        await history.import_room(room, twice, [], [ev(room, 1)], [])

    assert not await history.has_anything(room)


async def test_history_on_a_closed_store_raises_store_error(database: Database, room: str) -> None:
    store = store_on(database)
    history = history_store_for(store)
    for call in (
        lambda: history.events(room),
        lambda: history.last_seq(room),
        lambda: history.delete_room(room),
        lambda: history.append_events([ev(room, 1)]),
    ):
        with pytest.raises(StoreError):
            await call()


# --- the batch writer (storage/writer.py) ---------------------------------------------------------


def test_backoff_doubles_up_to_its_maximum_and_starts_over_after_a_success() -> None:
    backoff = Backoff(0.5, 5.0)
    assert backoff.delay == 0.0
    assert [backoff.failed() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    backoff.succeeded()
    assert backoff.delay == 0.0 and backoff.failed() == 0.5
    for bad in ((0, 1), (2, 1), (-1, 5)):
        with pytest.raises(ValueError):
            Backoff(*bad)


def updates_writer(store: Store, room: str, **options: object) -> BatchWriter[NewUpdate]:
    settings: dict = {"quiet": 0.0, "max_delay": 0.0, "max_items": 1000, "backoff": Backoff(0.01, 0.05)} | options

    async def write(batch: list[NewUpdate]) -> None:
        await store.append(room, batch)

    return BatchWriter(write, **settings)


async def test_a_batch_writer_flush_writes_everything_buffered_in_one_batch_in_order(room: str) -> None:
    store = MemoryStore()
    await store.open()
    writer = updates_writer(store, room)
    for update in batch(1, 3):
        writer.add(update)

    assert await writer.flush() == 3
    assert await writer.flush() == 0
    assert logged(await store.read_updates(room)) == [(s, f"n1:{s}", b"u%d" % s) for s in range(1, 4)]


async def test_a_failed_write_keeps_its_batch_and_the_writer_retries_with_backoff_until_storage_is_back(
    room: str,
) -> None:
    store = MemoryStore()  # not open yet: every write fails with StoreError
    failures: list[tuple[str, int]] = []
    writer = updates_writer(store, room, on_failure=lambda exc, pending: failures.append((str(exc), len(pending))))
    task = asyncio.create_task(writer.run())
    try:
        for update in batch(1, 3):
            writer.add(update)
        await eventually(lambda: len(failures) >= 3, what="three failed attempts")
        assert writer.failing and writer.backoff.failures >= 3
        assert all("not open" in error for error, _ in failures)
        for update in batch(4, 5):  # arriving while storage is down
            writer.add(update)

        await store.open()

        async def all_stored() -> bool:
            return len(await store.read_updates(room)) == 5

        await eventually(all_stored, what="the kept batch and the later items stored")
        assert logged(await store.read_updates(room)) == [(s, f"n1:{s}", b"u%d" % s) for s in range(1, 6)]
        await eventually(lambda: not writer.failing, what="the writer recovered")
        assert writer.backoff.delay == 0.0 and writer.pending == []
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_batch_writer_writes_at_max_items_or_when_asked_without_waiting_for_quiet(room: str) -> None:
    store = MemoryStore()
    await store.open()
    writer = updates_writer(store, room, quiet=3600.0, max_delay=3600.0, max_items=3)
    task = asyncio.create_task(writer.run())
    try:
        for update in batch(1, 3):
            writer.add(update)
        await eventually(lambda: _stored_count_is(store, room, 3), what="written at max_items")
        writer.add(batch(4, 4)[0])
        writer.write_soon()
        await eventually(lambda: _stored_count_is(store, room, 4), what="written when asked")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _stored_count_is(store: Store, room: str, count: int) -> bool:
    return len(await store.read_updates(room)) == count


async def test_a_lone_item_is_written_once_the_quiet_period_passes(room: str) -> None:
    store = MemoryStore()
    await store.open()
    writer = updates_writer(store, room, quiet=0.01, max_delay=3600.0)
    task = asyncio.create_task(writer.run())
    try:
        writer.add(batch(1, 1)[0])
        await eventually(lambda: _stored_count_is(store, room, 1), what="written after the quiet period")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_steady_trickle_is_written_by_max_delay_though_never_quiet(room: str) -> None:
    store = MemoryStore()
    await store.open()
    writer = updates_writer(store, room, quiet=0.1, max_delay=0.3, max_items=10_000)
    task = asyncio.create_task(writer.run())
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0
        added = 0
        # A new item every 10 ms: the quiet period (100 ms) never passes while this runs.
        while not await store.read_updates(room) and loop.time() < deadline:
            added += 1
            writer.add(batch(added, added)[0])
            await asyncio.sleep(0.01)  # the trickle's pace, not a wait for the result
        stored = await store.read_updates(room)
        assert stored, "nothing written within 5 s of a steady trickle"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_an_error_the_writer_does_not_retry_ends_its_run_and_keeps_the_batch(room: str) -> None:
    store = MemoryStore()
    await store.open()
    writer = updates_writer(store, room)
    writer.add(NewUpdate("n1:1", datetime(2025, 1, 1), "client", b"naive timestamp"))  # ValueError: a bug

    with pytest.raises(ValueError, match="timezone"):
        await asyncio.wait_for(writer.run(), 5)
    assert [u.uid for u in writer.pending] == ["n1:1"]
    assert writer.discard(lambda u: u.uid == "n1:1") == 1 and writer.pending == []


# --- a server on memory storage ---------------------------------------------------------------------


async def test_a_server_started_with_memory_url_keeps_rooms_while_it_runs(start_server) -> None:
    server = await start_server(db="memory://", room_idle_seconds=0.1, flush_interval_ms=20.0)
    assert isinstance(server.hub.store, MemoryStore)
    writer = await YClient.connect(server.ws("mem"))
    await asyncio.wait_for(writer.synced.wait(), 5)
    writer.insert(0, "kept in memory")
    await eventually(lambda: str(server.hub.registry.rooms["mem"].doc.get("text", type=Text)) == "kept in memory")
    await writer.close()
    await eventually(lambda: "mem" not in server.hub.registry.rooms, what="unloaded with a final flush")
    assert await stored_text(server.hub.store, "mem") == "kept in memory"

    reader = await YClient.connect(server.ws("mem"))
    await eventually(lambda: str(reader.text) == "kept in memory", what="reloaded from memory")
    await reader.close()
    async with httpx.AsyncClient(base_url=server.http) as http:
        ready = await http.get("/readyz")
        assert ready.status_code == 200, ready.text


async def test_create_app_takes_a_memory_store_and_the_recorder_works_on_it(start_server) -> None:
    secret = "storage-tests-secret-of-at-least-32-bytes"

    def owner(room: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {mint(secret, room, 'owner', 'Ada', user_id='u-ada')}"}

    store = MemoryStore()
    async with store:  # seeded beforehand, as a test or an embedding program would
        seed = Doc()
        seed.get("text", type=Text).insert(0, "seeded")
        await store.append("rec", [NewUpdate("seed:1", datetime.now(UTC), "local:seed", seed.get_update())])
    server = await start_server(
        store=store, secret=secret, flush_interval_ms=20.0, extra={"recording_flush_interval": 0.05}
    )
    client = await YClient.connect(server.ws("rec") + "?token=" + owner("rec")["Authorization"].split()[1])
    await eventually(lambda: str(client.text) == "seeded", what="the seeded document")
    client.insert(6, " and edited")
    await eventually(lambda: str(server.hub.registry.rooms["rec"].doc.get("text", type=Text)) == "seeded and edited")

    async with httpx.AsyncClient(base_url=server.http, headers=owner("rec")) as http:
        then = (await http.get("/api/rooms/rec/files", params={"at": "1"})).json()
        now = (await http.get("/api/rooms/rec/files")).json()
        assert then["files"] == {"/text": "seeded"} and then["seq"] == 1
        assert now["files"] == {"/text": "seeded and edited"} and now["seq"] > 1
        forked = await http.post("/api/rooms/rec/fork", json={"at": "1", "room": "rec-fork"})
        assert forked.status_code == 201, forked.text
        fork = (await http.get("/api/rooms/rec-fork/files", headers=owner("rec-fork"))).json()
        assert fork["files"] == {"/text": "seeded"}

        async def joined_recorded() -> bool:
            events = await history_store_for(store).events("rec", kinds=("join",))
            return len(events) == 1

        await eventually(joined_recorded, what="the join recorded in memory")
        await client.close()
        deleted = await http.delete("/api/rooms/rec")
        assert deleted.status_code == 200, deleted.text
        assert not await history_store_for(store).has_anything("rec")
        assert "rec-fork" in await store.rooms() and "rec" not in await store.rooms()
