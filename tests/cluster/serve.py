"""A pairroom node with the cluster kernel lease and the broker signal bus wired in.

Run as ``python -m tests.cluster.serve``; settings come from ``PAIRROOM_*`` variables as for
``pairroom serve``, plus the lease timings below, and it logs ``listening`` (JSON) like the CLI.
It builds the app with ``create_app`` and adds the same wiring that ``app.py`` gets (see
docs/kernels.md, "Across nodes"), so the cluster tests run whether or not the app wires it itself:
the app's own kernel service is switched off and this one, with the lease, takes its place.

- ``PAIRROOM_TEST_LEASE_TTL`` / ``PAIRROOM_TEST_LEASE_RENEW``: the kernel lease (default 10 / 3 s);
- ``PAIRROOM_KERNELS=false``: no kernels (the signaling tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import sys
from typing import AsyncIterator

import uvloop
from starlette.applications import Starlette

from pairroom.kernels.cluster_lease import ClusterKernelLease
from pairroom.kernels.service import KernelService
from pairroom.rtc.api import attach
from pairroom.rtc.broker_bus import BrokerSignalBus
from pairroom.web import logs
from pairroom.app import create_app
from pairroom.config import Settings
from pairroom.web.runner import Server, uvicorn_config

log = logging.getLogger("pairroom.cli")


def wire(app: Starlette, settings: Settings, *, kernels: bool, ttl: float, renew: float) -> Starlette:
    bus = BrokerSignalBus()
    attach(app, settings.rtc, bus=bus)  # the later attach is the one app.state.rtc holds
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with inner(app):
            cluster = app.state.hub.cluster
            await bus.start(cluster)
            try:
                if not kernels:
                    yield
                    return
                lease = ClusterKernelLease(cluster.broker, ttl=ttl, renew_seconds=renew)
                kernel_settings = dataclasses.replace(settings.kernel_settings(), node=cluster.node_id)
                async with KernelService(app.state.hub.registry, kernel_settings, lease) as service:
                    app.state.kernels, app.state.kernels_error = service, None
                    yield
            finally:
                await bus.stop()

    app.router.lifespan_context = lifespan
    return app


def main() -> int:
    settings = Settings.from_env()
    logs.configure(settings.log_level, settings.log_format)
    kernels = settings.kernels
    ttl = float(os.environ.get("PAIRROOM_TEST_LEASE_TTL", "10"))
    renew = float(os.environ.get("PAIRROOM_TEST_LEASE_RENEW", "3"))
    app = wire(create_app(dataclasses.replace(settings, kernels=False)), settings, kernels=kernels, ttl=ttl, renew=renew)
    server = Server(uvicorn_config(app, settings))

    async def run() -> None:
        task = asyncio.create_task(server.serve())
        ready = asyncio.create_task(server.ready.wait())
        await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if server.port is not None:
            log.info("listening", extra={"host": settings.host, "port": server.port})
        await task

    uvloop.run(run())
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
