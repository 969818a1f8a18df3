"""A pairroom node with the cluster kernel lease and the broker signal bus wired in.

Run as ``python -m tests.cluster.serve``; settings come from ``PAIRROOM_*`` variables as for
``pairroom serve``, plus the lease timings below, and it logs ``listening`` (JSON) like the CLI.
It builds the app with ``create_app``, replacing the built-in kernels extension with one whose
lease timings the tests shorten (see docs/kernels.md, "Across nodes").

- ``PAIRROOM_TEST_LEASE_TTL`` / ``PAIRROOM_TEST_LEASE_RENEW``: the kernel and terminal leases (default 10 / 3 s);
- ``PAIRROOM_KERNELS=false``: no kernels (the signaling tests).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

import uvloop

from pairroom.app import create_app
from pairroom.config import Settings
from pairroom.kernels.extension import Kernels
from pairroom.terminal.extension import Terminals
from pairroom.web import logs
from pairroom.web.runner import Server, uvicorn_config

log = logging.getLogger("pairroom.cli")


def kernels_with_lease(settings: Settings, *, ttl: float, renew: float) -> Kernels:
    """The built-in kernels extension, with the lease timings the cluster tests shorten."""
    return Kernels(
        settings.kernel_settings(),
        enabled=settings.kernels,
        clustered=True,
        shutdown_timeout=settings.shutdown_timeout,
        lease_timings={"ttl": ttl, "renew_seconds": renew},
    )


def terminals_with_lease(settings: Settings, *, ttl: float, renew: float) -> Terminals:
    """The built-in terminals extension, clustered, with the same shortened lease timings."""
    return Terminals(
        settings.kernel_settings(),
        enabled=settings.kernels,
        options=settings.extension_settings("terminals"),
        clustered=True,
        lease_timings={"ttl": ttl, "renew_seconds": renew},
    )


def main() -> int:
    settings = Settings.from_env()
    logs.configure(settings.log_level, settings.log_format)
    ttl = float(os.environ.get("PAIRROOM_TEST_LEASE_TTL", "10"))
    renew = float(os.environ.get("PAIRROOM_TEST_LEASE_RENEW", "3"))
    extensions = [
        kernels_with_lease(settings, ttl=ttl, renew=renew),
        terminals_with_lease(settings, ttl=ttl, renew=renew),
    ]
    app = create_app(settings, extensions=extensions)
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
