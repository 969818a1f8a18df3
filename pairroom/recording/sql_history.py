"""The recorder's storage port (``history_store.HistoryStore``) on SQL: events, versions, time
lookups, snapshot search, raw import, purge and deletion. SQLAlchemy stays in here (and in ``sql.py``).

It runs on the ``SqlStore``'s own engine, so it shares its pool, its SQLite pragmas and its write
locking (``BEGIN IMMEDIATE``), and the tables are migrated by the store's ``open()``.

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

from sqlalchemy import delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from pairroom.recording.history_store import Event, Version
from pairroom.storage.event_models import USER_MAX_LENGTH, EventRow, VersionRow
from pairroom.storage.models import SnapshotRow, UpdateRow
from pairroom.storage.sql import SqlStore, _begin_write, _failures
from pairroom.storage.store import Snapshot, StoredUpdate

_INSERT_BATCH = 1000


class SqlHistoryStore:
    """``HistoryStore`` on an open ``SqlStore``; every method raises ``StoreError`` on failure."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store

    @property
    def _engine(self) -> AsyncEngine:
        return self.store.engine

    # -- events and versions ------------------------------------------------------------------------

    async def append_events(self, events: Sequence[Event], versions: Sequence[Version] = ()) -> None:
        if not events and not versions:
            return
        rows = [
            {
                "room": e.room,
                "at": e.at,
                "kind": e.kind,
                "user": e.user[:USER_MAX_LENGTH],
                "data": json.dumps(e.data, separators=(",", ":"), sort_keys=True),
            }
            for e in events
        ]
        with _failures(f"writing {len(rows)} event(s) and {len(versions)} version(s)"):
            async with _begin_write(self._engine) as conn:
                for start in range(0, len(rows), _INSERT_BATCH):
                    await conn.execute(insert(EventRow.__table__), rows[start : start + _INSERT_BATCH])  # type: ignore[arg-type]
                if versions:
                    await conn.execute(insert(VersionRow.__table__), [_version_row(v) for v in versions])  # type: ignore[arg-type]

    async def events(
        self,
        room: str,
        since: datetime | None = None,
        until: datetime | None = None,
        kinds: Iterable[str] | None = None,
    ) -> list[Event]:
        """The room's events with since <= at <= until, oldest first (ties in write order)."""
        query = select(EventRow.at, EventRow.kind, EventRow.user, EventRow.data).where(EventRow.room == room)
        if since is not None:
            query = query.where(EventRow.at >= since)
        if until is not None:
            query = query.where(EventRow.at <= until)
        if kinds is not None:
            query = query.where(EventRow.kind.in_(list(kinds)))
        with _failures(f"reading the events of room {room!r}"):
            async with self._engine.connect() as conn:
                result = await conn.execute(query.order_by(EventRow.at, EventRow.id))
                return [Event(room, r.at, r.kind, r.user, json.loads(r.data)) for r in result]

    async def add_version(self, version: Version) -> None:
        with _failures(f"naming a version of room {version.room!r}"):
            async with _begin_write(self._engine) as conn:
                await conn.execute(insert(VersionRow.__table__).values(_version_row(version)))  # type: ignore[arg-type]

    async def versions(self, room: str) -> list[Version]:
        query = (
            select(VersionRow.name, VersionRow.seq, VersionRow.at, VersionRow.by, VersionRow.auto)
            .where(VersionRow.room == room)
            .order_by(VersionRow.seq, VersionRow.id)
        )
        with _failures(f"listing the versions of room {room!r}"):
            async with self._engine.connect() as conn:
                result = await conn.execute(query)
                return [Version(room, r.name, r.seq, r.at, r.by, bool(r.auto)) for r in result]

    # -- the log by time and by seq -----------------------------------------------------------------

    async def last_seq(self, room: str) -> int:
        with _failures(f"reading the last seq of room {room!r}"):
            async with self._engine.connect() as conn:
                return int(
                    (
                        await conn.execute(
                            select(func.coalesce(func.max(UpdateRow.seq), 0)).where(UpdateRow.room == room)
                        )
                    ).scalar_one()
                )

    async def seq_at(self, room: str, at: datetime) -> int:
        """The seq of the last update logged at or before ``at`` (0 if none): the state "as it was
        at ``at``". One walk down ``ix_updates_room_at`` (a ``max(seq)`` over the range would read
        every earlier row); timestamps follow seqs except across nodes, where they may differ by
        the nodes' clock skew."""
        query = (
            select(UpdateRow.seq)
            .where(UpdateRow.room == room, UpdateRow.at <= at)
            .order_by(UpdateRow.at.desc(), UpdateRow.seq.desc())
            .limit(1)
        )
        with _failures(f"finding the seq of room {room!r} at {at.isoformat()}"):
            async with self._engine.connect() as conn:
                return int((await conn.execute(query)).scalar_one_or_none() or 0)

    async def time_of(self, room: str, seq: int) -> datetime | None:
        """When the update at ``seq`` was logged (None for seq 0 or a purged row)."""
        with _failures(f"reading the time of seq {seq} of room {room!r}"):
            async with self._engine.connect() as conn:
                return (
                    await conn.execute(select(UpdateRow.at).where(UpdateRow.room == room, UpdateRow.seq == seq))
                ).scalar_one_or_none()

    async def first_seq(self, room: str) -> int:
        """The lowest seq still in the log (above 1 after a purge), 0 for an empty log."""
        with _failures(f"reading the first seq of room {room!r}"):
            async with self._engine.connect() as conn:
                return int(
                    (
                        await conn.execute(
                            select(func.coalesce(func.min(UpdateRow.seq), 0)).where(UpdateRow.room == room)
                        )
                    ).scalar_one()
                )

    async def snapshot_at_or_before(self, room: str, seq: int) -> Snapshot | None:
        """The newest snapshot with snapshot.seq <= seq."""
        query = (
            select(SnapshotRow.seq, SnapshotRow.at, SnapshotRow.data)
            .where(SnapshotRow.room == room, SnapshotRow.seq <= seq)
            .order_by(SnapshotRow.seq.desc())
            .limit(1)
        )
        with _failures(f"finding a snapshot of room {room!r} at or before seq {seq}"):
            async with self._engine.connect() as conn:
                row = (await conn.execute(query)).first()
        return None if row is None else Snapshot(room, row.seq, row.at, row.data)

    async def snapshots(self, room: str) -> list[Snapshot]:
        """Every snapshot of the room, by seq (with data: for export)."""
        query = (
            select(SnapshotRow.seq, SnapshotRow.at, SnapshotRow.data)
            .where(SnapshotRow.room == room)
            .order_by(SnapshotRow.seq)
        )
        with _failures(f"listing the snapshots of room {room!r}"):
            async with self._engine.connect() as conn:
                return [Snapshot(room, r.seq, r.at, r.data) for r in await conn.execute(query)]

    async def edit_counts(self, room: str, since: datetime, until: datetime | None) -> dict[str, int]:
        """How many logged updates each origin label made with since <= at <= until."""
        query = select(UpdateRow.origin, func.count()).where(UpdateRow.room == room, UpdateRow.at >= since)
        if until is not None:
            query = query.where(UpdateRow.at <= until)
        with _failures(f"counting the edits of room {room!r}"):
            async with self._engine.connect() as conn:
                result = await conn.execute(query.group_by(UpdateRow.origin))
                return {origin: int(count) for origin, count in result}

    # -- whole rooms ----------------------------------------------------------------------------------

    async def has_anything(self, room: str) -> bool:
        with _failures(f"looking up room {room!r}"):
            async with self._engine.connect() as conn:
                for table in (UpdateRow, SnapshotRow, EventRow, VersionRow):
                    found = (await conn.execute(select(table.id).where(table.room == room).limit(1))).first()
                    if found is not None:
                        return True
        return False

    async def delete_room(self, room: str) -> int:
        """Delete every row of the room in one transaction; return how many went."""
        removed = 0
        with _failures(f"deleting room {room!r}"):
            async with _begin_write(self._engine) as conn:
                for table in (UpdateRow, SnapshotRow, EventRow, VersionRow):
                    result = await conn.execute(delete(table).where(table.room == room))
                    removed += result.rowcount or 0
        return removed

    async def purge_before(self, room: str, keep_from_seq: int, cutoff: datetime) -> int:
        """Delete history older than ``keep_from_seq`` / ``cutoff``; the caller has written a snapshot
        at ``keep_from_seq``. Keeps that snapshot, the log row at it and everything after."""
        removed = 0
        with _failures(f"purging room {room!r} before seq {keep_from_seq}"):
            async with _begin_write(self._engine) as conn:
                statements = [
                    delete(UpdateRow).where(UpdateRow.room == room, UpdateRow.seq < keep_from_seq),
                    delete(SnapshotRow).where(SnapshotRow.room == room, SnapshotRow.seq < keep_from_seq),
                    delete(EventRow).where(EventRow.room == room, EventRow.at < cutoff),
                    delete(VersionRow).where(VersionRow.room == room, VersionRow.seq < keep_from_seq),
                ]
                for statement in statements:
                    removed += (await conn.execute(statement)).rowcount or 0
        return removed

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
        with _failures(f"importing room {room!r}"):
            async with _begin_write(self._engine) as conn:
                await _insert_all(
                    conn,
                    UpdateRow,
                    (
                        {"room": room, "seq": u.seq, "uid": u.uid, "at": u.at, "origin": u.origin, "data": u.data}
                        for u in updates
                    ),
                )
                await _insert_all(
                    conn, SnapshotRow, ({"room": room, "seq": s.seq, "at": s.at, "data": s.data} for s in snapshots)
                )
                await _insert_all(
                    conn,
                    EventRow,
                    (
                        {
                            "room": room,
                            "at": e.at,
                            "kind": e.kind,
                            "user": e.user,
                            "data": json.dumps(e.data, separators=(",", ":"), sort_keys=True),
                        }
                        for e in events
                    ),
                )
                await _insert_all(
                    conn,
                    VersionRow,
                    (
                        {"room": room, "name": v.name, "seq": v.seq, "at": v.at, "by": v.by, "auto": v.auto}
                        for v in versions
                    ),
                )

    async def read_updates_page(self, room: str, after_seq: int, limit: int) -> list[StoredUpdate]:
        """Up to ``limit`` log entries after ``after_seq`` (for streaming exports and replays)."""
        query = (
            select(UpdateRow.seq, UpdateRow.at, UpdateRow.origin, UpdateRow.data, UpdateRow.uid)
            .where(UpdateRow.room == room, UpdateRow.seq > after_seq)
            .order_by(UpdateRow.seq)
            .limit(limit)
        )
        with _failures(f"reading the log of room {room!r}"):
            async with self._engine.connect() as conn:
                result = await conn.execute(query)
                return [StoredUpdate(room, r.seq, r.at, r.origin, r.data, r.uid) for r in result]


def _version_row(version: Version) -> dict[str, Any]:
    return {
        "room": version.room,
        "name": version.name,
        "seq": version.seq,
        "at": version.at,
        "by": version.by,
        "auto": version.auto,
    }


async def _insert_all(conn: Any, model: Any, rows: Iterable[dict[str, Any]]) -> None:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= _INSERT_BATCH:
            await conn.execute(insert(model.__table__), batch)  # type: ignore[arg-type]
            batch = []
    if batch:
        await conn.execute(insert(model.__table__), batch)  # type: ignore[arg-type]
