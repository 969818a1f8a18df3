"""The broker on a Redis Cluster: redis-py's cluster client for commands, and one subscription
connection per master for the sharded pub/sub channels whose slots that master owns.

Why not one connection: on a cluster, ``SSUBSCRIBE`` must reach the master that owns the channel's
slot (any other answers ``MOVED``), so a room's channel lives on one master and the node needs a
connection to each master owning one of its rooms. Each such ``_Shard`` has its own reader task;
a fault on one shard (a master killed, a slot migrated away) touches only the rooms on it.

Placement. The broker keeps the channels it was asked for (``_channels``) and where each is
confirmed (``_placed``). One maintenance task (``_maintain``) puts every channel on the master that
owns its slot now, moves those whose slot moved (Redis tells subscribers of a migrated slot with an
unasked ``sunsubscribe``, or answers a subscription with ``MOVED``), pings every master each second
and refreshes the slot map after any fault. A room's channel and its keys share a hash tag
(``protocol/keys.py``), hence one slot: holders and leases follow the same master.

Readiness. ``connected`` is True only while every master answers and every channel is confirmed on
its slot's owner; ``/readyz`` then says ``ready``, and ``degraded`` while a slot is away (a master
died and its replica is not promoted yet). After such a fault, once everything is placed again, the
broker calls ``on_reconnect`` so the bridge re-exchanges state vectors. A publish while the slot is
away returns False: the bridge holds that room's messages, in order, and sends them once ``connected``
is True again; what subscribers missed while their channel moved comes back with the state vectors. ``on_reconnect`` runs in its own task: it
subscribes, and a subscription waits for this broker's own maintenance task.

Bad configuration fails start-up with a clear message (a URL naming a server that is not in cluster
mode, a cluster whose slots are not all covered, a database other than 0); an unreachable cluster
starts degraded and is retried, like the single-server broker.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import RedisClusterException, RedisError, ResponseError

from pairroom.cluster.broker import BrokerError, MessageHandler, ReconnectHandler, raise_if_cancelled
from pairroom.cluster.redis_facts import SharedFacts, describe

log = logging.getLogger("pairroom.redis")

SCHEME = "redis+cluster://"
COMMAND_TIMEOUT = 1.0
PING_EVERY = 1.0
MAX_BACKOFF = 2.0
RESUBSCRIBE_AFTER = 2.0  # a subscription not confirmed by then is asked again
TEND_SPACING = 0.1  # the least time between two rounds of maintenance


@dataclass(frozen=True)
class ClusterUrl:
    """``redis+cluster://[user:password@]host:port[,host:port...][/0]``: the seeds to discover from."""

    seeds: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> ClusterUrl:
        if not url.startswith(SCHEME):
            raise ValueError(f"a Redis Cluster URL starts with {SCHEME}, got {url!r}")
        rest = url[len(SCHEME) :]
        rest, _, query = rest.partition("?")
        if query:
            raise ValueError(f"no options are taken in a Redis Cluster URL, got ?{query}")
        rest, _, path = rest.partition("/")
        if path not in ("", "0"):
            raise ValueError(f"a Redis Cluster has only database 0, the URL names /{path}")
        username = password = None
        if "@" in rest:
            credentials, rest = rest.rsplit("@", 1)
            user, sep, secret = credentials.partition(":")
            username, password = (user or None, secret) if sep else (None, user)
        seeds = []
        for seed in rest.split(","):
            host, sep, port = seed.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"a Redis Cluster seed is host:port, got {seed!r} in {url!r}")
            seeds.append((host.strip("[]"), int(port)))
        return cls(tuple(seeds), username, password)


