"""Shared terminals as an extension: the routes, the service's life on the node, and room deletion."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from pycrdt import Map
from starlette.routing import BaseRoute

from pairroom.rooms.extension import Extension
from pairroom.rooms.owners import SERVER, OwnerRow, finite_number, plain_value
from pairroom.sandbox.bubblewrap import SandboxUnavailable
from pairroom.sandbox.settings import KernelSettings
from pairroom.storage.store import StoreError
from pairroom.workspace import LISTING_ROOT

from .api import routes
from .pty import ShellStartError
from .service import MAX_COMMANDS, TERMINALS_ROOT, TerminalLimit, TerminalService, new_lease
from .settings import TerminalSettings

log = logging.getLogger("pairroom.terminal")


class Terminals(Extension):
    name = "terminals"
    builtin = True
    # Started before the kernels (50), so the workspace settings read here are the ones the room
    # workspaces get, whichever of the two uses a room's workspace first.
    priority = 45

    def __init__(
        self,
        kernel_settings: KernelSettings,
        *,
        enabled: bool,
        settings: TerminalSettings | None = None,
        options: Mapping[str, str] | None = None,
        clustered: bool = False,
        lease_timings: dict[str, float] | None = None,
    ) -> None:
        """``options`` are the ``PAIRROOM_EXT_TERMINALS_<KEY>`` variables (docs/terminals.md); a bad
        value raises ValueError naming it, at start-up."""
        self.kernel_settings = kernel_settings
        self.enabled = enabled
        self.terminal_settings, self.workspace_settings = parse_options(options or {}, settings or TerminalSettings())
        self.service: TerminalService | None = None
        self.clustered = clustered  # a room's terminals live on the node holding its terminal lease
        self.lease_timings = lease_timings or {}  # the lease's ttl and renew_seconds

    def routes(self) -> Sequence[BaseRoute]:
        return routes

    def http_errors(self) -> Mapping[type[Exception], int | None]:
        return {TerminalLimit: 409, SandboxUnavailable: 503, ShellStartError: 503}

    def lifespan(self, node: Any) -> contextlib.AbstractAsyncContextManager[None]:
        return self._run(node)

    @contextlib.asynccontextmanager
    async def _run(self, node: Any) -> AsyncIterator[None]:
        node.state.terminals = None
        if not self.enabled:
            node.state.terminals_error = "terminals are disabled on this server (--no-kernels)"
            yield
            return
        service = TerminalService(node.registry, self.kernel_settings, self.terminal_settings, self.workspace_settings)
        service.node = node.node_id  # written to each terminal's entry in the document
        if self.clustered:
            service.lease = new_lease(node.cluster.broker, **self.lease_timings)
            service.alive = heard_from(node.cluster)
        try:
            await service.start()
        except SandboxUnavailable as exc:
            log.error("terminals refused: no sandbox", extra={"error": str(exc)})
            node.state.terminals_error = f"terminals refused: {exc}"
            yield
            return
        self.service = node.state.terminals = service
        service.timeline_of = lambda room: room_timeline(
            lambda: getattr(node.state, "recorder", None), node.registry.rooms, room
        )
        try:
            yield
        finally:
            self.service = node.state.terminals = None
            await service.stop()
            # The recorder stopped before us (lifespans leave in reverse): store what the terminals
            # recorded as they ended.
            recorder = getattr(node.state, "recorder", None)
            if recorder is not None:
                try:
                    await recorder.flush()
                except StoreError as exc:
                    log.error("the terminals' last recording was not stored", extra={"error": str(exc)})

    def document_rows(self) -> Sequence[OwnerRow]:
        """The server writes both roots; a client's write to them is reverted by the guards. The
        workspace's listing is declared here because the workspace (core) has no extension of its
        own and terminals are what make it change."""
        return [
            OwnerRow(
                TERMINALS_ROOT,
                "*",
                SERVER,
                terminal_entry,
                "`Y.Map`: `name`, `by`, `createdAt`, `status`, `exit`, `rows`, `cols`, `node`, "
                f"`commands` (`Y.Array`, last {MAX_COMMANDS})",
            ),
            OwnerRow(
                LISTING_ROOT, "*", SERVER, listing_entry, "`Y.Map`: `size` (number), `kind` (`large` or `binary`)"
            ),
        ]

    def on_deleted(self, room_name: str) -> None:
        if self.service is not None and room_name in self.service.rooms:
            self.service.spawn(self.service.close_room(room_name), f"pairroom-terminals-close-{room_name}")


def heard_from(cluster: Any) -> Any:
    """Whether a node is alive by the cluster's heartbeats (``Cluster.peers``, ``dead_after``); right
    after this node starts, a node not heard from yet counts as alive, as for room joins."""

    def alive(node: str) -> bool:
        if node == cluster.node_id:
            return True
        now = time.monotonic()
        seen = cluster.peers.get(node)
        if seen is None:
            return bool(now - cluster.started_at < cluster.dead_after)
        return bool(now - seen < cluster.dead_after)

    return alive


_TERMINAL_KEYS = {"max_per_room": int, "idle_seconds": float, "output_bytes_per_second": int, "rows": int, "cols": int}
_WORKSPACE_KEYS = {"workspace_max_file_bytes": int, "workspace_poll_seconds": float}


def parse_options(options: Mapping[str, str], base: TerminalSettings) -> tuple[TerminalSettings, dict[str, object]]:
    """Terminal settings and workspace overrides from ``PAIRROOM_EXT_TERMINALS_*`` values::

    MAX_PER_ROOM=3  IDLE_SECONDS=1800  OUTPUT_BYTES_PER_SECOND=1048576
    WORKSPACE_IGNORE=.git/,node_modules/,*.pyc  WORKSPACE_MAX_FILE_BYTES=1048576  WORKSPACE_POLL_SECONDS=0.5
    """
    terminal: dict[str, object] = {}
    workspace: dict[str, object] = {}
    for key, raw in options.items():
        if key == "workspace_ignore":
            workspace["ignore"] = tuple(p.strip() for p in raw.split(",") if p.strip())
            continue
        kind = _TERMINAL_KEYS.get(key) or _WORKSPACE_KEYS.get(key)
        if kind is None:
            raise ValueError(f"PAIRROOM_EXT_TERMINALS_{key.upper()}: unknown setting")
        try:
            value = kind(raw)
        except ValueError:
            raise ValueError(f"PAIRROOM_EXT_TERMINALS_{key.upper()}={raw!r}: not a {kind.__name__}") from None
        if value <= 0:
            raise ValueError(f"PAIRROOM_EXT_TERMINALS_{key.upper()}={raw!r}: must be positive")
        if key in _TERMINAL_KEYS:
            terminal[key] = value
        else:
            workspace[key.removeprefix("workspace_")] = value
    return dataclasses.replace(base, **terminal), workspace  # type: ignore[arg-type]


def terminal_entry(value: object) -> bool:
    return isinstance(value, Map) and plain_value(value, depth=4, max_string=64 * 1024)


def listing_entry(value: object) -> bool:
    return (
        isinstance(value, Map)
        and set(value.keys()) == {"size", "kind"}
        and finite_number(value.get("size"))
        and value.get("kind") in ("large", "binary")
    )


class Timeline(Protocol):
    """The room's recording (``node.state.recorder``, the ``recording`` feature, reached at run time:
    features never import each other): an event on the room's timeline, stored with the room."""

    def record(self, room: str, kind: str, user: str, data: dict[str, Any], at: datetime | None = None) -> None: ...


def recording_on(doc: Any) -> bool:
    """``meta.policy.recording`` (docs/doc-schema.md): owners may turn the room's recording off. Read
    live on every event: the recorder itself re-reads it only at the next join, leave or presence."""
    policy = doc.get("meta", type=Map).get("policy")
    return not (isinstance(policy, Map) and policy.get("recording") is False)


def room_timeline(timeline: Any, rooms: dict[str, Any], room: str) -> Any:
    """What the terminals of ``room`` record with (``Terminal.timeline``: kind, user, data, at in
    seconds): the recorder ``timeline()`` gives, if the node runs one (it starts after the terminals,
    so it is looked up per event), unless the room's owners turned recording off. docs/terminals.md,
    "Recording"."""

    def record(kind: str, user: str, data: dict[str, Any], at: float) -> None:
        recorder: Timeline | None = timeline()
        loaded = rooms.get(room)
        if recorder is None or (loaded is not None and not recording_on(loaded.doc)):
            return
        recorder.record(room, kind, user, data, at=datetime.fromtimestamp(at, UTC))

    return record
