"""The fault-test harness itself: real redis-server processes and the TCP proxy do what they claim."""

from __future__ import annotations

import asyncio
import contextlib
import os

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tests.support.redis_server import RedisProcess, StartRedis, redis_server, redis_servers  # noqa: F401
from tests.support.tcpproxy import MakeProxy, TcpProxy, closed_port, tcp_proxies  # noqa: F401

DEADLINE_S = 5.0
NO_RETRY = Retry(NoBackoff(), 0)  # fail fast: redis-py retries with a backoff of seconds by default


# -- a tiny echo server that owns and awaits its connection tasks --------------------------------------


class EchoServer:
    """Echoes every byte back, prefixed once per connection by ``greeting``; answers EOF with EOF."""

    def __init__(self, greeting: bytes = b"") -> None:
        self.greeting = greeting
        self.server: asyncio.Server | None = None
        self.port = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> EchoServer:
        self.server = await asyncio.start_server(self._accepted, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._echo(reader, writer))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            if self.greeting:
                writer.write(self.greeting)
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.write(b"<eof>")  # proves the server can still write after the client's FIN
            writer.close()
            await writer.wait_closed()
        except ConnectionError:
            writer.transport.abort()
        finally:
            self.writers.discard(writer)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for w in list(self.writers):
            w.transport.abort()
        for t in list(self.tasks):
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.server is not None:
            await self.server.wait_closed()
            self.server = None

    @property
    def target(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)


@pytest.fixture
async def echo_servers():
    started: list[EchoServer] = []

    async def make(greeting: bytes = b"") -> EchoServer:
        server = await EchoServer(greeting).start()
        started.append(server)
        return server

    yield make
    for server in started:
        await server.stop()


async def _connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    async with asyncio.timeout(DEADLINE_S):
        return await asyncio.open_connection("127.0.0.1", port)


async def _read_exactly(reader: asyncio.StreamReader, n: int) -> bytes:
    async with asyncio.timeout(DEADLINE_S):
        return await reader.readexactly(n)


async def _read_to_end(reader: asyncio.StreamReader) -> bytes:
    """Everything until the peer closes; a reset counts as the end."""
    chunks = []
    async with asyncio.timeout(DEADLINE_S):
        with contextlib.suppress(ConnectionResetError):
            while data := await reader.read(65536):
                chunks.append(data)
    return b"".join(chunks)


# -- RedisProcess --------------------------------------------------------------------------------------


async def test_redis_starts_on_a_free_port_and_answers(redis_servers: StartRedis) -> None:
    a, b = await redis_servers(2)
    assert a.port != b.port
    assert a.url == f"redis://127.0.0.1:{a.port}/0"
    assert await a.ping() and await b.ping()
    r = a.client()
    assert await r.ping() is True
    await r.set("k", "v")
    assert await b.client().get("k") is None  # separate servers
    info = await r.info("server")
    assert int(str(info["redis_version"]).split(".")[0]) >= 7  # sharded pub/sub is there


async def test_restart_keeps_the_port_and_loses_state_and_subscriptions(
    redis_server: RedisProcess,
) -> None:
    port, pid = redis_server.port, redis_server.pid
    r = redis_server.client()
    await r.set("k", "v")
    # A raw subscriber, so no client library reconnects behind our back.
    sub_reader, sub_writer = await _connect(port)
    sub_writer.write(b"SUBSCRIBE room\r\n")
    assert (await _read_exactly(sub_reader, 3)) == b"*3\r"
    assert await r.pubsub_numsub("room") == [(b"room", 1)]

    await redis_server.restart()

    assert (redis_server.port, redis_server.starts) == (port, 2)
    assert redis_server.pid != pid
    fresh = redis_server.client()
    assert await fresh.get("k") is None
    assert await fresh.pubsub_numsub("room") == [(b"room", 0)]
    # The old subscriber's connection died with the old process.
    assert b"<eof>" not in await _read_to_end(sub_reader)
    assert sub_reader.at_eof()
    sub_writer.close()


async def test_hard_restart_after_sigkill(redis_server: RedisProcess) -> None:
    await redis_server.client().set("k", "v")
    await redis_server.restart(hard=True)
    assert await redis_server.client().get("k") is None


async def test_pause_stops_answers_until_resume(redis_server: RedisProcess) -> None:
    r = redis_server.client(socket_timeout=0.3, retry=NO_RETRY)
    assert await r.ping()
    redis_server.pause()
    assert redis_server.paused and redis_server.running
    assert not await redis_server.ping(timeout=0.3)
    with pytest.raises((RedisTimeoutError, TimeoutError)):
        await r.ping()
    redis_server.resume()
    assert await redis_server.ping(timeout=DEADLINE_S)
    assert await redis_server.client(socket_timeout=DEADLINE_S).ping()


async def test_kill_and_stop(redis_servers: StartRedis) -> None:
    killed, stopped = await redis_servers(2)
    killed.pause()  # SIGKILL works on a stopped process too
    await killed.kill()
    assert not killed.running and killed.returncode == -9
    assert not await killed.ping(timeout=0.3)
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", killed.port)

    stopped.pause()  # stop() resumes first, so SIGTERM is handled
    await stopped.stop()
    assert stopped.returncode == 0