class _Shard:
    """The subscription connection to one master, and the reader task that alone talks on it."""

    def __init__(self, broker: RedisClusterBroker, name: str, host: str, port: int) -> None:
        self.broker = broker
        self.name = name
        self.client = aioredis.Redis(
            host=host,
            port=port,
            username=broker.address.username,
            password=broker.address.password,
            socket_timeout=COMMAND_TIMEOUT,
            socket_connect_timeout=COMMAND_TIMEOUT,
            client_name=f"pairroom-{broker.node_id}",
            retry=Retry(NoBackoff(), 0),  # a fault is reported at once: the broker re-places, not redis-py
        )
        self.pubsub: Any = self.client.pubsub()
        self.commands: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self.pending: dict[str, float] = {}  # channel -> when its SSUBSCRIBE was queued
        self.channels: set[str] = set()  # confirmed here
        self.unsubscribing: set[str] = set()
        self.task = asyncio.create_task(self._read(), name=f"pairroom-redis-shard-{name}")

    def subscribe(self, channel: str) -> None:
        self.pending[channel] = time.monotonic()
        self.commands.put_nowait(("ssubscribe", channel))

    def unsubscribe(self, channel: str) -> None:
        self.pending.pop(channel, None)
        if channel in self.channels:
            self.channels.discard(channel)
            self.unsubscribing.add(channel)
            self.commands.put_nowait(("sunsubscribe", channel))

    async def _read(self) -> None:
        try:
            while not self.broker._stopping:
                while not self.commands.empty():
                    op, channel = self.commands.get_nowait()
                    await getattr(self.pubsub, op)(channel)
                if self.pubsub.connection is None:  # nothing subscribed yet: wait for a command
                    try:
                        async with asyncio.timeout(0.5):
                            op, channel = await self.commands.get()
                    except TimeoutError:
                        continue
                    await getattr(self.pubsub, op)(channel)
                    continue
                try:
                    message = await self.pubsub.get_message(timeout=0.05)
                except ResponseError as exc:  # MOVED/ASK for one subscription: the rest stay
                    self._refused(exc)
                    continue
                if message is not None:
                    self._handle(message)
        except (RedisError, OSError, TimeoutError) as exc:
            raise_if_cancelled()
            self.broker._shard_failed(self, exc)
        except Exception as exc:  # a bug: logged with its trace, the broker replaces the shard
            log.exception("redis shard reader failed", extra={"shard": self.name})
            self.broker._shard_failed(self, exc)

    def _refused(self, exc: ResponseError) -> None:
        """An SSUBSCRIBE answered ``MOVED slot host:port``: the slot moved; place its channels anew."""
        words = str(exc).split()
        slot = int(words[1]) if len(words) > 1 and words[1].isdigit() else None
        refused = [c for c in self.pending if slot is None or key_slot(c.encode()) == slot]
        for channel in refused:
            del self.pending[channel]
        log.warning(
            "subscription refused by its master, placing it again",
            extra={"shard": self.name, "error": describe(exc), "channels": len(refused)},
        )
        self.broker._replace(refresh=True)

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        channel = message.get("channel")
        if isinstance(channel, bytes):
            channel = channel.decode()
        if not isinstance(channel, str):
            return  # a message without a channel: nothing of ours
        if kind == "smessage":
            self.broker._deliver(channel, message["data"])
        elif kind == "ssubscribe":
            # Also a confirmation nobody waits for any more (unsubscribed meanwhile, or asked
            # twice): the broker unsubscribes what it no longer wants.
            self.pending.pop(channel, None)
            self.channels.add(channel)
            self.broker._confirmed(channel, self)
        elif kind == "sunsubscribe":
            if channel in self.unsubscribing:
                self.unsubscribing.discard(channel)
            elif channel in self.channels:  # not asked for: Redis moved the slot elsewhere
                self.channels.discard(channel)
                log.warning("a room's slot moved, subscribing on its new master", extra={"shard": self.name})
                self.broker._unplaced(channel, self)

    async def close(self) -> None:
        if not self.task.done():
            self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        for closing in (self.pubsub.aclose, self.client.aclose):
            try:
                await closing()
            except (RedisError, OSError) as exc:
                log.debug("closing a broken shard connection", extra={"error": describe(exc)})


