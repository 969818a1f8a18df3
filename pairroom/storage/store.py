"""The storage port: what rooms need from durable storage, and nothing of how it is done.

A room's document is kept as an append-only log of updates (each with a per-room sequence number, a
server timestamp and its origin) plus snapshots written beside the log. A snapshot at ``seq`` holds the
whole document after applying every update with a sequence number up to and including ``seq``; loading
a room reads the newest snapshot and the log entries after it. The log is never rewritten: the recorder
replays it.

Several nodes may hold the same room and append to its log. Sequence numbers are therefore given by the
store, in the order appends commit, and each update carries a ``uid`` chosen by the node that first
integrated it (node id and a counter): appending a uid the room's log already holds is a no-op. Every
node holding a room logs every update it integrates under the update's uid, so an update survives as
long as any node that saw it lives to flush, and is stored once however many nodes saw it.

Adapters live in their own modules: ``memory.py`` (one process, gone when it ends: tests and
throw-away servers) and ``sql.py`` (SQLite and PostgreSQL); nothing outside the SQL adapters
(``sql.py`` and its drivers ``sqlite.py`` and ``postgres.py``, the models and migrations, and the
recorder's ``sql_history.py``) imports a database library. Both behave the same for everything
promised here, and ``tests/test_storage.py`` runs one contract suite over memory, SQLite and
PostgreSQL. ``open_store(url)`` picks one by URL.

What any adapter refuses before storing anything (``ValueError``, the caller's bug, whether or not
the store is open): a room name or uid that is empty, too long or holds NUL, an origin that is too
long or holds NUL, a timestamp without a time zone, a negative seq. The limits are the SQL columns'
(``ROOM_MAX_LENGTH`` ...), so a room that works in memory also works on a database.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

ROOM_MAX_LENGTH = 255
ORIGIN_MAX_LENGTH = 255
UID_MAX_LENGTH = 64
KIND_MAX_LENGTH = 32  # the recorder's events and versions (``recording/history_store.py``)
USER_MAX_LENGTH = 255
NAME_MAX_LENGTH = 255
MAX_SEQ = 2**63 - 1  # a signed 64-bit column


class StoreError(Exception):
    """Storage could not do what was asked (unreachable, failed write, corrupt row)."""


MAX_ORIGIN_LABEL = ORIGIN_MAX_LENGTH  # characters; every adapter stores exactly this many


def clip_label(label: str) -> str:
    """An origin label that fits every adapter: longer ones (a token whose ``sub`` is very long)
    keep their head and a hash of the whole, so two long labels stay apart and a batch is never
    refused by the database for its label."""
    if len(label) <= MAX_ORIGIN_LABEL:
        return label
    import hashlib

    digest = hashlib.sha256(label.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{label[: MAX_ORIGIN_LABEL - 17]}~{digest}"


@dataclass(frozen=True, slots=True)
class NewUpdate:
    """An update about to be appended to a room's log; the store gives it its sequence number."""

    uid: str
    at: datetime
    origin: str
    data: bytes


