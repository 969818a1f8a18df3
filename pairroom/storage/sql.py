"""The storage port on SQL databases (SQLite through aiosqlite, PostgreSQL through asyncpg).

Choices worth knowing before changing this module:

* **Every snapshot is kept.** The recorder seeks through a session by starting from the newest
  snapshot at or before the target and replaying the log after it, so older snapshots are what make
  seeking fast. Deleting them is a retention policy, to be decided apart from this adapter.
* **A snapshot is written once.** A second snapshot at the same (room, seq) is ignored: it describes
  the same document (the log up to ``seq``), but two encodings of one Yjs state need not be equal byte
  for byte, so comparing them could only raise false alarms.
* **The store numbers the log; a uid already stored is skipped.** Several nodes append to one room,
  so ``append`` takes the room's writers in turn (a PostgreSQL advisory lock on the room; SQLite's
  ``BEGIN IMMEDIATE``), drops the updates whose (room, uid) is already stored, and numbers the rest after
  the room's highest seq. A retried batch, or the same update logged by two nodes, is stored once; a uid
  stored with different data fails the whole transaction (it means two nodes made the same uid, a bug).
  Only ``data`` is compared: the first write's timestamp and origin stay.
* **Loading is consistent without a locked read.** ``load`` reads the newest snapshot, then the log
  after it. A writer between the two reads can only add a newer snapshot or later updates, and the old
  snapshot plus the whole log after it still rebuilds the document, so no snapshot isolation is needed.
* **On SQLite the hot paths bypass SQLAlchemy**: the flusher's appends and the room loads each have a
  stdlib ``sqlite3`` connection on a thread of its own (loads never wait behind a flush), which runs a
  whole append (BEGIN IMMEDIATE, the two lookups, the insert, COMMIT) or load in one hand-off from the
  event loop. Through aiosqlite every statement is a hand-off of its own, and SQLAlchemy builds each
  one's parameters and rows in Python: the same 200-room flush cost 7.2 ms of CPU that way and 4.6 ms
  this way. The statements are the same on both paths; the rest (migrations, snapshots, the
  recorder's tables) stays on SQLAlchemy.
* **SQLite runs in WAL mode** with ``synchronous=NORMAL`` (a power cut may lose the last commits, never
  corrupt the file) and a busy timeout, so readers never wait for the writer. SQLAlchemy emits ``BEGIN``
  itself (the driver's own implicit transactions skip DDL), which makes migrations atomic. Writing
  transactions begin with ``BEGIN IMMEDIATE``; on PostgreSQL migrations hold an advisory lock; so
  servers starting together do not race to create the tables.

Input the database could never store (a naive timestamp, an over-long room name, a negative seq) is
the caller's bug and raises ``ValueError`` before anything is sent; everything the database refuses or
fails to do raises ``StoreError`` with the driver's error as its cause.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager as AsyncContextManager
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, TextClause, event, insert, inspect, select, text, union
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.util import await_only

from pairroom.storage.models import Base, SnapshotRow, UpdateRow, from_utc_micros, utc_micros
from pairroom.storage.store import (
    LoadedRoom,
    NewUpdate,
    Snapshot,
    StoredUpdate,
    StoreError,
    check_room,
    check_seq,
    check_updates,
    not_yet_stored,
)

__all__ = ["SqlStore", "normalize_db_url"]

_T = TypeVar("_T")

_MIGRATIONS_DIR = Path(__file__).with_name("migrations")
HEAD_REVISION = "0002"  # the newest migration; a test checks it against the scripts
_MIGRATION_LOCK_KEY = 0x7061_6972_7265_636F  # "pairreco": the advisory lock held while migrating
_PG_COMMAND_TIMEOUT_S = 30.0  # no statement (a lock wait included) hangs a writer forever
_PG_CONNECT_TIMEOUT_S = 10.0
_SQLITE_BUSY_TIMEOUT_MS = 5000
_SQLITE_CACHED_STATEMENTS = 24
_SQLITE_LOCKED_RETRY_MS = 10
# A flush of many rooms dirties a leaf page of each index per room, and SQLite copies the WAL back
# into the database (a checkpoint) once it holds this many pages (default 1,000: every other flush
# of 200 rooms). At 10,000 (40 MiB of WAL at most, on disk) a page rewritten by every flush is
# copied back once per checkpoint, not once per flush: the SQLite thread's time per 200-room flush
# 6.85 -> 5.26-5.49 ms.
_SQLITE_WAL_CHECKPOINT_PAGES = 10_000
_SQLITE_PRAGMAS = (
    "journal_mode=WAL",
    "synchronous=NORMAL",
    f"busy_timeout={_SQLITE_BUSY_TIMEOUT_MS}",
    "foreign_keys=ON",
    f"wal_autocheckpoint={_SQLITE_WAL_CHECKPOINT_PAGES}",
)

_ASYNC_SCHEMES = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}


class MigrationError(Exception):
    """Alembic could not bring the schema to head (an unknown revision, a broken script)."""


# What a database can throw at us: SQLAlchemy's wrapped driver errors, sockets that fail before the
# driver wraps anything (refused, timed out, unknown host), and Alembic finding an unknown revision.
_DATABASE_ERRORS: tuple[type[BaseException], ...] = (SQLAlchemyError, sqlite3.Error, OSError, MigrationError)


def normalize_db_url(url: str) -> str:
    """The async-driver form of a database URL: ``sqlite://`` gets aiosqlite, ``postgres(ql)://`` asyncpg.

    URLs already naming one of those drivers are returned unchanged; other drivers raise ``ValueError``.
    """
    scheme, separator, rest = url.strip().partition("://")
    if not separator:
        raise ValueError("not a database URL: expected scheme://...")  # the URL may hold a password
    driver = _ASYNC_SCHEMES.get(scheme.lower())
    if driver is None:
        raise ValueError(
            f"unsupported database URL scheme {scheme!r}: use sqlite:// or postgresql:// "
            "(or sqlite+aiosqlite:// / postgresql+asyncpg://)"
        )
    return f"{driver}://{rest}"


class SqlStore:
    """``Store`` on SQLite or PostgreSQL. ``open()`` before use (or ``async with``), ``close()`` after."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        try:
            self._url: URL = make_url(normalize_db_url(url))
        except ArgumentError as exc:
            raise ValueError(f"not a database URL: {exc}") from exc
        self._echo = echo
        self._engine: AsyncEngine | None = None
        self._appender: _SqliteThread | None = None  # SQLite file databases: the flusher's appends
        self._reader: _SqliteThread | None = None  # and the room loads

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._url.get_backend_name()

    async def __aenter__(self) -> SqlStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def open(self) -> None:
        """Connect and migrate the schema to head; safe to call again, and on an empty database."""
        if self._engine is None:
            if self.dialect == "sqlite":
                _check_sqlite_directory(self._url)
            self._engine = self._create_engine()
        try:
            with _failures(f"opening storage at {self._url!r} and migrating its schema"):
                await self._migrate(self._engine)
        except StoreError:
            await self.close()
            raise

    async def close(self) -> None:
        """Close every pooled connection; the store needs ``open()`` again before further use."""
        engine, self._engine = self._engine, None
        threads = [t for t in (self._appender, self._reader) if t is not None]
        self._appender = self._reader = None
        for thread in threads:
            with _failures("closing storage"):
                await thread.close()
        if engine is not None:
            with _failures("closing storage"):
                await engine.dispose()

    async def ping(self) -> None:
        """Raise ``StoreError`` unless the database answers a query now."""
        engine = self._require_open()
        with _failures("pinging storage"):
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))

    async def load(self, room: str) -> LoadedRoom:
        """The newest snapshot of ``room`` (highest seq), the log after it, and the room's last seq."""
        check_room(room)
        engine = self._require_open()
        with _failures(f"loading room {room!r}"):
            reader = self._sqlite_reader()
            if reader is not None:
                return await reader.run(_load_on_sqlite3, room)
            async with engine.connect() as conn:
                row = (
                    await conn.execute(
                        select(SnapshotRow.seq, SnapshotRow.at, SnapshotRow.data)
                        .where(SnapshotRow.room == room)
                        .order_by(SnapshotRow.seq.desc())
                        .limit(1)
                    )
                ).first()
                snapshot = None if row is None else Snapshot(room, row.seq, row.at, row.data)
                updates = await _select_updates(conn, room, snapshot.seq if snapshot else 0, None)
        # The log after the snapshot is nonempty exactly when its last entry is the room's highest seq.
        last_seq = updates[-1].seq if updates else (snapshot.seq if snapshot else 0)
        return LoadedRoom(snapshot, updates, last_seq)

    async def append(self, room: str, updates: Sequence[NewUpdate]) -> int:
        """Append the batch in one transaction, numbering it after the room's last seq; updates whose
        uid is already stored with the same data are skipped. Returns the room's last seq."""
        return (await self.append_many({room: updates}))[room]

    async def append_many(self, batches: Mapping[str, Sequence[NewUpdate]]) -> dict[str, int]:
        """``append`` for several rooms in one transaction (all or none); returns each room's last seq.

        A node holding many quiet rooms writes them together: one commit instead of one per room."""
        check_updates(batches)
        engine = self._require_open()
        count = sum(len(updates) for updates in batches.values())
        names = sorted(batches)  # one lock order for every writer: no deadlock between nodes
        what = f"room {names[0]!r}" if len(names) == 1 else f"{len(names)} rooms"
        with _failures(f"appending {count} update(s) to {what}"):
            appender = self._sqlite_appender()
            if appender is not None:
                return await appender.run(_append_on_sqlite3, batches, names)
            async with _begin_write(engine) as conn:
                if self.dialect == "postgresql":
                    # Writers of one room take turns (SQLite's BEGIN IMMEDIATE already serializes),
                    # so the numbering below cannot race.
                    for room in names:
                        await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:room))"), {"room": room})
                # Three statements whatever the number of rooms: what is stored, the last seqs, insert.
                stored = await _stored_data(conn, batches)
                lasts = await _last_seqs(conn, names)
                numbered, result = _number(batches, names, stored, lasts)
                if numbered:
                    rows = [
                        {"room": room, "seq": seq, "uid": u.uid, "at": u.at, "origin": u.origin, "data": u.data}
                        for room, seq, u in numbered
                    ]
                    await conn.execute(insert(UpdateRow.__table__), rows)  # type: ignore[arg-type]  # a Table, typed as FromClause
                return result

    def _sqlite_file(self) -> str | None:
        """The file of a SQLite database given by plain path (no URI, no options), else None."""
        database = self._url.database
        if self.dialect != "sqlite" or not database or database == ":memory:" or database.startswith("file:"):
            return None
        return None if self._url.query else database

    def _sqlite_appender(self) -> _SqliteThread | None:
        """The flusher's appends' connection (made at the first), or None if not a SQLite file."""
        database = self._sqlite_file()
        if database is not None and self._appender is None:
            self._appender = _SqliteThread(database, "append")
        return self._appender

    def _sqlite_reader(self) -> _SqliteThread | None:
        """The loads' connection (made at the first), or None if not a SQLite file."""
        database = self._sqlite_file()
        if database is not None and self._reader is None:
            self._reader = _SqliteThread(database, "read")
        return self._reader

    async def write_snapshot(self, room: str, seq: int, data: bytes) -> None:
        """Store the document as of ``seq``, stamped now; a snapshot already at ``seq`` is kept as is."""
        check_room(room)
        check_seq(seq, minimum=0)
        engine = self._require_open()
        with _failures(f"writing the snapshot of room {room!r} at seq {seq}"):
            async with _begin_write(engine) as conn:
                await conn.execute(
                    self._insert(SnapshotRow.__table__)
                    .values(room=room, seq=seq, at=datetime.now(UTC), data=data)
                    .on_conflict_do_nothing(index_elements=["room", "seq"])
                )

    async def read_updates(self, room: str, after_seq: int = 0, upto_seq: int | None = None) -> list[StoredUpdate]:
        """Log entries of ``room`` with after_seq < seq <= upto_seq, in sequence order."""
        check_room(room)
        engine = self._require_open()
        with _failures(f"reading the log of room {room!r}"):
            reader = self._sqlite_reader()
            if reader is not None:
                return await reader.run(_updates_on_sqlite3, room, after_seq, upto_seq)
            async with engine.connect() as conn:
                return await _select_updates(conn, room, after_seq, upto_seq)

    async def rooms(self) -> list[str]:
        """Every room with a log entry or a snapshot, sorted by name."""
        engine = self._require_open()
        names = union(select(UpdateRow.room), select(SnapshotRow.room)).subquery()
        with _failures("listing rooms"):
            async with engine.connect() as conn:
                result = await conn.execute(select(names.c.room).order_by(names.c.room))
                return list(result.scalars())

    @property
    def engine(self) -> AsyncEngine:
        """The open engine, for the adapters beside this one (``recording/sql_history.py``)."""
        return self._require_open()

    def _require_open(self) -> AsyncEngine:
        if self._engine is None:
            raise StoreError(f"storage at {self._url!r} is not open")
        return self._engine

    def _insert(self, table: Any) -> Any:
        """The dialect's INSERT, which has ``on_conflict_do_nothing``. Imported here: the engine loads
        its own dialect, and PostgreSQL's (about 2 MiB) has no business in a SQLite node."""
        if self.dialect == "sqlite":
            from sqlalchemy.dialects import sqlite

            return sqlite.insert(table)
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(table)

    def _create_engine(self) -> AsyncEngine:
        if self.dialect == "sqlite":
            # A small statement cache: the batched writes' statements are long and vary with the
            # number of rows, and 128 cached ones (the default) held tens of MiB.
            engine = create_async_engine(
                self._url, echo=self._echo, connect_args={"cached_statements": _SQLITE_CACHED_STATEMENTS}
            )
            _configure_sqlite(engine.sync_engine)
            return engine
        return create_async_engine(
            self._url,
            echo=self._echo,
            # After a database restart the pool holds dead connections; test each on checkout so
            # the first write afterwards succeeds instead of failing once per pooled connection.
            pool_pre_ping=True,
            connect_args={"timeout": _PG_CONNECT_TIMEOUT_S, "command_timeout": _PG_COMMAND_TIMEOUT_S},
        )

    async def _migrate(self, engine: AsyncEngine) -> None:
        async with _begin_write(engine) as conn:
            if self.dialect == "postgresql":
                await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
            await conn.run_sync(_upgrade_to_head)


