"""Drive real npm Yjs clients (``yjs`` + ``y-websocket``) from async tests.

Each :class:`NodeYClient` is one ``node tests/node/yclient.mjs`` process holding a ``Y.Doc`` and a
``WebsocketProvider`` from y-websocket ``v1``, ``v2`` or ``v3`` (installed side by side through npm
aliases, pinned in ``tests/node/package.json``). The test talks to it over JSON lines: one request
per line with an ``id``, one answer per line with the same ``id``, plus tagged event lines.

Typical use, with the :func:`node_clients` fixture (import it into the test module)::

    from tests.support.yjs_node import node_clients, wait_equal  # noqa: F401

    async def test_two_clients_converge(server_url, node_clients):
        a = await node_clients.start(server_url, "room-1", version="v2")
        b = await node_clients.start(server_url, "room-1", version="v3")
        await a.wait_synced()
        await b.wait_synced()
        await a.insert(0, "hello")
        await wait_equal(b.text, "hello")

``server_url`` is the provider's ``serverUrl``; the socket connects to ``f"{url}/{room}"`` plus
``?k=v`` for ``params``. For the pairroom server that is ``ws://HOST:PORT/yjs``.

API
---
:func:`ensure_node_modules`
    Runs ``npm ci`` in ``tests/node`` when ``node_modules`` is missing or older than
    ``package-lock.json``/``package.json``. Called by :meth:`NodeYClient.start`.
:meth:`NodeYClient.start` ``(url, room, version="v1", params=None, *, connect=True, max_backoff_ms=None)``
    Spawns the process and returns once the provider exists (not once it is synced).
:meth:`NodeYClient.call` ``(cmd, *, timeout=10.0, **args)``
    Any command of ``yclient.mjs``; raises :class:`NodeCommandError` when the client answers with
    an error and :class:`NodeClientDied` when the process is gone.
Convenience methods
    ``wait_synced``, ``insert``, ``delete``, ``text``, ``map_set``, ``map_get``, ``map``,
    ``set_awareness``, ``set_awareness_field``, ``awareness``, ``client_id``, ``state_vector``,
    ``encode_state``, ``apply_update``, ``big_insert``, ``disconnect``, ``connect``,
    ``set_params``, ``status``, ``close`` (clean: destroys the provider, waits for the closing
    handshake, exit code 0) and ``kill`` (abrupt: SIGKILL, the server sees a dropped TCP connection).
Events
    ``client.events`` lists every event line in arrival order (``status``, ``synced``,
    ``ws-close``, ``connection-error``, ``closed``, ``uncaught``); ``await client.wait_event(pred)``
    waits for one. ``client.uncaught`` lists uncaught Node exceptions; the fixture fails the test
    when any occurred.
:func:`wait_for` / :func:`wait_equal`
    Retry an async check until a deadline; use them instead of sleeping.

``status()`` returns ``connected`` (socket open), ``wsconnected``/``wsconnecting``/
``shouldConnect``/``synced`` (the provider's flags), ``url``, and from the raw sockets' close
events ``lastCloseCode``, ``lastCloseReason``, ``closeCount``, plus ``terminalClose``
(``{code, reason}`` once v3 stopped reconnecting, else ``None``).

Differences between the y-websocket majors (read from their sources, 1.5.4 / 2.1.0 / 3.1.0)
-------------------------------------------------------------------------------------------
All three export ``WebsocketProvider`` with the same constructor and options (``params``,
``WebSocketPolyfill``, ``disableBc``, ``maxBackoffTime``, ``resyncInterval``), emit ``status``,
``sync``/``synced``, ``connection-error`` and ``connection-close``, and close a socket that has
received nothing for 30 s (``messageReconnectTimeout``), so a server must keep sending something
(clients renew their own awareness every 15 s, which the server relays back).

- v1 extends lib0 ``Observable``; ``url`` is computed once in the constructor. ``connection-close``
  always carries the socket's ``CloseEvent``, also after ``disconnect()``. The reconnect backoff
  resets when a socket opens.
- v2 extends ``ObservableV2``; ``url`` is a getter over the mutable ``provider.params``; adds the
  ``protocols`` option. ``disconnect()``/``destroy()`` emit ``connection-close`` with ``null``
  right away instead of waiting for the socket's close event.
- v3 is client only (the server moved to ``@y/websocket-server``). Close codes 4400-4499 are
  terminal by default (``shouldReconnect`` option): the provider stops reconnecting and emits
  ``closed`` ``({code, reason}, provider)``; ``connect()`` resumes. Every close, also after a
  successful open, increases the backoff, which resets only once the connection synced. Socket
  handlers are detached on close, so only listeners added with ``addEventListener`` (which
  ``yclient.mjs`` uses for ``ws-close``) see the close event of a locally closed socket.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import hashlib
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import pytest_asyncio

NODE_DIR = Path(__file__).resolve().parent.parent / "node"
CLIENT_SCRIPT = NODE_DIR / "yclient.mjs"
VERSIONS: tuple[str, ...] = ("v1", "v2", "v3")
Version = Literal["v1", "v2", "v3"]
DEFAULT_TEXT = "text"
DEFAULT_MAP = "map"

# Answers such as encode_state() of a 2 MiB document are single lines of several MiB.
_LINE_LIMIT = 256 * 1024 * 1024
# The same stamp as the Makefile's node-deps target, so either installer satisfies the other.
_STAMP = NODE_DIR / "node_modules" / ".stamp"
_STDERR_KEEP = 200

T = TypeVar("T")


class NodeClientError(RuntimeError):
    """Base class for failures of a Node Yjs client."""


class NodeCommandError(NodeClientError):
    """The client answered a request with ``{"error": ...}``."""

    def __init__(self, cmd: str, message: str) -> None:
        super().__init__(f"{cmd}: {message}")
        self.cmd = cmd
        self.message = message


class NodeClientDied(NodeClientError):
    """The client process exited while a request or the start-up was pending."""


def ensure_node_modules() -> None:
    """Install ``tests/node/node_modules`` with ``npm ci`` unless it is up to date.

    Up to date means a stamp file, written after a successful ``npm ci``, is newer than both
    ``package.json`` and ``package-lock.json``. A file lock serialises concurrent test processes.
    Optional dependencies (the y-leveldb/level server persistence that y-websocket v1/v2 declare)
    and install scripts are skipped: the clients need neither.
    """
    if _node_modules_fresh():
        return
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            raise NodeClientError(f"{tool!r} is not on PATH; the Yjs interop tests need Node.js")
    key = hashlib.sha256(str(NODE_DIR).encode()).hexdigest()[:16]
    lock_path = Path(tempfile.gettempdir()) / f"pairroom-npm-ci-{key}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _node_modules_fresh():  # another process installed while we waited
            return
        result = subprocess.run(
            ["npm", "ci", "--omit=optional", "--ignore-scripts", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if result.returncode != 0:
            raise NodeClientError(
                f"npm ci in {NODE_DIR} failed with exit code {result.returncode}:\n{result.stdout}\n{result.stderr}"
            )
        _STAMP.touch()


def _node_modules_fresh() -> bool:
    try:
        stamp = _STAMP.stat().st_mtime
    except FileNotFoundError:
        return False
    inputs = (NODE_DIR / "package.json", NODE_DIR / "package-lock.json")
    return all(path.stat().st_mtime <= stamp for path in inputs)


async def wait_for(
    check: Callable[[], Awaitable[T]],
    timeout: float = 10.0,
    *,
    interval: float = 0.02,
    message: str | None = None,
) -> T:
    """Await ``check()`` until it returns a truthy value, and return that value.

    An ``AssertionError`` raised by ``check`` counts as "not yet". At the deadline this raises
    ``TimeoutError`` naming the last result (or chained to the last ``AssertionError``).
    Other exceptions propagate at once.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    last_error: AssertionError | None = None
    while True:
        try:
            last = await check()
            last_error = None
            if last:
                return last
        except AssertionError as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            what = message or getattr(check, "__name__", repr(check))
            detail = f"last error: {last_error}" if last_error else f"last result: {last!r}"
            raise TimeoutError(f"{what} not satisfied within {timeout} s; {detail}") from last_error
        await asyncio.sleep(interval)