@dataclass(frozen=True, slots=True)
class StoredUpdate:
    """An update read back from a room's log."""

    room: str
    seq: int
    at: datetime
    origin: str
    data: bytes
    uid: str = ""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The whole document as of ``seq`` (every update with a sequence number <= seq applied)."""

    room: str
    seq: int
    at: datetime
    data: bytes


@dataclass(frozen=True, slots=True)
class LoadedRoom:
    """What a room needs to rebuild its document: the newest snapshot and the log after it.

    ``last_seq`` is the highest sequence number stored for the room (0 for a room never seen), so the
    room knows where its next update goes.
    """

    snapshot: Snapshot | None
    updates: list[StoredUpdate]
    last_seq: int


class Store(Protocol):
    """Durable storage for rooms. Every method raises ``StoreError`` on failure, never returns a guess.

    Every method but ``open`` and ``close`` raises ``StoreError`` on a store that is not open. Times
    read back are in UTC, with the microsecond resolution they were written with; bytes read back
    are ``bytes`` equal to what was written."""

    async def open(self) -> None:
        """Connect and bring the schema up to date (migrations); safe to call again."""

    async def close(self) -> None:
        """Release connections; safe to call again. What was stored stays for the next ``open``."""

    async def ping(self) -> None:
        """Raise ``StoreError`` unless storage answers now (for readiness checks)."""

    async def load(self, room: str) -> LoadedRoom:
        """The newest snapshot of ``room`` and every update logged after it."""

    async def append(self, room: str, updates: Sequence[NewUpdate]) -> int:
        """Append a batch of updates to the room's log in one transaction; return the room's last seq.

        Updates get consecutive sequence numbers after the room's last one, in batch order. An update
        whose (room, uid) is already stored is skipped (same data) or refused with StoreError
        (different data), so a retried batch, or the same update logged by several nodes, is stored
        once.
        """

    async def append_many(self, batches: Mapping[str, Sequence[NewUpdate]]) -> dict[str, int]:
        """``append`` for several rooms in one transaction, all or none; each room's last seq.

        A room given an empty batch is answered with its last seq (0 if it has no log)."""

    async def write_snapshot(self, room: str, seq: int, data: bytes) -> None:
        """Store a snapshot of the document as of ``seq``, stamped with the store's clock.

        Every snapshot is kept (the recorder seeks from older ones). A second snapshot at the same
        (room, seq) is ignored: it describes the same document."""

    async def read_updates(self, room: str, after_seq: int = 0, upto_seq: int | None = None) -> list[StoredUpdate]:
        """Log entries of ``room`` with after_seq < seq <= upto_seq, in sequence order."""

    async def rooms(self) -> list[str]:
        """Names of every room with a log entry or a snapshot, sorted."""


def check_room(room: str) -> None:
    """``ValueError`` unless ``room`` is a name every adapter can store."""
    check_text("room", room, ROOM_MAX_LENGTH)


def check_updates(batches: Mapping[str, Iterable[NewUpdate]]) -> None:
    """``ValueError`` unless every room and update of the batches can be stored by every adapter."""
    for room, updates in batches.items():
        check_room(room)
        for update in updates:
            check_text("uid", update.uid, UID_MAX_LENGTH)
            check_aware(update.at)
            check_text("origin", update.origin, ORIGIN_MAX_LENGTH, allow_empty=True)


def check_text(name: str, value: str, max_length: int, *, allow_empty: bool = False) -> None:
    """PostgreSQL rejects NUL in text and enforces the length; SQLite would store either silently."""
    minimum = 0 if allow_empty else 1
    if not isinstance(value, str) or not minimum <= len(value) <= max_length or "\x00" in value:
        raise ValueError(f"{name} must be {minimum} to {max_length} characters without NUL, got {value!r:.80}")


def check_seq(seq: int, *, minimum: int) -> None:
    if isinstance(seq, bool) or not isinstance(seq, int) or not minimum <= seq <= MAX_SEQ:
        raise ValueError(f"seq must be an integer from {minimum} to 2**63-1, got {seq!r}")


def check_aware(at: datetime) -> None:
    if not isinstance(at, datetime) or at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"timestamp must be a timezone-aware datetime, got {at!r}")


def not_yet_stored(room: str, updates: Sequence[NewUpdate], stored: dict[tuple[str, str], bytes]) -> list[NewUpdate]:
    """The updates of the batch whose uid the room does not hold yet, first occurrence each, in
    batch order; ``stored`` maps (room, uid) to the data the room holds and gains the fresh ones.

    Raises ``StoreError`` if a uid is stored (or repeated in the batch) with different data."""
    fresh: list[NewUpdate] = []
    clashes: list[str] = []
    for update in updates:
        key = (room, update.uid)
        known = stored.get(key)
        if known is None:
            stored[key] = bytes(update.data)
            fresh.append(update)
        elif known != bytes(update.data):
            clashes.append(update.uid)
    if clashes:
        raise StoreError(
            f"room {room!r} already holds different data for uid {', '.join(clashes[:10])}"
            + (f" and {len(clashes) - 10} more" if len(clashes) > 10 else "")
        )
    return fresh


def open_store(url: str) -> Store:
    """The adapter a storage URL names, not opened yet: ``memory://`` (this process only, gone when
    it ends) or a database URL (``sqlite://``, ``postgresql://``: see ``sql.normalize_db_url``)."""
    scheme, _, rest = url.strip().partition("://")
    if scheme.lower() == "memory":
        if rest:
            raise ValueError(f"memory:// names no place; got {url!r}")
        from pairroom.storage.memory import MemoryStore

        return MemoryStore()
    from pairroom.storage.sql import SqlStore  # SQLAlchemy is imported only by nodes that use it

    return SqlStore(url)
