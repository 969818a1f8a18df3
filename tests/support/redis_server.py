"""Real ``redis-server`` processes on free ports, for the cluster and fault tests.

Each ``RedisProcess`` is a throwaway server: no persistence (``--save "" --appendonly no``), bound to
127.0.0.1, its working directory and log in a temporary directory. Faults are real process faults:
``restart()`` is a new process on the same port with empty state (every client and every pub/sub
subscription is gone, as after a Redis restart), ``pause()``/``resume()`` are SIGSTOP/SIGCONT (the socket
accepts but nothing answers), ``kill()`` is SIGKILL.

The binary comes from ``PAIRROOM_REDIS_SERVER``, else ``redis-server`` on PATH, else whatever
``scripts/ensure-redis`` installs and prints. A missing binary fails the test; it is never skipped.

Use the ``redis_servers`` fixture (import it into the test module or conftest)::

    async def test_x(redis_servers):
        a, b = await redis_servers(2)
        r = a.client()
        await r.set("k", "v")
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import pytest
import redis.asyncio as aioredis

REPO_ROOT = Path(__file__).resolve().parents[2]
ENSURE_REDIS = REPO_ROOT / "scripts" / "ensure-redis"
HOST = "127.0.0.1"

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
_PORT_ATTEMPTS = 8
_POLL_S = 0.01  # the PING poll interval while waiting for a deadline; never a fixed wait

_PR_SET_PDEATHSIG = 1
try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:  # not Linux/glibc: children just are not tied to our lifetime
    _LIBC = None


class RedisUnavailable(RuntimeError):
    """No usable redis-server binary, or a server that would not start."""


@functools.cache
def redis_server_binary() -> str:
    """The path of a Redis 7+ ``redis-server`` (found once per test session)."""
    if env := os.environ.get("PAIRROOM_REDIS_SERVER"):
        return env
    for candidate in (shutil.which("redis-server"), "/usr/bin/redis-server", "/usr/sbin/redis-server"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    try:
        out = subprocess.run(
            [str(ENSURE_REDIS)], check=True, capture_output=True, text=True, timeout=600
        )
    except (OSError, subprocess.SubprocessError) as exc:
        stderr = getattr(exc, "stderr", "") or ""
        raise RedisUnavailable(
            f"no redis-server binary and {ENSURE_REDIS} failed ({exc}); {stderr.strip()}"
        ) from exc
    path = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
    if not path:
        raise RedisUnavailable(f"{ENSURE_REDIS} printed no path; stderr: {out.stderr.strip()}")
    return path


def free_port() -> int:
    """A port nobody listens on right now (the OS picks it; a racer may take it before we bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the process that started it dies (no stray servers
    after a killed test run). Tied to the starting *thread*, so start servers from the loop thread."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


async def ping(port: int, timeout: float = 1.0, host: str = HOST) -> bool:
    """True if a Redis server on ``host:port`` answers PING within ``timeout`` seconds."""
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"PING\r\n")
            await writer.drain()
            line = await reader.readline()
            return line == b"+PONG\r\n"
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return False
    finally:
        if writer is not None:
            writer.transport.abort()  # a paused server never finishes a graceful close


