"""The terminals of this node: create, list, end; idle ends; one sandbox probe for all of them.

Each terminal keeps its room's workspace in use (``Workspaces.use``), which keeps the room loaded
and the workspace syncing both ways while the shell lives. A terminal ends on ``DELETE``, when
nobody watched it and it printed nothing for ``idle_seconds``, when its room is deleted, and when
the node stops; ending kills the sandbox and so every process the shell started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from typing import Any

from pairroom.sandbox.limits import Cgroups, detect_cgroups
from pairroom.sandbox.bubblewrap import Sandbox, probe
from pairroom.sandbox.settings import KernelSettings
from pycrdt import Array, Map

from pairroom.protocol.origins import LocalOrigin
from pairroom.rooms.identity import Principal, Role
from pairroom.rooms.room import RoomState
from pairroom.workspace import Workspaces, WorkspaceSettings

from .pty import Shell
from .session import Terminal
from .settings import TerminalSettings

log = logging.getLogger("pairroom.terminal")

TERMINALS_ROOT = "terminals"
MAX_COMMANDS = 200


class TerminalLimit(RuntimeError):
    """The room has its maximum number of terminals."""


class TerminalService:
    def __init__(
        self,
        registry: Any,
        kernel_settings: KernelSettings,
        settings: TerminalSettings | None = None,
        workspace: dict[str, Any] | None = None,
    ) -> None:
        self.registry = registry
        self.kernel_settings = kernel_settings
        self.settings = settings or TerminalSettings()
        self.workspace_overrides = workspace or {}  # WorkspaceSettings fields (ignore rules, caps)
        self.rooms: dict[str, dict[str, Terminal]] = {}
        self.sandbox: Sandbox | None = None
        self.cgroups: Cgroups | None = None
        self.workspaces: Workspaces | None = None
        self._stacks: dict[Terminal, contextlib.AsyncExitStack] = {}
        self._reaper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.node = socket.gethostname()

    async def start(self) -> None:
        """Probe the sandbox (raises SandboxUnavailable), find cgroups, attach to the workspaces."""
        self.sandbox = await asyncio.to_thread(probe, self.kernel_settings)
        name = f"pairroom-terminals-{os.getpid()}-{secrets.token_hex(3)}"
        self.cgroups = await asyncio.to_thread(detect_cgroups, self.kernel_settings, name=name)
        uid = gid = None
        if self.sandbox.drops_privileges:
            uid, gid = self.kernel_settings.kernel_uid, self.kernel_settings.kernel_gid
        self.workspaces = Workspaces.attach(
            self.registry,
            WorkspaceSettings(root=self.kernel_settings.state_dir, uid=uid, gid=gid, **self.workspace_overrides),
        )
        self._reaper = asyncio.create_task(self._reap_idle(), name="pairroom-terminals-idle")
        log.info("terminals ready", extra={"sandbox": "bubblewrap" if self.sandbox.isolated else "none",
                                           "limits": self.cgroups.describe()})

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for room in list(self.rooms):
            await self.close_room(room)
        if self.workspaces is not None:
            await self.workspaces.detach()
            self.workspaces = None
        if self.cgroups is not None:
            self.cgroups.close()

    # -- terminals ---------------------------------------------------------------------------------

    def list(self, room: str) -> list[Terminal]:
        return sorted(self.rooms.get(room, {}).values(), key=lambda t: t.created_at)

    def get(self, room: str, terminal_id: str) -> Terminal | None:
        return self.rooms.get(room, {}).get(terminal_id)

    async def create(self, room: str, principal: Principal, name: str | None = None) -> Terminal:
        assert self.workspaces is not None and self.sandbox is not None and self.cgroups is not None
        terminals = self.rooms.setdefault(room, {})
        if len(terminals) >= self.settings.max_per_room:
            raise TerminalLimit(f"room {room!r} has its maximum of {self.settings.max_per_room} terminals")
        terminal_id = secrets.token_urlsafe(6)
        title = (name or f"Terminal {len(terminals) + 1}")[:64]
        stack = contextlib.AsyncExitStack()
        workspace = await stack.enter_async_context(self.workspaces.use(room))
        terminal: Terminal | None = None
        try:
            await workspace.ensure_dir()
            terminal = Terminal(terminal_id, title, room, principal, self.settings, self._role_of(room),
                                self._start_shell, workspace, self._record)
            terminals[terminal_id] = terminal  # counted from here: two creates cannot both pass the limit
            self._stacks[terminal] = stack
            await terminal.start()
        except BaseException:
            terminals.pop(terminal_id, None)
            if terminal is not None:
                self._stacks.pop(terminal, None)
            await stack.aclose()
            raise
        log.info("terminal started", extra={"room": room, "terminal": terminal_id, "user": principal.user_id})
        return terminal

    def _role_of(self, room: str) -> Any:
        def role_of(principal: Principal) -> Role:
            loaded = self.registry.rooms.get(room)  # held loaded by the terminal's workspace
            return loaded.role_of(principal) if loaded is not None else principal.role
        return role_of

    def _record(self, terminal: Terminal, command: dict[str, Any] | None) -> None:
        """The terminal's entry in the document's ``terminals`` map (docs/terminal.md): its state and
        the last ``MAX_COMMANDS`` command lines with who ran them, so late joiners, storage and the
        room's recording have them without the socket."""
        room = self.registry.rooms.get(terminal.room)
        if room is None or room.state is not RoomState.ACTIVE:
            return
        with room.local_change(LocalOrigin(f"terminal:{terminal.id}")) as doc:
            terminals = doc.get(TERMINALS_ROOT, type=Map)
            entry = terminals.get(terminal.id)
            if not isinstance(entry, Map):
                terminals[terminal.id] = Map({
                    "name": terminal.name, "by": terminal.created_by.user_id,
                    "createdAt": int(terminal.created_at * 1000), "commands": Array(),
                })
                entry = terminals[terminal.id]
            fields = {"status": terminal.status, "rows": terminal.rows, "cols": terminal.cols,
                      "exit": terminal.exit_code, "node": self.node}
            for key, value in fields.items():
                if entry.get(key) != value:
                    entry[key] = value
            if command is not None:
                commands = entry.get("commands")
                if not isinstance(commands, Array):
                    entry["commands"] = Array()
                    commands = entry["commands"]
                commands.append(command)
                if len(commands) > MAX_COMMANDS:
                    del commands[0 : len(commands) - MAX_COMMANDS]

    async def _start_shell(self, terminal: Terminal) -> Shell:
        assert self.sandbox is not None and self.cgroups is not None
        shell = Shell(self.sandbox, self.cgroups, terminal.workspace.path, terminal.rows, terminal.cols,
                      terminal.on_output, terminal.on_exit)
        await shell.start()
        return shell

    async def end(self, room: str, terminal_id: str) -> bool:
        terminal = self.rooms.get(room, {}).pop(terminal_id, None)
        if terminal is None:
            return False
        if not self.rooms.get(room):
            self.rooms.pop(room, None)
        terminal.notice_all("this terminal was ended")
        await terminal.close()
        stack = self._stacks.pop(terminal, None)
        if stack is not None:
            await stack.aclose()  # the workspace's last flush; the room may unload after
        log.info("terminal ended", extra={"room": room, "terminal": terminal_id})
        return True

    async def close_room(self, room: str) -> None:
        for terminal_id in list(self.rooms.get(room, {})):
            await self.end(room, terminal_id)

    def spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("terminal task failed", exc_info=task.exception(), extra={"task": task.get_name()})

    async def _reap_idle(self) -> None:
        while True:
            await asyncio.sleep(min(10.0, self.settings.idle_seconds / 4))
            now = time.monotonic()
            for room, terminals in list(self.rooms.items()):
                for terminal in list(terminals.values()):
                    if not terminal.viewers and now - terminal.last_activity > self.settings.idle_seconds:
                        log.info("terminal idle, ending it", extra={"room": room, "terminal": terminal.id})
                        try:
                            await self.end(room, terminal.id)
                        except Exception:
                            log.exception("ending an idle terminal failed", extra={"room": room, "terminal": terminal.id})
