"""The storage port in this process's memory: a real adapter for tests and throw-away servers.

``MemoryStore`` keeps exactly what ``SqlStore`` keeps (the numbered log with uids, times and origins,
and every snapshot) and answers every method of the port the same way, including its errors: input
no database could store raises ``ValueError``, a uid stored with other data raises ``StoreError`` and
stores nothing of the batch, a store that is not open raises ``StoreError``. The contract suite
(``tests/test_storage.py``) runs over it beside SQLite and PostgreSQL.

What it does not do: outlive the process, or share a room with another process. Several nodes in one
process (tests of the cluster) may share one ``MemoryStore``, as nodes share one database.

Each method runs without awaiting anything before it has finished, so on one event loop it is one
transaction: no other coroutine sees half of an ``append_many``.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

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

__all__ = ["MemoryStore", "MemoryTables", "RoomLog"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def as_stored(at: datetime) -> datetime:
    """``at`` as a database gives it back: in UTC (``models.UtcMicros`` stores epoch microseconds)."""
    return _EPOCH + ((at - _EPOCH) // _MICROSECOND) * _MICROSECOND


@dataclass
class RoomLog:
    """One room's rows: the log in seq order, its uids, and the snapshots in seq order."""

    updates: list[StoredUpdate] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)  # updates' seqs, for bisecting
    uids: dict[str, bytes] = field(default_factory=dict)
    snapshots: list[Snapshot] = field(default_factory=list)
    # Rows the adapters beside the store keep for the room, by table (the recorder's events and
    # versions: ``recording/memory_history.py``), in write order.
    side: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def last_seq(self) -> int:
        return self.seqs[-1] if self.seqs else 0

    @property
    def has_document(self) -> bool:
        """A log entry or a snapshot: what ``Store.rooms`` lists."""
        return bool(self.updates or self.snapshots)

    @property
    def empty(self) -> bool:
        return not self.has_document and not any(self.side.values())

    def add_update(self, update: StoredUpdate) -> None:
        """Insert a row in seq order (appends come last; imports may come in any order)."""
        index = bisect.bisect_left(self.seqs, update.seq)
        if index < len(self.seqs) and self.seqs[index] == update.seq:
            raise StoreError(f"room {update.room!r} already holds seq {update.seq}")
        if update.uid in self.uids:
            raise StoreError(f"room {update.room!r} already holds uid {update.uid}")
        self.updates.insert(index, update)
        self.seqs.insert(index, update.seq)
        self.uids[update.uid] = update.data

    def updates_between(self, after_seq: int, upto_seq: int | None) -> list[StoredUpdate]:
        start = bisect.bisect_right(self.seqs, after_seq)
        stop = len(self.seqs) if upto_seq is None else bisect.bisect_right(self.seqs, upto_seq)
        return self.updates[start:stop] if stop > start else []

    def remove_snapshots(self, keep: Callable[[Snapshot], bool]) -> int:
        kept = [s for s in self.snapshots if keep(s)]
        removed = len(self.snapshots) - len(kept)
        self.snapshots = kept
        return removed

    def add_snapshot(self, snapshot: Snapshot) -> bool:
        """Keep ``snapshot`` unless one is already at its seq; True if it was added."""
        keys = [s.seq for s in self.snapshots]
        index = bisect.bisect_left(keys, snapshot.seq)
        if index < len(keys) and keys[index] == snapshot.seq:
            return False
        self.snapshots.insert(index, snapshot)
        return True

    def remove_updates(self, keep: Callable[[StoredUpdate], bool]) -> int:
        """Drop the rows ``keep`` refuses; return how many went."""
        kept = [u for u in self.updates if keep(u)]
        removed = len(self.updates) - len(kept)
        self.updates = kept
        self.seqs = [u.seq for u in kept]
        self.uids = {u.uid: u.data for u in kept}
        return removed


