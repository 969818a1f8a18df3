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


def kernel_lease(room: str) -> str:
    """Held by the one node running the room's kernel; its value is that node's id."""
    return f"{PREFIX}:lease:kernel:{_room(room)}"


def kernel_channel(room: str) -> str:
    """Requests for the room's kernel (runs, interrupts, restarts); only the lease holder listens."""
    return f"{PREFIX}:kernel:{_room(room)}"


def node_channel(node_id: str, topic: str = "") -> str:
    """Messages addressed to one node (answers to the requests it forwarded); ``topic`` keeps one
    subsystem's messages (``terminal``) off another's connection (kernels use the bare channel)."""
    base = f"{PREFIX}:node:{quote(node_id, safe='')}"
    return f"{base}:{quote(topic, safe='')}" if topic else base


def terminal_lease(room: str) -> str:
    """Held by the one node running the room's terminals; its value is that node's id."""
    return f"{PREFIX}:lease:terminal:{_room(room)}"


def terminal_channel(room: str) -> str:
    """Requests for the room's terminals (create, end, attach a viewer, ...); only the holder listens."""
    return f"{PREFIX}:terminal:{_room(room)}"


def terminal_input(room: str) -> str:
    """What remote viewers type, resize and propose, in order; only the holder listens."""
    return f"{PREFIX}:terminal-in:{_room(room)}"


def signal_channel(name: str) -> str:
    """One signaling channel of the rtc hubs (``signal:TOPIC`` or ``call:ROOM``), escaped whole so no
    topic can forge another's channel."""
    return f"{PREFIX}:rtc:" + "{" + quote(name, safe="") + "}"


def git_lease(room: str) -> str:
    """Held by the one node whose disk holds the room's git repository; its value is that node's id."""
    return f"{PREFIX}:lease:git:{_room(room)}"


def git_channel(room: str) -> str:
    """Git requests for the room (status, diff, log, commit, push, pull, remote); only the holder listens."""
    return f"{PREFIX}:git:{_room(room)}"


def git_answers(node_id: str) -> str:
    """Answers to the git requests one node forwarded."""
    return f"{PREFIX}:node:{quote(node_id, safe='')}:git"
