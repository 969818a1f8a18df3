"""Which parts of the document a reviewer may write: ``reviews`` and ``chat``, nothing else, checked in
time proportional to the update.

A Yjs update carries no list of the shared types it touches, but each of its structs says where it
goes: a root type's name, the id of the item of the type it goes in, or the id of a neighbour (its
origin) whose place it takes. So the check decodes the update (``decode_update``, Yjs' v1 encoding)
and finds each struct's root: directly, or through an index of where every struct of the room lives
(``StructIndex``: per client id, runs of clocks and their root). A deletion names clock ranges; the
index says which root each range is in.

Refused, besides anything outside the allowed roots:

- a struct whose parent or neighbour the room does not have (it waits for a missing dependency and
  would integrate later, wherever it points, once an editor's update supplies it);
- a deletion of clocks the room does not have yet (Yjs keeps it pending and applies it on arrival);
- a struct that points into garbage-collected content, and anything that does not decode.

A refused update is dropped like a viewer's (counted, not broadcast, not stored): the room's document
is never touched by it.

Cost: the index of a room is built once, the first time one of its reviewers writes (one decode of
the whole document), then kept up to date from every update the room integrates (one decode of each,
proportional to the update). A reviewer's update then costs one decode of itself and a lookup per
struct. Members with full write rights never reach this check (``Room._receive_sync`` calls it only
for roles that do not write the whole document); in rooms where a reviewer has written, everyone's
updates are indexed.

Install it for every room a node loads, before rooms load::

    ReviewerWrites()  # listed among the node's extensions in app.py
"""

from __future__ import annotations

import bisect
import logging
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pycrdt import Doc, Subscription, TransactionEvent

from pairroom.protocol.sync import ProtocolError, read_var_uint
from pairroom.rooms.extension import Extension
from pairroom.rooms.identity import Role

if TYPE_CHECKING:
    from pairroom.rooms.member import Member
    from pairroom.rooms.room import Room

log = logging.getLogger("pairroom.writes")

REVIEWER_ROOTS = frozenset({"reviews", "chat"})


class UpdateDecodeError(ValueError):
    """The bytes are not a Yjs v1 update this decoder understands."""


@dataclass(frozen=True, slots=True)
class DecodedStruct:
    """One struct of an update: its id range, and where it says it goes."""

    client: int
    clock: int
    length: int
    root: str | None = None  # a root type named directly
    parent: tuple[int, int] | None = None  # the id of the item of the type it goes in
    origin: tuple[int, int] | None = None  # its left neighbour at insertion
    right: tuple[int, int] | None = None  # its right neighbour at insertion
    gc: bool = False  # garbage-collected or skipped range: carries nothing


@dataclass(slots=True)
class DecodedUpdate:
    structs: list[DecodedStruct]
    deletes: list[tuple[int, int, int]]  # (client, clock, length)
    depth: int = 0  # the deepest nesting of any value in it


def json_depth(data: bytes) -> int:
    """How deep a JSON text nests (brackets outside strings), without parsing it recursively."""
    if data.count(b"[") + data.count(b"{") <= 1:
        return data.count(b"[") + data.count(b"{")
    depth = deepest = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


