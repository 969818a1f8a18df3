"""The recorder's storage port (``history_store.HistoryStore``) on SQL: events, versions, time
lookups, snapshot search, raw import, purge and deletion.

It runs plain SQL through the ``SqlStore``'s own driver (``SqlStore.query`` and ``.transaction``),
so it shares its connections, its SQLite pragmas and its write locking (``BEGIN IMMEDIATE``), and the
tables are migrated by the store's ``open()``. The statements below run unchanged on SQLite and
PostgreSQL: named parameters, times as integer microseconds (``statements.utc_micros``).

Two rules keep the update log loadable whatever is deleted here:

* **The row at the room's last seq is never deleted by a purge.** ``SqlStore.append`` numbers new
  updates after ``max(seq)`` of the log; losing that row would restart numbering below snapshots
  that already cover those numbers.
* **A purge first writes a snapshot at the seq it keeps from**, so the document is whole (snapshot +
  log after it) before anything older goes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from pairroom.recording.history_store import Event, Version
from pairroom.storage import statements as sql
from pairroom.storage.sql import SqlStore
from pairroom.storage.statements import Statement, from_utc_micros, utc_micros
from pairroom.storage.store import USER_MAX_LENGTH, Snapshot, StoredUpdate

_INSERT_BATCH = 1000  # rows per executemany of an import

_INSERT_EVENT = 'INSERT INTO events (room, at, kind, "user", data) VALUES (:room, :at, :kind, :user, :data)'
_INSERT_VERSION = 'INSERT INTO versions (room, name, seq, at, "by", auto) VALUES (:room, :name, :seq, :at, :by, :auto)'
_SELECT_VERSIONS = 'SELECT name, seq, at, "by", auto FROM versions WHERE room = :room ORDER BY seq, id'
_LAST_SEQ = "SELECT coalesce(max(seq), 0) FROM updates WHERE room = :room"
_FIRST_SEQ = "SELECT coalesce(min(seq), 0) FROM updates WHERE room = :room"
# One walk down ix_updates_room_at (a max(seq) over the range would read every earlier row).
_SEQ_AT = "SELECT seq FROM updates WHERE room = :room AND at <= :at ORDER BY at DESC, seq DESC LIMIT 1"
_TIME_OF = "SELECT at FROM updates WHERE room = :room AND seq = :seq"
_SNAPSHOT_AT_OR_BEFORE = (
    "SELECT seq, at, data FROM snapshots WHERE room = :room AND seq <= :seq ORDER BY seq DESC LIMIT 1"
)
_SNAPSHOTS = "SELECT seq, at, data FROM snapshots WHERE room = :room ORDER BY seq"
_TABLES = ("updates", "snapshots", "events", "versions")
_HAS_ANYTHING = "SELECT " + " OR ".join(f"EXISTS (SELECT 1 FROM {t} WHERE room = :room)" for t in _TABLES)
_DELETE_ROOM = tuple(f"DELETE FROM {t} WHERE room = :room" for t in _TABLES)
_IMPORT_SNAPSHOT = "INSERT INTO snapshots (room, seq, at, data) VALUES (:room, :seq, :at, :data)"


class SqlHistoryStore:
    """``HistoryStore`` on an open ``SqlStore``; every method raises ``StoreError`` on failure."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store

    # -- events and versions ------------------------------------------------------------------------

    async def append_events(self, events: Sequence[Event], versions: Sequence[Version] = ()) -> None:
        if not events and not versions:
            return
        rows = [_event_row(e.room, e) for e in events]
        statements: list[Statement] = [
            (_INSERT_EVENT, rows[i : i + _INSERT_BATCH]) for i in range(0, len(rows), _INSERT_BATCH)
        ]
        if versions:
            statements.append((_INSERT_VERSION, [_version_row(v.room, v) for v in versions]))
        await self.store.transaction(f"writing {len(rows)} event(s) and {len(versions)} version(s)", statements)

    async def events(
        self,
        room: str,
        since: datetime | None = None,
        until: datetime | None = None,
        kinds: Iterable[str] | None = None,
    ) -> list[Event]:
        """The room's events with since <= at <= until, oldest first (ties in write order)."""
        where: list[str] = ["room = :room"]
        params: dict[str, Any] = {"room": room}
        if since is not None:
            where.append("at >= :since")
            params["since"] = utc_micros(since)
        if until is not None:
            where.append("at <= :until")
            params["until"] = utc_micros(until)
        if kinds is not None:
            wanted = sorted(set(kinds))
            if not wanted:
                return []
            where.append(f"kind IN ({', '.join(f':k{i}' for i in range(len(wanted)))})")
            params.update({f"k{i}": kind for i, kind in enumerate(wanted)})
        statement = f'SELECT at, kind, "user", data FROM events WHERE {" AND ".join(where)} ORDER BY at, id'
        rows = await self.store.query(f"reading the events of room {room!r}", statement, params)
        return [Event(room, from_utc_micros(at), kind, user, json.loads(data)) for at, kind, user, data in rows]

    async def add_version(self, version: Version) -> None:
        await self.store.transaction(
            f"naming a version of room {version.room!r}", [(_INSERT_VERSION, _version_row(version.room, version))]
        )

    async def versions(self, room: str) -> list[Version]:
        rows = await self.store.query(f"listing the versions of room {room!r}", _SELECT_VERSIONS, {"room": room})
        return [Version(room, name, seq, from_utc_micros(at), by, bool(auto)) for name, seq, at, by, auto in rows]

    # -- the log by time and by seq -----------------------------------------------------------------

    async def last_seq(self, room: str) -> int:
        return await self._number(f"reading the last seq of room {room!r}", _LAST_SEQ, {"room": room})

    async def seq_at(self, room: str, at: datetime) -> int:
        """The seq of the last update logged at or before ``at`` (0 if none): the state "as it was
        at ``at``". Timestamps follow seqs except across nodes, where they may differ by the nodes'
        clock skew."""
        action = f"finding the seq of room {room!r} at {at.isoformat()}"
        return await self._number(action, _SEQ_AT, {"room": room, "at": utc_micros(at)})

    async def time_of(self, room: str, seq: int) -> datetime | None:
        """When the update at ``seq`` was logged (None for seq 0 or a purged row)."""
        rows = await self.store.query(
            f"reading the time of seq {seq} of room {room!r}", _TIME_OF, {"room": room, "seq": seq}
        )
        return from_utc_micros(rows[0][0]) if rows else None

    async def first_seq(self, room: str) -> int:
        """The lowest seq still in the log (above 1 after a purge), 0 for an empty log."""
        return await self._number(f"reading the first seq of room {room!r}", _FIRST_SEQ, {"room": room})

    async def snapshot_at_or_before(self, room: str, seq: int) -> Snapshot | None:
        """The newest snapshot with snapshot.seq <= seq."""
        action = f"finding a snapshot of room {room!r} at or before seq {seq}"
        rows = await self.store.query(action, _SNAPSHOT_AT_OR_BEFORE, {"room": room, "seq": seq})
        return sql.stored_snapshot(room, rows[0]) if rows else None

    async def snapshots(self, room: str) -> list[Snapshot]:
        """Every snapshot of the room, by seq (with data: for export)."""
        rows = await self.store.query(f"listing the snapshots of room {room!r}", _SNAPSHOTS, {"room": room})
        return [sql.stored_snapshot(room, row) for row in rows]

    async def edit_counts(self, room: str, since: datetime, until: datetime | None) -> dict[str, int]:
        """How many logged updates each origin label made with since <= at <= until."""
        params: dict[str, Any] = {"room": room, "since": utc_micros(since)}
        upper = ""
        if until is not None:
            upper, params["until"] = " AND at <= :until", utc_micros(until)
        statement = f"SELECT origin, count(*) FROM updates WHERE room = :room AND at >= :since{upper} GROUP BY origin"
        rows = await self.store.query(f"counting the edits of room {room!r}", statement, params)
        return {origin: int(count) for origin, count in rows}

    # -- whole rooms ----------------------------------------------------------------------------------

    async def has_anything(self, room: str) -> bool:
        rows = await self.store.query(f"looking up room {room!r}", _HAS_ANYTHING, {"room": room})
        return bool(rows[0][0])

    async def delete_room(self, room: str) -> int:
        """Delete every row of the room in one transaction; return how many went."""
        counts = await self.store.transaction(
            f"deleting room {room!r}", [(statement, {"room": room}) for statement in _DELETE_ROOM]
        )
        return sum(counts)

    async def purge_before(self, room: str, keep_from_seq: int, cutoff: datetime) -> int:
        """Delete history older than ``keep_from_seq`` / ``cutoff``; the caller has written a snapshot
        at ``keep_from_seq``. Keeps that snapshot, the log row at it and everything after."""
        by_seq = {"room": room, "seq": keep_from_seq}
        statements: list[Statement] = [
            ("DELETE FROM updates WHERE room = :room AND seq < :seq", by_seq),
            ("DELETE FROM snapshots WHERE room = :room AND seq < :seq", by_seq),
            ("DELETE FROM events WHERE room = :room AND at < :cutoff", {"room": room, "cutoff": utc_micros(cutoff)}),
            ("DELETE FROM versions WHERE room = :room AND seq < :seq", by_seq),
        ]
        counts = await self.store.transaction(f"purging room {room!r} before seq {keep_from_seq}", statements)
        return sum(counts)

    async def import_room(
        self,
        room: str,
        updates: Iterable[StoredUpdate],
        snapshots: Iterable[Snapshot],
        events: Iterable[Event],
        versions: Iterable[Version],
    ) -> None:
        """Insert a room's rows exactly as given (seqs, uids, times, bytes), in one transaction.

        Refuses (``ValueError``) a room that already holds anything: an import never merges."""
        if await self.has_anything(room):
            raise ValueError(f"room {room!r} already exists; import under another name (--as)")
        statements: list[Statement] = []
        for statement, rows in (
            (sql.INSERT_UPDATE, [sql.update_row(room, u.seq, u) for u in updates]),
            (
                _IMPORT_SNAPSHOT,
                [{"room": room, "seq": s.seq, "at": utc_micros(s.at), "data": s.data} for s in snapshots],
            ),
            (_INSERT_EVENT, [_event_row(room, e, clip_user=False) for e in events]),
            (_INSERT_VERSION, [_version_row(room, v) for v in versions]),
        ):
            statements += [(statement, rows[i : i + _INSERT_BATCH]) for i in range(0, len(rows), _INSERT_BATCH)]
        await self.store.transaction(f"importing room {room!r}", statements)

    async def read_updates_page(self, room: str, after_seq: int, limit: int) -> list[StoredUpdate]:
        """Up to ``limit`` log entries after ``after_seq`` (for streaming exports and replays)."""
        rows = await self.store.query(
            f"reading the log of room {room!r}",
            sql.SELECT_UPDATES_PAGE,
            {"room": room, "after": after_seq, "limit": limit},
        )
        return [sql.stored_update(room, row) for row in rows]

    async def _number(self, action: str, statement: str, params: dict[str, Any]) -> int:
        rows = await self.store.query(action, statement, params)
        return int(rows[0][0] or 0) if rows else 0


def _event_row(room: str, event: Event, *, clip_user: bool = True) -> dict[str, Any]:
    return {
        "room": room,
        "at": utc_micros(event.at),
        "kind": event.kind,
        "user": event.user[:USER_MAX_LENGTH] if clip_user else event.user,
        "data": json.dumps(event.data, separators=(",", ":"), sort_keys=True),
    }


def _version_row(room: str, version: Version) -> dict[str, Any]:
    return {
        "room": room,
        "name": version.name,
        "seq": version.seq,
        "at": utc_micros(version.at),
        "by": version.by,
        "auto": version.auto,
    }
