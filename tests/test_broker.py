"""The broker port: one contract suite over the in-process and the Redis adapters."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Callable

import pytest

from pairroom.cluster.broker import Broker, MemoryBroker, MemoryHub
from pairroom.cluster.redis_broker import RedisBroker
from pairroom.cluster.redis_cluster_broker import RedisClusterBroker

from .support.redis_cluster import RedisCluster, redis_cluster  # noqa: F401
from .support.redis_server import RedisProcess, redis_servers  # noqa: F401
from .yclient import eventually


class Node:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.got: list[tuple[str, bytes]] = []
        self.reconnects = 0

    def on_message(self, channel: str, data: bytes) -> None:
        self.got.append((channel, bytes(data)))

    async def on_reconnect(self) -> None:
        self.reconnects += 1


@pytest.fixture(params=["memory", "redis", "redis-cluster"])
async def make_node(request, redis_servers, redis_cluster) -> AsyncIterator[Callable[[str], "asyncio.Future[Node]"]]:
    nodes: list[Node] = []
    hub = MemoryHub()
    redis: list[RedisProcess] = []
    cluster: list[RedisCluster] = []

    async def make(node_id: str) -> Node:
        if request.param == "memory":
            broker: Broker = MemoryBroker(node_id, hub)
        elif request.param == "redis-cluster":
            if not cluster:
                cluster.append(await redis_cluster())
            broker = RedisClusterBroker(cluster[0].url, node_id)
        else:
            if not redis:
                redis.extend(await redis_servers(1))
            broker = RedisBroker(redis[0].url, node_id)
        node = Node(broker)
        await broker.start(node.on_message, node.on_reconnect)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        await node.broker.stop()


async def test_publish_reaches_every_subscriber_including_the_publisher(make_node):
    a, b, c = await make_node("a"), await make_node("b"), await make_node("c")
    for node in (a, b):
        await node.broker.subscribe("ch:1")
    await c.broker.subscribe("ch:2")
    assert await a.broker.publish("ch:1", b"\x00hello\xff")
    await eventually(lambda: (a.got, b.got) == ([("ch:1", b"\x00hello\xff")],) * 2)
    assert c.got == []


async def test_unsubscribe_stops_delivery(make_node):
    a, b = await make_node("a"), await make_node("b")
    await b.broker.subscribe("ch")
    await a.broker.publish("ch", b"1")
    await eventually(lambda: b.got == [("ch", b"1")])
    await b.broker.unsubscribe("ch")
    await a.broker.publish("ch", b"2")
    await b.broker.subscribe("other")
    await a.broker.publish("other", b"3")
    await eventually(lambda: b.got[-1] == ("other", b"3"))
    assert ("ch", b"2") not in b.got


async def test_sets_and_leases(make_node):
    a, b = await make_node("a"), await make_node("b")
    await a.broker.add_to_set("holders", "a")
    await b.broker.add_to_set("holders", "b")
    assert await a.broker.set_members("holders") == {"a", "b"}
    await a.broker.remove_from_set("holders", "a")
    assert await b.broker.set_members("holders") == {"b"}
    assert await a.broker.try_lease("lease", "a", 0.3)
    assert not await b.broker.try_lease("lease", "b", 0.3)
    assert await a.broker.try_lease("lease", "a", 0.3), "the holder renews"
    await asyncio.sleep(0.4)
    assert await b.broker.try_lease("lease", "b", 0.3), "an expired lease can be taken"


@pytest.fixture
async def redis_nodes(redis_servers):
    (redis,) = await redis_servers(1)
    nodes: list[Node] = []

    async def make(node_id: str) -> Node:
        node = Node(RedisBroker(redis.url, node_id))
        await node.broker.start(node.on_message, node.on_reconnect)
        nodes.append(node)
        return node

    make.redis = redis  # type: ignore[attr-defined]
    yield make
    for node in nodes:
        await node.broker.stop()


async def test_redis_restart_resubscribes_and_reports_reconnect(redis_nodes):
    a, b = await redis_nodes("a"), await redis_nodes("b")
    await b.broker.subscribe("ch")
    await redis_nodes.redis.restart()
    await eventually(lambda: a.reconnects >= 1 and b.reconnects >= 1, timeout=15, what="both reconnect")
    assert a.broker.connected and b.broker.connected
    await a.broker.publish("ch", b"after")
    await eventually(lambda: ("ch", b"after") in b.got, what="delivery after resubscribe")
    assert await a.broker.try_lease("l2", "a", 5)


async def test_publish_fails_fast_while_redis_is_paused(redis_nodes):
    a = await redis_nodes("a")
    redis = redis_nodes.redis
    redis.pause()
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await eventually(lambda: not a.broker.connected, timeout=5, what="watchdog notices")
        assert not await a.broker.publish("ch", b"y"), "no waiting on a broken connection"
        assert loop.time() - started < 5
    finally:
        redis.resume()
    await eventually(lambda: a.broker.connected, timeout=15, what="reconnects after resume")


async def test_a_node_starts_degraded_when_redis_is_down_and_connects_later(redis_servers):
    (redis,) = await redis_servers(1)
    await redis.stop()
    node = Node(RedisBroker(redis.url, "late"))
    await node.broker.start(node.on_message, node.on_reconnect)
    try:
        assert not node.broker.connected
        await redis.restart()
        await eventually(lambda: node.broker.connected, timeout=15, what="connects once redis is up")
    finally:
        await node.broker.stop()
