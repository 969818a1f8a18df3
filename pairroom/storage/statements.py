"""The SQL that ``SqlStore`` and the recorder's history run, as plain text: pure, no I/O, no driver.

Both drivers run these same statements: the stdlib ``sqlite3`` one (``sqlite.py``) and SQLAlchemy's
asyncpg one for PostgreSQL (``postgres.py``). Parameters are named (``:room``), a style both accept.
Timestamps go in and come out as integer microseconds since the Unix epoch (UTC): the columns are
BIGINT on both databases (see ``models.UtcMicros``), so ``utc_micros`` and ``from_utc_micros`` are the
whole conversion. ``"user"`` and ``"by"`` are quoted: PostgreSQL reserves both words.

``SQLITE_SCHEMA`` creates a new SQLite file without SQLAlchemy: it is the DDL that SQLAlchemy's
``create_all`` emits for ``models.py``, byte for byte, which ``tests/test_storage.py`` checks.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from pairroom.storage.store import LoadedRoom, NewUpdate, Snapshot, StoredUpdate, not_yet_stored

_T = TypeVar("_T")

HEAD_REVISION = "0002"  # the newest migration; a test checks it against the scripts

# A statement and its parameters; a list of parameter sets runs it once per set (executemany).
Params = Mapping[str, Any]
Statement = tuple[str, Params | Sequence[Params]]


class MigrationError(Exception):
    """Alembic could not bring the schema to head (an unknown revision, a broken script)."""


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def utc_micros(value: datetime) -> int:
    """Microseconds since the Unix epoch of an aware datetime: how timestamps are stored."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"timestamp {value!r} has no time zone; storage needs an aware datetime")
    return (value - _EPOCH) // _MICROSECOND


def from_utc_micros(value: int) -> datetime:
    """The aware datetime (UTC) that ``utc_micros`` stored as ``value``."""
    return _EPOCH + value * _MICROSECOND


# Alembic's own table, as Alembic creates it: a database made here is at head for Alembic too.
CREATE_STAMP_TABLE = (
    "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL, "
    "CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))"
)
SQLITE_SCHEMA = (
    "CREATE TABLE updates (\n\tid INTEGER NOT NULL, \n\troom VARCHAR(255) NOT NULL, \n\tseq BIGINT NOT NULL, "
    "\n\tuid VARCHAR(64) NOT NULL, \n\tat BIGINT NOT NULL, \n\torigin VARCHAR(255) NOT NULL, "
    "\n\tdata BLOB NOT NULL, \n\tCONSTRAINT pk_updates PRIMARY KEY (id), "
    "\n\tCONSTRAINT uq_updates_room_seq UNIQUE (room, seq), \n\tCONSTRAINT uq_updates_room_uid UNIQUE (room, uid)\n)",
    "CREATE INDEX ix_updates_room_at ON updates (room, at)",
    "CREATE TABLE snapshots (\n\tid INTEGER NOT NULL, \n\troom VARCHAR(255) NOT NULL, \n\tseq BIGINT NOT NULL, "
    "\n\tat BIGINT NOT NULL, \n\tdata BLOB NOT NULL, \n\tCONSTRAINT pk_snapshots PRIMARY KEY (id), "
    "\n\tCONSTRAINT uq_snapshots_room_seq UNIQUE (room, seq)\n)",
    "CREATE TABLE events (\n\tid INTEGER NOT NULL, \n\troom VARCHAR(255) NOT NULL, \n\tat BIGINT NOT NULL, "
    "\n\tkind VARCHAR(32) NOT NULL, \n\tuser VARCHAR(255) NOT NULL, \n\tdata TEXT NOT NULL, "
    "\n\tCONSTRAINT pk_events PRIMARY KEY (id)\n)",
    "CREATE INDEX ix_events_room_at ON events (room, at)",
    "CREATE TABLE versions (\n\tid INTEGER NOT NULL, \n\troom VARCHAR(255) NOT NULL, \n\tname VARCHAR(255) NOT NULL, "
    '\n\tseq BIGINT NOT NULL, \n\tat BIGINT NOT NULL, \n\t"by" VARCHAR(255) NOT NULL, \n\tauto BOOLEAN NOT NULL, '
    "\n\tCONSTRAINT pk_versions PRIMARY KEY (id)\n)",
    "CREATE INDEX ix_versions_room_seq ON versions (room, seq)",
    CREATE_STAMP_TABLE,
)
STAMP_HEAD = ("INSERT INTO alembic_version (version_num) VALUES (:v)", {"v": HEAD_REVISION})
SELECT_STAMP = "SELECT version_num FROM alembic_version"

# -- the update log and the snapshots ---------------------------------------------------------------

