"""Who changed which file, and which line, read from the room's stored update log.

Every update is stored with the origin the server stamped on it (``client:<connection>:<user>`` for a
member's edit, on any node; ``local:disk:<user>`` for what their terminal or run wrote to the
workspace; ``local:git:...`` for what git brought in). Replaying the log through the storage port
(``Store.read_updates``) into a scratch ``Doc`` whose ``files`` map is observed tells, for each
update, the files it changed and, for one file, exactly which bytes: that is enough for the
co-authors of a commit, the runs of a series of commits, and a blame that covers uncommitted work.

The log is complete from seq 1 unless compaction folded its start into a snapshot; then the replay
starts from that snapshot and the lines it already held are blamed on nobody (``user: None``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pycrdt import Doc, Map, Text

from pairroom.storage.store import Store


def author_of(label: str) -> str | None:
    """The user id an origin label names, or None for the server's own changes."""
    if label.startswith("client:"):
        parts = label.split(":", 2)
        return parts[2] if len(parts) == 3 and parts[2] else None
    if label.startswith("local:disk:"):
        return label[len("local:disk:"):] or None
    return None


@dataclass(frozen=True, slots=True)
class Stamp:
    seq: int
    at: int  # ms since the epoch, the server's clock when the update was stored
    user: str | None
    origin: str


@dataclass(slots=True)
class Run:
    """Consecutive updates of one person (series commits): the files they changed and the files'
    text when the run ended."""

    user: str
    first_at: int
    last_at: int
    paths: set[str] = field(default_factory=set)
    files: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Touches:
    """What happened to the files after a given seq."""

    by_path: dict[str, dict[str, int]] = field(default_factory=dict)  # path -> user -> last change (ms)
    runs: list[Run] = field(default_factory=list)
    last_seq: int = 0


def _files_text(files: Map) -> dict[str, str]:
    return {path: str(text) for path, text in files.items() if isinstance(text, Text)}


async def _replay(store: Store, room: str, on_update: Callable[[Doc, Stamp, list[Any]], None],
                  start: Callable[[Doc, int], None] | None = None) -> Doc:
    """Apply the room's log to a scratch ``Doc``; ``on_update(doc, stamp, events)`` after each update
    with the ``files`` events it caused. Returns the document as the log leaves it."""
    doc = Doc()
    files = doc.get("files", type=Map)
    events: list[Any] = []
    subscription = files.observe_deep(lambda evs: events.extend(evs))
    updates = await store.read_updates(room, 0)
    last = 0
    if updates and updates[0].seq != 1:  # compacted: begin from the snapshot the log continues
        loaded = await store.load(room)
        if loaded.snapshot is not None:
            doc.apply_update(loaded.snapshot.data)
            last = loaded.snapshot.seq
            updates = [u for u in updates if u.seq > last]
    events.clear()
    if start is not None:
        start(doc, last)
    for update in updates:
        events.clear()
        doc.apply_update(update.data)
        stamp = Stamp(update.seq, int(update.at.timestamp() * 1000), author_of(update.origin), update.origin)
        on_update(doc, stamp, list(events))
        last = update.seq
    files.unobserve(subscription)
    return doc


def _paths_of(events: list[Any]) -> set[str]:
    paths: set[str] = set()
    for event in events:
        if event.path:
            paths.add(str(event.path[0]))
        else:
            paths.update(str(key) for key in (getattr(event, "keys", None) or {}))
    return paths


async def touches_since(store: Store, room: str, after_seq: int, upto: int | None = None) -> Touches:
    """Who changed which file after ``after_seq`` (up to ``upto``), and the runs of consecutive
    changes per person with the files' text at the end of each run."""
    found = Touches()

    def on_update(doc: Doc, stamp: Stamp, events: list[Any]) -> None:
        if upto is not None and stamp.seq > upto:
            return
        found.last_seq = stamp.seq
        if stamp.seq <= after_seq or not events:
            return
        paths = _paths_of(events)
        if not paths:
            return
        if stamp.user is not None:
            for path in paths:
                found.by_path.setdefault(path, {})[stamp.user] = stamp.at
        runs = found.runs
        if stamp.user is not None and (not runs or runs[-1].user != stamp.user):
            runs.append(Run(stamp.user, stamp.at, stamp.at))
        if runs:  # the server's own changes (a pull) join the run they fall in
            runs[-1].paths |= paths
            runs[-1].last_at = stamp.at
            runs[-1].files = _files_text(doc.get("files", type=Map))

    await _replay(store, room, on_update)
    return found