def _begin_write(engine: AsyncEngine) -> AsyncContextManager[AsyncConnection]:
    """A transaction that writes: on SQLite it takes the write lock at BEGIN (waiting up to the busy
    timeout), since a deferred transaction that read first fails at once when another writer got
    there before it."""
    return engine.execution_options(sqlite_begin="IMMEDIATE").begin()


def _upgrade_to_head(connection: Connection) -> None:
    """Bring the schema to ``HEAD_REVISION`` on our connection and transaction.

    Alembic (with Mako and Pygments, about 11 MiB that would stay resident) is imported only when a
    migration has to run: a database at head is left alone, and a new one gets the models' tables
    and the head stamp directly (the test suite checks that equals migrating)."""
    tables = set(inspect(connection).get_table_names())
    if "alembic_version" in tables:
        versions = [row[0] for row in connection.execute(text("SELECT version_num FROM alembic_version"))]
        if versions == [HEAD_REVISION]:
            return
    elif not tables:
        from pairroom.storage import event_models  # noqa: F401 - registers the recorder's tables on Base

        Base.metadata.create_all(connection)
        connection.execute(
            text(
                "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL, "
                "CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))"
            )
        )
        connection.execute(text("INSERT INTO alembic_version (version_num) VALUES (:v)"), {"v": HEAD_REVISION})
        return
    _run_alembic(connection)


