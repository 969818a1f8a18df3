"""A subsystem's own connection to the cluster broker, with one handler per channel.

The cluster's broker has one reader, and it hands every message to ``Cluster._on_message``, which
decodes room messages. Kernel requests and rtc signaling are not room messages, so each of those
subsystems opens a sibling of that broker: same kind, same Redis, same node id, its own
subscription connection and reader. Its traffic then never goes through the room decoder, and a
burst of signaling cannot delay room updates behind it.

Delivery is the broker's: best effort, echoed to this node too, lost while disconnected (the
broker resubscribes after a reconnect). Handlers run synchronously on the reader, so they must be
quick; an exception in one is logged and does not stop the reader.
"""

from __future__ import annotations

import logging
from typing import Callable

from pairroom.cluster.broker import Broker, MemoryBroker

log = logging.getLogger("pairroom.side_channel")

Handler = Callable[[bytes], None]


def sibling(broker: Broker) -> Broker:
    """A new, unstarted broker of the same kind as ``broker``, reaching the same nodes."""
    if isinstance(broker, MemoryBroker):
        return MemoryBroker(broker.node_id, broker.hub)
    from pairroom.cluster.redis_broker import RedisBroker
    from pairroom.cluster.redis_cluster_broker import RedisClusterBroker

    if isinstance(broker, RedisBroker):
        return RedisBroker(broker.url, broker.node_id)
    if isinstance(broker, RedisClusterBroker):
        return RedisClusterBroker(broker.url, broker.node_id)
    raise TypeError(f"no sibling connection for a {type(broker).__name__}")


class SideChannel:
    """``start()``, ``listen(channel, handler)``, ``publish(channel, data)``, ``stop()``."""

    def __init__(self, broker: Broker, name: str) -> None:
        self.broker = sibling(broker)
        self.node_id = broker.node_id
        self.name = name
        self._handlers: dict[str, Handler] = {}

    @property
    def connected(self) -> bool:
        return self.broker.connected

    async def start(self) -> None:
        await self.broker.start(self._on_message, self._on_reconnect)

    async def stop(self) -> None:
        self._handlers.clear()
        await self.broker.stop()

    async def listen(self, channel: str, handler: Handler) -> None:
        """Deliver ``channel`` to ``handler``; returns once the subscription is live (if connected)."""
        self._handlers[channel] = handler
        await self.broker.subscribe(channel)

    async def forget(self, channel: str) -> None:
        if self._handlers.pop(channel, None) is not None:
            await self.broker.unsubscribe(channel)

    async def publish(self, channel: str, data: bytes) -> bool:
        """False if it could not be sent now (disconnected)."""
        return await self.broker.publish(channel, data)

    def _on_message(self, channel: str, data: bytes) -> None:
        handler = self._handlers.get(channel)
        if handler is None:
            return  # unsubscribed while the message was in flight
        try:
            handler(data)
        except Exception:  # one bad message must not end this node's reader; logged with its trace
            log.exception("side channel handler failed", extra={"side": self.name, "channel": channel})

    async def _on_reconnect(self) -> None:
        log.info("side channel reconnected", extra={"side": self.name, "channels": len(self._handlers)})
