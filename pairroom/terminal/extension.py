"""Shared terminals as an extension: the routes, the service's life on the node, and room deletion."""

from __future__ import annotations

import contextlib
import logging
import dataclasses
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from starlette.routing import BaseRoute

from pairroom.sandbox.bubblewrap import SandboxUnavailable
from pairroom.sandbox.settings import KernelSettings
from pycrdt import Map

from pairroom.rooms.extension import Extension
from .service import TerminalLimit
from .pty import ShellStartError
from pairroom.rooms.owners import SERVER, OwnerRow, finite_number, plain_value
from pairroom.workspace import LISTING_ROOT

from .api import routes
from .service import MAX_COMMANDS, TERMINALS_ROOT, TerminalService
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
    ) -> None:
        """``options`` are the ``PAIRROOM_EXT_TERMINALS_<KEY>`` variables (docs/terminal.md); a bad
        value raises ValueError naming it, at start-up."""
        self.kernel_settings = kernel_settings
        self.enabled = enabled
        self.terminal_settings, self.workspace_settings = parse_options(options or {}, settings or TerminalSettings())
        self.service: TerminalService | None = None

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

    def document_rows(self) -> Sequence[OwnerRow]:
        """The server writes both roots; a client's write to them is reverted by the guards. The
        workspace's listing is declared here because the workspace (core) has no extension of its
        own and terminals are what make it change."""
        return [
            OwnerRow(TERMINALS_ROOT, "*", SERVER, terminal_entry,
                     "`Y.Map`: `name`, `by`, `createdAt`, `status`, `exit`, `rows`, `cols`, `node`, "
                     f"`commands` (`Y.Array`, last {MAX_COMMANDS})"),
            OwnerRow(LISTING_ROOT, "*", SERVER, listing_entry, "`Y.Map`: `size` (number), `kind` (`large` or `binary`)"),
        ]

    def on_deleted(self, room_name: str) -> None:
        if self.service is not None and room_name in self.service.rooms:
            self.service.spawn(self.service.close_room(room_name), f"pairroom-terminals-close-{room_name}")


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
