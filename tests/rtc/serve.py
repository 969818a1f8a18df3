"""Start pairroom with the rtc routes attached, in this process, on a free port of 127.0.0.1.

Shared by tests/test_signaling.py (on the host's loopback) and tests/rtc/scenario.py (inside a
loopback-only network namespace), so both start the server the way the CLI does.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from pairroom.app import create_app
from pairroom.config import Settings
from pairroom.rtc.settings import RtcSettings
from pairroom.web.runner import Server, start_serving, uvicorn_config


def server_settings(db: str, secret: str | None = None) -> Settings:
    values: dict[str, Any] = {"port": 0, "db": db, "log_format": "text", "log_level": "warning", "kernels": False}
    return dataclasses.replace(Settings(), secret=secret, **values)


@dataclasses.dataclass
class RtcServer:
    server: Server
    task: asyncio.Task[None]

    @property
    def port(self) -> int:
        assert self.server.port is not None
        return self.server.port

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def rtc(self) -> Any:
        return self.server.config.app.state.rtc

    async def stop(self) -> None:
        self.server.should_exit = True
        await self.task


async def start(db: str, rtc: RtcSettings, secret: str | None = None) -> RtcServer:
    settings = dataclasses.replace(server_settings(db, secret), rtc=rtc)
    app = create_app(settings)
    server = Server(uvicorn_config(app, settings, signals=False))
    task = await start_serving(server)
    return RtcServer(server, task)
