"""The Starlette application: routes, and the lifespan that opens storage and runs the rooms.

Shutdown runs in uvicorn's order: it stops accepting and closes every websocket with 1012 (service
restart); then the lifespan exits here, flushing every room (bounded by ``shutdown_timeout``) and
closing storage last.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute

from pairroom.chat.extension import Chat
from pairroom.cluster.bridge import Cluster
from pairroom.cluster.broker import Broker, MemoryBroker
from pairroom.cluster.extension import ClusterBridge
from pairroom.config import Settings
from pairroom.debugger.extension import Debugger
from pairroom.extension_loader import Installed, installed
from pairroom.kernels.extension import Kernels
from pairroom.marketplace.extension import Marketplace
from pairroom.recording.extension import Recording
from pairroom.review.extension import Review
from pairroom.rooms.extension import Extension, ExtensionRunner, Supervisor
from pairroom.rooms.partial_writes import ReviewerWrites
from pairroom.rooms.persistence import Persistence
from pairroom.rooms.registry import RoomRegistry
from pairroom.rtc.extension import Calls
from pairroom.storage.store import Store, StoreError, open_store
from pairroom.terminal.extension import Terminals
from pairroom.vcs.extension import VersionControl
from pairroom.web import api, static
from pairroom.web.api import http_error_handlers
from pairroom.web.hub import Hub
from pairroom.web.metrics import Metrics
from pairroom.web.room_identity import RoomIdentityDoor
from pairroom.web.websocket import yjs_endpoint

log = logging.getLogger("pairroom.app")


# What each built-in uses, in the capabilities' words (docs/extensions.md, "Capabilities"): shown by
# GET /api/extensions; ``routes`` and ``awareness`` are enforced for them as for every extension.
BUILTIN_CAPABILITIES: dict[str, frozenset[str]] = {
    "cluster": frozenset({"doc.read", "doc.write", "awareness", "network"}),
    "persistence": frozenset({"doc.read"}),
    "reviewer-writes": frozenset({"doc.read"}),
    "chat": frozenset({"doc.read", "doc.write", "routes"}),
    "review": frozenset({"doc.read", "doc.write", "routes"}),
    "kernels": frozenset({"doc.read", "doc.write", "routes", "kernel"}),
    "debugger": frozenset({"doc.read", "doc.write", "routes", "kernel"}),
    "terminals": frozenset({"routes", "kernel"}),
    "git": frozenset({"doc.read", "doc.write", "routes"}),
    "rtc": frozenset({"awareness", "routes", "network"}),
    "recording": frozenset({"doc.read", "awareness", "routes"}),
    "marketplace": frozenset({"doc.read", "doc.write", "routes"}),
}


def builtin_extensions(settings: Settings) -> list[Extension]:
    """Every built-in capability, each plugged in as an ``Extension`` (see ``docs/extensions.md``)."""
    found = _builtin_extensions(settings)
    for extension in found:
        extension.capabilities = BUILTIN_CAPABILITIES.get(extension.name)
    return found


def _builtin_extensions(settings: Settings) -> list[Extension]:
    limit = settings.shutdown_timeout
    return [
        ClusterBridge(limit),
        Persistence(limit),
        ReviewerWrites(),  # reviewers write review threads and chat only
        Chat(),
        Review(),
        Kernels(
            settings.kernel_settings(), enabled=settings.kernels, clustered=bool(settings.redis), shutdown_timeout=limit
        ),
        Debugger(settings.extra, clustered=bool(settings.redis)),
        Terminals(
            settings.kernel_settings(),
            enabled=settings.kernels,
            options=settings.extension_settings("terminals"),
            clustered=bool(settings.redis),
        ),
        VersionControl(settings.vcs_settings()),
        Calls(settings.rtc, clustered=bool(settings.redis)),
        Recording(settings.extra, limit),
        Marketplace(settings.extension_catalog, settings.extension_catalog_root, settings.extension_catalog_cache),
    ]


def create_app(settings: Settings, store: Store | None = None, extensions: Sequence[Extension] = ()) -> Starlette:
    """The node: the built-in extensions plus ``extensions`` (third-party ones, already configured).
    An extension named like a built-in takes the built-in's place."""
    replacing = {extension.name for extension in extensions}
    builtins = [extension for extension in builtin_extensions(settings) if extension.name not in replacing]
    runner = ExtensionRunner([*builtins, *extensions])
    metrics = Metrics()
    runner.errors = metrics

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            the_store = store or open_store(settings.db)  # memory:// or a database URL
            await the_store.open()
            stack.push_async_callback(bounded_close, the_store, settings.shutdown_timeout)
            supervisor = await stack.enter_async_context(Supervisor())
            node_id = settings.node_id or secrets.token_hex(6)
            broker: Broker = redis_broker(settings.redis, node_id) if settings.redis else MemoryBroker(node_id)
            cluster = Cluster(broker, {}, metrics=metrics, **settings.cluster_settings())
            registry = RoomRegistry(the_store, cluster, settings.room_settings(), metrics)
            registry.extensions = runner
            hub = Hub(settings, the_store, registry, metrics, cluster, supervisor, runner, app.state, node_id)
            app.state.hub = hub
            # Entered in priority order, left in reverse: the cluster bridge first and last, then
            # persistence (the rooms' final flush runs after every feature stopped writing).
            for extension in runner.extensions:
                context = extension.lifespan(runner.node_for(extension, hub))
                if context is not None:
                    await stack.enter_async_context(context)
            log.info("ready", extra={"db": redact(settings.db), "node": node_id, "redis": bool(settings.redis)})
            yield
        log.info("stopped")

    http_errors = {kind: status for e in runner.implementing("http_errors") for kind, status in e.http_errors().items()}
    app = Starlette(
        exception_handlers=http_error_handlers(http_errors),
        routes=[
            WebSocketRoute("/yjs/{path:path}", yjs_endpoint),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics_endpoint),
            Route("/api/extensions", list_extensions),
            *extension_routes(runner),
            *api.routes,
            *static.routes,
        ],
        lifespan=lifespan,
    )
    app.state.extensions = runner
    app.add_middleware(RoomIdentityDoor)
    return app


