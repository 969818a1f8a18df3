"""The port through which signaling reaches the other nodes of a cluster.

Every signaling message, from the y-webrtc endpoint and from room calls, goes out through
``SignalBus.publish`` and comes back in through the handler registered with ``subscribe``; local
delivery happens only on the way back in. A node therefore delivers each message exactly once
whether the bus is this in-process one or a broker that echoes a node's own publishes, and the
hubs need no second code path for cluster mode.

``MemoryBus`` is the single-node adapter (and connects several hubs living in one process). The
cluster broker's adapter implements the same three methods over its channels; payloads are JSON
text so they cross a network unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger("pairroom.rtc.bus")

Handler = Callable[[str], None]


class SignalBus(Protocol):
    async def publish(self, channel: str, payload: str) -> None:
        """Send ``payload`` to every handler of ``channel`` on every node, this one included."""

    async def subscribe(self, channel: str, handler: Handler) -> None:
        """Start calling ``handler`` (synchronously, in publish order) for ``channel``."""

    async def unsubscribe(self, channel: str, handler: Handler) -> None:
        """Stop calling ``handler``; unknown pairs are ignored (a leave may follow a failed join)."""


class MemoryBus:
    """Delivers within this process, synchronously, in publish order."""

    def __init__(self) -> None:
        self._handlers: dict[str, list[Handler]] = {}

    async def publish(self, channel: str, payload: str) -> None:
        for handler in list(self._handlers.get(channel, ())):
            handler(payload)

    async def subscribe(self, channel: str, handler: Handler) -> None:
        self._handlers.setdefault(channel, []).append(handler)

    async def unsubscribe(self, channel: str, handler: Handler) -> None:
        handlers = self._handlers.get(channel)
        if handlers and handler in handlers:
            handlers.remove(handler)
            if not handlers:
                del self._handlers[channel]

    def channels(self) -> int:
        return len(self._handlers)