INSERT_UPDATE = "INSERT INTO updates (room, seq, uid, at, origin, data) VALUES (:room, :seq, :uid, :at, :origin, :data)"
SELECT_UPDATES = (
    "SELECT seq, at, origin, data, uid FROM updates WHERE room = :room AND seq > :after AND seq <= :upto ORDER BY seq"
)
SELECT_UPDATES_PAGE = (
    "SELECT seq, at, origin, data, uid FROM updates WHERE room = :room AND seq > :after ORDER BY seq LIMIT :limit"
)
NO_UPPER_BOUND = 2**63 - 1  # the largest seq a signed 64-bit column holds
SELECT_NEWEST_SNAPSHOT = "SELECT seq, at, data FROM snapshots WHERE room = :room ORDER BY seq DESC LIMIT 1"
INSERT_SNAPSHOT = (
    "INSERT INTO snapshots (room, seq, at, data) VALUES (:room, :seq, :at, :data) ON CONFLICT (room, seq) DO NOTHING"
)
SELECT_ROOMS = "SELECT room FROM updates UNION SELECT room FROM snapshots ORDER BY room"


def select_updates(room: str, after_seq: int, upto_seq: int | None) -> tuple[str, dict[str, Any]]:
    """``SELECT_UPDATES`` and its parameters: the log of ``room`` with after_seq < seq <= upto_seq."""
    upto = NO_UPPER_BOUND if upto_seq is None else upto_seq
    return SELECT_UPDATES, {"room": room, "after": after_seq, "upto": upto}


def update_row(room: str, seq: int, update: NewUpdate | StoredUpdate) -> dict[str, Any]:
    """``INSERT_UPDATE``'s parameters."""
    return {
        "room": room,
        "seq": seq,
        "uid": update.uid,
        "at": utc_micros(update.at),
        "origin": update.origin,
        "data": update.data,
    }


def stored_update(room: str, row: Sequence[Any]) -> StoredUpdate:
    """A row of ``SELECT_UPDATES`` (seq, at, origin, data, uid)."""
    seq, at, origin, data, uid = row
    return StoredUpdate(room, seq, from_utc_micros(at), origin, bytes(data), uid)


def stored_snapshot(room: str, row: Sequence[Any]) -> Snapshot:
    """A row of ``SELECT_NEWEST_SNAPSHOT`` and the history's snapshot queries (seq, at, data)."""
    seq, at, data = row
    return Snapshot(room, seq, from_utc_micros(at), bytes(data))


def loaded_room(snapshot: Snapshot | None, updates: list[StoredUpdate]) -> LoadedRoom:
    """``load``'s answer: the log after the snapshot is nonempty exactly when its last entry is the
    room's highest seq (see ``sql.py`` on why the two reads need no transaction)."""
    last_seq = updates[-1].seq if updates else (snapshot.seq if snapshot else 0)
    return LoadedRoom(snapshot, updates, last_seq)


PAIRS_PER_QUERY = 256
_SHAPES = (1, 4, 16, 64, 128, 256)  # the numbers of terms the statements below are written for


def padded(items: list[_T]) -> list[_T]:
    """``items`` lengthened to the next of ``_SHAPES`` by repeating its last one (harmless in the OR
    and the UNION below), so a few statements, written once, serve any number of rooms."""
    size = next((shape for shape in _SHAPES if shape >= len(items)), len(items))
    return items + [items[-1]] * (size - len(items))


@functools.cache
def stored_data_sql(pairs: int) -> str:
    """(room, uid, data) for ``pairs`` (room, uid) pairs: an OR of equalities, which both databases
    answer from the (room, uid) index (a row-value IN over VALUES scans the table on SQLite)."""
    terms = " OR ".join(f"(room = :r{i} AND uid = :u{i})" for i in range(pairs))
    return f"SELECT room, uid, data FROM updates WHERE {terms}"


@functools.cache
def last_seqs_sql(rooms: int) -> str:
    """(room, last seq) for ``rooms`` rooms: one ``max`` each, since a lone ``max(seq)`` of one room
    is a single index lookup while a GROUP BY reads every row of each room's log."""
    return " UNION ALL ".join(
        f"SELECT CAST(:r{i} AS VARCHAR), (SELECT max(seq) FROM updates WHERE room = :r{i})" for i in range(rooms)
    )


def last_seqs_params(rooms: Sequence[str]) -> tuple[str, dict[str, str]]:
    """``last_seqs_sql`` and its parameters for ``rooms``."""
    rows = padded(list(rooms))
    return last_seqs_sql(len(rows)), {f"r{i}": room for i, room in enumerate(rows)}


def stored_data_params(batches: Mapping[str, Sequence[NewUpdate]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(statement, parameters) of each ``stored_data_sql`` statement that looks up the (room, uid)
    pairs of ``batches``."""
    pairs = list({(room, u.uid) for room, updates in batches.items() for u in updates})
    for start in range(0, len(pairs), PAIRS_PER_QUERY):
        rows = padded(pairs[start : start + PAIRS_PER_QUERY])
        params: dict[str, Any] = {}
        for i, (room, uid) in enumerate(rows):
            params[f"r{i}"], params[f"u{i}"] = room, uid
        yield stored_data_sql(len(rows)), params


def number(
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
