"""The storage port on SQL databases: SQLite on the standard library's ``sqlite3`` (``sqlite.py``),
PostgreSQL through SQLAlchemy and asyncpg (``postgres.py``). Both run the same plain SQL
(``statements.py``); this module checks the input, picks the driver and names failures.

Choices worth knowing before changing this package:

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
* **A SQLite node never imports SQLAlchemy** unless it upgrades a file an older release made: that
  import alone is about 26 MiB of resident memory (see ``sqlite.py``). On SQLite each append or load
  is one hand-off to a thread that owns its connection; through aiosqlite and SQLAlchemy every
  statement was a hand-off of its own, and the same 200-room flush cost 7.2 ms of CPU that way and
  4.6 ms this way.

Input the database could never store (a naive timestamp, an over-long room name, a negative seq) is
the caller's bug and raises ``ValueError`` before anything is sent; everything the database refuses or
fails to do raises ``StoreError`` with the driver's error as its cause.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Protocol

from pairroom.storage import statements as sql
from pairroom.storage.statements import HEAD_REVISION, MigrationError, Params, Statement
from pairroom.storage.store import (
    LoadedRoom,
    NewUpdate,
    StoredUpdate,
    StoreError,
    check_room,
    check_seq,
    check_updates,
)

__all__ = ["HEAD_REVISION", "MigrationError", "SqlStore", "normalize_db_url"]

_ASYNC_SCHEMES = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}


def normalize_db_url(url: str) -> str:
    """The async-driver form of a database URL, as SQLAlchemy names it: ``sqlite://`` gets aiosqlite,
    ``postgres(ql)://`` asyncpg (Alembic's command line and the tests open engines on it).

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


def _without_password(url: str) -> str:
    """``url`` fit for an error message: a password shows as ``***``, as SQLAlchemy shows it."""
    return re.sub(r"^([^:/]+://[^:@/]*):[^@/]*@", r"\1:***@", url)


class _Driver(Protocol):
    """What ``SqlStore`` needs of a database (``sqlite.SqliteDriver``, ``postgres.PostgresDriver``)."""

    errors: tuple[type[BaseException], ...]  # what its methods raise when the database fails

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def query(self, statement: str, params: Params) -> list[tuple[Any, ...]]: ...
    async def transaction(self, statements: Sequence[Statement]) -> list[int]: ...
    async def load(self, room: str) -> LoadedRoom: ...
    async def read_updates(self, room: str, after_seq: int, upto_seq: int | None) -> list[StoredUpdate]: ...
    async def append_many(self, batches: Mapping[str, Sequence[NewUpdate]], names: Sequence[str]) -> dict[str, int]: ...


class SqlStore:
    """``Store`` on SQLite or PostgreSQL. ``open()`` before use (or ``async with``), ``close()`` after."""

    def __init__(self, url: str) -> None:
        normalized = normalize_db_url(url)
        self._shown = _without_password(normalized)
        self._driver: _Driver
        if normalized.startswith("sqlite"):
            from pairroom.storage.sqlite import SqliteDriver, sqlite_database

            self._driver = SqliteDriver(sqlite_database(normalized))
        else:
            from pairroom.storage.postgres import PostgresDriver  # SQLAlchemy: PostgreSQL nodes only

            self._driver = PostgresDriver(normalized)
        self._open = False

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return "sqlite" if self._shown.startswith("sqlite") else "postgresql"

    async def __aenter__(self) -> SqlStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def open(self) -> None:
        """Connect and migrate the schema to head; safe to call again, and on an empty database."""
        try:
            with self._failures(f"opening storage at {self._shown!r} and migrating its schema"):
                await self._driver.open()
        except StoreError:
            await self.close()
            raise
        self._open = True

    async def close(self) -> None:
        """Close every connection; the store needs ``open()`` again before further use."""
        self._open = False
        with self._failures("closing storage"):
            await self._driver.close()

    async def ping(self) -> None:
        """Raise ``StoreError`` unless the database answers a query now."""
        await self.query("pinging storage", "SELECT 1")

    async def load(self, room: str) -> LoadedRoom:
        """The newest snapshot of ``room`` (highest seq), the log after it, and the room's last seq."""
        check_room(room)
        self._require_open()
        with self._failures(f"loading room {room!r}"):
            return await self._driver.load(room)

    async def append(self, room: str, updates: Sequence[NewUpdate]) -> int:
        """Append the batch in one transaction, numbering it after the room's last seq; updates whose
        uid is already stored with the same data are skipped. Returns the room's last seq."""
        return (await self.append_many({room: updates}))[room]

    async def append_many(self, batches: Mapping[str, Sequence[NewUpdate]]) -> dict[str, int]:
        """``append`` for several rooms in one transaction (all or none); returns each room's last seq.

        A node holding many quiet rooms writes them together: one commit instead of one per room."""
        check_updates(batches)
        self._require_open()
        count = sum(len(updates) for updates in batches.values())
        names = sorted(batches)  # one lock order for every writer: no deadlock between nodes
        what = f"room {names[0]!r}" if len(names) == 1 else f"{len(names)} rooms"
        with self._failures(f"appending {count} update(s) to {what}"):
            return await self._driver.append_many(batches, names)

    async def write_snapshot(self, room: str, seq: int, data: bytes) -> None:
        """Store the document as of ``seq``, stamped now; a snapshot already at ``seq`` is kept as is."""
        check_room(room)
        check_seq(seq, minimum=0)
        row = {"room": room, "seq": seq, "at": sql.utc_micros(datetime.now(UTC)), "data": data}
        await self.transaction(f"writing the snapshot of room {room!r} at seq {seq}", [(sql.INSERT_SNAPSHOT, row)])

    async def read_updates(self, room: str, after_seq: int = 0, upto_seq: int | None = None) -> list[StoredUpdate]:
        """Log entries of ``room`` with after_seq < seq <= upto_seq, in sequence order."""
        check_room(room)
        self._require_open()
        with self._failures(f"reading the log of room {room!r}"):
            return await self._driver.read_updates(room, after_seq, upto_seq)

    async def rooms(self) -> list[str]:
        """Every room with a log entry or a snapshot, sorted by name."""
        return [room for (room,) in await self.query("listing rooms", sql.SELECT_ROOMS)]

    # -- plain SQL, for the adapters beside this one (``recording/sql_history.py``) ------------------

    async def query(self, action: str, statement: str, params: Params | None = None) -> list[tuple[Any, ...]]:
        """The rows ``statement`` reads; a failure raises ``StoreError`` naming ``action``."""
        self._require_open()
        with self._failures(action):
            return await self._driver.query(statement, params or {})

    async def transaction(self, action: str, statements: Sequence[Statement]) -> list[int]:
        """Run ``statements`` in one writing transaction, all or none; each one's row count."""
        self._require_open()
        with self._failures(action):
            return await self._driver.transaction(statements)

    def _require_open(self) -> None:
        if not self._open:
            raise StoreError(f"storage at {self._shown!r} is not open")

    @contextmanager
    def _failures(self, action: str) -> Iterator[None]:
        """Turn a database failure into ``StoreError`` naming the action, with the failure as its cause."""
        try:
            yield
        except self._driver.errors as exc:
            detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
            reason = f"{type(exc).__name__}: {detail[0]}" if detail else type(exc).__name__
            raise StoreError(f"{action} failed: {reason}") from exc
