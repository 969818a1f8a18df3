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
from pairroom.rooms.room import Room
from pairroom.sandbox.bubblewrap import SandboxUnavailable
from pairroom.sandbox.settings import KernelSettings

from .api import routes
from .cluster_lease import ClusterKernelLease
from .service import KernelLease, KernelService, KernelUnavailable, KernelUnreachable
from .setup import SetupError, setup

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
        self.service: KernelService | None = None

    def routes(self) -> Sequence[BaseRoute]:
        return routes

    def http_errors(self) -> Mapping[type[Exception], int | None]:
        # another node runs the room's kernel: 409; the sandbox is missing or that node is away: 503
        return {KernelUnavailable: 409, KernelUnreachable: 503, SandboxUnavailable: 503}

    def lifespan(self, node: Any) -> contextlib.AbstractAsyncContextManager[None]:
        return self._run(node)

    def on_loaded(self, room: Room) -> None:
        """A room is open here: someone may run code soon, so the warm pool fills (see ``pool``)."""
        if self.service is not None:
            self.service.pool.want()

    @contextlib.asynccontextmanager
    async def _run(self, node: Any) -> AsyncIterator[None]:
        lease = ClusterKernelLease(node.cluster.broker, **self.lease_timings) if self.clustered else None
        kernels, node.state.kernels_error = await self._start(node, lease)
        node.state.kernels = kernels
        self.service = kernels
        try:
            yield
        finally:
            self.service = None
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
        if settings.setup_missing and not (settings.kernel_venv / "bin" / "python").exists():
            try:
                await asyncio.to_thread(prepare, settings)
            except SetupError as exc:
                log.error("kernels refused: their environment could not be prepared", extra={"error": str(exc)})
                return None, f"kernels refused: {exc}; run pairroom kernels setup"
        kernels = KernelService(node.registry, settings, lease)
        try:
            await kernels.start()
        except SandboxUnavailable as exc:
            log.error("kernels refused: no sandbox", extra={"error": str(exc)})
            return None, f"kernels refused: {exc}"
        return kernels, None


def prepare(settings: KernelSettings) -> None:
    """The first start that needs kernels makes their environment (``pairroom kernels setup``), with
    each step logged as it goes: a server installed with pip runs kernels without a script of the
    repository."""
    log.warning("the kernels' Python environment is missing: preparing it", extra={"venv": str(settings.kernel_venv)})
    setup(settings.kernel_venv, say=lambda line: log.info("kernels setup: %s", line.strip()))