async def test_redis_process_as_context_manager_cleans_up() -> None:
    async with RedisProcess() as server:
        assert await server.client().ping()
        directory = server.log_path.parent
        pid = server.pid
    assert not server.running
    assert not directory.exists()
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


# -- TcpProxy ------------------------------------------------------------------------------------------


async def test_proxy_pipes_both_ways_with_half_close(echo_servers, tcp_proxies: MakeProxy) -> None:
    echo = await echo_servers()
    proxy = await tcp_proxies([echo.target])
    reader, writer = await _connect(proxy.port)
    writer.write(b"hello")
    assert await _read_exactly(reader, 5) == b"hello"

    big = os.urandom(2 * 1024 * 1024)  # larger than every buffer on the way: exercises backpressure
    writer.write(big)
    assert await _read_exactly(reader, len(big)) == big

    # Half-close: our FIN reaches the server, which still writes to us afterwards.
    writer.write(b"last")
    writer.write_eof()
    assert await _read_to_end(reader) == b"last<eof>"
    writer.close()
    assert proxy.connections_to(echo.target) == 1
    async with asyncio.timeout(DEADLINE_S):
        while proxy.open_connections():  # the proxy closes its side once both directions ended
            await asyncio.sleep(0.01)


async def test_cut_closes_connections_and_refuses_until_restore(echo_servers, tcp_proxies: MakeProxy) -> None:
    echo = await echo_servers()
    proxy = await tcp_proxies([echo.target])
    port = proxy.port
    conns = [await _connect(port) for _ in range(3)]
    for reader, writer in conns:
        writer.write(b"x")
        assert await _read_exactly(reader, 1) == b"x"
    assert proxy.open_connections() == 3

    await proxy.cut()

    assert proxy.is_cut and proxy.open_connections() == 0
    for reader, writer in conns:
        assert await _read_to_end(reader) == b""  # closed on us, no echo of anything more
        writer.close()
    async with asyncio.timeout(DEADLINE_S):
        while echo.writers:  # the server side of each link was closed too
            await asyncio.sleep(0.01)
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)

    await proxy.restore()

    assert proxy.port == port and not proxy.is_cut
    reader, writer = await _connect(port)
    writer.write(b"again")
    assert await _read_exactly(reader, 5) == b"again"
    writer.close()
    assert proxy.connections_to(echo.target) == 4


async def test_failover_to_the_next_target_that_accepts(echo_servers, tcp_proxies: MakeProxy) -> None:
    dead = ("127.0.0.1", closed_port())
    b = await echo_servers(b"B:")
    proxy = await tcp_proxies([dead, b.target])

    reader, writer = await _connect(proxy.port)
    assert await _read_exactly(reader, 2) == b"B:"
    writer.close()
    assert proxy.connections_to(dead) == 0 and proxy.connections_to(b.target) == 1

    a = await echo_servers(b"A:")
    proxy.set_targets([a.target, b.target])
    reader, writer = await _connect(proxy.port)
    assert await _read_exactly(reader, 2) == b"A:"

    # A node dies: its connection drops, and the client's reconnect lands on the next one.
    await a.stop()
    assert await _read_to_end(reader) == b""
    writer.close()
    reader, writer = await _connect(proxy.port)
    assert await _read_exactly(reader, 2) == b"B:"
    writer.close()
    assert proxy.connections_to(a.target) == 1 and proxy.connections_to(b.target) == 2

    # No target at all: the client is closed at once, not left hanging.
    await b.stop()
    reader, writer = await _connect(proxy.port)
    assert await _read_to_end(reader) == b""
    writer.close()
    assert proxy.refused == 1


async def test_stop_leaves_no_task_behind(echo_servers) -> None:
    echo = await echo_servers()
    before = asyncio.all_tasks()
    proxy = TcpProxy(targets=[echo.target])
    await proxy.start()
    conns = [await _connect(proxy.port) for _ in range(3)]
    for reader, writer in conns:
        writer.write(b"y")
        assert await _read_exactly(reader, 1) == b"y"

    await proxy.stop()

    ours = asyncio.all_tasks() - before - echo.tasks
    assert ours == set(), ours
    for reader, writer in conns:
        assert await _read_to_end(reader) == b""
        writer.close()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", proxy.port)


async def test_redis_through_a_cut_proxy(redis_server: RedisProcess, tcp_proxies: MakeProxy) -> None:
    """The way the cluster tests cut one node's Redis link: the client errors, then recovers."""
    proxy = await tcp_proxies([(redis_server.host, redis_server.port)])
    r = aioredis.Redis(
        host="127.0.0.1", port=proxy.port, socket_timeout=1.0, socket_connect_timeout=1.0, retry=NO_RETRY
    )
    try:
        assert await r.ping()
        await proxy.cut()
        with pytest.raises(RedisConnectionError):
            await r.ping()
        await proxy.restore()
        assert await r.ping()
    finally:
        await r.aclose()
