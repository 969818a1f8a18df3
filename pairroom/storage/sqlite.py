"""``SqlStore``'s driver for SQLite, on the standard library's ``sqlite3`` alone.

Why no SQLAlchemy here: importing it costs a node about 26 MiB of resident memory (its Core is 228
modules and 9 MiB of compiled extensions), more than all 2,000 idle connections of the S5 benchmark
cost together, and every statement SQLite runs is plain SQL anyway (``statements.py``). SQLAlchemy
and Alembic are imported only to upgrade a file made by an older release (``migrate.py``).

* **Two connections, each on a thread of its own**: one writes (the flusher's appends, snapshots,
  the recorder's rows, the schema), one reads (room loads, the history's reads), so a load never
  waits behind a flush. Each call is one hand-off from the event loop: a whole append (BEGIN
  IMMEDIATE, the lookups, the insert, COMMIT) or load runs on the thread at once. An in-memory
  database (``sqlite://``) is one connection, so both roles share one thread.
* **WAL mode** with ``synchronous=NORMAL`` (a power cut may lose the last commits, never corrupt the
  file) and a busy timeout, so readers never wait for the writer. Every writing transaction begins
  with ``BEGIN IMMEDIATE``: a deferred one that read first fails at once when another writer got
  there before it.
* **A new file gets ``statements.SQLITE_SCHEMA``** and the head stamp in one ``BEGIN IMMEDIATE``
  transaction, so stores opening one new file together create it once.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from pairroom.storage import statements as sql
from pairroom.storage.statements import MigrationError, Statement
from pairroom.storage.store import LoadedRoom, NewUpdate, StoredUpdate, StoreError

__all__ = ["SqliteDriver", "sqlite_database"]

_T = TypeVar("_T")

_SQLITE_BUSY_TIMEOUT_MS = 5000
_SQLITE_CACHED_STATEMENTS = 24  # the batched writes' statements are long; 128 (the default) held tens of MiB
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
_MEMORY = ":memory:"

# The flusher's insert, positional: it runs once per update of every flush.
_INSERT_UPDATE = "INSERT INTO updates (room, seq, uid, at, origin, data) VALUES (?, ?, ?, ?, ?, ?)"


def sqlite_database(url: str) -> str:
    """The file a ``sqlite://`` URL names (``sqlite:///relative.db``, ``sqlite:////abs.db``), or
    ``":memory:"`` (``sqlite://``, ``sqlite:///:memory:``). Raises ``ValueError`` for options after
    ``?``: none are read, and ignoring one silently would be worse."""
    _, _, rest = url.strip().partition("://")
    if "?" in rest:
        raise ValueError("sqlite:// URLs take no options: name the file only (sqlite:///path/to/rooms.db)")
    if rest in ("", "/"):
        return _MEMORY
    if not rest.startswith("/"):
        raise ValueError(
            "a sqlite:// URL names a file after three slashes: sqlite:///rooms.db or sqlite:////abs/rooms.db"
        )
    return rest[1:]


class SqliteDriver:
    """The SQLite database a ``SqlStore`` was given. Every method raises one of ``errors``."""

    errors: tuple[type[BaseException], ...] = (sqlite3.Error, OSError, MigrationError)

    def __init__(self, database: str) -> None:
        self.database = database
        self._writer: _SqliteThread | None = None
        self._reader: _SqliteThread | None = None

    async def open(self) -> None:
        """Connect and bring the schema to head: create a new file, upgrade an older one."""
        if self.database != _MEMORY:
            directory = Path(self.database).parent
            if not directory.is_dir():
                raise StoreError(
                    f"cannot open SQLite database {self.database!r}: directory {str(directory)!r} does not exist"
                )
        if self._writer is None:
            self._writer = _SqliteThread(self.database, "append")
            # One in-memory database is one connection: its reads run on the writer's thread.
            self._reader = self._writer if self.database == _MEMORY else _SqliteThread(self.database, "read")
        await self._writer.run(_schema_to_head, self.database)

    async def close(self) -> None:
        threads = {id(t): t for t in (self._writer, self._reader) if t is not None}
        self._writer = self._reader = None
        for thread in threads.values():
            await thread.close()

    async def query(self, statement: str, params: sql.Params) -> list[tuple[Any, ...]]:
        return await self._read(_query, statement, params)

    async def transaction(self, statements: Sequence[Statement]) -> list[int]:
        return await self._write(_transaction, statements)

    async def load(self, room: str) -> LoadedRoom:
        return await self._read(_load, room)

    async def read_updates(self, room: str, after_seq: int, upto_seq: int | None) -> list[StoredUpdate]:
        return await self._read(_updates, room, after_seq, upto_seq)

    async def append_many(self, batches: Mapping[str, Sequence[NewUpdate]], names: Sequence[str]) -> dict[str, int]:
        return await self._write(_append, batches, names)

    async def _read(self, work: Callable[..., _T], *args: Any) -> _T:
        assert self._reader is not None, "SqlStore checks that it is open"
        return await self._reader.run(work, *args)

    async def _write(self, work: Callable[..., _T], *args: Any) -> _T:
        assert self._writer is not None, "SqlStore checks that it is open"
        return await self._writer.run(work, *args)


class _SqliteThread:
    """A stdlib ``sqlite3`` connection used on one thread of its own (see the module's notes)."""

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
            try:
                set_pragmas(conn.execute, time.sleep)
            except BaseException:
                conn.close()
                raise
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


def set_pragmas(execute: Callable[[str], object], pause: Callable[[float], object]) -> None:
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


def _in_transaction(conn: sqlite3.Connection, work: Callable[[sqlite3.Connection], _T]) -> _T:
    """``work`` between ``BEGIN IMMEDIATE`` and ``COMMIT``; rolled back if it raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = work(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


def _schema_to_head(conn: sqlite3.Connection, database: str) -> None:
    """Create a new database's tables, leave one at head alone, upgrade an older one with Alembic."""

    def create_or_check(conn: sqlite3.Connection) -> bool:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")} - {
            "sqlite_sequence",
            "sqlite_stat1",
        }
        if "alembic_version" in tables:
            return [version for (version,) in conn.execute(sql.SELECT_STAMP)] == [sql.HEAD_REVISION]
        if tables:
            return False
        for ddl in sql.SQLITE_SCHEMA:
            conn.execute(ddl)
        conn.execute(*sql.STAMP_HEAD)
        return True

    if not _in_transaction(conn, create_or_check):
        from pairroom.storage.migrate import upgrade_sqlite_file  # SQLAlchemy and Alembic: only now

        upgrade_sqlite_file(database)


def _query(conn: sqlite3.Connection, statement: str, params: sql.Params) -> list[tuple[Any, ...]]:
    return conn.execute(statement, params).fetchall()


def _transaction(conn: sqlite3.Connection, statements: Sequence[Statement]) -> list[int]:
    def run(conn: sqlite3.Connection) -> list[int]:
        counts = []
        for statement, params in statements:
            if isinstance(params, Mapping):
                counts.append(conn.execute(statement, params).rowcount)
            elif params:
                counts.append(conn.executemany(statement, params).rowcount)
            else:
                counts.append(0)
        return counts

    return _in_transaction(conn, run)


def _append(
    conn: sqlite3.Connection, batches: Mapping[str, Sequence[NewUpdate]], names: Sequence[str]
) -> dict[str, int]:
    """``append_many``'s transaction, all or nothing.

    A batch is first written without looking its uids up: a flusher's batch is nearly always this
    node's fresh edits, which no one has stored, and the (room, uid) constraint refuses one that is.
    Only then (a batch retried after a commit it did not hear of, or a peer's update its node stored
    first) is it written again, comparing what is stored: about 8 % of a 200-room flush's SQLite time
    saved in the common case, one rolled-back attempt more in the rare one."""
    try:
        return _in_transaction(conn, lambda conn: _append_numbered(conn, batches, names, look_up_stored=False))
    except sqlite3.IntegrityError:
        return _in_transaction(conn, lambda conn: _append_numbered(conn, batches, names, look_up_stored=True))


def _append_numbered(
    conn: sqlite3.Connection, batches: Mapping[str, Sequence[NewUpdate]], names: Sequence[str], *, look_up_stored: bool
) -> dict[str, int]:
    stored: dict[tuple[str, str], bytes] = {}
    if look_up_stored:
        for statement, params in sql.stored_data_params(batches):
            stored.update(((room, uid), bytes(data)) for room, uid, data in conn.execute(statement, params))
    statement, params = sql.last_seqs_params(names)
    lasts = {room: int(last) for room, last in conn.execute(statement, params) if last is not None}
    numbered, result = sql.number(batches, names, stored, lasts)
    if numbered:
        conn.executemany(
            _INSERT_UPDATE, [(room, seq, u.uid, sql.utc_micros(u.at), u.origin, u.data) for room, seq, u in numbered]
        )
    return result


def _updates(conn: sqlite3.Connection, room: str, after_seq: int, upto_seq: int | None) -> list[StoredUpdate]:
    return [sql.stored_update(room, row) for row in conn.execute(*sql.select_updates(room, after_seq, upto_seq))]


def _load(conn: sqlite3.Connection, room: str) -> LoadedRoom:
    """The newest snapshot, then the log after it."""
    row = conn.execute(sql.SELECT_NEWEST_SNAPSHOT, {"room": room}).fetchone()
    snapshot = None if row is None else sql.stored_snapshot(room, row)
    updates = _updates(conn, room, snapshot.seq if snapshot else 0, None)
    return sql.loaded_room(snapshot, updates)