class RedisProcess:
    """One ``redis-server`` child process on 127.0.0.1.

    ``await start()`` picks a free port (retrying if another process takes it first) unless one was
    given, and returns once the server answers PING. ``port`` stays the same across ``restart()``.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        binary: str | None = None,
        extra_args: Sequence[str] = (),
        workdir: Path | None = None,
    ) -> None:
        self._requested_port = port
        self._port: int | None = port
        self._binary = binary
        self._extra_args = list(extra_args)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._workdir = workdir
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False
        self._clients: list[aioredis.Redis] = []
        self.starts = 0  # how many processes this object has run (1 + restarts)

    # -- what tests read ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("RedisProcess not started")
        return self._port

    @property
    def host(self) -> str:
        return HOST

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``: what ``pairroom serve --redis`` takes."""
        return f"redis://{HOST}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """The process exists (it may be paused)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def returncode(self) -> int | None:
        """The last process's exit status (negative: killed by that signal), None while running."""
        return self._proc.poll() if self._proc is not None else None

    @property
    def log_path(self) -> Path:
        return self._dir / "redis.log"

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def client(self, **kwargs: object) -> aioredis.Redis:
        """A ``redis.asyncio`` client for this server, closed by ``aclose_clients()`` (the fixture does)."""
        kwargs.setdefault("socket_connect_timeout", 2.0)
        c = aioredis.Redis(host=HOST, port=self.port, **kwargs)  # type: ignore[arg-type]
        self._clients.append(c)
        return c

    async def ping(self, timeout: float = 1.0) -> bool:
        """True if the server answers PING within ``timeout`` (False while paused or down)."""
        return await ping(self.port, timeout)

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the server and wait until it answers PING (``START_TIMEOUT_S`` at most)."""
        if self.running:
            raise RuntimeError(f"redis-server already running on port {self._port}")
        attempts = 1 if self._requested_port is not None else _PORT_ATTEMPTS
        last = ""
        for _ in range(attempts):
            if self._requested_port is None:
                self._port = free_port()
            try:
                await self._spawn_and_wait()
                return
            except _PortTaken as exc:
                last = str(exc)
        raise RedisUnavailable(f"no free port after {attempts} attempts: {last}")

    async def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM (after SIGCONT if paused) and wait for the exit; SIGKILL if it takes longer."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        self.resume()
        proc.send_signal(signal.SIGTERM)
        if not await self._wait_exit(proc, timeout):
            proc.kill()
            await self._wait_exit(proc, timeout)

    async def kill(self) -> None:
        """SIGKILL, as a crash: works on a paused server too. Waits for the process to be reaped."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.kill()
        await self._wait_exit(proc, STOP_TIMEOUT_S)
        self._paused = False

    async def restart(self, *, hard: bool = False, timeout: float = START_TIMEOUT_S, wipe: bool = True) -> None:
        """A new empty server on the same port: ``stop()`` (or ``kill()`` if ``hard``), then start.

        Every connection and pub/sub subscription is lost, like a real Redis restart without
        persistence. If another process grabbed the port meanwhile, binding is retried until
        ``timeout`` and then this raises. ``wipe=False`` keeps the working directory (a cluster
        node's ``nodes.conf``: it rejoins its cluster).
        """
        await (self.kill() if hard else self.stop())
        if wipe:
            self._wipe_dir()
        deadline = time.monotonic() + timeout
        while True:
            try:
                await self._spawn_and_wait()
                return
            except _PortTaken:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.05)  # backoff between bind attempts on a contested port

    def pause(self) -> None:
        """SIGSTOP: the kernel still accepts connections, but nothing is read or answered."""
        if not self.running:
            raise RuntimeError("cannot pause: redis-server is not running")
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT after ``pause()``; a no-op otherwise."""
        if self._paused and self.running:
            assert self._proc is not None
            self._proc.send_signal(signal.SIGCONT)
        self._paused = False

    async def aclose_clients(self) -> None:
        clients, self._clients = self._clients, []
        for c in clients:
            await c.aclose()

    async def close(self) -> None:
        """Tear down: close our clients, resume if paused, kill, remove the temporary directory."""
        self.resume()
        # Clients first, while the server can still answer their QUIT; a dead one just drops.
        with contextlib.suppress(OSError, aioredis.RedisError):
            await self.aclose_clients()
        await self.kill()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    async def __aenter__(self) -> RedisProcess:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- internals ---------------------------------------------------------------------------------

    @property
    def _dir(self) -> Path:
        if self._workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="pairroom-redis-")
            self._workdir = Path(self._tmp.name)
        return self._workdir

    def _wipe_dir(self) -> None:
        for entry in self._dir.iterdir():
            if entry.suffix != ".log" and entry.is_file():
                entry.unlink()

    def _argv(self) -> list[str]:
        return [
            self._binary or redis_server_binary(),
            "--port", str(self.port),
            "--bind", HOST,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self._dir),
            "--logfile", str(self.log_path),
            "--daemonize", "no",
            *self._extra_args,
        ]  # fmt: skip

    async def _spawn_and_wait(self) -> None:
        # Start from this (the loop's) thread: PDEATHSIG follows the thread that forked.
        argv = self._argv()
        offsets = {name: _size(self._dir / name) for name in ("redis.log", "stderr.log")}
        with open(self._dir / "stderr.log", "ab") as stderr:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                preexec_fn=_die_with_parent,
            )
        self._paused = False
        self.starts += 1
        proc = self._proc
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                # Only what this process wrote: the files are kept across restarts.
                stderr = _read_from(self._dir / "stderr.log", offsets["stderr.log"])
                log = _read_from(self.log_path, offsets["redis.log"])
                if "Address already in use" in log + stderr:
                    raise _PortTaken(f"port {self.port} taken: {log}")
                raise RedisUnavailable(
                    f"redis-server exited with {proc.returncode}: {stderr.strip()}\n{log}"
                )
            if await ping(self.port, timeout=0.5):
                return
            await asyncio.sleep(_POLL_S)
        proc.kill()
        await self._wait_exit(proc, STOP_TIMEOUT_S)
        raise RedisUnavailable(
            f"redis-server on port {self.port} did not answer PING within {START_TIMEOUT_S}s\n"
            f"{self.log_tail()}"
        )

    @staticmethod
    async def _wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> bool:
        """Reap ``proc`` within ``timeout``; True if it exited."""
        try:
            await asyncio.to_thread(proc.wait, timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def __repr__(self) -> str:
        state = "paused" if self._paused else ("running" if self.running else "stopped")
        return f"<RedisProcess {HOST}:{self._port} pid={self.pid} {state}>"


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _read_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


class _PortTaken(RedisUnavailable):
    """redis-server could not bind its port (someone took it between our probe and its bind)."""


StartRedis = Callable[..., Awaitable[list[RedisProcess]]]


@pytest.fixture
async def redis_servers() -> AsyncIterator[StartRedis]:
    """A factory: ``await redis_servers(n=1, **RedisProcess kwargs)`` starts ``n`` servers and returns
    them. Every server started through it is resumed if paused, killed and cleaned up at teardown."""
    started: list[RedisProcess] = []

    async def start(n: int = 1, **kwargs: object) -> list[RedisProcess]:
        batch = [RedisProcess(**kwargs) for _ in range(n)]  # type: ignore[arg-type]
        started.extend(batch)
        try:
            await asyncio.gather(*(r.start() for r in batch))
        except RedisUnavailable as exc:
            pytest.fail(str(exc), pytrace=False)
        return batch

    try:
        yield start
    finally:
        errors: list[BaseException] = []
        for r in started:
            try:
                await r.close()
            except Exception as exc:  # noqa: BLE001 - finish tearing down the others, then raise
                errors.append(exc)
        if errors:
            raise errors[0]


@pytest.fixture
async def redis_server(redis_servers: StartRedis) -> RedisProcess:
    """One fresh server for the test."""
    (server,) = await redis_servers(1)
    return server
