"""The broker port: one contract suite over the in-process and the Redis adapters."""

from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator, Callable

import pytest

from pairroom.cluster.broker import Broker, MemoryBroker, MemoryHub
from pairroom.cluster.redis_broker import RedisBroker
from pairroom.cluster.redis_cluster_broker import RedisClusterBroker

from .support.redis_cluster import RedisCluster, migrate_slot, redis_cluster  # noqa: F401
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


async def test_the_reconnect_handler_subscribing_does_not_wait_for_the_reader(redis_servers, caplog):
    """The bridge's reconnect handler subscribes; awaited by the reader, it would wait on itself and
    stop every delivery until the subscription timed out."""
    (redis,) = await redis_servers(1)
    node = Node(RedisBroker(redis.url, "a"))
    confirmed = asyncio.Event()

    async def resubscribe() -> None:
        await node.broker.subscribe("after-reconnect")
        confirmed.set()

    await node.broker.start(node.on_message, resubscribe)
    try:
        with caplog.at_level(logging.WARNING, logger="pairroom.redis"):
            await redis.restart()
            await asyncio.wait_for(confirmed.wait(), 15)
        assert not [r for r in caplog.records if "not confirmed" in r.getMessage()]
        assert await node.broker.publish("after-reconnect", b"x")
        await eventually(lambda: ("after-reconnect", b"x") in node.got, what="delivered after the reconnect")
    finally:
        await node.broker.stop()


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


# -- Redis Cluster ---------------------------------------------------------------------------------


async def test_a_room_channel_follows_its_slot_to_another_master(redis_cluster, caplog):
    from redis.crc import key_slot

    cluster = await redis_cluster()
    a, b = Node(RedisClusterBroker(cluster.url, "a")), Node(RedisClusterBroker(cluster.url, "b"))
    for node in (a, b):
        await node.broker.start(node.on_message, node.on_reconnect)
    try:
        channel, holders = "pairroom:room:{moving}", "pairroom:holders:{moving}"
        await b.broker.subscribe(channel)
        await b.broker.subscribe("pairroom:room:{staying}")
        await a.broker.add_to_set(holders, "b")
        assert await a.broker.publish(channel, b"before")
        await eventually(lambda: (channel, b"before") in b.got, what="delivered on the first master")
        slot = key_slot(channel.encode())
        owner = await cluster.master_of(channel)
        target = next(m for m in await cluster.masters() if m is not owner)
        with caplog.at_level(logging.WARNING, logger="pairroom.redis"):
            await migrate_slot(cluster, slot, target)
            await eventually(lambda: b.reconnects >= 1 and b.broker.connected, timeout=10, what="b re-placed the channel")
        assert any("slot moved" in r.getMessage() for r in caplog.records), "Redis told b the slot moved"
        assert await a.broker.publish(channel, b"after")
        await eventually(lambda: (channel, b"after") in b.got, what="delivered on the new master")
        assert await a.broker.set_members(holders) == {"b"}, "the room's keys moved with its slot"
        assert await a.broker.publish("pairroom:room:{staying}", b"other room")
        await eventually(lambda: ("pairroom:room:{staying}", b"other room") in b.got, what="other rooms unaffected")
    finally:
        for node in (a, b):
            await node.broker.stop()


async def test_a_cluster_url_on_a_plain_server_and_a_plain_url_on_a_cluster_node_stop_start_up(
    redis_servers, redis_cluster
):
    from pairroom.cluster.broker import BrokerError

    (plain,) = await redis_servers(1)
    node = Node(RedisClusterBroker(f"redis+cluster://127.0.0.1:{plain.port}", "x"))
    with pytest.raises(BrokerError, match="as a Redis Cluster: .*Cluster mode is not enabled"):
        await node.broker.start(node.on_message, node.on_reconnect)
    cluster = await redis_cluster()
    node = Node(RedisBroker(f"redis://127.0.0.1:{cluster.servers[0].port}/0", "y"))
    with pytest.raises(BrokerError, match="is a Redis Cluster node: give the cluster as redis\\+cluster://"):
        await node.broker.start(node.on_message, node.on_reconnect)


@pytest.mark.parametrize(
    "url, error",
    [
        ("redis+cluster://h:1/1", "only database 0"),
        ("redis+cluster://h:1?x=1", "no options"),
        ("redis+cluster://h", "host:port"),
        ("redis://h:1,h:2/0", "several Redis addresses are a cluster: write redis\\+cluster://h:1,h:2/0"),
        ("redis://h:1/0?cluster=true", "a Redis Cluster is written"),
        ("http://h:1", "--redis takes"),
    ],
)
def test_redis_urls_that_cannot_work_are_refused_with_what_to_write(url, error):
    from pairroom.cluster.redis_broker import open_broker

    with pytest.raises(ValueError, match=error):
        open_broker(url, "n")


def test_a_cluster_url_lists_its_seeds_and_credentials():
    from pairroom.cluster.redis_cluster_broker import ClusterUrl

    parsed = ClusterUrl.parse("redis+cluster://user:pw@10.0.0.1:7000,10.0.0.2:7001/0")
    assert parsed == ClusterUrl((("10.0.0.1", 7000), ("10.0.0.2", 7001)), "user", "pw")


async def test_a_cluster_without_a_majority_of_masters_is_degraded_with_a_reason_then_heals(redis_cluster):
    cluster = await redis_cluster()
    node = Node(RedisClusterBroker(cluster.url, "a"))
    await node.broker.start(node.on_message, node.on_reconnect)
    try:
        await node.broker.subscribe("pairroom:room:{x}")
        assert node.broker.connected and node.broker.problem == ""
        masters = await cluster.masters()
        for master in masters[:2]:
            await master.kill()
        await eventually(lambda: not node.broker.connected, timeout=10, what="degraded")
        assert "not fully reachable" in node.broker.problem or "lost" in node.broker.problem, node.broker.problem
        await asyncio.wait_for(node.broker.publish("pairroom:room:{y}", b"x"), 3)  # answered, never hangs
        for master in masters[:2]:
            await master.restart(wipe=False)
        await cluster.wait_ok()
        await eventually(lambda: node.broker.connected, timeout=15, what="healed when the masters return")
        assert node.reconnects >= 1
        assert await node.broker.publish("pairroom:room:{x}", b"back")
        await eventually(lambda: ("pairroom:room:{x}", b"back") in node.got, what="delivery after healing")
    finally:
        await node.broker.stop()
