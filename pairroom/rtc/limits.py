"""Caps on what one signaling connection may send, and the strike count that ends a misbehaving one.

Signaling messages are small JSON objects (an SDP is a few KiB), so a cap far below the CRDT
endpoint's keeps one client from making the server parse and fan out megabytes. A client mistake
(malformed JSON, an unknown type, an oversized or too frequent message) is answered with an error
frame, ``{"type": "error", "code": N, "reason": ...}``, and the connection lives on: browsers keep
working across a bug in one message. After ``max_strikes`` mistakes the connection is closed with
the code of the last one, so the client sees what kept going wrong.

Refusals that are not mistakes (a topic of another room, a peer that just left the call) get an
error frame but no strike: y-webrtc clients subscribe every room they know on every signaling
connection, and call peers race with each other's departures.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pairroom.protocol.close_codes import CloseCode
from pairroom.rooms.limits import TokenBucket


@dataclass(frozen=True, slots=True)
class Limits:
    max_message_bytes: int = 64 * 1024
    rate_per_second: float = 50.0  # sustained messages per second
    burst: int = 200  # messages allowed at once above the rate
    max_strikes: int = 3  # client mistakes before the connection is closed
    max_queue_messages: int = 512  # outbound messages waiting for a slow reader
    max_topics: int = 64  # topics one y-webrtc connection may hold


class Refused(Exception):
    """One message was refused. ``strike`` says whether it counts towards closing the connection."""

    def __init__(self, code: CloseCode, reason: str, *, strike: bool = True) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.strike = strike

    def frame(self) -> str:
        return json.dumps({"type": "error", "code": int(self.code), "reason": self.reason})


class Gate:
    """Checks each inbound frame of one connection and keeps its strikes."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.bucket = TokenBucket(limits.rate_per_second, limits.burst)
        self.strikes = 0

    def parse(self, text: str | None, data: bytes | None) -> dict[str, Any]:
        """The frame as a JSON object with a string ``type``. Raises Refused."""
        raw = text if text is not None else data
        if raw is None:
            raise Refused(CloseCode.MALFORMED, "empty frame")
        size = len(raw.encode()) if isinstance(raw, str) else len(raw)
        if size > self.limits.max_message_bytes:
            raise Refused(
                CloseCode.MESSAGE_TOO_BIG, f"message of {size} bytes over {self.limits.max_message_bytes}"
            )
        if not self.bucket.take():
            raise Refused(CloseCode.RATE_LIMITED, f"over {self.limits.rate_per_second:g} messages a second")
        try:
            message = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise Refused(CloseCode.MALFORMED, f"not JSON: {exc}") from exc
        if not isinstance(message, dict):
            raise Refused(CloseCode.MALFORMED, "message is not a JSON object")
        if not isinstance(message.get("type"), str):
            raise Refused(CloseCode.MALFORMED, "message has no string 'type'")
        return message

    def strike(self, refused: Refused) -> bool:
        """Count a refusal; True when the connection must now be closed."""
        if refused.strike:
            self.strikes += 1
        return self.strikes >= self.limits.max_strikes


def field(message: dict[str, Any], name: str, kind: type | tuple[type, ...], *, optional: bool = False) -> Any:
    """``message[name]`` checked against ``kind``. Raises Refused (malformed) naming what was expected."""
    value = message.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise Refused(CloseCode.MALFORMED, f"'{name}' must be a {expected}")
    return value
