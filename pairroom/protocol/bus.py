"""The messages nodes exchange through the broker: a pure, versioned binary codec.

Layout of version 2 (lib0 varuint / varstring / varbytes after two fixed bytes)::

    version: u8 (2) | kind: u8 | node: varstring | room: varstring | target: varstring |
    uid: varstring | author: u8 | author_ref: varstring | user_id: varstring | user_name: varstring |
    user_color: varstring | user_role: varstring | payload: varbytes

``node`` is the sender (a node drops its own echoes), ``target`` a node id for replies ("" = every
node holding the room), ``uid`` the update's log uid for UPDATE. The author fields say who made an
UPDATE, as the node that integrated it first knew them (``Author``), so every node logs it under the
label that node logs: the stored log names the person who typed whichever node stores it first.

Version 1 (no author fields) is still read, as an update with no known author: a node of the
previous release keeps being heard during a rolling upgrade. Any other version raises
``UnknownBusVersion``, which the receiver logs and counts; a message is never half-read.

Messages are bounded by ``MAX_BUS_MESSAGE``: larger ones are refused by ``encode`` (never
truncated), and the caller falls back on the state-vector exchange, which sends only what is missing.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pycrdt import write_var_uint

from pairroom.protocol.origins import AUTHOR_KINDS, Origin, PeerOrigin, peer_origin
from pairroom.protocol.sync import CloseCode, ProtocolError, read_var_bytes, read_var_uint

VERSION = 2
READABLE_VERSIONS = (1, 2)
MAX_BUS_MESSAGE = 64 * 1024 * 1024


class Kind(enum.IntEnum):
    UPDATE = 1  # a document update integrated by the sender (payload: update)
    AWARENESS = 2  # awareness entries of the sender's members (payload: awareness update)
    STATE_VECTOR = 3  # "this is what I have" (payload: state vector); receivers send what is missing
    STATE_VECTOR_REPLY_WANTED = 4  # the same, and receivers also send their own state vector back
    MISSING = 5  # the answer to a state vector (payload: update), addressed to ``target``
    HEARTBEAT = 6  # the sender is alive (room: "", payload: empty)
    NODE_LEFT = 7  # the sender is shutting down cleanly
    ROOM_DELETED = 8  # the room was deleted: holders close it without storing (payload: empty)


class BusMessageTooLarge(Exception):
    pass


class UnknownBusVersion(ProtocolError):
    """A message of a codec version this node cannot read (a newer node, or not a pairroom message)."""

    def __init__(self, version: int) -> None:
        super().__init__(
            CloseCode.MALFORMED,
            f"bus message version {version}, this node reads {', '.join(map(str, READABLE_VERSIONS))}",
        )
        self.version = version


@dataclass(frozen=True, slots=True)
class Author:
    """Who made an update: ``kind`` is "client", "local", "kernel", or "" when unknown (a merge of
    several people's edits, or a version 1 message); ``ref`` the connection id, reason or run id."""

    kind: str = ""
    ref: str = ""
    user_id: str = ""
    user_name: str = ""
    user_color: str = ""
    user_role: str = ""

    @classmethod
    def of(cls, origin: Origin, user_name: str = "", user_color: str = "", user_role: str = "") -> Author:
        """The author of an update integrated with ``origin`` on the sending node."""
        peer = peer_origin("", origin, user_name, user_color, user_role)
        return cls(peer.kind, peer.ref, peer.user_id, peer.user_name, peer.user_color, peer.user_role)

    def origin(self, node: str) -> PeerOrigin:
        """The origin a receiving node integrates the update with (``node`` is the sender)."""
        return PeerOrigin(node, self.kind, self.ref, self.user_id, self.user_name, self.user_color, self.user_role)


NO_AUTHOR = Author()
_AUTHOR_CODES = {"": 0, **{kind: code for code, kind in enumerate(AUTHOR_KINDS, start=1)}}
_AUTHOR_KINDS = {code: kind for kind, code in _AUTHOR_CODES.items()}


@dataclass(frozen=True, slots=True)
class BusMessage:
    kind: Kind
    node: str
    room: str
    payload: bytes = b""
    target: str = ""
    uid: str = ""
    author: Author = NO_AUTHOR


def _var_string(value: str) -> bytes:
    raw = value.encode()
    return write_var_uint(len(raw)) + raw


def encode(message: BusMessage) -> bytes:
    author = message.author
    strings = (message.room, author.ref, author.user_id, author.user_name, author.user_color, author.user_role)
    size = len(message.payload) + sum(len(s) for s in strings) * 4 + 64
    if size > MAX_BUS_MESSAGE:
        raise BusMessageTooLarge(f"{message.kind.name} of {len(message.payload)} bytes for room {message.room!r}")
    try:
        author_code = _AUTHOR_CODES[author.kind]
    except KeyError:
        raise ValueError(f"unknown author kind {author.kind!r}") from None
    return b"".join(
        (
            bytes((VERSION, message.kind)),
            _var_string(message.node),
            _var_string(message.room),
            _var_string(message.target),
            _var_string(message.uid),
            bytes((author_code,)),
            _var_string(author.ref),
            _var_string(author.user_id),
            _var_string(author.user_name),
            _var_string(author.user_color),
            _var_string(author.user_role),
            write_var_uint(len(message.payload)),
            message.payload,
        )
    )


def _read_strings(data: bytes, pos: int, count: int) -> tuple[list[str], int]:
    strings = []
    for _ in range(count):
        raw, pos = read_var_bytes(data, pos)
        try:
            strings.append(raw.decode())
        except UnicodeDecodeError as exc:
            raise ProtocolError(CloseCode.MALFORMED, "bus message field is not UTF-8") from exc
    return strings, pos


def decode(data: bytes) -> BusMessage:
    """Decode a bus message of version 1 or 2. Raises ``UnknownBusVersion`` for another version and
    ``ProtocolError`` for anything malformed."""
    if len(data) < 2:
        raise ProtocolError(CloseCode.MALFORMED, "bus message too short")
    version = data[0]
    if version not in READABLE_VERSIONS:
        raise UnknownBusVersion(version)
    try:
        kind = Kind(data[1])
    except ValueError as exc:
        raise ProtocolError(CloseCode.UNKNOWN_TYPE, f"unknown bus message kind {data[1]}") from exc
    (node, room, target, uid), pos = _read_strings(data, 2, 4)
    author = NO_AUTHOR
    if version >= 2:
        if pos >= len(data):
            raise ProtocolError(CloseCode.MALFORMED, "bus message too short: no author")
        code = data[pos]
        if code not in _AUTHOR_KINDS:
            raise ProtocolError(CloseCode.MALFORMED, f"unknown bus message author kind {code}")
        (ref, user_id, user_name, user_color, user_role), pos = _read_strings(data, pos + 1, 5)
        author = Author(_AUTHOR_KINDS[code], ref, user_id, user_name, user_color, user_role)
    length, pos = read_var_uint(data, pos)
    payload = data[pos : pos + length]
    if len(payload) != length or pos + length != len(data):
        raise ProtocolError(CloseCode.MALFORMED, "bus message payload length does not match")
    return BusMessage(kind, node, room, payload, target, uid, author)