def _run_alembic(connection: Connection) -> None:
    """Run the migrations (``env.py`` reads the connection from the attributes)."""
    from alembic import command
    from alembic.config import Config
    from alembic.util import CommandError

    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS_DIR).replace("%", "%%"))
    config.attributes["connection"] = connection
    try:
        command.upgrade(config, "head")
    except CommandError as exc:
        raise MigrationError(str(exc)) from exc


def _check_sqlite_directory(url: URL) -> None:
    """Fail with a plain reason when the database file's directory is missing.

    SQLite would only say "unable to open database file", and aiosqlite's worker thread outlives
    such a failed connect until it reports to the event loop, which may be closed by then.
    """
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    directory = Path(database).parent
    if not directory.is_dir():
        raise StoreError(f"cannot open SQLite database {database!r}: directory {str(directory)!r} does not exist")


def _set_pragmas(execute: Callable[[str], object], pause: Callable[[float], object]) -> None:
    """Run ``_SQLITE_PRAGMAS`` on a new connection. Switching a fresh file to WAL needs its exclusive
    lock, and SQLite answers "database is locked" at once, without the busy handler, when another
    connection is switching it too (nodes or stores opening one new file together: 24 of 300
    three-way races here): a pragma refused so is retried, for as long as the busy timeout."""
    last_attempt = _SQLITE_BUSY_TIMEOUT_MS // _SQLITE_LOCKED_RETRY_MS - 1
    for pragma in _SQLITE_PRAGMAS:
        for attempt in range(last_attempt + 1):
            try:
                execute(f"PRAGMA {pragma}")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == last_attempt:
                    raise
                pause(_SQLITE_LOCKED_RETRY_MS / 1000)


