"""The broker port: how nodes reach each other, and the in-process adapter (one node, or tests).

A broker delivers published bytes to every subscriber of a channel, on a best-effort basis: while
disconnected, ``publish`` returns False (the bridge holds what it could not send and sends it after
the reconnect) and subscribers miss what was published (the cluster heals with state vectors after a
reconnect). A broker that knows which channels cannot be published now (a Redis Cluster whose slot
is away) also has ``can_publish(channel)``; the bridge then holds those without trying. It also keeps
small shared facts: which nodes hold a room, and short leases.

One reader per node calls ``on_message(channel, data)``; after a reconnect the broker resubscribes and
calls ``on_reconnect()``. ``publish`` never waits for a broken connection: it returns False instead.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Protocol


class BrokerError(Exception):
    """The broker could not do what was asked now (disconnected, timed out)."""


MessageHandler = Callable[[str, bytes], None]
ReconnectHandler = Callable[[], Awaitable[None]]


class Broker(Protocol):
    node_id: str

    @property
    def connected(self) -> bool: ...

    async def start(self, on_message: MessageHandler, on_reconnect: ReconnectHandler) -> None:
        """Connect and start delivering; returns once ready (raises if the first connect fails)."""

    async def stop(self) -> None: ...

    async def subscribe(self, channel: str) -> None: ...

    async def unsubscribe(self, channel: str) -> None: ...

    async def publish(self, channel: str, data: bytes) -> bool:
        """Send to every subscriber (this node included). False if it could not be sent now."""

    async def add_to_set(self, key: str, member: str) -> None: ...

    async def remove_from_set(self, key: str, member: str) -> None: ...

    async def set_members(self, key: str) -> set[str]: ...

    async def try_lease(self, key: str, holder: str, ttl: float) -> bool:
        """Take the lease ``key`` for ``ttl`` seconds if nobody else holds it."""

    async def lease_holder(self, key: str) -> str | None:
        """Who holds the lease ``key`` now (None: nobody), without taking it."""


def raise_if_cancelled() -> None:
    """Re-raise a cancellation that a failing broker call turned into an error or a normal return.

    A task cancelled while a Redis command is on the wire can see redis-py (or ``asyncio.timeout``
    on Python 3.11) report the abort as a connection error or a timeout. Taken for a Redis failure,
    it would be retried and the loop around it would never stop: a shutdown would wait forever."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class MemoryHub:
    """What several in-process brokers share: channels, sets and leases."""

    def __init__(self) -> None:
        self.subscribers: dict[str, set[MemoryBroker]] = {}
        self.sets: dict[str, set[str]] = {}
        self.leases: dict[str, tuple[str, float]] = {}


class MemoryBroker:
    """The embedded default: delivery within this process, through the event loop."""

    def __init__(self, node_id: str, hub: MemoryHub | None = None) -> None:
        self.node_id = node_id
        self.hub = hub or MemoryHub()
        self._on_message: MessageHandler | None = None
        self._channels: set[str] = set()
        self._running = False

    @property
    def connected(self) -> bool:
        return self._running

    async def start(self, on_message: MessageHandler, on_reconnect: ReconnectHandler) -> None:
        self._on_message = on_message
        self._running = True

    async def stop(self) -> None:
        self._running = False
        for channel in list(self._channels):
            await self.unsubscribe(channel)

    async def subscribe(self, channel: str) -> None:
        self._channels.add(channel)
        self.hub.subscribers.setdefault(channel, set()).add(self)

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)
        subscribers = self.hub.subscribers.get(channel)
        if subscribers is not None:
            subscribers.discard(self)
            if not subscribers:
                del self.hub.subscribers[channel]

    async def publish(self, channel: str, data: bytes) -> bool:
        if not self._running:
            return False
        loop = asyncio.get_running_loop()
        for broker in list(self.hub.subscribers.get(channel, ())):
            if broker._running and broker._on_message is not None:
                loop.call_soon(broker._on_message, channel, data)
        return True

    async def add_to_set(self, key: str, member: str) -> None:
        self.hub.sets.setdefault(key, set()).add(member)

    async def remove_from_set(self, key: str, member: str) -> None:
        members = self.hub.sets.get(key)
        if members is not None:
            members.discard(member)
            if not members:
                del self.hub.sets[key]

    async def set_members(self, key: str) -> set[str]:
        return set(self.hub.sets.get(key, ()))

    async def try_lease(self, key: str, holder: str, ttl: float) -> bool:
        now = time.monotonic()
        current = self.hub.leases.get(key)
        if current is not None and current[1] > now and current[0] != holder:
            return False
        self.hub.leases[key] = (holder, now + ttl)
        return True

    async def lease_holder(self, key: str) -> str | None:
        current = self.hub.leases.get(key)
        return current[0] if current is not None and current[1] > time.monotonic() else None
