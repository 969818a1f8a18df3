"""Calls as an extension: signaling, the call websocket and the audio relay, and their life on the node."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from starlette.routing import BaseRoute

from pairroom.rooms.extension import Extension

from .api import RtcService, routes
from .broker_bus import BrokerSignalBus
from .settings import RtcSettings

log = logging.getLogger("pairroom.rtc")


class Calls(Extension):
    name = "rtc"
    builtin = True
    priority = 100

    def __init__(self, settings: RtcSettings, *, clustered: bool) -> None:
        # Signaling across nodes goes through the cluster's broker once the node runs.
        self.bus = BrokerSignalBus() if clustered else None
        self.service = RtcService(settings, self.bus)

    def routes(self) -> Sequence[BaseRoute]:
        return routes

    def lifespan(self, node: Any) -> contextlib.AbstractAsyncContextManager[None]:
        return self._run(node)

    @contextlib.asynccontextmanager
    async def _run(self, node: Any) -> AsyncIterator[None]:
        node.state.rtc = self.service
        if self.bus is not None:
            await self.bus.start(node.cluster)
        try:
            yield
        finally:
            try:
                async with asyncio.timeout(10):
                    if self.bus is not None:
                        await self.bus.stop()
                    await self.service.aclose()
            except TimeoutError:
                log.error("calls did not close in time")
