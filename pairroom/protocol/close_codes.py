"""Every websocket close code pairroom sends, on every endpoint, in one enum.

README.md lists them with their reasons and what a client should do; y-websocket v3 stops
reconnecting on 4400-4499 (client mistakes) and reconnects on the others, which is why a slow
consumer gets 4503 and not a 44xx.
"""

from __future__ import annotations

from enum import IntEnum


class CloseCode(IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    UNSUPPORTED_DATA = 1003  # a text frame where binary is spoken
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012  # the server is shutting down; reconnect
    TRY_AGAIN_LATER = 1013  # the room could not be loaded from storage (or to check a live role)
    MALFORMED = 4400  # truncated message, bad varuint, bytes after the message, invalid awareness or JSON
    UNAUTHORIZED = 4401  # missing, invalid or expired token
    FORBIDDEN = 4403  # token for another room or an older room of that name, an origin not allowed, a refused topic
    NOT_FOUND = 4404  # an owner deleted the room (on any node), or no such terminal or replay session
    ROOM_DELETED = 4404
    UNKNOWN_TYPE = 4406  # unknown message type or sync step
    ROOM_FULL = 4409  # the room has its maximum number of members
    SEEK_BACK = 4410  # a replay asked to go back where it cannot
    PRESENCE_LIMIT = 4413  # an awareness message past a cap: client ids per message or connection, state size
    INVALID_ROOM = 4414  # room name empty, too long or not printable
    UPDATE_REJECTED = 4422  # the CRDT refused the update, or a guard refused it before integrating
    RATE_LIMITED = 4429  # the connection sent messages faster than its rate limit
    SLOW_CONSUMER = 4503  # outbound queue overflowed; reconnect and resync
