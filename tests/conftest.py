"""Fixtures that start real servers on port 0 and real clients against them."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from pairroom.app import create_app
from pairroom.config import Settings
from pairroom.rooms.extension import Extension
from pairroom.storage.store import Store
from pairroom.web.hub import Hub
from pairroom.web.runner import Server, start_serving, uvicorn_config


@dataclasses.dataclass
class RunningServer:
    server: Server
    settings: Settings
    task: asyncio.Task[None]

    @property
    def port(self) -> int:
        assert self.server.port is not None
        return self.server.port

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_base(self) -> str:
        """The URL y-websocket providers take as ``serverUrl`` (the room is appended)."""
        return f"ws://127.0.0.1:{self.port}/yjs"

    def ws(self, room: str) -> str:
        return f"{self.ws_base}/{room}"

    @property
    def hub(self) -> Hub:
        return self.server.config.app.state.hub  # type: ignore[no-any-return]

    async def stop(self) -> None:
        self.server.should_exit = True
        await self.task


StartServer = Callable[..., Awaitable[RunningServer]]


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'pairroom.db'}"


@pytest.fixture
async def start_server(db_url: str) -> AsyncIterator[StartServer]:
    """Start pairroom in this process on a free port; ``await start_server(**settings)``."""
    running: list[RunningServer] = []

    async def start(
        store: Store | None = None, extensions: Sequence[Extension] = (), **overrides: object
    ) -> RunningServer:
        values: dict[str, object] = {"port": 0, "db": db_url, "log_format": "text", "kernels": False}
        values.update(overrides)
        settings = dataclasses.replace(Settings(), **values)  # type: ignore[arg-type]
        app = create_app(settings, store, extensions)
        server = Server(uvicorn_config(app, settings, signals=False))
        task = await start_serving(server)
        it = RunningServer(server, settings, task)
        running.append(it)
        return it

    yield start
    for it in running:
        if not it.task.done():
            await it.stop()


@pytest.fixture
async def server(start_server: StartServer) -> RunningServer:
    return await start_server()


@pytest.fixture
async def connect() -> AsyncIterator[Callable[[str], Awaitable[ClientConnection]]]:
    """Open raw websocket connections (closed at teardown)."""
    opened: list[ClientConnection] = []

    async def open_(url: str, **kwargs: object) -> ClientConnection:
        ws = await websockets.connect(url, max_size=None, **kwargs)  # type: ignore[arg-type]
        opened.append(ws)
        return ws

    yield open_
    for ws in opened:
        with contextlib.suppress(websockets.ConnectionClosed):
            await ws.close()


DEEP = 100  # folders nested deeper than this are removed before pytest's own clean-up


def remove_deep_trees(root: Path) -> None:
    """Remove every folder nested more than ``DEEP`` levels under ``root``, without recursion.

    Attack tests plant folders 3,000 levels deep in workspaces; pytest removes old temporary folders
    with a recursive ``shutil.rmtree``, which dies of ``RecursionError`` on them and fails the run at
    its very end. The workspace's own tree removal is iterative, so it clears them first."""
    from pairroom.workspace.safe_fs import remove_path_tree

    pending = [(root, 0)]
    while pending:
        folder, depth = pending.pop()
        try:
            entries = [e for e in os.scandir(folder) if e.is_dir(follow_symlinks=False)]
        except OSError:
            continue
        for entry in entries:
            if depth + 1 >= DEEP:
                with contextlib.suppress(OSError):
                    remove_path_tree(entry.path)
            else:
                pending.append((Path(entry.path), depth + 1))


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None:
        return
    base = factory.getbasetemp()
    remove_deep_trees(base.parent if base.name.startswith("pytest-") else base)


@pytest.fixture
async def pg() -> AsyncIterator[str]:
    """A fresh PostgreSQL database for one test (the server ``make test`` started or found)."""
    from tests.support.postgres import create_database, drop_database

    url = await create_database()
    try:
        yield url
    finally:
        await drop_database(url)
