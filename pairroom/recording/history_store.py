"""The recorder's storage port: what the recording needs beside the ``Store`` port's log and snapshots.

``Store`` (``storage/store.py``) is what rooms need: append, load, snapshot. The recorder also asks
the log questions by time and by seq, keeps events and named versions beside it, and deletes, purges
and imports whole rooms. Those live here, on the same rows as the room's ``Store``, with two adapters:
``SqlHistoryStore`` (``sql_history.py``, plain SQL through a ``SqlStore``'s driver) and
``MemoryHistoryStore`` (``memory_history.py``, on a ``MemoryStore``'s tables).
``history_store_for(store)`` gives the one that goes with a store.

Every method raises ``StoreError`` on failure. Times are UTC; a room with nothing stored answers
empty (0, None, []), never an error. Two rules keep a room loadable whatever is deleted:

* **The row at the room's last seq is never deleted by a purge**: ``Store.append`` numbers new updates
  after the log's highest seq, and losing that row would restart numbering below snapshots that
  already cover those numbers.
* **A purge keeps the snapshot at the seq it keeps from**, which the caller writes first, so the
  document is whole (snapshot + log after it) before anything older goes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from pairroom.storage.store import Snapshot, Store, StoredUpdate


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened in a room at ``at`` (server clock), by ``user`` ("" for the server)."""

    room: str
    at: datetime
    kind: str
    user: str
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Version:
    """A named point of a room's log: the document as of ``seq``."""

    room: str
    name: str
    seq: int
    at: datetime
    by: str
    auto: bool


class HistoryStore(Protocol):
    """Recorder storage beside a room's log; see the module docstring."""

    # -- events and versions

    async def append_events(self, events: Sequence[Event], versions: Sequence[Version] = ()) -> None:
        """Write events and versions (any rooms) in one transaction, all or none. A user label longer
        than the column is shortened."""

    async def events(
        self,
        room: str,
        since: datetime | None = None,
        until: datetime | None = None,
        kinds: Iterable[str] | None = None,
    ) -> list[Event]:
        """The room's events with since <= at <= until (of ``kinds``), oldest first, ties in write order."""

    async def add_version(self, version: Version) -> None:
        """Name a point of the log."""

    async def versions(self, room: str) -> list[Version]:
        """The room's versions by seq, ties in write order."""

    # -- the log by time and by seq

    async def last_seq(self, room: str) -> int:
        """The highest seq of the room's log (0 for none)."""

    async def first_seq(self, room: str) -> int:
        """The lowest seq still in the log (above 1 after a purge), 0 for an empty log."""

    async def seq_at(self, room: str, at: datetime) -> int:
        """The seq of the last update logged at or before ``at`` (the latest time, then the highest
        seq), 0 if none: the state "as it was at ``at``"."""

    async def time_of(self, room: str, seq: int) -> datetime | None:
        """When the update at ``seq`` was logged (None for seq 0, an unknown or a purged seq)."""

    async def snapshot_at_or_before(self, room: str, seq: int) -> Snapshot | None:
        """The newest snapshot with snapshot.seq <= seq."""

    async def snapshots(self, room: str) -> list[Snapshot]:
        """Every snapshot of the room, by seq."""

    async def edit_counts(self, room: str, since: datetime, until: datetime | None) -> dict[str, int]:
        """How many logged updates each origin label made with since <= at <= until."""

    async def read_updates_page(self, room: str, after_seq: int, limit: int) -> list[StoredUpdate]:
        """Up to ``limit`` log entries after ``after_seq``, in seq order (for streaming)."""

    # -- whole rooms

    async def has_anything(self, room: str) -> bool:
        """Whether the room has a log entry, a snapshot, an event or a version."""

    async def delete_room(self, room: str) -> int:
        """Delete every row of the room (log, snapshots, events, versions) at once; how many went."""

    async def purge_before(self, room: str, keep_from_seq: int, cutoff: datetime) -> int:
        """Delete log entries, snapshots and versions below ``keep_from_seq`` and events before
        ``cutoff``, at once; how many went. The caller has written a snapshot at ``keep_from_seq``."""

    async def import_room(
        self,
        room: str,
        updates: Iterable[StoredUpdate],
        snapshots: Iterable[Snapshot],
        events: Iterable[Event],
        versions: Iterable[Version],
    ) -> None:
        """Store a room's rows exactly as given (seqs, uids, times, bytes), all or none. Refuses
        (``ValueError``) a room that already holds anything: an import never merges."""


def history_store_for(store: Store) -> HistoryStore:
    """The history adapter on the same rows as ``store`` (an open ``SqlStore`` or ``MemoryStore``).

    Raises ``TypeError`` for another ``Store``: the recorder's rows live beside the log, so only an
    adapter written for that store can keep them."""
    from pairroom.storage.memory import MemoryStore
    from pairroom.storage.sql import SqlStore

    if isinstance(store, SqlStore):
        from pairroom.recording.sql_history import SqlHistoryStore

        return SqlHistoryStore(store)
    if isinstance(store, MemoryStore):
        from pairroom.recording.memory_history import MemoryHistoryStore

        return MemoryHistoryStore(store)
    raise TypeError(f"the recorder has no history adapter for {type(store).__name__}; use SqlStore or MemoryStore")
