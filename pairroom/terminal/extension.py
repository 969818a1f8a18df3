"""Shared terminals as an extension: the routes, the service's life on the node, and room deletion."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from starlette.routing import BaseRoute

from pairroom.kernels.sandbox import SandboxUnavailable
from pairroom.kernels.settings import KernelSettings
from pairroom.rooms.extension import Extension

from .api import routes
from .service import TerminalService
from .settings import TerminalSettings

log = logging.getLogger("pairroom.terminal")


class Terminals(Extension):
    name = "terminals"
    builtin = True
    priority = 55  # stopped before the recorder and the rooms' final flush, like kernels

    def __init__(self, kernel_settings: KernelSettings, *, enabled: bool, settings: TerminalSettings | None = None) -> None:
        self.kernel_settings = kernel_settings
        self.enabled = enabled
        self.terminal_settings = settings or TerminalSettings()
        self.service: TerminalService | None = None

    def routes(self) -> Sequence[BaseRoute]:
        return routes

    def lifespan(self, node: Any) -> contextlib.AbstractAsyncContextManager[None]:
        return self._run(node)

    @contextlib.asynccontextmanager
    async def _run(self, node: Any) -> AsyncIterator[None]:
        node.state.terminals = None
        if not self.enabled:
            node.state.terminals_error = "terminals are disabled on this server (--no-kernels)"
            yield
            return
        service = TerminalService(node.registry, self.kernel_settings, self.terminal_settings)
        service.node = node.node_id  # written to each terminal's entry in the document
        try:
            await service.start()
        except SandboxUnavailable as exc:
            log.error("terminals refused: no sandbox", extra={"error": str(exc)})
            node.state.terminals_error = f"terminals refused: {exc}"
            yield
            return
        self.service = node.state.terminals = service
        try:
            yield
        finally:
            self.service = node.state.terminals = None
            await service.stop()

    def on_deleted(self, room_name: str) -> None:
        if self.service is not None and room_name in self.service.rooms:
            self.service.spawn(self.service.close_room(room_name), f"pairroom-terminals-close-{room_name}")