@dataclass
class MemoryTables:
    """What a ``MemoryStore`` holds, for the adapters beside it (``recording/memory_history.py``), as
    ``SqlStore.engine`` is for theirs. Rooms with nothing stored are absent."""

    rooms: dict[str, RoomLog] = field(default_factory=dict)

    def log(self, room: str) -> RoomLog:
        """The room's rows (an empty log, not kept, for a room never stored)."""
        return self.rooms.get(room) or RoomLog()

    def writable(self, room: str) -> RoomLog:
        return self.rooms.setdefault(room, RoomLog())

    def drop_if_empty(self, room: str) -> None:
        found = self.rooms.get(room)
        if found is not None and found.empty:
            del self.rooms[room]


class MemoryStore:
    """``Store`` in memory. ``open()`` before use (or ``async with``); what it holds survives
    ``close()`` and a later ``open()``, as a database file does, and ends with the object.

    ``MemoryStore(tables)`` is a second store on the same rows, as a second ``SqlStore`` on one
    database URL is: several nodes of one process can share a room's log that way."""

    def __init__(self, tables: MemoryTables | None = None) -> None:
        self._tables = tables if tables is not None else MemoryTables()
        self._open = False

    async def __aenter__(self) -> MemoryStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def dialect(self) -> str:
        return "memory"

    @property
    def tables(self) -> MemoryTables:
        """The open store's rows, for the adapters beside this one."""
        self._require_open()
        return self._tables

    async def open(self) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False

    async def ping(self) -> None:
        self._require_open()

    async def load(self, room: str) -> LoadedRoom:
        """The newest snapshot of ``room`` (highest seq), the log after it, and the room's last seq."""
        check_room(room)
        log = self._require_open().log(room)
        snapshot = log.snapshots[-1] if log.snapshots else None
        updates = log.updates_between(snapshot.seq if snapshot else 0, None)
        # As SqlStore computes it: the log after the snapshot ends at the room's highest seq.
        last_seq = updates[-1].seq if updates else (snapshot.seq if snapshot else 0)
        return LoadedRoom(snapshot, updates, last_seq)

    async def append(self, room: str, updates: Sequence[NewUpdate]) -> int:
        return (await self.append_many({room: updates}))[room]

    async def append_many(self, batches: Mapping[str, Sequence[NewUpdate]]) -> dict[str, int]:
        """Every batch is checked and numbered before anything is kept: all rooms or none."""
        check_updates(batches)
        tables = self._require_open()
        names = sorted(batches)
        stored: dict[tuple[str, str], bytes] = {}
        for room in names:
            known = tables.log(room).uids
            stored.update(((room, u.uid), known[u.uid]) for u in batches[room] if u.uid in known)
        numbered: dict[str, list[StoredUpdate]] = {}
        result: dict[str, int] = {}
        for room in names:
            last = tables.log(room).last_seq
            rows: list[StoredUpdate] = []
            for update in not_yet_stored(room, batches[room], stored):  # raises before anything is kept
                last += 1
                rows.append(
                    StoredUpdate(room, last, as_stored(update.at), update.origin, bytes(update.data), update.uid)
                )
            numbered[room] = rows
            result[room] = last
        for room, rows in numbered.items():
            if rows:
                log = tables.writable(room)
                for row in rows:
                    log.add_update(row)
        return result

    async def write_snapshot(self, room: str, seq: int, data: bytes) -> None:
        """Keep the document as of ``seq``, stamped now; a snapshot already at ``seq`` is kept as is."""
        check_room(room)
        check_seq(seq, minimum=0)
        tables = self._require_open()
        tables.writable(room).add_snapshot(Snapshot(room, seq, as_stored(datetime.now(UTC)), bytes(data)))

    async def read_updates(self, room: str, after_seq: int = 0, upto_seq: int | None = None) -> list[StoredUpdate]:
        check_room(room)
        return self._require_open().log(room).updates_between(after_seq, upto_seq)

    async def rooms(self) -> list[str]:
        return sorted(name for name, log in self._require_open().rooms.items() if log.has_document)

    def _require_open(self) -> MemoryTables:
        if not self._open:
            raise StoreError("memory storage is not open")
        return self._tables
