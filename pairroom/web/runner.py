"""Running the app under uvicorn, shared by the CLI and the tests (so both start servers the same way)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import uvicorn
from starlette.applications import Starlette

from pairroom.web.door import DoorHttpProtocol, YjsDoor
from pairroom.web.frames import FramingProtocol
from pairroom.web.http_limits import BodyLimit, TimedHttpToolsProtocol

if TYPE_CHECKING:
    from pairroom.config import Settings


class Server(uvicorn.Server):
    """A uvicorn server that says when it is listening and on which port (``port=0`` picks one)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()
        self.port: int | None = None

    async def startup(self, sockets: list | None = None) -> None:  # type: ignore[type-arg]
        await super().startup(sockets)
        if self.servers:
            self.port = self.servers[0].sockets[0].getsockname()[1]
        self.ready.set()

    def install_signal_handlers(self) -> None:
        if self.config.extra_signal_handlers:  # type: ignore[attr-defined]
            super().install_signal_handlers()  # type: ignore[misc]


def uvicorn_config(app: Starlette, settings: Settings, *, signals: bool = True) -> uvicorn.Config:
    """The uvicorn config pairroom runs under, with the HTTP bounds of web/http_limits.py: a body cap
    on every route (a middleware added to ``app`` here) and header and body deadlines."""
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    # /yjs through the front door (web/door.py), built on the websockets-sansio stack; another stack
    # named by ws_impl serves /yjs through Starlette
    door = settings.yjs_door and settings.ws_impl == "websockets-sansio"
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="none",
        # uvicorn's httptools protocol with header and body deadlines, and the front door for /yjs
        http=DoorHttpProtocol if door else TimedHttpToolsProtocol,
        timeout_keep_alive=max(1, int(settings.http_keepalive_timeout)),
        # the default stack with the send fast path (pairroom/web/frames.py); the others as named
        ws=FramingProtocol if settings.ws_impl == "websockets-sansio" else settings.ws_impl,
        # pairroom enforces max_message_bytes itself with a clear close code; the transport's own
        # limit sits above it so that it never decides first.
        ws_max_size=settings.max_message_bytes * 2 + 1024,
        ws_per_message_deflate=settings.ws_compression,
        ws_ping_interval=settings.ws_ping_interval,
        ws_ping_timeout=settings.ws_ping_timeout,
        lifespan="on",
        log_config=None,
        timeout_graceful_shutdown=max(1, int(settings.shutdown_timeout)),
    )
    config.extra_signal_handlers = signals  # type: ignore[attr-defined]
    config.header_timeout = settings.http_header_timeout  # type: ignore[attr-defined]
    config.body_timeout = settings.http_body_timeout  # type: ignore[attr-defined]
    config.yjs_door = YjsDoor if door else None  # type: ignore[attr-defined]
    config.yjs_app = app  # type: ignore[attr-defined]
    return config


async def start_serving(server: Server) -> asyncio.Task[None]:
    """Run ``server`` in a task and return once it listens; if it exits first, raise its error."""
    task = asyncio.create_task(server.serve())
    ready = asyncio.create_task(server.ready.wait())
    await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    ready.cancel()
    if task.done():
        task.result()
        raise RuntimeError("server exited during start-up")
    return task