class _Reader:
    __slots__ = ("data", "pos", "depth")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.depth = 0  # the deepest nesting of any value read so far

    def uint(self) -> int:
        try:
            value, self.pos = read_var_uint(self.data, self.pos)
        except (ProtocolError, IndexError) as exc:
            raise UpdateDecodeError(str(exc)) from exc
        return value

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise UpdateDecodeError("truncated update")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def skip(self, count: int) -> None:
        if self.pos + count > len(self.data):
            raise UpdateDecodeError("truncated update")
        self.pos += count

    def raw(self) -> bytes:
        size = self.uint()
        start = self.pos
        self.skip(size)
        return self.data[start : self.pos]

    def string(self) -> str:
        try:
            return self.raw().decode()
        except UnicodeDecodeError as exc:
            raise UpdateDecodeError("invalid UTF-8 string") from exc

    def json(self) -> None:
        """Skip one JSON string (legacy content), noting how deep it nests."""
        self.depth = max(self.depth, json_depth(self.raw()))

    def var_int(self) -> None:
        while self.byte() & 0x80:
            pass

    def any(self) -> None:
        """Skip one lib0 ``Any`` value. Iterative: a value nested 3,000 deep costs no recursion."""
        stack = [[1, False]]  # values left to skip in each open container, and whether keyed
        while stack:
            top = stack[-1]
            if top[0] == 0:
                stack.pop()
                continue
            top[0] -= 1
            if top[1]:
                self.raw()  # an object's key
            kind = self.byte()
            if kind in (127, 126, 121, 120):  # undefined, null, false, true
                continue
            if kind == 125:
                self.var_int()
            elif kind == 124:
                self.skip(4)
            elif kind in (123, 122):
                self.skip(8)
            elif kind in (119, 116):  # string, Uint8Array
                self.raw()
            elif kind in (118, 117):  # object, array
                count = self.uint()
                if count > len(self.data):
                    raise UpdateDecodeError("container larger than the update")
                if count:
                    stack.append([count, kind == 118])
                    if len(stack) - 1 > self.depth:
                        self.depth = len(stack) - 1
            else:
                raise UpdateDecodeError(f"unknown value type {kind}")


