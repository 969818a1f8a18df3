"""The marketplace as a built-in extension: the catalog the node was started with, per-room switches
and the browser modules of the enabled extensions.

Per-room switches live in the room's document, ``meta.extensions`` (``{"NAME": true}``), so they reach
every node with the document, are stored with it and recorded on its timeline. Only the server writes
them: ``PUT /api/rooms/{room}/extensions``, for owners (the live role, ``Room.role_of``). The runner
asks ``is_on`` before calling a per-room extension's room hooks; the answer comes from the server's
copy of the map (``_on``), which follows changes made by this node or relayed from another node. The
marketplace's document row gives ``meta.extensions`` to the server alone: a client's write there is
ignored here and reverted by the guards (``rooms/owners.py``), as for ``meta.roles``.

Routes (owners switch, every member reads):

- ``GET /api/rooms/{room}/extensions``: the catalog, and every enabled extension with its version,
  catalog status, capabilities, whether it is on in this room and its browser module (URL and SRI);
- ``PUT /api/rooms/{room}/extensions``: ``{"NAME": true|false, ...}``; 403 for a non-owner, 404 for
  an extension this node does not run, 409 for one that is not switched per room;
- ``GET /api/extensions/{name}/frontend.js``: an enabled extension's ES module.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import weakref
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from importlib.metadata import PackageNotFoundError, packages_distributions, version
from typing import TYPE_CHECKING, Any

from pycrdt import Map
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from pairroom.protocol.origins import ClientOrigin, LocalOrigin
from pairroom.protocol.sync import ProtocolError
from pairroom.rooms.extension import Extension, ExtensionRunner, restricted
from pairroom.rooms.identity import Role
from pairroom.rooms.owners import SERVER, OwnerRow
from pairroom.web.api import ApiError, json_body, require_owner, room_of
from pairroom.web.auth import authenticate
from pairroom.web.websocket import room_name_from_path

from . import catalog as catalogs
from . import manifest as manifests
from .catalog import Catalog, CatalogError

if TYPE_CHECKING:
    from pairroom.rooms.room import Room
    from pairroom.web.hub import Hub

log = logging.getLogger("pairroom.marketplace")

KEY = "extensions"  # meta.extensions
TRUST = (
    "Extensions run inside the server, in its process and with its rights: install only code you trust."
    " Capabilities limit the room an extension is handed, not what its Python can reach."
)
CATALOG_TIMEOUT = 30.0  # seconds a catalog URL may take at start-up before the node starts without it


@dataclass(frozen=True, slots=True)
class FrontendModule:
    title: str
    source: bytes
    integrity: str  # Subresource Integrity: sha384, base64


class Marketplace(Extension):
    name = "marketplace"
    builtin = True
    priority = -50  # before the features: a room's switches are read before their on_load

    def __init__(self, catalog: str = "", catalog_root: str = "", catalog_cache: str = "") -> None:
        self.source = catalog
        self.catalog_root = catalog_root
        self.catalog_cache = catalog_cache
        self.catalog = Catalog()
        self.catalog_errors: tuple[str, ...] = ()
        self.runner: ExtensionRunner | None = None
        self._on: weakref.WeakKeyDictionary[Room, frozenset[str]] = weakref.WeakKeyDictionary()
        self._watching: dict[Room, tuple[Map, Any]] = {}
        self._manifests: dict[str, manifests.Manifest] = {}
        self._versions: dict[str, str | None] = {}  # installed distribution versions, read at start-up
        self._modules: dict[str, FrontendModule] = {}

    # -- the node -------------------------------------------------------------------------------

    def lifespan(self, node: Any) -> contextlib.AbstractAsyncContextManager[None]:
        return self._running(node)

    @contextlib.asynccontextmanager
    async def _running(self, node: Hub) -> AsyncIterator[None]:
        self.runner = node.extensions
        node.extensions.switches = self
        for extension in node.extensions.extensions:
            self._manifests[extension.name] = self._read_manifest(extension)
            if not extension.builtin:
                self._versions[extension.name] = installed_version(type(extension).__module__)
        if self.source:
            await self._load_catalog()
        try:
            yield
        finally:
            node.extensions.switches = None

    async def _load_catalog(self) -> None:
        """The catalog, or the reason there is none: the node starts either way."""
        try:
            async with asyncio.timeout(CATALOG_TIMEOUT):
                self.catalog = await asyncio.to_thread(
                    catalogs.load, self.source, self.catalog_root, self.catalog_cache
                )
        except (CatalogError, TimeoutError) as exc:
            reason = str(exc) or f"{self.source}: no answer in {CATALOG_TIMEOUT:.0f} s"
            log.error("extension catalog refused", extra={"catalog": self.source, "reason": reason})
            self.catalog_errors = (reason,)
            return
        self.catalog_errors = self.catalog.errors
        for problem in self.catalog.errors:
            log.error("extension catalog entry refused", extra={"catalog": self.source, "reason": problem})

    def _read_manifest(self, extension: Extension) -> manifests.Manifest:
        """The manifest beside the extension's package, and its browser module read once."""
        if extension.builtin:
            return manifests.Manifest()
        package = manifests.package_of(type(extension).__module__)
        try:
            found = manifests.read_installed(type(extension).__module__)
        except manifests.ManifestError as exc:
            log.error("extension manifest refused", extra={"extension": extension.name, "reason": str(exc)})
            return manifests.Manifest()
        if found.frontend is not None:
            try:
                source = resources.files(package).joinpath(found.frontend.module).read_bytes()
            except OSError:
                log.error(
                    "extension frontend module missing",
                    extra={"extension": extension.name, "module": found.frontend.module},
                )
                return found
            digest = base64.b64encode(hashlib.sha384(source).digest()).decode()
            self._modules[extension.name] = FrontendModule(
                found.frontend.title or extension.name, source, f"sha384-{digest}"
            )
        return found

    # -- per-room switches ----------------------------------------------------------------------

    async def on_load(self, room: Room) -> None:
        meta = room.guards.meta
        self._on[room] = read_switches(meta)
        held = weakref.ref(room)  # the document's callback must not keep its room alive

        def observed(events: list[Any]) -> None:
            alive = held()
            if alive is not None:
                self._on_meta(alive, events)

        # the Map wrapper owns the subscription: both are kept until the room unloads
        self._watching[room] = (meta, meta.observe_deep(observed))

    def on_unload(self, room: Room) -> None:
        # ``_on`` is left to the weak dictionary: per-room extensions' own on_unload, which run
        # after this one, still see the room's switches
        watching = self._watching.pop(room, None)
        if watching is not None:
            meta, subscription = watching
            meta.unobserve(subscription)

    def _on_meta(self, room: Room, events: list[Any]) -> None:
        if not any(touches_switches(event) for event in events):
            return
        if isinstance(room.current_origin, ClientOrigin):
            return  # not the client's to write: the guards put the server's copy back
        self._on[room] = read_switches(room.guards.meta)

    def is_on(self, room: Room, extension: str) -> bool:
        on = self._on.get(room)
        if on is None:  # asked before this room's on_load ran: read the document itself
            on = read_switches(room.guards.meta)
        return extension in on

    def switch(self, room: Room, changes: Mapping[str, bool]) -> frozenset[str]:
        """An owner's change: written as the server, so every node and the timeline see it."""
        on = set(self._on.get(room, read_switches(room.guards.meta)))
        for name, wanted in changes.items():
            (on.add if wanted else on.discard)(name)
        with room.local_change(LocalOrigin("extensions")) as doc:
            meta = doc.get("meta", type=Map)
            current = meta.get(KEY)
            if isinstance(current, Map):
                for name, wanted in changes.items():
                    if wanted:
                        current[name] = True
                    elif name in current:
                        del current[name]
            else:
                meta[KEY] = Map({name: True for name in sorted(on)})
        self._on[room] = frozenset(on)
        return self._on[room]

    def document_rows(self) -> Sequence[OwnerRow]:
        return [OwnerRow("meta", KEY, SERVER, switches_map, "`Y.Map` extension name to `true`: on in this room")]

    # -- routes ---------------------------------------------------------------------------------

    def routes(self) -> Sequence[BaseRoute]:
        return [
            Route("/api/rooms/{room}/extensions", self.room_extensions, methods=["GET", "PUT"]),
            Route("/api/extensions/{name}/frontend.js", self.frontend_module, methods=["GET"]),
        ]

    def _enabled(self) -> dict[str, Extension]:
        return {e.name: e for e in (self.runner.extensions if self.runner else ())}

    async def room_extensions(self, request: Request) -> Response:
        room_name = room_of(request)
        principal = authenticate(request, room_name)
        hub: Hub = request.app.state.hub
        enabled = self._enabled()
        if request.method == "PUT":
            body = await json_body(request, shape='{"NAME": true|false}')
            if not body:
                raise ApiError(400, 'body must name at least one extension: {"NAME": true|false}')
            for name, wanted in body.items():
                if not isinstance(wanted, bool):
                    raise ApiError(400, f"{name!r}: the value must be true or false")
            async with hub.registry.hold(room_name) as room:
                role = room.role_of(principal)
                require_owner(role)
                for name in body:
                    if name not in enabled:
                        raise ApiError(404, f"extension {name!r} is not enabled on this server")
                    if not enabled[name].per_room:
                        raise ApiError(409, f"extension {name!r} is not switched per room: it is on in every room")
                on = self.switch(room, body)
                log.info("extensions switched", extra={"room": room_name, "by": principal.user_id, "changes": body})
        else:
            async with hub.registry.hold(room_name) as room:
                role = room.role_of(principal)
                on = self._on.get(room, read_switches(room.guards.meta))
        failures = hook_errors(hub)
        return JSONResponse(
            {
                "room": room_name,
                "role": role.value,
                "can_switch": role is Role.OWNER,
                "trust": TRUST,
                "catalog": {
                    "source": self.catalog.source or self.source or None,
                    "verified_by": self.catalog.verified_by or None,
                    "errors": list(self.catalog_errors),
                    "entries": [
                        self._catalog_entry(e, enabled)
                        for e in sorted(self.catalog.entries.values(), key=lambda e: e.name)
                    ],
                },
                "extensions": [self._describe(e, on, failures) for e in enabled.values()],
            }
        )

    async def annotate(self, request: Request, listed: list[dict[str, Any]]) -> dict[str, Any]:
        """``GET /api/extensions``: the running extensions in ``listed`` get their capabilities,
        verification and last error; with ``?room=`` (a token of that room, in secret mode) also
        whether each is on there."""
        room_name = request.query_params.get("room")
        hub: Hub = request.app.state.hub
        on: frozenset[str] | None = None
        extra: dict[str, Any] = {}
        if room_name is not None:
            try:
                room_name = room_name_from_path(room_name, hub.settings.max_room_name)
            except ProtocolError as exc:
                raise ApiError(400, f"room: {exc.reason}") from exc
            principal = authenticate(request, room_name)
            async with hub.registry.hold(room_name) as room:
                on = self._on.get(room, read_switches(room.guards.meta))
                extra = {"room": room_name, "can_switch": room.role_of(principal) is Role.OWNER}
        enabled = self._enabled()
        failures = hook_errors(hub)
        for item in listed:
            extension = enabled.get(item["name"])
            if extension is None or not item.get("enabled"):
                continue
            described = self._describe(extension, on or frozenset(), failures)
            for key in ("capabilities", "declared", "restricted", "catalog", "verified", "verified_by", "errors"):
                item[key] = described[key]
            item["last_error"] = described["last_error"]
            item["per_room"] = extension.per_room
            if on is not None:
                item["on"] = described["on"]
        return {"trust": TRUST, **extra, "extensions": listed}

    def _catalog_entry(self, entry: catalogs.Entry, enabled: Mapping[str, Extension]) -> dict[str, Any]:
        shown = entry.to_json()
        shown["enabled"] = entry.name in enabled
        return shown

    def _describe(
        self, extension: Extension, on: frozenset[str], errors: Mapping[str, dict[str, int]]
    ) -> dict[str, Any]:
        found = self._manifests.get(extension.name, manifests.Manifest())
        entry = self.catalog.entries.get(extension.name)
        installed = self._versions.get(extension.name)
        if extension.builtin:
            status = "builtin"
        elif entry is None:
            status = "not in catalog"
        elif installed != entry.version:
            status = f"catalog pins {entry.version}"
        else:
            status = "pinned"
        module = self._modules.get(extension.name)
        failure = self.runner.last_failure.get(extension.name) if self.runner else None
        declared = extension.capabilities
        return {
            "name": extension.name,
            "version": installed or extension.version,
            "builtin": extension.builtin,
            "per_room": extension.per_room,
            "on": (extension.name in on) if extension.per_room else True,
            "summary": found.summary or (entry.summary if entry else None),
            "capabilities": sorted(
                declared
                if declared is not None
                else found.capabilities | (entry.capabilities if entry else frozenset())
            ),
            # None: handed to the server in code with no declaration, the full surface
            "declared": declared is not None,
            # what the runner holds it to: a room handle without doc.write (rooms/handles.py)
            "restricted": restricted(extension),
            "catalog": status,
            "verified": status in {"pinned", "builtin"},
            "verified_by": self.catalog.verified_by if status == "pinned" else None,
            "errors": errors.get(extension.name, {}),  # hook -> failures (raised or timed out) on this node
            "last_error": None
            if failure is None
            else {"hook": failure.hook, "error": failure.error[:500], "at": round(failure.at * 1000)},
            "frontend": None
            if module is None
            else {
                "url": f"/api/extensions/{extension.name}/frontend.js",
                "integrity": module.integrity,
                "title": module.title,
            },
        }

    async def frontend_module(self, request: Request) -> Response:
        name = request.path_params["name"]
        module = self._modules.get(name)
        if module is None or name not in self._enabled():
            return JSONResponse({"error": f"extension {name!r} has no browser module on this server"}, 404)
        return Response(
            module.source,
            media_type="text/javascript",
            headers={
                # the panel runs in a sandboxed frame with an opaque origin: a module fetch is CORS
                "Access-Control-Allow-Origin": "*",
                "X-Content-Type-Options": "nosniff",
                "Cache-Control": "no-cache",
            },
        )


def read_switches(meta: Map) -> frozenset[str]:
    current = meta.get(KEY)
    if not isinstance(current, Map):
        return frozenset()
    return frozenset(name for name, value in current.items() if value is True)


def switches_map(value: Any) -> bool:
    return isinstance(value, Map) and all(
        isinstance(name, str) and catalogs.NAME.fullmatch(name) and on is True for name, on in value.items()
    )


def touches_switches(event: Any) -> bool:
    if event.path:
        return bool(event.path[0] == KEY)
    return KEY in getattr(event, "keys", {})


def hook_errors(hub: Hub) -> dict[str, dict[str, int]]:
    """Failed hooks by extension, from the node's ``pairroom_extension_errors_total`` counter."""
    found: dict[str, dict[str, int]] = {}
    for family in hub.metrics.extension_errors.collect():
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.value:
                found.setdefault(sample.labels["extension"], {})[sample.labels["hook"]] = int(sample.value)
    return found


def installed_version(module: str) -> str | None:
    package = manifests.package_of(module)
    for dist in packages_distributions().get(package, ()):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return None
