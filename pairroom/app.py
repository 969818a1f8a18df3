"""The Starlette application: routes, and the lifespan that opens storage and runs the rooms.

Shutdown runs in uvicorn's order: it stops accepting and closes every websocket with 1012 (service
restart); then the lifespan exits here, flushing every room (bounded by ``shutdown_timeout``) and
closing storage last.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
from typing import AsyncIterator, Awaitable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute

from pairroom.storage.sql import SqlStore
from pairroom.storage.store import Store, StoreError
from pairroom.cluster.broker import Broker, MemoryBroker
from pairroom.cluster.bridge import Cluster
from pairroom.rooms.registry import RoomRegistry
from pairroom.config import Settings
from pairroom.kernels.api import routes as kernel_routes
from pairroom.kernels.cluster_lease import ClusterKernelLease
from pairroom.kernels.sandbox import SandboxUnavailable
from pairroom.kernels.service import KernelLease, KernelService
from pairroom.recording.api import attach as attach_recorder
from pairroom.rtc.api import attach as attach_rtc
from pairroom.rtc.broker_bus import BrokerSignalBus
from pairroom.rooms.partial_writes import ReviewerWrites
from pairroom.review.api import routes as review_routes
from pairroom.review.guard import ReviewGuard
from pairroom.web import api
from pairroom.web import static
from pairroom.web.hub import Hub
from pairroom.web.metrics import Metrics
from pairroom.web.websocket import yjs_endpoint

log = logging.getLogger("pairroom.app")


def create_app(settings: Settings, store: Store | None = None) -> Starlette:
    # Signaling across nodes: attach_rtc needs the bus now, the lifespan binds it to the cluster.
    signal_bus = BrokerSignalBus() if settings.redis else None

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        the_store = store or SqlStore(settings.db)
        await the_store.open()
        metrics = Metrics()
        node_id = settings.node_id or secrets.token_hex(6)
        broker: Broker = redis_broker(settings.redis, node_id) if settings.redis else MemoryBroker(node_id)
        cluster = Cluster(broker, {}, metrics=metrics, **settings.cluster_settings())
        registry = RoomRegistry(the_store, cluster, settings.room_settings(), metrics)
        registry.write_check = ReviewerWrites()  # reviewers write review threads and chat only
        registry.observers.append(ReviewGuard())
        app.state.hub = Hub(settings, the_store, registry, metrics, cluster)
        tasks = []
        for name, runner in (("cluster", cluster.run), ("rooms", registry.run)):
            started = asyncio.Event()
            task = asyncio.create_task(runner(started), name=f"pairroom-{name}")
            await wait_started(task, started)
            tasks.append(task)
        if signal_bus is not None:
            await signal_bus.start(cluster)
        lease = ClusterKernelLease(broker) if settings.redis else None
        kernels, app.state.kernels_error = await start_kernels(registry, settings, node_id, lease)
        app.state.kernels = kernels
        log.info("ready", extra={"db": redact(settings.db), "node": node_id, "redis": bool(settings.redis)})
        try:
            yield
        finally:
            limit = settings.shutdown_timeout
            if kernels is not None:  # before the rooms flush, so the last outputs are stored
                await bounded(kernels.stop(), limit, "stopping kernels")
            if signal_bus is not None:
                await bounded(signal_bus.stop(), limit, "stopping the signaling bus")
            for task in reversed(tasks):  # rooms flush first, then the cluster says goodbye
                task.cancel()
                await bounded(asyncio.wait({task}), limit + 5, f"stopping {task.get_name()}")
                if task.done() and not task.cancelled() and task.exception() is not None:
                    log.error("background task failed", exc_info=task.exception(), extra={"task": task.get_name()})
            await bounded(the_store.close(), limit, "closing storage")
            log.info("stopped")

    app = Starlette(
        routes=[
            WebSocketRoute("/yjs/{path:path}", yjs_endpoint),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics_endpoint),
            *api.routes,
            *review_routes,
            *kernel_routes,
            *static.routes,
        ],
        lifespan=lifespan,
    )
    attach_rtc(app, settings.rtc, bus=signal_bus)
    attach_recorder(app, settings)
    return app


def redis_broker(url: str, node_id: str) -> Broker:
    """The Redis broker, imported only by nodes that use one (redis-py is about 6 MiB resident)."""
    from pairroom.cluster.redis_broker import open_broker

    return open_broker(url, node_id)


async def start_kernels(
    registry: RoomRegistry, settings: Settings, node_id: str, lease: KernelLease | None = None
) -> tuple[KernelService | None, str | None]:
    """The kernel service, or None and the reason (runs then answer 503 with it): disabled, or the
    sandbox is missing and ``--unsafe-kernels`` was not given."""
    if not settings.kernels:
        return None, "kernels are disabled on this server (--no-kernels)"
    kernel_settings = settings.kernel_settings()
    if lease is not None:  # meta.kernel.node names the cluster node holding the lease
        kernel_settings = dataclasses.replace(kernel_settings, node=node_id)
    kernels = KernelService(registry, kernel_settings, lease)
    try:
        await kernels.start()
    except SandboxUnavailable as exc:
        log.error("kernels refused: no sandbox", extra={"error": str(exc)})
        return None, f"kernels refused: {exc}"
    return kernels, None


async def bounded(step: Awaitable[object], seconds: float, what: str) -> None:
    """One shutdown step, bounded: a step that hangs is reported and the shutdown goes on."""
    try:
        async with asyncio.timeout(seconds):
            await step
    except TimeoutError:
        log.error("shutdown step did not finish in time", extra={"step": what, "seconds": seconds})


async def wait_started(task: asyncio.Task[None], started: asyncio.Event) -> None:
    """Wait until a background task says it started; if it dies first, raise its error."""
    waiter = asyncio.create_task(started.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task.done():
        task.result()
        raise RuntimeError(f"{task.get_name()} stopped during start-up")


def redact(url: str) -> str:
    """Hide a password in a database URL for logs."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "alive"})


async def readyz(request: Request) -> Response:
    hub: Hub = request.app.state.hub
    try:
        async with asyncio.timeout(2.0):
            await hub.store.ping()
    except (StoreError, TimeoutError) as exc:
        return JSONResponse({"status": "unavailable", "storage": str(exc) or "timeout"}, 503)
    if hub.registry.storage_failing:
        return JSONResponse({"status": "unavailable", "storage": "writes failing, retrying"}, 503)
    if not hub.cluster.connected:
        # Local members are still served, but a new member here would not see other nodes' edits
        # until the broker is back: a load balancer should send newcomers elsewhere.
        return JSONResponse({"status": "degraded", "broker": hub.cluster.problem}, 503)
    return JSONResponse({"status": "ready", "rooms": len(hub.registry.rooms)})


async def metrics_endpoint(request: Request) -> Response:
    hub: Hub = request.app.state.hub
    return Response(hub.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