async def blame(store: Store, room: str, path: str) -> tuple[str, list[Stamp | None]] | None:
    """The file's text as the log has it and, per line, the stamp of the last update that changed
    it (None for lines older than the log); None when the log never had the file."""
    stamps: list[Stamp | None] = []  # one per UTF-8 byte of the text
    present = False

    def start(doc: Doc, seq: int) -> None:
        nonlocal stamps, present
        text = doc.get("files", type=Map).get(path)
        if isinstance(text, Text):
            present = True
            stamps = [None] * len(str(text).encode())

    def on_update(doc: Doc, stamp: Stamp, events: list[Any]) -> None:
        nonlocal stamps, present
        for event in events:
            if not event.path:
                keys = getattr(event, "keys", None) or {}
                if path in keys:
                    text = doc.get("files", type=Map).get(path)
                    present = isinstance(text, Text)
                    stamps = [stamp] * len(str(text).encode()) if present else []
                continue
            if str(event.path[0]) != path or len(event.path) != 1:
                continue
            at = 0
            for op in getattr(event, "delta", None) or []:
                if "retain" in op:
                    at += int(op["retain"])
                elif "insert" in op:
                    inserted = op["insert"]
                    size = len(inserted.encode()) if isinstance(inserted, str) else 1
                    stamps[at:at] = [stamp] * size
                    at += size
                elif "delete" in op:
                    del stamps[at:at + int(op["delete"])]
                    if at < len(stamps):  # the line that lost text changed: it is the deleter's now
                        stamps[at] = stamp
                    elif stamps:
                        stamps[-1] = stamp

    doc = await _replay(store, room, on_update, start)
    current = doc.get("files", type=Map).get(path)
    if not present or not isinstance(current, Text):
        return None
    text = str(current)
    data = text.encode()
    lines: list[Stamp | None] = []
    newest: Stamp | None = None
    for index, byte in enumerate(data):
        stamp = stamps[index] if index < len(stamps) else None
        if stamp is not None and (newest is None or stamp.seq > newest.seq):
            newest = stamp
        if byte == 0x0A:
            lines.append(newest)
            newest = None
    if data and not data.endswith(b"\n"):
        lines.append(newest)
    return text, lines


@dataclass(frozen=True, slots=True)
class Record:
    seq: int
    at: int
    user: str | None
    paths: frozenset[str]


class LogReader:
    """One room's log read so far, kept between questions: the status of a room that is being typed
    in is asked for often, and each answer reads only the updates stored since the last one."""

    def __init__(self, store: Store, room: str) -> None:
        self.store = store
        self.room = room
        self.doc: Doc | None = None
        self.seq = 0
        self.records: list[Record] = []
        self._events: list[Any] = []
        self._subscription: Any = None
        self._lock = asyncio.Lock()

    async def catch_up(self) -> int:
        async with self._lock:
            if self.doc is None:
                self.doc = Doc()
                # the subscription must be held: pycrdt drops the callback with it
                self._subscription = self.doc.get("files", type=Map).observe_deep(self._events.extend)
                updates = await self.store.read_updates(self.room, 0)
                if updates and updates[0].seq != 1:  # compacted: begin from the snapshot
                    loaded = await self.store.load(self.room)
                    if loaded.snapshot is not None:
                        self.doc.apply_update(loaded.snapshot.data)
                        self.seq = loaded.snapshot.seq
                        updates = [u for u in updates if u.seq > self.seq]
            else:
                updates = await self.store.read_updates(self.room, self.seq)
            for update in updates:
                self._events.clear()
                self.doc.apply_update(update.data)
                paths = _paths_of(self._events)
                if paths:
                    at = int(update.at.timestamp() * 1000)
                    self.records.append(Record(update.seq, at, author_of(update.origin), frozenset(paths)))
                self.seq = update.seq
            return self.seq

    async def touches(self, after_seq: int, upto: int | None = None) -> Touches:
        """Who changed which file after ``after_seq`` (up to ``upto``; runs are not kept here:
        ``touches_since`` has them)."""
        last = await self.catch_up()
        found = Touches(last_seq=last)
        for record in self.records:
            if record.seq <= after_seq or record.user is None or (upto is not None and record.seq > upto):
                continue
            for path in record.paths:
                found.by_path.setdefault(path, {})[record.user] = record.at
        return found

    def forget_before(self, seq: int) -> None:
        """Records up to ``seq`` are committed: no question will ask about them again."""
        self.records = [r for r in self.records if r.seq > seq]
