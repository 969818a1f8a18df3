"""The recorder's storage port (``history_store.HistoryStore``) in memory, on a ``MemoryStore``'s rows.

It answers as ``SqlHistoryStore`` does (the same orders, the same ties, times in UTC, event data as it
reads back from JSON), so a server on ``memory://`` records, replays, restores and forks like one on
a database, until the process ends. Events and versions are kept in the room's ``RoomLog.side``
tables, so every ``MemoryStore`` on the same ``MemoryTables`` sees them, as every node sees a
database's. Each method finishes without awaiting, so it is one transaction on the event loop.
"""

from __future__ import annotations

import bisect
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime

from pairroom.recording.history_store import Event, Version
from pairroom.storage.memory import MemoryStore, MemoryTables, RoomLog, as_stored
from pairroom.storage.store import USER_MAX_LENGTH, Snapshot, StoredUpdate, StoreError

_EVENTS = "events"
_VERSIONS = "versions"


class MemoryHistoryStore:
    """``HistoryStore`` on an open ``MemoryStore``; every method raises ``StoreError`` on failure."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    @property
    def _tables(self) -> MemoryTables:
        return self.store.tables  # StoreError when the store is not open

    def _log(self, room: str) -> RoomLog:
        return self._tables.log(room)

    # -- events and versions ------------------------------------------------------------------------

    async def append_events(self, events: Sequence[Event], versions: Sequence[Version] = ()) -> None:
        if not events and not versions:
            return
        tables = self._tables
        # Everything is converted before anything is kept: a bad row fails the whole batch.
        stored_events = [_as_stored_event(e) for e in events]
        stored_versions = [_as_stored_version(v) for v in versions]
        for event in stored_events:
            tables.writable(event.room).side.setdefault(_EVENTS, []).append(event)
        for version in stored_versions:
            tables.writable(version.room).side.setdefault(_VERSIONS, []).append(version)

    async def events(
        self,
        room: str,
        since: datetime | None = None,
        until: datetime | None = None,
        kinds: Iterable[str] | None = None,
    ) -> list[Event]:
        wanted = None if kinds is None else set(kinds)
        found = [
            e
            for e in self._log(room).side.get(_EVENTS, [])
            if (since is None or e.at >= since)
            and (until is None or e.at <= until)
            and (wanted is None or e.kind in wanted)
        ]
        return sorted(found, key=lambda e: e.at)  # stable: ties stay in write order

    async def add_version(self, version: Version) -> None:
        await self.append_events((), (version,))

    async def versions(self, room: str) -> list[Version]:
        return sorted(self._log(room).side.get(_VERSIONS, []), key=lambda v: v.seq)

    # -- the log by time and by seq -----------------------------------------------------------------

    async def last_seq(self, room: str) -> int:
        return self._log(room).last_seq

    async def first_seq(self, room: str) -> int:
        seqs = self._log(room).seqs
        return seqs[0] if seqs else 0

    async def seq_at(self, room: str, at: datetime) -> int:
        best: tuple[datetime, int] | None = None
        for update in self._log(room).updates:
            if update.at <= at and (best is None or (update.at, update.seq) > best):
                best = (update.at, update.seq)
        return 0 if best is None else best[1]

    async def time_of(self, room: str, seq: int) -> datetime | None:
        log = self._log(room)
        index = bisect.bisect_left(log.seqs, seq)
        if index < len(log.seqs) and log.seqs[index] == seq:
            return log.updates[index].at
        return None

    async def snapshot_at_or_before(self, room: str, seq: int) -> Snapshot | None:
        snapshots = self._log(room).snapshots
        index = bisect.bisect_right([s.seq for s in snapshots], seq)
        return snapshots[index - 1] if index else None

    async def snapshots(self, room: str) -> list[Snapshot]:
        return list(self._log(room).snapshots)

    async def edit_counts(self, room: str, since: datetime, until: datetime | None) -> dict[str, int]:
        return dict(
            Counter(u.origin for u in self._log(room).updates if u.at >= since and (until is None or u.at <= until))
        )

    async def read_updates_page(self, room: str, after_seq: int, limit: int) -> list[StoredUpdate]:
        return self._log(room).updates_between(after_seq, None)[:limit]

    # -- whole rooms ----------------------------------------------------------------------------------

    async def has_anything(self, room: str) -> bool:
        return not self._log(room).empty

    async def delete_room(self, room: str) -> int:
        tables = self._tables
        log = tables.rooms.pop(room, None)
        if log is None:
            return 0
        return len(log.updates) + len(log.snapshots) + sum(len(rows) for rows in log.side.values())

    async def purge_before(self, room: str, keep_from_seq: int, cutoff: datetime) -> int:
        tables = self._tables
        log = tables.rooms.get(room)
        if log is None:
            return 0
        removed = log.remove_updates(lambda u: u.seq >= keep_from_seq)
        removed += log.remove_snapshots(lambda s: s.seq >= keep_from_seq)
        events = log.side.get(_EVENTS, [])
        versions = log.side.get(_VERSIONS, [])
        log.side[_EVENTS] = [e for e in events if e.at >= cutoff]
        log.side[_VERSIONS] = [v for v in versions if v.seq >= keep_from_seq]
        removed += len(events) - len(log.side[_EVENTS]) + len(versions) - len(log.side[_VERSIONS])
        tables.drop_if_empty(room)
        return removed

    async def import_room(
        self,
        room: str,
        updates: Iterable[StoredUpdate],
        snapshots: Iterable[Snapshot],
        events: Iterable[Event],
        versions: Iterable[Version],
    ) -> None:
        if await self.has_anything(room):
            raise ValueError(f"room {room!r} already exists; import under another name (--as)")
        tables = self._tables
        log = RoomLog()
        try:
            for u in updates:
                log.add_update(StoredUpdate(room, u.seq, as_stored(u.at), u.origin, bytes(u.data), u.uid))
            for s in snapshots:
                if not log.add_snapshot(Snapshot(room, s.seq, as_stored(s.at), bytes(s.data))):
                    raise StoreError(f"importing room {room!r} failed: two snapshots at seq {s.seq}")
            log.side[_EVENTS] = [_as_stored_event(Event(room, e.at, e.kind, e.user, e.data)) for e in events]
            log.side[_VERSIONS] = [
                _as_stored_version(Version(room, v.name, v.seq, v.at, v.by, v.auto)) for v in versions
            ]
        except StoreError as exc:
            raise StoreError(f"importing room {room!r} failed: {exc}") from exc
        if not log.empty:
            tables.rooms[room] = log


def _as_stored_event(event: Event) -> Event:
    """The event as the SQL adapter reads it back: UTC time, user cut to the column, JSON data."""
    data = json.loads(json.dumps(event.data, separators=(",", ":"), sort_keys=True))
    return Event(event.room, as_stored(event.at), event.kind, event.user[:USER_MAX_LENGTH], data)


def _as_stored_version(version: Version) -> Version:
    return Version(version.room, version.name, version.seq, as_stored(version.at), version.by, bool(version.auto))
