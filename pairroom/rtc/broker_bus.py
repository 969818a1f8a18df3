"""The ``SignalBus`` on the cluster broker: y-webrtc topics and room calls across nodes.

Each bus channel (``signal:TOPIC``, ``call:ROOM``) maps to one broker channel,
``keys.signal_channel(channel)``, escaped whole, so a topic can never name another room's channel;
which topics a connection may use is decided before anything reaches the bus (signaling.py). A node
subscribes a channel while one of its hubs has a handler for it, and the broker echoes a node's own
publishes back to it, which is what the port asks for (local delivery happens on the way back in).

Every message goes out as ``NODE_ID "\\n" PAYLOAD``. The sender's id tells this bus which nodes
have call peers here; a node not heard from, on the bus or in the cluster's heartbeats
(``cluster.peers``), for ``cluster.dead_after`` seconds is reported to ``on_node_gone`` handlers, so
the call hub drops that node's peers (a killed node never says ``leave``).

The bus is created with the app (``attach`` needs it) and bound to the cluster in the lifespan,
once the cluster runs: ``await bus.start(cluster)`` ... ``await bus.stop()``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from pairroom.cluster.side_channel import SideChannel
from pairroom.protocol import keys
from pairroom.rtc.bus import Handler

if TYPE_CHECKING:
    from pairroom.cluster.bridge import Cluster

log = logging.getLogger("pairroom.rtc.bus")

NodeGone = Callable[[str], None]


class BrokerSignalBus:
    def __init__(self) -> None:
        self._handlers: dict[str, list[Handler]] = {}
        self._cluster: Cluster | None = None
        self._side: SideChannel | None = None
        self._heard: dict[str, float] = {}  # other node -> when its last bus message came
        self._gone: list[NodeGone] = []
        self._watcher: asyncio.Task[None] | None = None
        self.node_id: str | None = None

    def on_node_gone(self, handler: NodeGone) -> None:
        self._gone.append(handler)

    async def start(self, cluster: Cluster) -> None:
        if "\n" in cluster.node_id:
            raise ValueError(f"node id {cluster.node_id!r} contains a newline")
        self._cluster = cluster
        self.node_id = cluster.node_id
        self._side = SideChannel(cluster.broker, "rtc")
        await self._side.start()
        for channel in list(self._handlers):
            await self._listen(channel)
        self._watcher = asyncio.create_task(self._watch(cluster), name="pairroom-rtc-nodes")

    async def stop(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        side, self._side = self._side, None
        if side is not None:
            await side.stop()

    # -- the SignalBus port -----------------------------------------------------------------------

    async def publish(self, channel: str, payload: str) -> None:
        if self._side is None:
            log.info("signal not sent, the bus is stopped", extra={"channel": channel})
            return
        if not await self._side.publish(keys.signal_channel(channel), f"{self.node_id}\n{payload}".encode()):
            log.warning("signal not sent, broker disconnected", extra={"channel": channel})

    async def subscribe(self, channel: str, handler: Handler) -> None:
        handlers = self._handlers.setdefault(channel, [])
        handlers.append(handler)
        if len(handlers) == 1 and self._side is not None:
            await self._listen(channel)

    async def unsubscribe(self, channel: str, handler: Handler) -> None:
        handlers = self._handlers.get(channel)
        if not handlers or handler not in handlers:
            return
        handlers.remove(handler)
        if not handlers:
            del self._handlers[channel]
            if self._side is not None:
                await self._side.forget(keys.signal_channel(channel))

    def channels(self) -> int:
        return len(self._handlers)

    # -- delivery ---------------------------------------------------------------------------------

    async def _listen(self, channel: str) -> None:
        assert self._side is not None
        await self._side.listen(keys.signal_channel(channel), lambda data: self._deliver(channel, data))

    def _deliver(self, channel: str, data: bytes) -> None:
        node, sep, payload = data.decode("utf-8", "replace").partition("\n")
        if not sep:
            log.error("signal without a sender node", extra={"channel": channel})
            return
        if node != self.node_id:
            self._heard[node] = time.monotonic()
        for handler in list(self._handlers.get(channel, ())):
            handler(payload)

    async def _watch(self, cluster: Cluster) -> None:
        """Report nodes silent for ``dead_after`` on both the bus and the heartbeats."""
        while True:
            await asyncio.sleep(cluster.heartbeat)
            now = time.monotonic()
            for node, heard in list(self._heard.items()):
                last = max(heard, cluster.peers.get(node, heard))
                if now - last > cluster.dead_after:
                    del self._heard[node]
                    log.warning("signaling node gone", extra={"node": node, "silent_for": round(now - last, 1)})
                    for handler in list(self._gone):
                        try:
                            handler(node)
                        except Exception:  # the other handlers and later checks must still run
                            log.exception("node-gone handler failed", extra={"node": node})