async def wait_equal(get: Callable[[], Awaitable[Any]], expected: Any, timeout: float = 10.0) -> None:
    """Await ``get()`` until it equals ``expected``; the timeout error shows the last value."""
    last: list[Any] = []

    async def check() -> bool:
        last[:] = [await get()]
        return last[0] == expected

    try:
        await wait_for(check, timeout)
    except TimeoutError:
        shown = _shorten(last[0]) if last else "<no value>"
        raise TimeoutError(
            f"{getattr(get, '__qualname__', get)}() did not become {_shorten(expected)} "
            f"within {timeout} s; last value: {shown}"
        ) from None


def _shorten(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


class NodeYClient:
    """One Node process running a ``Y.Doc`` with a y-websocket ``WebsocketProvider``.

    Create it with :meth:`start`; always finish with :meth:`close` or :meth:`kill` (the
    :func:`node_clients` fixture does that for you). See the module docstring for the commands.
    """

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        *,
        url: str,
        room: str,
        version: str,
    ) -> None:
        self.process = process
        self.url = url
        self.room = room
        self.version = version
        self.package_version: str | None = None
        self.initial_client_id: int | None = None
        self.events: list[dict[str, Any]] = []
        self.stderr_lines: list[str] = []
        self._next_id = 0
        self._pending: dict[int, tuple[str, asyncio.Future[Any]]] = {}
        self._ready: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._event_added = asyncio.Condition()
        self._closed = False
        # Owned by this object: cancelled and awaited in _finish().
        self._stdout_task = asyncio.create_task(self._read_stdout(), name=f"yclient-{version}-stdout")
        self._stderr_task = asyncio.create_task(self._read_stderr(), name=f"yclient-{version}-stderr")

    @classmethod
    async def start(
        cls,
        url: str,
        room: str,
        version: Version | str = "v1",
        params: dict[str, str] | None = None,
        *,
        connect: bool = True,
        max_backoff_ms: int | None = None,
        timeout: float = 15.0,
    ) -> NodeYClient:
        """Spawn a client for ``f"{url}/{room}"`` and return once its provider exists.

        ``connect=False`` creates the provider without connecting (call :meth:`connect`);
        ``max_backoff_ms`` caps y-websocket's reconnect backoff (default 2500 ms).
        """
        if version not in VERSIONS:
            raise ValueError(f"version must be one of {VERSIONS}, got {version!r}")
        await asyncio.to_thread(ensure_node_modules)
        argv = [str(CLIENT_SCRIPT), "--url", url, "--room", room, "--version", version]
        if not connect:
            argv.append("--no-connect")
        if max_backoff_ms is not None:
            argv += ["--max-backoff", str(max_backoff_ms)]
        if params:
            argv += ["--params", *(f"{k}={v}" for k, v in params.items())]
        process = await asyncio.create_subprocess_exec(
            _node_binary(),
            *argv,
            cwd=NODE_DIR,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=_LINE_LIMIT,
        )
        client = cls(process, url=url, room=room, version=version)
        try:
            ready = await asyncio.wait_for(asyncio.shield(client._ready), timeout)
        except BaseException:
            await client.kill()
            raise
        client.package_version = ready["package"]
        client.initial_client_id = ready["clientId"]
        return client

    def __repr__(self) -> str:
        return f"<NodeYClient {self.version} pid={self.process.pid} {self.url}/{self.room}>"

    # -- protocol -------------------------------------------------------------------------------

    async def call(self, cmd: str, *, timeout: float = 10.0, **args: Any) -> Any:
        """Send one command and return its ``result``."""
        if self._closed or self.process.stdin is None:
            raise NodeClientDied(f"{self!r} is closed; cannot run {cmd!r}")
        self._next_id += 1
        request_id = self._next_id
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = (cmd, future)
        try:
            self.process.stdin.write(json.dumps({"id": request_id, "cmd": cmd, **args}).encode() + b"\n")
            await self.process.stdin.drain()
            return await asyncio.wait_for(future, timeout)
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise NodeClientDied(f"{self!r} died before {cmd!r}:\n{self.stderr_text()}") from exc
        except TimeoutError:
            raise TimeoutError(f"{self!r}: no answer to {cmd!r} within {timeout} s") from None
        finally:
            self._pending.pop(request_id, None)

    async def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        try:
            while line := await self.process.stdout.readline():
                try:
                    message = json.loads(line)
                except json.JSONDecodeError:
                    self.stderr_lines.append(f"[harness] non-JSON stdout line: {_shorten(line)}")
                    continue
                if "event" in message:
                    await self._add_event(message)
                    continue
                cmd, future = self._pending.get(message.get("id"), (None, None))
                if future is None or future.done():
                    # Nobody waits for this answer: the request timed out or had no valid id.
                    self.stderr_lines.append(f"[harness] unmatched answer: {_shorten(message)}")
                    continue
                if "error" in message:
                    future.set_exception(NodeCommandError(str(cmd), message["error"]))
                else:
                    future.set_result(message.get("result"))
        finally:
            await self.process.wait()
            died = NodeClientDied(f"{self!r} exited with code {self.process.returncode}:\n{self.stderr_text()}")
            if not self._ready.done():
                self._ready.set_exception(died)
            for _, future in self._pending.values():
                if not future.done():
                    future.set_exception(died)

    async def _add_event(self, message: dict[str, Any]) -> None:
        if message["event"] == "ready":
            if not self._ready.done():
                self._ready.set_result(message)
            return
        async with self._event_added:
            self.events.append(message)
            self._event_added.notify_all()

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        while line := await self.process.stderr.readline():
            self.stderr_lines.append(line.decode(errors="replace").rstrip("\n"))
            del self.stderr_lines[:-_STDERR_KEEP]

    def stderr_text(self) -> str:
        """The last lines the process wrote to stderr."""
        return "\n".join(self.stderr_lines) or "<no stderr output>"

    @property
    def uncaught(self) -> list[str]:
        """Messages of uncaught exceptions and unhandled rejections inside the Node process."""
        return [event["message"] for event in self.events if event["event"] == "uncaught"]

    async def wait_event(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0) -> dict[str, Any]:
        """Return the first event (already received or future) that satisfies ``predicate``."""

        def find() -> dict[str, Any] | None:
            return next((event for event in self.events if predicate(event)), None)

        async with self._event_added:
            try:
                async with asyncio.timeout(timeout):
                    await self._event_added.wait_for(lambda: find() is not None)
            except TimeoutError:
                raise TimeoutError(
                    f"{self!r}: no matching event within {timeout} s; events: {_shorten(self.events, 1000)}"
                ) from None
        event = find()
        assert event is not None
        return event

    # -- convenience commands -------------------------------------------------------------------

    async def wait_synced(self, timeout: float = 10.0) -> None:
        """Wait until the provider finished its initial sync (sync step 2 received)."""
        await self.call("waitSynced", timeout=timeout + 1.0, timeoutMs=int(timeout * 1000))

    async def insert(self, index: int, text: str, *, name: str = DEFAULT_TEXT) -> None:
        await self.call("insert", name=name, index=index, text=text)

    async def delete(self, index: int, length: int, *, name: str = DEFAULT_TEXT) -> None:
        await self.call("delete", name=name, index=index, length=length)

    async def text(self, name: str = DEFAULT_TEXT) -> str:
        return await self.call("text", name=name)

    async def big_insert(self, size: int, *, name: str = DEFAULT_TEXT, index: int = 0) -> None:
        """Insert ``size`` ASCII bytes in one transaction, producing one update of that size."""
        await self.call("bigInsert", name=name, size=size, index=index)

    async def map_set(self, key: str, value: Any, *, name: str = DEFAULT_MAP) -> None:
        await self.call("mapSet", name=name, key=key, value=value)

    async def map_get(self, key: str, *, name: str = DEFAULT_MAP) -> Any:
        return await self.call("mapGet", name=name, key=key)

    async def map(self, name: str = DEFAULT_MAP) -> dict[str, Any]:
        return await self.call("map", name=name)

    async def set_awareness(self, state: dict[str, Any] | None) -> None:
        """``awareness.setLocalState(state)``; ``None`` announces that this client left."""
        await self.call("setAwareness", state=state)

    async def set_awareness_field(self, field: str, value: Any) -> None:
        await self.call("setAwarenessField", field=field, value=value)

    async def awareness(self) -> dict[int, Any]:
        """All awareness states this client sees, keyed by client id (its own included)."""
        states = await self.call("awareness")
        return {entry["clientId"]: entry["state"] for entry in states}

    async def client_id(self) -> int:
        return await self.call("clientId")

    async def state_vector(self) -> bytes:
        return base64.b64decode(await self.call("stateVector"))

    async def encode_state(self) -> bytes:
        """``Y.encodeStateAsUpdate(doc)``."""
        return base64.b64decode(await self.call("encodeState", timeout=30.0))

    async def apply_update(self, update: bytes) -> None:
        """``Y.applyUpdate(doc, update)``; the provider then sends it to the server."""
        await self.call("applyUpdate", update=base64.b64encode(update).decode())

    async def disconnect(self) -> None:
        """``provider.disconnect()``: closes the socket and stops reconnecting."""
        await self.call("disconnect")

    async def connect(self) -> None:
        """``provider.connect()``."""
        await self.call("connect")

    async def set_params(self, params: dict[str, str]) -> str:
        """Replace the URL query parameters used by the next connection; returns the new URL."""
        return await self.call("setParams", params=params)

    async def status(self) -> dict[str, Any]:
        return await self.call("status")

    # -- shutdown -------------------------------------------------------------------------------

    async def close(self, timeout: float = 5.0) -> None:
        """Destroy the provider (clean closing handshake) and wait for exit code 0.

        Kills the process instead when it does not exit within ``timeout``; idempotent.
        """
        if self._closed:
            return
        try:
            if self.process.returncode is None:
                await self.call("close", timeout=timeout)
                assert self.process.stdin is not None
                self.process.stdin.close()
                await asyncio.wait_for(self.process.wait(), timeout)
        except (NodeClientError, TimeoutError):
            await self.kill()
            raise
        finally:
            await self._finish()
        if self.process.returncode != 0:
            raise NodeClientDied(f"{self!r} exited with code {self.process.returncode}:\n{self.stderr_text()}")

    async def kill(self) -> None:
        """SIGKILL the process: the server sees the TCP connection drop without a close frame."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()
        await self._finish()

    async def _finish(self) -> None:
        self._closed = True
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()
        # The readers end by themselves at EOF; wait for them so no task outlives the client.
        await asyncio.gather(self._stdout_task, self._stderr_task, return_exceptions=True)
        if self.process.stdin is not None and not self.process.stdin.is_closing():
            self.process.stdin.close()


def _node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        raise NodeClientError("'node' is not on PATH; the Yjs interop tests need Node.js")
    return node


class NodeClients:
    """Starts :class:`NodeYClient` processes and closes every one of them on exit.

    ``async with NodeClients() as clients: a = await clients.start(url, room, "v2")``.
    On exit all clients are closed concurrently (killed if they hang), and an uncaught exception
    inside any Node process is raised as :class:`NodeClientError`.
    """

    def __init__(self) -> None:
        self.clients: list[NodeYClient] = []

    async def start(self, url: str, room: str, version: Version | str = "v1", **kwargs: Any) -> NodeYClient:
        """Same arguments as :meth:`NodeYClient.start`."""
        client = await NodeYClient.start(url, room, version, **kwargs)
        self.clients.append(client)
        return client

    async def __aenter__(self) -> NodeClients:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        results = await asyncio.gather(*(client.close() for client in self.clients), return_exceptions=True)
        problems = [
            f"{client!r}: {result!r}"
            for client, result in zip(self.clients, results, strict=True)
            if isinstance(result, BaseException)
        ]
        problems += [f"{client!r} uncaught: {message}" for client in self.clients for message in client.uncaught]
        self.clients.clear()
        if problems:
            raise NodeClientError("Node Yjs clients failed:\n" + "\n".join(problems))


@pytest_asyncio.fixture
async def node_clients() -> AsyncIterator[NodeClients]:
    """A :class:`NodeClients` whose processes are all closed at teardown."""
    await asyncio.to_thread(ensure_node_modules)
    async with NodeClients() as clients:
        yield clients


__all__ = [
    "DEFAULT_MAP",
    "DEFAULT_TEXT",
    "VERSIONS",
    "NodeClientDied",
    "NodeClientError",
    "NodeClients",
    "NodeCommandError",
    "NodeYClient",
    "ensure_node_modules",
    "node_clients",
    "wait_equal",
    "wait_for",
]
