"""An asyncio TCP proxy for fault tests, and a tiny failover load balancer.

Put it between a pairroom node and Redis to cut that one link (``cut()``/``restore()``), or in front of
several nodes so websocket clients that reconnect land on the next live node: each new connection goes
to the first target, in order, that accepts a TCP connect within ``connect_timeout``.

Bytes are piped both ways as they come, with half-close kept: when one side shuts down its writing
half, the proxy shuts down the same half towards the other side and keeps piping the other direction.
A reset on either side aborts both sides. Every connection runs in a task the proxy owns and awaits in
``cut()`` and ``stop()``, so nothing outlives the proxy.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence

import pytest

log = logging.getLogger(__name__)

Target = tuple[str, int]

_CHUNK = 64 * 1024
_REBIND_ATTEMPTS = 50  # restore(): the listening port may be briefly held by a racer


class _Link:
    """One proxied connection: the accepted client side and the target side."""

    __slots__ = ("client", "upstream", "target")

    def __init__(self, client: asyncio.StreamWriter, target: Target) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.target = target

    def abort(self) -> None:
        self.client.transport.abort()
        if self.upstream is not None:
            self.upstream.transport.abort()


class TcpProxy:
    """Listen on 127.0.0.1:``listen_port`` (0: the OS picks) and forward to ``targets``.

    - ``await start()``; ``port`` is the listening port (kept across ``cut()``/``restore()``).
    - ``await cut()``: abort every open connection, both sides, and refuse new ones (the listening
      socket is closed, so connects get ECONNREFUSED) until ``await restore()``.
    - ``set_targets([...])``: the targets for new connections; open ones are left alone.
    - ``connections_to(target)``: connections made to that target since start;
      ``open_connections(target=None)``: those open now.
    - ``await stop()``: close everything; idempotent. Also an async context manager.
    """

    def __init__(
        self,
        listen_port: int = 0,
        targets: Iterable[Target] = (),
        *,
        host: str = "127.0.0.1",
        connect_timeout: float = 1.0,
    ) -> None:
        self._host = host
        self._port = listen_port
        self._targets: list[Target] = [_target(t) for t in targets]
        self._connect_timeout = connect_timeout
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._links: set[_Link] = set()
        self._counts: collections.Counter[Target] = collections.Counter()
        self._is_cut = False
        self._stopped = False
        self.refused = 0  # connections closed because no target accepted

    # -- what tests read ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("TcpProxy not started")
        return self._port

    @property
    def host(self) -> str:
        return self._host

    @property
    def address(self) -> Target:
        return (self._host, self.port)

    @property
    def targets(self) -> list[Target]:
        return list(self._targets)

    @property
    def is_cut(self) -> bool:
        return self._is_cut

    def connections_to(self, target: Target) -> int:
        """How many connections were forwarded to ``target`` since ``start()``."""
        return self._counts[_target(target)]

    def open_connections(self, target: Target | None = None) -> int:
        """How many connections are open now (to ``target``, or to any)."""
        if target is None:
            return len(self._links)
        t = _target(target)
        return sum(1 for link in self._links if link.target == t)

    def set_targets(self, targets: Iterable[Target]) -> None:
        """Targets for new connections, first preferred; open connections keep theirs."""
        self._targets = [_target(t) for t in targets]

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("TcpProxy already started")
        self._stopped = False
        await self._listen(attempts=1)

    async def cut(self) -> None:
        """Abort every open connection both ways and refuse new ones until ``restore()``."""
        self._is_cut = True
        await self._close_listener()

    async def restore(self) -> None:
        """Accept connections again, on the same port."""
        if self._stopped:
            raise RuntimeError("TcpProxy stopped")
        if self._server is None:
            await self._listen(attempts=_REBIND_ATTEMPTS)
        self._is_cut = False

    async def stop(self) -> None:
        """Stop listening, abort every connection and await every task the proxy started."""
        self._stopped = True
        await self._close_listener()

    async def __aenter__(self) -> TcpProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- internals ---------------------------------------------------------------------------------

    async def _listen(self, attempts: int) -> None:
        for attempt in range(attempts):
            try:
                self._server = await asyncio.start_server(self._accepted, self._host, self._port, reuse_address=True)
                break
            except OSError:
                if attempt + 1 >= attempts:
                    raise
                await asyncio.sleep(0.02 * (attempt + 1))  # backoff: the port is briefly held
        sock = self._server.sockets[0]
        self._port = int(sock.getsockname()[1])

    async def _close_listener(self) -> None:
        """Stop accepting; then abort every connection and await its task."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        await self._drop_all()
        if server is not None:
            # Only now: since Python 3.12 this also waits for the connections, all aborted above.
            await server.wait_closed()

    async def _drop_all(self) -> None:
        for link in list(self._links):
            link.abort()
        tasks = list(self._tasks)
        for t in tasks:
            if not t.done() and t is not asyncio.current_task():
                t.cancel()
        # Bounded: every task is cancelled and its sockets are aborted, so each ends promptly.
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for r in results:
            if isinstance(r, Exception):
                log.warning("tcpproxy: connection task failed: %r", r)

    def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """asyncio's connection callback: hand the connection to a task the proxy owns."""
        if self._is_cut or self._stopped:
            writer.transport.abort()
            return
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        link: _Link | None = None
        clean = False
        try:
            picked = await self._connect()
            if picked is None:
                self.refused += 1
                client_w.transport.abort()
                return
            target, up_r, up_w = picked
            link = _Link(client_w, target)
            link.upstream = up_w
            self._links.add(link)
            self._counts[target] += 1
            async with asyncio.TaskGroup() as tg:
                tg.create_task(_pipe(client_r, up_w, link))
                tg.create_task(_pipe(up_r, client_w, link))
            # Both directions ended (EOF each way, or a reset that aborted both). close() flushes
            # what is still buffered; abort() would drop it.
            client_w.close()
            up_w.close()
            for w in (client_w, up_w):
                with contextlib.suppress(ConnectionError):
                    await w.wait_closed()
            clean = True
        finally:
            if link is not None:
                self._links.discard(link)
            if not clean:  # cancelled (cut/stop) or failed: free both sockets now
                if link is not None:
                    link.abort()
                else:
                    client_w.transport.abort()

    async def _connect(
        self,
    ) -> tuple[Target, asyncio.StreamReader, asyncio.StreamWriter] | None:
        for target in list(self._targets):
            try:
                async with asyncio.timeout(self._connect_timeout):
                    reader, writer = await asyncio.open_connection(*target)
            except (OSError, TimeoutError) as exc:
                log.debug("tcpproxy: %s:%s refused (%r), trying the next target", *target, exc)
                continue
            return target, reader, writer
        return None


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, link: _Link) -> None:
    """Copy ``src`` to ``dst`` until EOF, then half-close ``dst``. A reset aborts the whole link."""
    try:
        while data := await src.read(_CHUNK):
            dst.write(data)
            await dst.drain()
        if dst.can_write_eof() and not dst.transport.is_closing():
            dst.write_eof()
    except (ConnectionError, OSError) as exc:
        log.debug("tcpproxy: link to %s:%s reset: %r", *link.target, exc)
        link.abort()


def _target(t: Sequence[object]) -> Target:
    host, port = t
    return (str(host), int(port))  # type: ignore[call-overload]


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (connects are refused), for dead targets."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


MakeProxy = Callable[..., Awaitable[TcpProxy]]


@pytest.fixture
async def tcp_proxies() -> AsyncIterator[MakeProxy]:
    """A factory: ``await tcp_proxies([(host, port), ...], **TcpProxy kwargs)`` starts a proxy;
    every proxy started through it is stopped at teardown."""
    started: list[TcpProxy] = []

    async def make(targets: Iterable[Target] = (), **kwargs: object) -> TcpProxy:
        proxy = TcpProxy(targets=targets, **kwargs)  # type: ignore[arg-type]
        await proxy.start()
        started.append(proxy)
        return proxy

    try:
        yield make
    finally:
        for proxy in started:
            await proxy.stop()
