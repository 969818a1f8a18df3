"""The messages nodes exchange through the broker: a pure, versioned binary codec.

Layout (lib0 varuint / varstring / varbytes after two fixed bytes)::

    version: u8 (1) | kind: u8 | node: varstring | room: varstring | target: varstring |
    uid: varstring | payload: varbytes

``node`` is the sender (a node drops its own echoes), ``target`` a node id for replies ("" = every
node holding the room), ``uid`` the update's log uid for UPDATE. Messages are bounded by
``MAX_BUS_MESSAGE``: larger ones are refused by ``encode`` (never truncated), and the caller falls back
on the state-vector exchange, which sends only what is missing.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pycrdt import write_var_uint

from pairroom.protocol.sync import CloseCode, ProtocolError, read_var_bytes, read_var_uint

VERSION = 1
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


@dataclass(frozen=True, slots=True)
class BusMessage:
    kind: Kind
    node: str
    room: str
    payload: bytes = b""
    target: str = ""
    uid: str = ""


def _var_string(value: str) -> bytes:
    raw = value.encode()
    return write_var_uint(len(raw)) + raw


def encode(message: BusMessage) -> bytes:
    size = len(message.payload) + len(message.room) * 4 + 64
    if size > MAX_BUS_MESSAGE:
        raise BusMessageTooLarge(f"{message.kind.name} of {len(message.payload)} bytes for room {message.room!r}")
    return b"".join(
        (
            bytes((VERSION, message.kind)),
            _var_string(message.node),
            _var_string(message.room),
            _var_string(message.target),
            _var_string(message.uid),
            write_var_uint(len(message.payload)),
            message.payload,
        )
    )


def decode(data: bytes) -> BusMessage:
    """Decode a bus message. Raises ProtocolError for anything malformed or of another version."""
    if len(data) < 2:
        raise ProtocolError(CloseCode.MALFORMED, "bus message too short")
    if data[0] != VERSION:
        raise ProtocolError(CloseCode.MALFORMED, f"bus message version {data[0]}, expected {VERSION}")
    try:
        kind = Kind(data[1])
    except ValueError as exc:
        raise ProtocolError(CloseCode.UNKNOWN_TYPE, f"unknown bus message kind {data[1]}") from exc
    pos = 2
    fields = []
    for _ in range(4):
        raw, pos = read_var_bytes(data, pos)
        try:
            fields.append(raw.decode())
        except UnicodeDecodeError as exc:
            raise ProtocolError(CloseCode.MALFORMED, "bus message field is not UTF-8") from exc
    length, pos = read_var_uint(data, pos)
    payload = data[pos : pos + length]
    if len(payload) != length or pos + length != len(data):
        raise ProtocolError(CloseCode.MALFORMED, "bus message payload length does not match")
    node, room, target, uid = fields
    return BusMessage(kind, node, room, payload, target, uid)
