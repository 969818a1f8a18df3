"""The y-websocket wire codec: constants and pure encode/decode functions, no I/O.

One websocket frame carries exactly one message (y-websocket clients v1 to v3 decode one message per
frame and ignore the rest), so decoding is strict: a frame with bytes left over after its message is
malformed. Encoding goes through pycrdt's own helpers; decoding is a thin bounds-checked reader
because pycrdt's ``Decoder`` silently returns short slices on truncated input and asserts on empty
input.

Message layout (lib0 encoding; varuint = 7 bits a byte, high bit = more follows)::

    SYNC       0, step: varuint (0 = step 1, 1 = step 2, 2 = update), payload: varbytes
    AWARENESS  1, payload: varbytes (varuint count, then count x (client: varuint, clock: varuint,
                  state: varstring of JSON, "null" for a removed client))
    AUTH       2, 0 = permission denied, reason: varstring            (server to client only)
    QUERY_AWARENESS 3                                                 (no payload)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import IntEnum

from pycrdt import create_awareness_message, create_update_message, write_message, write_var_uint

from .close_codes import CloseCode

__all__ = ["CloseCode"]  # re-exported: the codec's errors carry these codes

MAX_VAR_UINT_BYTES = 8  # 56 bits, above the 53 bits a JavaScript number holds exactly
EMPTY_UPDATE = b"\x00\x00"  # what Yjs encodes for "nothing to send"
EMPTY_STATE_VECTOR = b"\x00"  # the state vector of a document with nothing in it (a new client)


class MessageType(IntEnum):
    SYNC = 0
    AWARENESS = 1
    AUTH = 2
    QUERY_AWARENESS = 3


class SyncStep(IntEnum):
    STEP1 = 0
    STEP2 = 1
    UPDATE = 2


class ProtocolError(Exception):
    """A client sent something pairroom will not take. Carries the close code and a reason."""

    def __init__(self, code: CloseCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Message:
    """A decoded frame. ``step`` is set for SYNC messages, ``payload`` is the varbytes content."""

    type: MessageType
    step: SyncStep | None
    payload: bytes


@dataclass(frozen=True, slots=True)
class AwarenessEntry:
    client_id: int
    clock: int
    state: str  # JSON text; "null" means the client's state was removed


def read_var_uint(data: bytes, pos: int) -> tuple[int, int]:
    """Read a lib0 varuint at ``pos``; return (value, next position)."""
    if pos < len(data) and data[pos] < 0x80:  # one byte: most lengths, tags and clocks
        return data[pos], pos + 1
    value = 0
    shift = 0
    end = len(data)
    for _ in range(MAX_VAR_UINT_BYTES):
        if pos >= end:
            raise ProtocolError(CloseCode.MALFORMED, "truncated message: varuint runs past the end")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    raise ProtocolError(CloseCode.MALFORMED, "varuint longer than 8 bytes")


def read_var_bytes(data: bytes, pos: int) -> tuple[bytes, int]:
    """Read a length-prefixed byte string at ``pos``; return (bytes, next position)."""
    length, pos = read_var_uint(data, pos)
    end = pos + length
    if end > len(data):
        raise ProtocolError(
            CloseCode.MALFORMED,
            f"truncated message: payload of {length} bytes, {len(data) - pos} present",
        )
    return data[pos:end], end


def _expect_end(data: bytes, pos: int) -> None:
    if pos != len(data):
        raise ProtocolError(CloseCode.MALFORMED, f"{len(data) - pos} bytes after the message; send one per frame")


def decode_message(frame: bytes) -> Message:
    """Decode one client frame. Raises ProtocolError for anything but exactly one known message."""
    if not frame:
        raise ProtocolError(CloseCode.MALFORMED, "empty frame")
    kind, pos = read_var_uint(frame, 0)
    if kind == MessageType.SYNC:
        step, pos = read_var_uint(frame, pos)
        if step > SyncStep.UPDATE:
            raise ProtocolError(CloseCode.UNKNOWN_TYPE, f"unknown sync step {step}")
        payload, pos = read_var_bytes(frame, pos)
        _expect_end(frame, pos)
        return Message(MessageType.SYNC, SyncStep(step), payload)
    if kind == MessageType.AWARENESS:
        payload, pos = read_var_bytes(frame, pos)
        _expect_end(frame, pos)
        return Message(MessageType.AWARENESS, None, payload)
    if kind == MessageType.QUERY_AWARENESS:
        _expect_end(frame, pos)
        return Message(MessageType.QUERY_AWARENESS, None, b"")
    if kind == MessageType.AUTH:
        raise ProtocolError(CloseCode.UNKNOWN_TYPE, "auth messages only go from server to client")
    raise ProtocolError(CloseCode.UNKNOWN_TYPE, f"unknown message type {kind}")


def decode_awareness(
    payload: bytes, *, max_entries: int | None = None, max_state_bytes: int | None = None
) -> list[AwarenessEntry]:
    """Decode and validate an awareness update (every state must be JSON).

    With caps (a client's message; peers' messages are trusted), a message with more than
    ``max_entries`` entries or a state longer than ``max_state_bytes`` raises ``PRESENCE_LIMIT``
    before any state is parsed: 150,000 entries must cost a varuint read, not 150,000 JSON parses."""
    count, pos = read_var_uint(payload, 0)
    if max_entries is not None and count > max_entries:
        raise ProtocolError(
            CloseCode.PRESENCE_LIMIT, f"awareness message with {count} client states; at most {max_entries}"
        )
    entries: list[AwarenessEntry] = []
    for _ in range(count):
        client_id, pos = read_var_uint(payload, pos)
        clock, pos = read_var_uint(payload, pos)
        raw, pos = read_var_bytes(payload, pos)
        if max_state_bytes is not None and len(raw) > max_state_bytes:
            raise ProtocolError(
                CloseCode.PRESENCE_LIMIT,
                f"awareness state of client {client_id} is {len(raw)} bytes; at most {max_state_bytes}",
            )
        try:
            state = raw.decode("utf-8")
            json.loads(state)
        except (UnicodeDecodeError, ValueError) as exc:
            raise ProtocolError(CloseCode.MALFORMED, f"awareness state of client {client_id} is not JSON") from exc
        entries.append(AwarenessEntry(client_id, clock, state))
    _expect_end(payload, pos)
    return entries


def encode_awareness(entries: list[AwarenessEntry]) -> bytes:
    """Encode an awareness update payload (the inverse of ``decode_awareness``)."""
    parts = [write_var_uint(len(entries))]
    for entry in entries:
        state = entry.state.encode()
        parts += [
            write_var_uint(entry.client_id),
            write_var_uint(entry.clock),
            write_var_uint(len(state)),
            state,
        ]
    return b"".join(parts)


_STEP1 = bytes([MessageType.SYNC, SyncStep.STEP1])
_STEP2 = bytes([MessageType.SYNC, SyncStep.STEP2])


def sync_step1(state_vector: bytes) -> bytes:
    return _STEP1 + write_message(state_vector)


def sync_step2(update: bytes) -> bytes:
    # one copy of the update, not two (write_message, then the concatenation): a whole document's
    # step 2 can be megabytes
    return b"".join((_STEP2, write_var_uint(len(update)), update))


def sync_update(update: bytes) -> bytes:
    return create_update_message(update)


def awareness_message(payload: bytes) -> bytes:
    return create_awareness_message(payload)


# An awareness update with no entries: clients apply it as a no-op, and it resets the y-websocket
# client's 30 s "no message received" reconnect timer (ping frames do not reach client code).
KEEPALIVE = awareness_message(write_var_uint(0))
