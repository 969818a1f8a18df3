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

Adapters live in their own modules (``sql.py``); nothing outside them imports a database library.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from collections.abc import Mapping, Sequence
from typing import Protocol


class StoreError(Exception):
    """Storage could not do what was asked (unreachable, failed write, corrupt row)."""


MAX_ORIGIN_LABEL = 255  # characters; every adapter stores at least this many


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
    """Durable storage for rooms. Every method raises ``StoreError`` on failure, never returns a guess."""

    async def open(self) -> None:
        """Connect and bring the schema up to date (migrations)."""

    async def close(self) -> None:
        """Release connections."""

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
        """``append`` for several rooms in one transaction, all or none; each room's last seq."""

    async def write_snapshot(self, room: str, seq: int, data: bytes) -> None:
        """Store a snapshot of the document as of ``seq``. Older snapshots may be pruned."""

    async def read_updates(
        self, room: str, after_seq: int = 0, upto_seq: int | None = None
    ) -> list[StoredUpdate]:
        """Log entries of ``room`` with after_seq < seq <= upto_seq, in sequence order."""

    async def rooms(self) -> list[str]:
        """Names of every room with anything stored."""