def _utf16_length(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def decode_update(update: bytes) -> DecodedUpdate:
    """Decode a Yjs v1 update into its structs (without their content) and its delete set."""
    reader = _Reader(update)
    structs: list[DecodedStruct] = []
    for _ in range(reader.uint()):
        count = reader.uint()
        client = reader.uint()
        clock = reader.uint()
        for _ in range(count):
            info = reader.byte()
            kind = info & 0x1F
            if kind in (0, 10):  # GC, Skip
                length = reader.uint()
                structs.append(DecodedStruct(client, clock, length, gc=True))
                clock += length
                continue
            origin = (reader.uint(), reader.uint()) if info & 0x80 else None
            right = (reader.uint(), reader.uint()) if info & 0x40 else None
            root: str | None = None
            parent: tuple[int, int] | None = None
            if not info & 0xC0:  # no neighbours: the parent is written out
                if reader.uint() == 1:
                    root = reader.string()
                else:
                    parent = (reader.uint(), reader.uint())
                if info & 0x20:
                    reader.raw()  # the map key
            length = _content_length(reader, kind)
            if length < 1:
                raise UpdateDecodeError("empty struct")
            structs.append(DecodedStruct(client, clock, length, root, parent, origin, right))
            clock += length
    deletes = []
    for _ in range(reader.uint()):
        client = reader.uint()
        for _ in range(reader.uint()):
            deletes.append((client, reader.uint(), reader.uint()))
    if reader.pos != len(update):
        raise UpdateDecodeError("bytes after the update")
    return DecodedUpdate(structs, deletes, reader.depth)


def _content_length(reader: _Reader, kind: int) -> int:
    if kind == 1:  # deleted
        return reader.uint()
    if kind == 2:  # JSON
        count = reader.uint()
        for _ in range(count):
            reader.json()
        return count
    if kind == 3:  # binary
        reader.raw()
        return 1
    if kind == 4:  # string
        return _utf16_length(reader.string())
    if kind == 5:  # embed
        reader.json()
        return 1
    if kind == 6:  # format
        reader.raw()
        reader.json()
        return 1
    if kind == 7:  # type
        ref = reader.uint()
        if ref in (3, 5):  # XmlElement, XmlHook: a name
            reader.raw()
        return 1
    if kind == 8:  # any
        count = reader.uint()
        for _ in range(count):
            reader.any()
        return count
    if kind == 9:  # subdocument
        reader.raw()
        reader.any()
        return 1
    raise UpdateDecodeError(f"unknown content type {kind}")


_GC = ""  # the root of garbage-collected ranges: nothing may point into them


@dataclass(slots=True)
class StructIndex:
    """Where every struct of a document lives: per client id, sorted runs ``(start, end, root)``."""

    starts: dict[int, list[int]] = field(default_factory=dict)
    runs: dict[int, list[tuple[int, int, str]]] = field(default_factory=dict)
    deleted: dict[int, list[tuple[int, int]]] = field(default_factory=dict)  # sorted, merged ranges
    decoded_bytes: int = 0  # how much has been decoded to build and keep it (the work done)

    @classmethod
    def of(cls, doc: Doc[Any]) -> StructIndex:
        index = cls()
        index.add(doc.get_update())
        return index

    def add(self, update: bytes) -> None:
        """Index an update the document integrated."""
        self.decoded_bytes += len(update)
        decoded = decode_update(update)
        left = self._resolve(decoded.structs, self)
        for s in left:  # what points at nothing known never integrates anywhere
            self._insert(s.client, s.clock, s.clock + s.length, _GC)
        for client, clock, length in decoded.deletes:
            self._delete(client, clock, clock + length)

    def _delete(self, client: int, start: int, end: int) -> None:
        ranges = self.deleted.setdefault(client, [])
        i = bisect.bisect_left(ranges, (start, start))
        if i and ranges[i - 1][1] >= start:
            i -= 1
            start = ranges[i][0]
        j = i
        while j < len(ranges) and ranges[j][0] <= end:
            end = max(end, ranges[j][1])
            j += 1
        ranges[i:j] = [(start, end)]

    def not_deleted(self, client: int, start: int, end: int) -> Iterator[tuple[int, int]]:
        """The parts of a clock range that are not deleted yet."""
        ranges = self.deleted.get(client, ())
        i = max(bisect.bisect_right(ranges, (start, start)) - 1, 0) if ranges else 0
        while start < end:
            if i < len(ranges) and ranges[i][0] <= start:
                start = max(start, ranges[i][1])
                i += 1
                continue
            stop = min(end, ranges[i][0]) if i < len(ranges) else end
            if stop > start:
                yield start, stop
            start = stop

    def _resolve(self, structs: list[DecodedStruct], into: StructIndex) -> list[DecodedStruct]:
        """Index into ``into`` every struct whose root can be found; structs may point at others of
        the same update in any order (clients are encoded in descending id order), so passes repeat
        while they make progress. Returns the structs left unresolved."""
        pending = [s for s in structs if not s.gc]
        for s in structs:
            if s.gc:
                into._insert(s.client, s.clock, s.clock + s.length, _GC)
        while pending:
            left = []
            for s in pending:
                root = self._root_of(s, into)
                if root is None:
                    left.append(s)
                else:
                    into._insert(s.client, s.clock, s.clock + s.length, root)
            if len(left) == len(pending):
                return left
            pending = left
        return []

    def root_at(self, client: int, clock: int) -> tuple[str, int] | None:
        """The root of the struct holding ``(client, clock)`` and where its run ends; None if unknown."""
        starts = self.starts.get(client)
        if not starts:
            return None
        i = bisect.bisect_right(starts, clock) - 1
        if i < 0:
            return None
        start, end, root = self.runs[client][i]
        return (root, end) if start <= clock < end else None

    def _root_of(self, s: DecodedStruct, local: StructIndex | None) -> str | None:
        if s.gc:
            return _GC
        if s.root is not None:
            return s.root
        for ref in (s.parent, s.origin, s.right):
            if ref is not None:
                found = self.root_at(*ref) or (local.root_at(*ref) if local is not None else None)
                return found[0] if found is not None else None
        return None

    def _insert(self, client: int, start: int, end: int, root: str) -> None:
        starts = self.starts.setdefault(client, [])
        runs = self.runs.setdefault(client, [])
        i = bisect.bisect_right(starts, start)
        if i and runs[i - 1][1] >= end:
            return  # already indexed (a duplicate)
        if i and runs[i - 1][1] == start and runs[i - 1][2] == root and i == len(runs):
            runs[i - 1] = (runs[i - 1][0], end, root)  # the common case: a writer's next struct
            return
        if i and runs[i - 1][1] > start:
            start = runs[i - 1][1]  # overlaps what is indexed: keep only what is new
        starts.insert(i, start)
        runs.insert(i, (start, end, root))

    def roots_of_range(self, client: int, clock: int, length: int) -> Iterator[str | None]:
        """The roots of every struct in a clock range (None for a part the index does not have)."""
        end = clock + length
        while clock < end:
            found = self.root_at(client, clock)
            if found is None:
                yield None
                return
            root, clock = found
            yield root

    def touches_only(self, update: bytes, roots: frozenset[str]) -> bool:
        """True if ``update`` changes nothing outside the root types ``roots`` and nothing waits in it
        for a dependency the document does not have."""
        try:
            decoded = decode_update(update)
        except UpdateDecodeError:
            return False
        local = StructIndex()
        if self._resolve([s for s in decoded.structs if not s.gc], local):
            return False  # waits for a dependency the document does not have
        for runs in local.runs.values():
            if any(root not in roots for _, _, root in runs):
                return False
        for client, clock, length in decoded.deletes:
            # An update carries its writer's whole delete set: only what is still there counts.
            for start, end in self.not_deleted(client, clock, clock + length):
                for root in self.roots_of_range(client, start, end - start):
                    if root is None or root not in roots:
                        return False
        return True


def touches_only(doc: Doc[Any], update: bytes, roots: frozenset[str]) -> bool:
    """``StructIndex.touches_only`` on a fresh index of ``doc`` (for one-off checks and tests)."""
    return StructIndex.of(doc).touches_only(update, roots)


@dataclass(slots=True)
class _Indexed:
    index: StructIndex
    subscription: Subscription


class ReviewerWrites(Extension):
    """Reviewers may write ``reviews`` and ``chat``; viewers may write nothing."""

    name = "reviewer-writes"
    builtin = True

    def __init__(self) -> None:
        self._rooms: weakref.WeakKeyDictionary[Room, _Indexed] = weakref.WeakKeyDictionary()

    def allows_write(self, room: Room, member: Member, update: bytes) -> bool:
        if member.role is not Role.REVIEWER:
            return False
        allowed = self.index_of(room).touches_only(update, REVIEWER_ROOTS)
        if not allowed:
            log.info("reviewer update outside reviews and chat dropped", extra={"room": room.name, "conn": member.id})
        return allowed

    def on_unload(self, room: Room) -> None:
        indexed = self._rooms.pop(room, None)
        if indexed is not None:
            room.doc.unobserve(indexed.subscription)

    def index_of(self, room: Room) -> StructIndex:
        """The room's index, built on first use and kept up to date from then on."""
        indexed = self._rooms.get(room)
        if indexed is None:
            index = StructIndex.of(room.doc)
            # The callback holds the index, never the room or its document: the document keeps it
            # alive on the Rust side, where a cycle back to the room would never be collected.
            subscription = room.doc.observe(_indexer(index))
            indexed = self._rooms[room] = _Indexed(index, subscription)
        return indexed.index


def _indexer(index: StructIndex):  # type: ignore[no-untyped-def]
    def on_transaction(event: TransactionEvent) -> None:
        try:
            index.add(event.update)
        except UpdateDecodeError:
            log.exception("integrated update did not decode for the reviewer index")

    return on_transaction


# -- state vectors and delete sets (used by the client id check and tests) ---------------------


def decode_state_vector(data: bytes) -> dict[int, int]:
    """A lib0-encoded state vector: client id to the next clock it will use."""
    count, pos = read_var_uint(data, 0)
    out = {}
    for _ in range(count):
        client, pos = read_var_uint(data, pos)
        clock, pos = read_var_uint(data, pos)
        out[client] = clock
    return out