class RedisClusterBroker(SharedFacts):
    def __init__(self, url: str, node_id: str) -> None:
        self.url = url
        self.node_id = node_id
        self.address = ClusterUrl.parse(url)
        self._client: RedisCluster | None = None
        self._channels: set[str] = set()  # what the node asked for
        self._placed: dict[str, _Shard] = {}  # channel -> the shard that confirmed it
        self._shards: dict[str, _Shard] = {}  # master name -> its subscription connection
        self._confirmations: dict[str, list[asyncio.Future[None]]] = {}
        self._on_message: MessageHandler | None = None
        self._on_reconnect: ReconnectHandler | None = None
        self._wake = asyncio.Event()
        self._refresh = False  # the slot map needs reading again
        self._heal = False  # a fault happened: call on_reconnect once everything is back
        self._healthy = False  # every master answered the last ping, and the slot map is complete
        self._problem = "not started"
        self._stopping = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.reconnects = 0

    # -- the port -----------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._healthy and all(c in self._placed for c in self._channels)

    @property
    def problem(self) -> str:
        """Why the broker is not ``connected`` ("" when it is)."""
        if self.connected:
            return ""
        if not self._healthy:
            return self._problem
        return f"{len(self._channels - self._placed.keys())} channel(s) waiting for their slot's master"

    async def start(self, on_message: MessageHandler, on_reconnect: ReconnectHandler) -> None:
        self._on_message, self._on_reconnect = on_message, on_reconnect
        self._client = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in self.address.seeds],
            username=self.address.username,
            password=self.address.password,
            socket_timeout=COMMAND_TIMEOUT,
            socket_connect_timeout=COMMAND_TIMEOUT,
            client_name=f"pairroom-{self.node_id}",
            require_full_coverage=True,
            retry=Retry(NoBackoff(), 1),  # MOVED and ASK are followed apart from this; faults fail fast
        )
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT * 5):
                await self._client.initialize()
            await self._sync_shards()
            self._healthy, self._problem = True, ""
        except (RedisClusterException, ResponseError) as exc:
            if _misconfigured(exc):
                await self._client.aclose()
                raise BrokerError(f"cannot use {self._seeds()} as a Redis Cluster: {describe(exc)}") from exc
            self._start_degraded(exc)
        except (RedisError, OSError, TimeoutError) as exc:
            self._start_degraded(exc)
        self._spawn(self._maintain(), "pairroom-redis-cluster")

    def _start_degraded(self, exc: BaseException) -> None:
        # Local members are served meanwhile; the maintenance task keeps trying.
        self._refresh, self._problem = True, f"redis cluster unreachable: {describe(exc)}"
        log.error(
            "redis cluster unreachable at start, retrying", extra={"seeds": self._seeds(), "error": describe(exc)}
        )

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        tasks = list(self._tasks)
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=2.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for shard in list(self._shards.values()):
            await shard.close()
        self._shards.clear()
        if self._client is not None:
            await self._client.aclose()
        self._healthy = False

    async def subscribe(self, channel: str) -> None:
        """Subscribe on the master owning the channel's slot and wait until it confirms (bounded:
        while the slot is away, the maintenance task places it once it is back)."""
        self._channels.add(channel)
        if channel in self._placed:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._confirmations.setdefault(channel, []).append(waiter)
        self._wake.set()
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT * 2):
                await waiter
        except TimeoutError:
            raise_if_cancelled()
            log.warning("subscription not confirmed in time", extra={"channel": channel, "problem": self.problem})

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)
        shard = self._placed.pop(channel, None)
        for candidate in [shard] if shard is not None else self._shards.values():
            candidate.unsubscribe(channel)

    def can_publish(self, channel: str) -> bool:
        """False while ``channel`` is subscribed here but not confirmed on its slot's master (the
        master is lost, the slot moving): the bridge holds its messages instead of trying."""
        return self._client is not None and (channel not in self._channels or channel in self._placed)

    async def publish(self, channel: str, data: bytes) -> bool:
        """SPUBLISH on the channel's master; False (counted by the caller) while its slot is away."""
        if self._client is None:
            return False
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT):
                await self._client.execute_command("SPUBLISH", channel, data)
            return True
        except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
            raise_if_cancelled()
            self._command_failed("SPUBLISH", exc)
            return False

    async def _command(self, *args: Any) -> Any:
        if self._client is None:
            raise BrokerError("redis cluster is not started")
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT):
                return await self._client.execute_command(*args)
        except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
            raise_if_cancelled()
            self._command_failed(str(args[0]), exc)
            raise BrokerError(f"redis {args[0]} failed: {describe(exc)}") from exc

    def _command_failed(self, command: str, exc: BaseException) -> None:
        """One slot's master did not answer: read the slot map again; the others carry on."""
        log.info("redis cluster command failed", extra={"command": command, "error": describe(exc)})
        self._replace(refresh=True)

    # -- what the shards report ---------------------------------------------------------------------

    def _deliver(self, channel: str, data: bytes) -> None:
        if channel in self._channels and self._on_message is not None:
            self._on_message(channel, data)

    def _confirmed(self, channel: str, shard: _Shard) -> None:
        if channel not in self._channels:  # unsubscribed meanwhile
            shard.unsubscribe(channel)
            return
        self._placed[channel] = shard
        for waiter in self._confirmations.pop(channel, []):
            if not waiter.done():
                waiter.set_result(None)

    def _unplaced(self, channel: str, shard: _Shard) -> None:
        if self._placed.get(channel) is shard:
            del self._placed[channel]
        self._replace(refresh=True)

    def _shard_failed(self, shard: _Shard, exc: BaseException) -> None:
        lost = [c for c, s in self._placed.items() if s is shard]
        for channel in lost:
            del self._placed[channel]
        if self._shards.get(shard.name) is shard:
            del self._shards[shard.name]
        log.warning(
            "redis cluster master lost",
            extra={"shard": shard.name, "error": describe(exc), "channels": len(lost)},
        )
        self._healthy, self._problem = False, f"master {shard.name} lost: {describe(exc)}"
        self._spawn(shard.close(), f"pairroom-redis-close-{shard.name}")
        self._replace(refresh=True)

    def _replace(self, *, refresh: bool) -> None:
        self._refresh = self._refresh or refresh
        self._heal = True
        self._wake.set()

    # -- maintenance --------------------------------------------------------------------------------

    async def _maintain(self) -> None:
        """Place channels, ping masters, refresh the slot map after faults; heal once all is back.

        Healthy, it runs every second or when woken (a new subscription, a fault), at most every
        ``TEND_SPACING``; unhealthy, it retries with exponential backoff and jitter, whatever wakes
        it (publishes failing while a slot is away must not make it spin)."""
        backoff = 0.1
        while not self._stopping:
            self._wake.clear()
            started = time.monotonic()
            try:
                async with asyncio.timeout(COMMAND_TIMEOUT * 4):
                    await self._tend()
                backoff = 0.1
            except (RedisError, RedisClusterException, BrokerError, OSError, TimeoutError) as exc:
                raise_if_cancelled()
                self._refresh, self._heal = True, True
                if self._healthy:
                    log.warning("redis cluster not fully reachable", extra={"error": describe(exc)})
                self._healthy, self._problem = False, f"redis cluster not fully reachable: {describe(exc)}"
                backoff = min(backoff * 2, MAX_BACKOFF)
            if self.connected and self._heal:
                self._heal = False
                self.reconnects += 1
                log.warning("redis cluster reconnected", extra={"channels": len(self._channels)})
                assert self._on_reconnect is not None
                self._spawn(self._on_reconnect(), "pairroom-redis-cluster-heal")
            if not self._healthy:
                await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
                continue
            await asyncio.sleep(max(0.0, started + TEND_SPACING - time.monotonic()))
            try:
                async with asyncio.timeout(PING_EVERY):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _tend(self) -> None:
        assert self._client is not None
        refreshed = self._refresh
        if refreshed:
            await self._client.nodes_manager.initialize()
            self._refresh = False
        await self._sync_shards()
        await asyncio.gather(*(shard.client.ping() for shard in list(self._shards.values())))
        self._healthy, self._problem = True, ""
        # After a refresh every channel is checked against the new slot map; otherwise only those
        # not placed yet (hashing every channel each second would cost ~10 us per room).
        self._place(self._channels if refreshed else self._channels - self._placed.keys())

    async def _sync_shards(self) -> None:
        """One shard per master of the current slot map; shards of former masters are closed (what
        was placed on them is placed again on the slot's owner)."""
        assert self._client is not None
        masters = {node.name: node for node in self._client.get_primaries()}
        for name, node in masters.items():
            if name not in self._shards:
                self._shards[name] = _Shard(self, name, node.host, int(node.port))
        for name in [n for n in self._shards if n not in masters]:
            shard = self._shards.pop(name)
            for channel in [c for c, s in self._placed.items() if s is shard]:
                del self._placed[channel]
            await shard.close()

    def _place(self, channels: set[str]) -> None:
        """Queue each of ``channels`` that is not confirmed on its slot's current master."""
        assert self._client is not None
        now = time.monotonic()
        for channel in sorted(channels):
            owner = self._client.get_node_from_key(channel)  # SlotNotCoveredError is a RedisError
            if owner is None:
                raise BrokerError(f"no master holds the slot of {channel!r}")
            shard = self._shards.get(owner.name)
            if shard is None:
                raise BrokerError(f"no connection to {owner.name}, the master of {channel!r}")
            placed = self._placed.get(channel)
            if placed is shard:
                continue
            if placed is not None:  # the slot moved: leave the old master, join the new one
                placed.unsubscribe(channel)
                del self._placed[channel]
                self._heal = True
            asked = shard.pending.get(channel)
            if asked is None or now - asked > RESUBSCRIBE_AFTER:
                shard.subscribe(channel)

    def _spawn(self, work: Any, name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("redis cluster task failed", exc_info=task.exception(), extra={"task": task.get_name()})

    def _seeds(self) -> str:
        return ",".join(f"{host}:{port}" for host, port in self.address.seeds)


def _misconfigured(exc: BaseException) -> bool:
    """Errors no retry will fix: not a cluster, or slots not covered."""
    text = str(exc).lower()
    return any(
        phrase in text
        for phrase in (
            "cluster support disabled",
            "cluster mode is not enabled",
            "not covered",
            "all slots are not covered",
        )
    )
