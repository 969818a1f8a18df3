"""A real local Redis Cluster: six ``redis-server --cluster-enabled yes`` on free ports (three masters,
three replicas) joined by ``redis-cli --cluster create``, for the cluster broker tests.

Failover is made quick for tests (``cluster-node-timeout`` 1000 ms: a killed master's replica is
promoted 1-3 s later). Use the ``redis_cluster`` fixture (import it into the test module)::

    async def test_x(redis_cluster):
        cluster = await redis_cluster()
        cluster.url            # redis+cluster://127.0.0.1:P1,127.0.0.1:P2,...
        await cluster.master_of("pairroom:room:{a}")   # the RedisProcess owning that slot now
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from tests.support.redis_server import HOST, RedisProcess, RedisUnavailable, free_port, redis_server_binary

NODE_TIMEOUT_MS = 1000
READY_TIMEOUT_S = 20.0


def redis_cli_binary() -> str:
    beside = Path(redis_server_binary()).with_name("redis-cli")
    if beside.exists() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("redis-cli")
    if not found:
        raise RedisUnavailable("no redis-cli beside redis-server nor on PATH")
    return found


class RedisCluster:
    def __init__(self, servers: list[RedisProcess]) -> None:
        self.servers = servers

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"{HOST}:{s.port}" for s in self.servers)

    def by_port(self, port: int) -> RedisProcess:
        return next(s for s in self.servers if s.port == port)

    async def _ask(self, server: RedisProcess, *args: str) -> str:
        client = aioredis.Redis(host=HOST, port=server.port, socket_timeout=1.0, socket_connect_timeout=1.0)
        try:
            reply = await client.execute_command(*args)
        finally:
            await client.aclose()
        return reply.decode() if isinstance(reply, bytes) else str(reply)

    async def slot_owners(self) -> dict[int, int]:
        """slot -> port of its master, as a live node reports it (CLUSTER SHARDS is Redis 7)."""
        for server in self.servers:
            if not server.running:
                continue
            try:
                client = aioredis.Redis(host=HOST, port=server.port, socket_timeout=1.0)
                try:
                    slots = await client.execute_command("CLUSTER", "SLOTS")
                finally:
                    await client.aclose()
            except (aioredis.RedisError, OSError):
                continue
            owners: dict[int, int] = {}
            for start, end, master, *_ in slots:
                for slot in range(int(start), int(end) + 1):
                    owners[slot] = int(master[1])
            return owners
        raise RedisUnavailable("no cluster node answers")

    async def master_of(self, key: str) -> RedisProcess:
        return self.by_port((await self.slot_owners())[key_slot(key.encode())])

    async def masters(self) -> list[RedisProcess]:
        return [self.by_port(port) for port in sorted(set((await self.slot_owners()).values()))]

    async def wait_ok(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Until every running node says ``cluster_state:ok`` and all 16384 slots have a live master."""
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            try:
                states = [await self._ask(s, "CLUSTER", "INFO") for s in self.servers if s.running]
                owners = await self.slot_owners()
                live = {s.port for s in self.servers if s.running}
                if all("cluster_state:ok" in st for st in states) and len(owners) == 16384 and set(owners.values()) <= live:
                    return
                last = "; ".join(st.split("\r\n")[0] for st in states)
            except (aioredis.RedisError, OSError, RedisUnavailable) as exc:
                last = repr(exc)
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis cluster not ok within {timeout} s: {last}")
            await asyncio.sleep(0.05)  # polling the cluster's own state; there is no event to await


def _cluster_ports() -> tuple[int, int]:
    """A client port and a cluster bus port, both free now (the client port at most 55535, which
    Redis 7.0 requires of cluster nodes)."""
    while True:
        port, bus = free_port(), free_port()
        if port <= 55535 and port != bus:
            return port, bus


async def start_cluster(start: Callable[..., Awaitable[list[RedisProcess]]]) -> RedisCluster:
    async def one() -> RedisProcess:
        port, bus = _cluster_ports()
        (server,) = await start(
            1,
            port=port,
            extra_args=[
                "--cluster-enabled", "yes",
                "--cluster-port", str(bus),
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                "--cluster-replica-validity-factor", "0",
            ],
        )  # fmt: skip
        return server

    servers = list(await asyncio.gather(*(one() for _ in range(6))))
    proc = await asyncio.create_subprocess_exec(
        redis_cli_binary(), "--cluster", "create", *(f"{HOST}:{s.port}" for s in servers),
        "--cluster-replicas", "1", "--cluster-yes",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RedisUnavailable(f"redis-cli --cluster create failed: {out.decode(errors='replace')[-2000:]}")
    cluster = RedisCluster(servers)
    await cluster.wait_ok()
    return cluster


@pytest.fixture
async def redis_cluster(redis_servers) -> AsyncIterator[Callable[[], Awaitable[RedisCluster]]]:
    """``await redis_cluster()`` starts a 3-master, 3-replica cluster; torn down with the servers."""

    async def start() -> RedisCluster:
        return await start_cluster(redis_servers)

    yield start


async def migrate_slot(cluster: RedisCluster, slot: int, to: RedisProcess) -> None:
    """Move ``slot`` (and its keys) to the master ``to`` the way ``redis-cli --cluster reshard``
    does: IMPORTING / MIGRATING, MIGRATE each key, then SETSLOT NODE on every master."""
    owners = await cluster.slot_owners()
    source = cluster.by_port(owners[slot])

    def client(server: RedisProcess) -> aioredis.Redis:
        return aioredis.Redis(host=HOST, port=server.port, socket_timeout=2.0)

    src, dst = client(source), client(to)
    try:
        src_id = (await src.execute_command("CLUSTER", "MYID")).decode()
        dst_id = (await dst.execute_command("CLUSTER", "MYID")).decode()
        await dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        await src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        while keys := await src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            await src.execute_command("MIGRATE", HOST, to.port, "", 0, 5000, "KEYS", *keys)
        for master in await cluster.masters():
            c = client(master)
            try:
                await c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
            finally:
                await c.aclose()
    finally:
        await src.aclose()
        await dst.aclose()