def _configure_sqlite(engine: Engine) -> None:
    """Per-connection pragmas, and explicit ``BEGIN`` (SQLAlchemy's recipe for pysqlite/aiosqlite)."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # the driver stops opening transactions itself
        cursor = dbapi_connection.cursor()
        try:
            _set_pragmas(cursor.execute, lambda seconds: await_only(asyncio.sleep(seconds)))
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")


async def _select_updates(conn: AsyncConnection, room: str, after_seq: int, upto_seq: int | None) -> list[StoredUpdate]:
    query = select(UpdateRow.seq, UpdateRow.at, UpdateRow.origin, UpdateRow.data, UpdateRow.uid).where(
        UpdateRow.room == room, UpdateRow.seq > after_seq
    )
    if upto_seq is not None:
        query = query.where(UpdateRow.seq <= upto_seq)
    result = await conn.execute(query.order_by(UpdateRow.seq))
    return [StoredUpdate(room, row.seq, row.at, row.origin, row.data, row.uid) for row in result]


_PAIRS_PER_QUERY = 256
_SHAPES = (1, 4, 16, 64, 128, 256)  # the numbers of terms the statements below are written for


def _padded(items: list[_T]) -> list[_T]:
    """``items`` lengthened to the next of ``_SHAPES`` by repeating its last one (harmless in the OR
    and the UNION below), so a few statements, written once, serve any number of rooms."""
    size = next((shape for shape in _SHAPES if shape >= len(items)), len(items))
    return items + [items[-1]] * (size - len(items))


@functools.cache
def _stored_data_sql(pairs: int) -> TextClause:
    """(room, uid, data) for ``pairs`` (room, uid) pairs: an OR of equalities, which both databases
    answer from the (room, uid) index (a row-value IN over VALUES scans the table on SQLite). Plain
    SQL: building it from SQLAlchemy expressions costs more than running it, at every flush."""
    terms = " OR ".join(f"(room = :r{i} AND uid = :u{i})" for i in range(pairs))
    return text(f"SELECT room, uid, data FROM {UpdateRow.__tablename__} WHERE {terms}")


@functools.cache
def _last_seqs_sql(rooms: int) -> TextClause:
    """(room, last seq) for ``rooms`` rooms: one ``max`` each, since a lone ``max(seq)`` of one room
    is a single index lookup while a GROUP BY reads every row of each room's log."""
    table = UpdateRow.__tablename__
    return text(
        " UNION ALL ".join(
            f"SELECT CAST(:r{i} AS VARCHAR), (SELECT max(seq) FROM {table} WHERE room = :r{i})" for i in range(rooms)
        )
    )


