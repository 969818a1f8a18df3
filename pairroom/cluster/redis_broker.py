"""The broker on one Redis server: sharded pub/sub (SPUBLISH/SSUBSCRIBE on Redis 7, plain PUBLISH
before), sets and leases. A Redis Cluster takes ``redis+cluster://`` and its own broker
(``redis_cluster_broker.py``); ``open_broker`` picks one from the URL, and this one refuses to start
on a cluster node (it would see ``MOVED`` for every room whose slot lives elsewhere).

The subscription connection belongs to one reader task: it alone sends (un)subscribe commands, queued
by callers, and it resolves a subscriber's wait when Redis confirms the subscription, so a caller knows
the channel is live before it reads storage (the race-free join needs that).

Faults: a watchdog pings Redis every second with a short timeout. Any error (connection refused, reset, a paused server that stops answering) marks the
broker disconnected and makes the reader reconnect with exponential backoff and jitter, resubscribe to
every channel and then call ``on_reconnect`` so the cluster re-exchanges state vectors: pub/sub drops
what was published while a node was away, and the state vectors bring it back. ``on_reconnect``
runs in a task of its own: it subscribes, which waits for this reader, so awaiting it here would
stop reading until the subscription timed out.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from pairroom.cluster.broker import Broker, BrokerError, MessageHandler, ReconnectHandler, raise_if_cancelled
from pairroom.cluster.redis_cluster_broker import SCHEME as CLUSTER_SCHEME
from pairroom.cluster.redis_cluster_broker import RedisClusterBroker
from pairroom.cluster.redis_facts import SharedFacts, describe

log = logging.getLogger("pairroom.redis")


COMMAND_TIMEOUT = 1.0
PING_EVERY = 1.0
MAX_BACKOFF = 5.0
PROBE = "pairroom:probe"  # tells sharded pub/sub support apart; never delivered to the node


def open_broker(url: str, node_id: str) -> Broker:
    """The broker for ``--redis``: ``redis+cluster://host:port[,host:port...]`` is a Redis Cluster,
    ``redis://host:port/db`` (or ``rediss://``, ``unix://``) one server. Raises ValueError, naming
    what to write instead, for a URL that is neither."""
    if url.startswith(CLUSTER_SCHEME):
        return RedisClusterBroker(url, node_id)
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"--redis takes redis://host:port/db or {CLUSTER_SCHEME}host:port,..., got {url!r}")
    if "," in rest.partition("/")[0]:
        raise ValueError(f"several Redis addresses are a cluster: write {CLUSTER_SCHEME}{rest}")
    if "cluster=" in rest.partition("?")[2]:
        raise ValueError(f"a Redis Cluster is written {CLUSTER_SCHEME}host:port[,host:port...]")
    return RedisBroker(url, node_id)


class RedisBroker(SharedFacts):
    def __init__(self, url: str, node_id: str) -> None:
        self.url = url
        self.node_id = node_id
        self._client: aioredis.Redis | None = None
        self._pubsub: Any = None
        self._channels: set[str] = set()
        self._sharded = True
        self._connected = False
        self._lost = asyncio.Event()
        self._on_message: MessageHandler | None = None
        self._on_reconnect: ReconnectHandler | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._healing: set[asyncio.Task[None]] = set()
        self._commands: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._confirmations: dict[str, list[asyncio.Future[None]]] = {}
        self._stopping = False
        self.reconnects = 0

    @property
    def connected(self) -> bool:
        return self._connected

    async def start(self, on_message: MessageHandler, on_reconnect: ReconnectHandler) -> None:
        self._on_message, self._on_reconnect = on_message, on_reconnect
        self._client = aioredis.from_url(
            self.url,
            socket_timeout=COMMAND_TIMEOUT,
            socket_connect_timeout=COMMAND_TIMEOUT,
            client_name=f"pairroom-{self.node_id}",
        )
        try:
            await self._refuse_a_cluster_node()
            await self._connect()
        except (RedisError, OSError) as exc:
            # Start degraded rather than not at all: local members are served, the reader retries.
            self._mark_lost(exc)
            log.error("redis unreachable at start, retrying", extra={"url": self.url, "error": describe(exc)})
        self._tasks = [
            asyncio.create_task(self._read(), name="pairroom-redis-reader"),
            asyncio.create_task(self._watch(), name="pairroom-redis-watchdog"),
        ]

    async def _refuse_a_cluster_node(self) -> None:
        assert self._client is not None
        info = await self._client.info("cluster")
        if info.get("cluster_enabled") in (1, "1"):
            await self._client.aclose()
            raise BrokerError(
                f"{self.url} is a Redis Cluster node: give the cluster as {CLUSTER_SCHEME}host:port[,host:port...]"
            )

    async def stop(self) -> None:
        # A flag, not only cancellation: redis-py's get_message can swallow a CancelledError that
        # lands mid-read, and the reader would then loop on.
        self._stopping = True
        for task in list(self._healing):
            task.cancel()
        await asyncio.gather(*self._healing, return_exceptions=True)
        done, pending = await asyncio.wait(self._tasks, timeout=2.0) if self._tasks else (set(), set())
        for task in pending:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self._drop_pubsub()
        if self._client is not None:
            await self._client.aclose()
        self._connected = False

    async def _connect(self) -> None:
        """Open a subscription connection and subscribe to every channel. Raises on failure."""
        assert self._client is not None
        try:
            await self._client.execute_command("SPUBLISH", PROBE, b"")
            self._sharded = True
        except ResponseError:
            self._sharded = False  # Redis before 7: plain pub/sub
        pubsub = self._client.pubsub()
        channels = sorted(self._channels)
        if channels:
            if self._sharded:
                await pubsub.ssubscribe(*channels)
            else:
                await pubsub.subscribe(*channels)
        elif self._sharded:
            await pubsub.ssubscribe(PROBE)  # a pubsub needs a subscription to be read
        else:
            await pubsub.subscribe(PROBE)
        self._pubsub = pubsub
        self._connected = True
        self._lost.clear()

    async def _drop_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                await pubsub.aclose()
            except (RedisError, OSError) as exc:
                log.debug("closing a broken subscription", extra={"error": repr(exc)})

    def _mark_lost(self, exc: BaseException) -> None:
        if self._connected:
            log.warning("redis connection lost", extra={"error": describe(exc)})
        self._connected = False
        self._lost.set()

    async def _read(self) -> None:
        backoff = 0.1
        while not self._stopping:
            if not self._connected or self._pubsub is None:
                await self._drop_pubsub()
                await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
                backoff = min(backoff * 2, MAX_BACKOFF)
                try:
                    async with asyncio.timeout(COMMAND_TIMEOUT * 3):
                        await self._connect()
                except (RedisError, OSError, TimeoutError) as exc:
                    raise_if_cancelled()
                    log.info("redis reconnect failed", extra={"error": describe(exc), "retry_in": backoff})
                    continue
                backoff = 0.1
                self.reconnects += 1
                log.warning("redis reconnected", extra={"channels": len(self._channels)})
                assert self._on_reconnect is not None
                heal = asyncio.create_task(self._on_reconnect(), name="pairroom-redis-heal")
                self._healing.add(heal)
                heal.add_done_callback(self._healed)
                continue
            try:
                await self._run_commands()
                message = await self._pubsub.get_message(timeout=0.05)
            except (RedisError, OSError, TimeoutError) as exc:
                raise_if_cancelled()
                self._mark_lost(exc)
                continue
            if message is not None:
                self._handle(message)

    def _healed(self, task: asyncio.Task[None]) -> None:
        self._healing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("healing after a reconnect failed", exc_info=task.exception())

    async def _run_commands(self) -> None:
        while not self._commands.empty():
            op, channel = self._commands.get_nowait()
            sharded = "s" if self._sharded else ""
            await getattr(self._pubsub, f"{sharded}{op}")(channel)

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        channel = message.get("channel")
        if isinstance(channel, bytes):
            channel = channel.decode()
        if kind in ("message", "smessage") and channel in self._channels:
            # A channel just unsubscribed from may still deliver what was in flight: dropped here.
            assert self._on_message is not None
            self._on_message(channel, message["data"])
        elif kind in ("subscribe", "ssubscribe"):
            for waiter in self._confirmations.pop(channel, []):
                if not waiter.done():
                    waiter.set_result(None)

    async def _watch(self) -> None:
        assert self._client is not None
        while not self._stopping:
            await asyncio.sleep(PING_EVERY)
            if not self._connected:
                continue
            try:
                async with asyncio.timeout(COMMAND_TIMEOUT):
                    await self._client.ping()
            except (RedisError, OSError, TimeoutError) as exc:
                raise_if_cancelled()
                self._mark_lost(exc)

    async def subscribe(self, channel: str) -> None:
        """Subscribe and wait until Redis confirms (while disconnected: the reconnect subscribes it)."""
        self._channels.add(channel)
        if not self._connected:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._confirmations.setdefault(channel, []).append(waiter)
        self._commands.put_nowait(("subscribe", channel))
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT * 2):
                await waiter
        except TimeoutError:
            raise_if_cancelled()
            log.warning("subscription not confirmed in time", extra={"channel": channel})

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)
        if self._connected:
            self._commands.put_nowait(("unsubscribe", channel))

    async def publish(self, channel: str, data: bytes) -> bool:
        if not self._connected or self._client is None:
            return False
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT):
                command = "SPUBLISH" if self._sharded else "PUBLISH"
                await self._client.execute_command(command, channel, data)
            return True
        except (RedisError, OSError, TimeoutError) as exc:
            raise_if_cancelled()
            self._mark_lost(exc)
            return False

    async def _command(self, *args: Any) -> Any:
        if not self._connected or self._client is None:
            raise BrokerError("redis is disconnected")
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT):
                return await self._client.execute_command(*args)
        except (RedisError, OSError, TimeoutError) as exc:
            raise_if_cancelled()
            self._mark_lost(exc)
            raise BrokerError(f"redis {args[0]} failed: {describe(exc)}") from exc