def extension_routes(runner: ExtensionRunner) -> list[BaseRoute]:
    """Built-ins mount their routes at the root; third-party extensions under ``/ext/{name}/``."""
    mounted: list[BaseRoute] = []
    for extension in runner.implementing("routes"):
        routes = list(extension.routes())
        if extension.builtin:
            mounted.extend(routes)
        elif routes:
            mounted.append(Mount(f"/ext/{extension.name}", routes=routes))
    return mounted


def redis_broker(url: str, node_id: str) -> Broker:
    """The Redis broker, imported only by nodes that use one (redis-py is about 6 MiB resident)."""
    from pairroom.cluster.redis_broker import open_broker

    return open_broker(url, node_id)


async def bounded_close(store: Store, seconds: float) -> None:
    await bounded(store.close(), seconds, "closing storage")


async def bounded(step: Awaitable[object], seconds: float, what: str) -> None:
    """One shutdown step, bounded: a step that hangs or fails is reported and the shutdown goes on
    (the final flush of the rooms must run whatever went wrong before it)."""
    try:
        async with asyncio.timeout(seconds):
            await step
    except TimeoutError:
        log.error("shutdown step did not finish in time", extra={"step": what, "seconds": seconds})
    except Exception:
        log.exception("shutdown step failed", extra={"step": what})


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
    if hub.supervisor.failures:
        failed = {name: failure.error for name, failure in sorted(hub.supervisor.failures.items())}
        return JSONResponse({"status": "unavailable", "failed": failed}, 503)
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


async def list_extensions(request: Request) -> Response:
    """What this node runs and what it could run: every running extension (built-in or enabled,
    with its hooks) and every installed third-party one that is not enabled (from its
    distribution's metadata only: it is not imported). The marketplace adds capabilities,
    verification, last errors and, with ``?room=``, whether each is on in that room."""
    runner: ExtensionRunner = request.app.state.extensions
    available = installed()
    running = [describe(e, available) for e in runner.extensions]
    names = {e.name for e in runner.extensions}
    idle = [
        {
            "name": item.name,
            "version": item.version,
            "distribution": item.distribution,
            "builtin": False,
            "enabled": False,
        }
        for item in sorted(available.values(), key=lambda item: item.name)
        if item.name not in names
    ]
    market = next((e for e in runner.extensions if isinstance(e, Marketplace)), None)
    if market is None:
        return JSONResponse({"extensions": running + idle})
    return JSONResponse(await market.annotate(request, running + idle))


def describe(extension: Extension, available: Mapping[str, Installed]) -> dict[str, object]:
    from pairroom.rooms.extension import allowed_hooks

    item = None if extension.builtin else available.get(extension.name)
    return {
        "name": extension.name,
        "version": item.version if item is not None and item.version else extension.version,
        "distribution": item.distribution if item is not None else None,
        "builtin": extension.builtin,
        "enabled": True,
        "priority": extension.priority,
        "hooks": allowed_hooks(extension),
    }
