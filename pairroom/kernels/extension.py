"""Code execution as an extension: the kernel service's routes and its life on the node."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from starlette.routing import BaseRoute

from pairroom.rooms.extension import Extension
from .service import KernelUnavailable, KernelUnreachable

from .api import routes
from .cluster_lease import ClusterKernelLease
from pairroom.sandbox.bubblewrap import SandboxUnavailable
from .service import KernelLease, KernelService
from pairroom.sandbox.settings import KernelSettings

log = logging.getLogger("pairroom.kernels")


class Kernels(Extension):
    name = "kernels"
    builtin = True
    priority = 50  # stopped before the recorder and the rooms' final flush: the last outputs are stored

    def __init__(
        self,
        settings: KernelSettings,
        *,
        enabled: bool,
        clustered: bool,
        shutdown_timeout: float,
        lease_timings: dict[str, float] | None = None,
    ) -> None:
        self.kernel_settings = settings
        self.lease_timings = lease_timings or {}  # ClusterKernelLease's ttl and renew_seconds
        self.enabled = enabled
        self.clustered = clustered
        self.shutdown_timeout = shutdown_timeout

    def routes(self) -> Sequence[BaseRoute]:
        return routes

    def http_errors(self) -> Mapping[type[Exception], int | None]:
        # another node runs the room's kernel: 409; the sandbox is missing or that node is away: 503
        return {KernelUnavailable: 409, KernelUnreachable: 503, SandboxUnavailable: 503}

    def lifespan(self, node: Any) -> contextlib.AbstractAsyncContextManager[None]:
        return self._run(node)

    @contextlib.asynccontextmanager
    async def _run(self, node: Any) -> AsyncIterator[None]:
        lease = ClusterKernelLease(node.cluster.broker, **self.lease_timings) if self.clustered else None
        kernels, node.state.kernels_error = await self._start(node, lease)
        node.state.kernels = kernels
        try:
            yield
        finally:
            if kernels is not None:
                try:
                    async with asyncio.timeout(self.shutdown_timeout):
                        await kernels.stop()
                except TimeoutError:
                    log.error("shutdown step did not finish in time", extra={"step": "stopping kernels"})
                except Exception:  # the rooms' final flush runs after this whatever went wrong here
                    log.exception("stopping kernels failed")

    async def _start(self, node: Any, lease: KernelLease | None) -> tuple[KernelService | None, str | None]:
        """The kernel service, or None and the reason (runs then answer 503 with it): disabled, or the
        sandbox is missing and ``--unsafe-kernels`` was not given."""
        if not self.enabled:
            return None, "kernels are disabled on this server (--no-kernels)"
        settings = self.kernel_settings
        if lease is not None:  # meta.kernel.node names the cluster node holding the lease
            settings = dataclasses.replace(settings, node=node.node_id)
        kernels = KernelService(node.registry, settings, lease)
        try:
            await kernels.start()
        except SandboxUnavailable as exc:
            log.error("kernels refused: no sandbox", extra={"error": str(exc)})
            return None, f"kernels refused: {exc}"
        return kernels, None
