"""What a node publishes while its broker cannot take a room's messages (a Redis Cluster slot whose
master died, a Redis outage) is held per room, in order, bounded, and published once the broker is
back; rooms whose channel works are not held up meanwhile."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from pairroom.cluster.bridge import Cluster
from pairroom.cluster.broker import MemoryBroker, MemoryHub
from pairroom.protocol import bus, keys
from pairroom.protocol.bus import Kind
from pairroom.web.metrics import Metrics

from .yclient import eventually


class SlotAwayBroker(MemoryBroker):
    """An in-process broker where the channels in ``away`` refuse publishes, as a cluster does
    for a slot whose master is gone; ``connected`` is False while any is away."""

    def __init__(self, node_id: str, hub: MemoryHub) -> None:
        super().__init__(node_id, hub)
        self.away: set[str] = set()
        self.refused = 0

    @property
    def connected(self) -> bool:
        return self._running and not self.away

    async def publish(self, channel: str, data: bytes) -> bool:
        if channel in self.away:
            self.refused += 1
            return False
        return await super().publish(channel, data)


class KnowsSlotsBroker(SlotAwayBroker):
    """Like the cluster broker, it says which channels cannot be published now."""

    def can_publish(self, channel: str) -> bool:
        return channel not in self.away


class Listener:
    def __init__(self, hub: MemoryHub) -> None:
        self.broker = MemoryBroker("listener", hub)
        self.got: dict[str, list[bytes]] = {}

    def on_message(self, channel: str, data: bytes) -> None:
        self.got.setdefault(bus.decode(data).room, []).append(bus.decode(data).payload)


async def _nothing() -> None:
    return None


@pytest.fixture(params=[SlotAwayBroker, KnowsSlotsBroker])
async def node(request) -> AsyncIterator[tuple[Cluster, SlotAwayBroker, Listener, Metrics]]:
    hub = MemoryHub()
    broker = request.param("node1", hub)
    metrics = Metrics()
    cluster = Cluster(broker, {}, metrics=metrics, heartbeat=0.05, max_held=5, held_retry=0.02)
    listener = Listener(hub)
    await listener.broker.start(listener.on_message, _nothing)
    for room in ("away", "fine"):
        await listener.broker.subscribe(keys.room_channel(room))
    started = asyncio.Event()
    task = asyncio.create_task(cluster.run(started))
    await started.wait()
    try:
        yield cluster, broker, listener, metrics
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_messages_of_a_room_whose_slot_is_away_are_held_in_order_and_sent_when_it_returns(node) -> None:
    cluster, broker, listener, metrics = node
    broker.away.add(keys.room_channel("away"))
    for i in range(4):
        cluster.send("away", Kind.AWARENESS, f"a{i}".encode())
        cluster.send("fine", Kind.AWARENESS, f"f{i}".encode())
    await eventually(lambda: len(listener.got.get("fine", [])) == 4, what="the other room is not held up")
    await eventually(lambda: cluster.held_total == 4, what="the away room's messages are held")
    # Only the first message tried the channel, the later ones queued behind it; a broker that knows
    # the slot is away is not even tried.
    assert broker.refused == (0 if isinstance(broker, KnowsSlotsBroker) else 1)
    assert "away" not in listener.got
    broker.away.clear()
    cluster.send("away", Kind.AWARENESS, b"a4")  # sent after what waited, never before
    await eventually(lambda: len(listener.got.get("away", [])) == 5, what="held messages sent once the slot is back")
    assert listener.got["away"] == [b"a0", b"a1", b"a2", b"a3", b"a4"]
    assert listener.got["fine"] == [b"f0", b"f1", b"f2", b"f3"]
    assert cluster.released_total >= 4 and not cluster._held
    assert "held_full" not in metrics.render().decode()


async def test_holding_is_bounded_per_room_and_counts_what_it_drops(node) -> None:
    cluster, broker, listener, metrics = node
    broker.away.add(keys.room_channel("away"))
    for i in range(8):
        cluster.send("away", Kind.AWARENESS, f"a{i}".encode())
    await eventually(lambda: cluster.dropped == 3, what="beyond five held messages, drops")
    assert 'pairroom_cluster_dropped_total{reason="held_full"} 3.0' in metrics.render().decode()
    broker.away.clear()
    await eventually(lambda: len(listener.got.get("away", [])) == 5, what="the five held ones sent")
    assert listener.got["away"] == [f"a{i}".encode() for i in range(5)]
    cluster.send("away", Kind.AWARENESS, b"next")
    await eventually(lambda: listener.got["away"][-1] == b"next", what="the room publishes directly again")


async def test_holding_is_bounded_over_all_rooms(node) -> None:
    cluster, broker, listener, metrics = node
    cluster.max_held_total_bytes = 3 * len(bus.encode(bus.BusMessage(Kind.AWARENESS, "node1", "away", b"a0")))
    broker.away.update({keys.room_channel("away"), keys.room_channel("fine")})
    for i in range(2):
        cluster.send("away", Kind.AWARENESS, f"a{i}".encode())
        cluster.send("fine", Kind.AWARENESS, f"f{i}".encode())
    await eventually(lambda: cluster.dropped == 1, what="the fourth message is over the total")
    assert cluster.held_total == 3
    broker.away.clear()
    await eventually(lambda: len(listener.got.get("fine", [])) == 1, what="held messages sent")
    await eventually(lambda: len(listener.got.get("away", [])) == 2, what="held messages sent")
    assert cluster._held_total_bytes == 0


async def test_a_room_whose_slot_is_back_is_released_while_another_is_still_away() -> None:
    hub = MemoryHub()
    broker = KnowsSlotsBroker("node1", hub)
    cluster = Cluster(broker, {}, heartbeat=0.05, held_retry=0.02)
    listener = Listener(hub)
    await listener.broker.start(listener.on_message, _nothing)
    for room in ("a", "b"):
        await listener.broker.subscribe(keys.room_channel(room))
    started = asyncio.Event()
    task = asyncio.create_task(cluster.run(started))
    await started.wait()
    try:
        broker.away.update({keys.room_channel("a"), keys.room_channel("b")})
        cluster.send("a", Kind.AWARENESS, b"a0")
        cluster.send("b", Kind.AWARENESS, b"b0")
        await eventually(lambda: cluster.held_total == 2, what="both held")
        broker.away.discard(keys.room_channel("a"))  # its slot's new master took over; b's not yet
        await eventually(lambda: listener.got.get("a") == [b"a0"], what="a released on its own")
        assert "b" not in listener.got and not broker.connected
        broker.away.clear()
        await eventually(lambda: listener.got.get("b") == [b"b0"], what="b released once back")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
