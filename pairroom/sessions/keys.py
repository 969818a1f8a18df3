"""Every Redis key and channel pairroom uses, in one place.

Room names are percent-encoded so no name can forge another key, and wrapped in a hash tag so every
key of one room lands in the same Redis Cluster slot.
"""

from __future__ import annotations

from urllib.parse import quote

PREFIX = "pairroom"


def _room(room: str) -> str:
    return "{" + quote(room, safe="") + "}"


def room_channel(room: str) -> str:
    """Updates, awareness and state vectors of one room."""
    return f"{PREFIX}:room:{_room(room)}"


def cluster_channel() -> str:
    """Node heartbeats and departures."""
    return f"{PREFIX}:cluster"


def room_holders(room: str) -> str:
    """Set of node ids holding the room in memory (hints: dead nodes are filtered by heartbeats)."""
    return f"{PREFIX}:holders:{_room(room)}"


def compaction_lease(room: str) -> str:
    """Held by the one node compacting the room's log into a snapshot."""
    return f"{PREFIX}:lease:compact:{_room(room)}"