def _number(
    batches: Mapping[str, Sequence[NewUpdate]],
    names: Sequence[str],
    stored: dict[tuple[str, str], bytes],
    lasts: Mapping[str, int],
) -> tuple[list[tuple[str, int, NewUpdate]], dict[str, int]]:
    """(room, seq, update) for each update not stored yet, numbered after its room's last seq, and
    each room's last seq after them. Raises ``StoreError`` on a uid stored with other data."""
    numbered: list[tuple[str, int, NewUpdate]] = []
    result: dict[str, int] = {}
    for room in names:
        last = lasts.get(room, 0)
        for update in not_yet_stored(room, batches[room], stored):
            last += 1
            numbered.append((room, last, update))
        result[room] = last
    return numbered, result


def _stored_params(pairs: list[tuple[str, str]]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(terms, parameters) of each ``_stored_data_sql`` statement that looks ``pairs`` up."""
    for start in range(0, len(pairs), _PAIRS_PER_QUERY):
        padded = _padded(pairs[start : start + _PAIRS_PER_QUERY])
        params: dict[str, Any] = {}
        for i, (room, uid) in enumerate(padded):
            params[f"r{i}"], params[f"u{i}"] = room, uid
        yield len(padded), params


def _stored_pairs(batches: Mapping[str, Sequence[NewUpdate]]) -> list[tuple[str, str]]:
    return list({(room, u.uid) for room, updates in batches.items() for u in updates})


_INSERT_UPDATE = f"INSERT INTO {UpdateRow.__tablename__} (room, seq, uid, at, origin, data) VALUES (?, ?, ?, ?, ?, ?)"


def _append_on_sqlite3(
    conn: sqlite3.Connection, batches: Mapping[str, Sequence[NewUpdate]], names: Sequence[str]
) -> dict[str, int]:
    """``append_many``'s transaction on a stdlib connection, on the appender's thread: the same
    statements as through SQLAlchemy, all or nothing.

    A batch is first written without looking its uids up: a flusher's batch is nearly always this
    node's fresh edits, which no one has stored, and the (room, uid) constraint refuses one that is.
    Only then (a batch retried after a commit it did not hear of, or a peer's update its node stored
    first) is it written again, comparing what is stored: about 8 % of a 200-room flush's SQLite time
    saved in the common case, one rolled-back attempt more in the rare one."""
    try:
        return _append_transaction(conn, batches, names, look_up_stored=False)
    except sqlite3.IntegrityError:
        return _append_transaction(conn, batches, names, look_up_stored=True)


def _append_transaction(
    conn: sqlite3.Connection, batches: Mapping[str, Sequence[NewUpdate]], names: Sequence[str], *, look_up_stored: bool
) -> dict[str, int]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        stored: dict[tuple[str, str], bytes] = {}
        if look_up_stored:
            for terms, params in _stored_params(_stored_pairs(batches)):
                stored.update(
                    ((room, uid), bytes(data)) for room, uid, data in conn.execute(_stored_data_sql(terms).text, params)
                )
        padded = _padded(list(names))
        lasts = {
            room: int(last)
            for room, last in conn.execute(_last_seqs_sql(len(padded)).text, {f"r{i}": r for i, r in enumerate(padded)})
            if last is not None
        }
        numbered, result = _number(batches, names, stored, lasts)
        if numbered:
            conn.executemany(
                _INSERT_UPDATE, [(room, seq, u.uid, utc_micros(u.at), u.origin, u.data) for room, seq, u in numbered]
            )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


_SELECT_UPDATES = f"SELECT seq, at, origin, data, uid FROM {UpdateRow.__tablename__} WHERE room = ? AND seq > ? AND seq <= ? ORDER BY seq"
_SELECT_NEWEST_SNAPSHOT = (
    f"SELECT seq, at, data FROM {SnapshotRow.__tablename__} WHERE room = ? ORDER BY seq DESC LIMIT 1"
)
_NO_UPPER_BOUND = 2**63 - 1  # the largest seq SQLite's INTEGER holds


def _updates_on_sqlite3(
    conn: sqlite3.Connection, room: str, after_seq: int, upto_seq: int | None
) -> list[StoredUpdate]:
    upto = _NO_UPPER_BOUND if upto_seq is None else upto_seq
    return [
        StoredUpdate(room, seq, from_utc_micros(at), origin, data, uid)
        for seq, at, origin, data, uid in conn.execute(_SELECT_UPDATES, (room, after_seq, upto))
    ]


def _load_on_sqlite3(conn: sqlite3.Connection, room: str) -> LoadedRoom:
    """``load`` on a stdlib connection: the newest snapshot, then the log after it (see the module's
    notes on why this needs no read transaction)."""
    row = conn.execute(_SELECT_NEWEST_SNAPSHOT, (room,)).fetchone()
    snapshot = None if row is None else Snapshot(room, row[0], from_utc_micros(row[1]), row[2])
    updates = _updates_on_sqlite3(conn, room, snapshot.seq if snapshot else 0, None)
    last_seq = updates[-1].seq if updates else (snapshot.seq if snapshot else 0)
    return LoadedRoom(snapshot, updates, last_seq)


class _SqliteThread:
    """A stdlib ``sqlite3`` connection used on one thread of its own (see the module's notes): each
    append or load is one hand-off from the event loop, not one per statement."""

    def __init__(self, database: str, purpose: str) -> None:
        self._database = database
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"pairroom-sqlite-{purpose}")
        self._conn: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(
                self._database,
                isolation_level=None,  # transactions are ours: BEGIN IMMEDIATE ... COMMIT
                check_same_thread=False,  # made and used on this object's thread, closed there too
                cached_statements=_SQLITE_CACHED_STATEMENTS,
            )
            _set_pragmas(conn.execute, time.sleep)
            self._conn = conn
        return self._conn

    async def run(self, work: Callable[..., _T], *args: Any) -> _T:
        """``work(connection, *args)`` on this object's thread. A cancelled caller does not cut it
        short: the transaction ends, committed or rolled back, on that thread."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, lambda: work(self._connection(), *args))

    async def close(self) -> None:
        """Close the connection after the work already handed over, then end the thread."""

        def close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        try:
            await asyncio.get_running_loop().run_in_executor(self._thread, close)
        finally:
            self._thread.shutdown(wait=False)


async def _stored_data(
    conn: AsyncConnection, batches: Mapping[str, Sequence[NewUpdate]]
) -> dict[tuple[str, str], bytes]:
    """What the log already holds under the batches' (room, uid) pairs, a few queries for all rooms."""
    stored: dict[tuple[str, str], bytes] = {}
    for terms, params in _stored_params(_stored_pairs(batches)):
        result = await conn.execute(_stored_data_sql(terms), params)
        stored.update(((room, uid), bytes(data)) for room, uid, data in result)
    return stored


async def _last_seqs(conn: AsyncConnection, rooms: Sequence[str]) -> dict[str, int]:
    """Each room's last seq (rooms without a log are absent), in one statement."""
    padded = _padded(list(rooms))
    result = await conn.execute(_last_seqs_sql(len(padded)), {f"r{i}": room for i, room in enumerate(padded)})
    return {room: int(last) for room, last in result if last is not None}


@contextmanager
def _failures(action: str) -> Iterator[None]:
    """Turn a database failure into ``StoreError`` naming the action, with the failure as its cause."""
    try:
        yield
    except _DATABASE_ERRORS as exc:
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        reason = f"{type(exc).__name__}: {detail[0]}" if detail else type(exc).__name__
        raise StoreError(f"{action} failed: {reason}") from exc
