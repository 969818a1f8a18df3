"""The terminals of this node: create, list, end; idle ends; one sandbox probe for all of them.

Each terminal keeps its room's workspace in use (``Workspaces.use``), which keeps the room loaded
and the workspace syncing both ways while the shell lives. A terminal ends on ``DELETE``, when
nobody watched it and it printed nothing for ``idle_seconds``, when its room is deleted, and when
the node stops; ending kills the sandbox and so every process the shell started.

Across nodes (``lease`` set, docs/scaling.md). A room's terminals all live on one node: the holder
of the room's terminal lease (``keys.terminal_lease``, a ``cluster.lease.HolderLease``), taken by
the node that starts the room's first terminal, renewed while it has one, released after its last.
That node is the one running the room's kernel when a kernel runs (the lease ``follows`` the
kernel's), so the kernel and the terminals share the room's budget; else the node asked.
Every operation goes through ``call``: done here when this node holds the terminal (or can take
the lease), else forwarded to the holder. Listing reads the holder when it answers in time, else
the document's ``terminals`` map, where each entry names its node: an entry whose node is no longer
heard from is listed as ended. The node that next takes the lease marks such entries ``lost`` (its
shell died with its node), and a restart of one starts a fresh shell under the same id there.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any

from pycrdt import Array, Map

from pairroom.cluster.lease import HolderLease, LeaseKind
from pairroom.protocol import keys
from pairroom.protocol.origins import LocalOrigin
from pairroom.rooms.identity import Principal, Role, principal_from_json
from pairroom.rooms.room import RoomState
from pairroom.sandbox.bubblewrap import Sandbox, SandboxUnavailable, probe
from pairroom.sandbox.budget import RoomBudgets
from pairroom.sandbox.limits import Cgroups
from pairroom.sandbox.settings import KernelSettings
from pairroom.web.api import ApiError
from pairroom.workspace import Workspaces, WorkspaceSettings

from .pty import Shell, ShellStartError
from .relay import Relays, RemoteViewers
from .session import Terminal
from .settings import TerminalSettings

log = logging.getLogger("pairroom.terminal")

TERMINALS_ROOT = "terminals"
MAX_COMMANDS = 200


LIVE = ("starting", "running", "exited")
OPS = ("list", "create", "end", "restart", "writers", "size", "cast", "attach")
TERMINAL = LeaseKind("terminal", "the terminals", keys.terminal_lease, keys.terminal_channel, OPS, topic="terminal")


class TerminalLimit(RuntimeError):
    """The room has its maximum number of terminals."""


class NotHeld(RuntimeError):
    """Another node holds the room's terminals (the request is forwarded there)."""


class TerminalsUnreachable(RuntimeError):
    """The node holding the room's terminals did not answer in time, or the broker is down (503)."""


def new_lease(
    broker: object,
    *,
    ttl: float = 10.0,
    renew_seconds: float = 3.0,
    answer_seconds: float = 1.0,
    forward_timeout: float | None = None,
) -> HolderLease:
    """The cluster's terminal lease (ttl, renew_seconds, as for kernels). It follows the room's
    kernel lease: a room's first terminal starts on the node running the room's kernel, so both
    share the room's one cgroup there (sandbox/budget.py is per node)."""
    return HolderLease(
        broker,  # type: ignore[arg-type]
        TERMINAL,
        not_here=(NotHeld,),
        failures=(),
        unreachable=TerminalsUnreachable,
        ttl=ttl,
        renew_seconds=renew_seconds,
        answer_seconds=answer_seconds,
        forward_timeout=forward_timeout,
        follows=keys.kernel_lease,
    )


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
        self.timeline_of: Any = lambda room: None  # room -> what its terminals record with (the extension's)
        self.rooms: dict[str, dict[str, Terminal]] = {}
        self.sandbox: Sandbox | None = None
        self.cgroups: Cgroups | None = None
        self.budgets: RoomBudgets | None = None
        self._limits: dict[Terminal, Cgroups] = {}  # each terminal's room budget
        self.workspaces: Workspaces | None = None
        self._stacks: dict[Terminal, contextlib.AsyncExitStack] = {}
        self._reaper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.node = socket.gethostname()
        self.lease: HolderLease | None = None  # set on a cluster before start()
        self.alive: Callable[[str], bool] = lambda node: True  # is that node still heard from
        self.remote: RemoteViewers | None = None
        self.relays: Relays | None = None

    async def start(self) -> None:
        """Probe the sandbox (raises SandboxUnavailable), find cgroups, attach to the workspaces."""
        self.sandbox = await asyncio.to_thread(probe, self.kernel_settings)
        # one cgroup per room, shared with the room's kernel (sandbox/budget.py)
        self.budgets = await RoomBudgets.attach(self.registry, self.kernel_settings)
        self.cgroups = self.budgets.cgroups
        uid = gid = None
        if self.sandbox.drops_privileges:
            uid, gid = self.kernel_settings.kernel_uid, self.kernel_settings.kernel_gid
        self.workspaces = Workspaces.attach(
            self.registry,
            WorkspaceSettings(root=self.kernel_settings.state_dir, uid=uid, gid=gid, **self.workspace_overrides),
        )
        self._reaper = asyncio.create_task(self._reap_idle(), name="pairroom-terminals-idle")
        if self.lease is not None:
            self.remote = RemoteViewers(self.lease.side, self.alive, self.settings.viewer_queue_bytes)
            self.relays = Relays(self.lease.side, self.lease.node_id, self.settings.viewer_queue_bytes)
            await self.lease.start(self._here, self.spawn)
            await self.relays.start()
        log.info(
            "terminals ready",
            extra={"sandbox": "bubblewrap" if self.sandbox.isolated else "none", "limits": self.budgets.describe()},
        )

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        if self.remote is not None:
            await self.remote.close()
        for room in list(self.rooms):
            await self.close_room(room)
        if self.lease is not None:
            for room in list(self.lease.held):
                await self.lease.release(room)
            await self.lease.stop()
        for task in list(self._tasks):  # lease renewals, forwarded requests
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.workspaces is not None:
            await self.workspaces.detach()
            self.workspaces = None
        if self.budgets is not None:
            self.budgets.detach()
            self.budgets = None

    # -- terminals ---------------------------------------------------------------------------------

    def list(self, room: str) -> list[Terminal]:
        return sorted(self.rooms.get(room, {}).values(), key=lambda t: t.created_at)

    def get(self, room: str, terminal_id: str) -> Terminal | None:
        return self.rooms.get(room, {}).get(terminal_id)

    async def create(
        self, room: str, principal: Principal, name: str | None = None, *, terminal_id: str | None = None
    ) -> Terminal:
        assert self.workspaces is not None and self.sandbox is not None and self.cgroups is not None
        terminals = self.rooms.setdefault(room, {})
        if len(terminals) >= self.settings.max_per_room:
            raise TerminalLimit(f"room {room!r} has its maximum of {self.settings.max_per_room} terminals")
        terminal_id = terminal_id or secrets.token_urlsafe(6)
        title = (name or f"Terminal {len(terminals) + 1}")[:64]
        stack = contextlib.AsyncExitStack()
        workspace = await stack.enter_async_context(self.workspaces.use(room))
        assert self.budgets is not None
        limits = await stack.enter_async_context(self.budgets.use(room))
        terminal: Terminal | None = None
        try:
            await workspace.ensure_dir()
            terminal = Terminal(
                terminal_id,
                title,
                room,
                principal,
                self.settings,
                self._role_of(room),
                self._start_shell,
                workspace,
                self._record,
            )
            terminal.timeline = self.timeline_of(room)
            terminals[terminal_id] = terminal  # counted from here: two creates cannot both pass the limit
            self._stacks[terminal] = stack
            self._limits[terminal] = limits
            await terminal.start()
        except BaseException:
            terminals.pop(terminal_id, None)
            if terminal is not None:
                self._stacks.pop(terminal, None)
                self._limits.pop(terminal, None)
            await stack.aclose()
            raise
        log.info("terminal started", extra={"room": room, "terminal": terminal_id, "user": principal.user_id})
        return terminal

    def describe(self, terminal: Terminal) -> dict[str, Any]:
        """The terminal as the HTTP API lists it, with the node running it."""
        return {**terminal.describe(), "node": self.node}

    def _role_of(self, room: str) -> Any:
        def role_of(principal: Principal) -> Role:
            loaded = self.registry.rooms.get(room)  # held loaded by the terminal's workspace
            return loaded.role_of(principal) if loaded is not None else principal.role

        return role_of

    def _record(self, terminal: Terminal, command: dict[str, Any] | None) -> None:
        """The terminal's entry in the document's ``terminals`` map (docs/terminals.md): its state and
        the last ``MAX_COMMANDS`` command lines with who ran them, so late joiners, storage and the
        room's recording have them without the socket."""
        room = self.registry.rooms.get(terminal.room)
        if room is None or room.state is not RoomState.ACTIVE:
            return
        with room.local_change(LocalOrigin(f"terminal:{terminal.id}")) as doc:
            terminals = doc.get(TERMINALS_ROOT, type=Map)
            entry = terminals.get(terminal.id)
            if not isinstance(entry, Map):
                terminals[terminal.id] = Map(
                    {
                        "name": terminal.name,
                        "by": terminal.created_by.user_id,
                        "createdAt": int(terminal.created_at * 1000),
                        "commands": Array(),
                    }
                )
                entry = terminals[terminal.id]
            fields = {
                "status": terminal.status,
                "rows": terminal.rows,
                "cols": terminal.cols,
                "exit": terminal.exit_code,
                "node": self.node,
            }
            for key, value in fields.items():
                if entry.get(key) != value:
                    entry[key] = value
            if "lost" in entry:  # restarted here after its node died
                del entry["lost"]
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
        shell = Shell(
            self.sandbox,
            self._limits.get(terminal, self.cgroups),
            terminal.workspace.path,
            terminal.rows,
            terminal.cols,
            terminal.on_output,
            terminal.on_exit,
        )
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
        self._limits.pop(terminal, None)
        stack = self._stacks.pop(terminal, None)
        if stack is not None:
            await stack.aclose()  # the workspace's last flush; the room may unload after
        log.info("terminal ended", extra={"room": room, "terminal": terminal_id})
        return True

    async def close_room(self, room: str) -> None:
        for terminal_id in list(self.rooms.get(room, {})):
            await self.end(room, terminal_id)

    # -- from any node (see the module docstring) ---------------------------------------------------

    async def call(self, room: str, op: str, args: dict[str, Any], *, timeout: float | None = None) -> Any:
        """Do ``op`` on the node holding the room's terminals (here if that is this node, or if this
        node can take the lease); raises ApiError with the holder's status for a refusal."""
        try:
            answer = await self._here(room, op, args)
        except NotHeld:
            assert self.lease is not None
            try:
                answer = await self.lease.forward(room, op, args, timeout=timeout)
            except TerminalsUnreachable as exc:
                raise ApiError(503, str(exc)) from exc
        if "error" in answer:
            raise ApiError(answer["status"], answer["error"])
        return answer["ok"]

    async def listing(self, room: str) -> builtins.list[dict[str, Any]]:
        """The room's terminals, as the node holding them sees them; from the document when no
        other node holds any live one, or when the holder does not answer within two seconds."""
        if self.lease is None or room in self.lease.held:
            return await self._local_listing(room)
        entries = await self._entries(room)
        elsewhere = {
            e.get("node")
            for e in entries.values()
            if e.get("status") in LIVE and not e.get("lost") and e.get("node") != self.node
        }
        if any(self.alive(node) for node in elsewhere if isinstance(node, str)):
            try:
                answer = await self.lease.forward(room, "list", {}, timeout=2.0, take_over=False)
                if "ok" in answer:
                    return answer["ok"]  # type: ignore[no-any-return]
            except TerminalsUnreachable as exc:
                log.warning("terminal holder did not answer a listing", extra={"room": room, "error": str(exc)})
        return [
            self._describe_entry(tid, e)
            for tid, e in sorted(entries.items(), key=lambda i: i[1].get("createdAt", 0))
            if self._listed(e)
        ]

    async def _local_listing(self, room: str) -> builtins.list[dict[str, Any]]:
        listed = [self.describe(t) for t in self.list(room)]
        if self.lease is not None:
            local = self.rooms.get(room, {})
            entries = await self._entries(room)
            listed += [
                self._describe_entry(tid, e) for tid, e in entries.items() if tid not in local and self._listed(e)
            ]
        return listed

    async def _entries(self, room: str) -> dict[str, dict[str, Any]]:
        async with self.registry.hold(room) as loaded:
            with loaded.local_change(LocalOrigin("terminal-read")) as doc:
                terminals = doc.get(TERMINALS_ROOT, type=Map)
                return {tid: e.to_py() or {} for tid, e in terminals.items() if isinstance(e, Map)}

    def _is_lost(self, entry: dict[str, Any]) -> bool:
        """Its shell is gone with its node: marked so by a takeover, or its node is not heard from."""
        if entry.get("lost"):
            return True
        node = entry.get("node")
        return entry.get("status") in LIVE and isinstance(node, str) and node != self.node and not self.alive(node)

    def _listed(self, entry: dict[str, Any]) -> bool:
        return entry.get("status") in LIVE or bool(entry.get("lost"))

    def _describe_entry(self, terminal_id: str, entry: dict[str, Any]) -> dict[str, Any]:
        lost = self._is_lost(entry)
        return {
            "id": terminal_id,
            "name": entry.get("name"),
            "status": "ended" if lost else entry.get("status"),
            "exit": None if lost else entry.get("exit"),
            "lost": (entry.get("lost") or f"the node running it ({entry.get('node')}) stopped") if lost else None,
            "node": entry.get("node"),
            "rows": entry.get("rows"),
            "cols": entry.get("cols"),
            "createdBy": entry.get("by"),
            "createdAt": entry.get("createdAt"),
            "commands": list(entry.get("commands") or [])[-20:],
        }

    async def _take(self, room: str) -> None:
        """Hold the room's terminal lease (raises NotHeld if another node does). On taking it, the
        live entries no node runs any more are marked lost."""
        if self.lease is None or room in self.lease.held:
            return
        if not await self.lease.acquire(room):
            raise NotHeld(f"another node runs the terminals of room {room!r}")
        assert self.remote is not None
        await self.lease.side.listen(keys.terminal_input(room), self.remote.on_input)
        self.spawn(self._renew(room), f"pairroom-terminal-lease-{room}")
        local = self.rooms.get(room, {})
        async with self.registry.hold(room) as loaded:
            with loaded.local_change(LocalOrigin("terminal-takeover")) as doc:
                terminals = doc.get(TERMINALS_ROOT, type=Map)
                for tid, entry in terminals.items():
                    if isinstance(entry, Map) and entry.get("status") in LIVE and tid not in local:
                        node = entry.get("node")
                        entry["lost"] = f"the node running it ({node}) stopped"
                        entry["status"] = "ended"
                        log.warning("terminal lost with its node", extra={"room": room, "terminal": tid, "node": node})

    async def _renew(self, room: str) -> None:
        """Keep the lease while this node has terminals in the room; drop remote viewers of dead nodes."""
        lease = self.lease
        assert lease is not None and self.remote is not None
        try:
            while room in lease.held:
                await asyncio.sleep(lease.renew_seconds)
                self.remote.sweep()
                if not self.rooms.get(room):
                    await lease.release(room)
                    return
                if not await lease.renew(room):
                    log.error("terminal lease lost, ending the room's terminals", extra={"room": room})
                    await self.close_room(room)
                    return
        finally:
            await lease.side.forget(keys.terminal_input(room))

    async def _here(self, room: str, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """``op`` on this node: ``{"ok": result}`` or ``{"status", "error"}`` (JSON for the forwarder)."""
        try:
            return {"ok": await self._do(room, op, args)}
        except ApiError as exc:
            return {"status": exc.status, "error": exc.reason}
        except TerminalLimit as exc:
            return {"status": 409, "error": str(exc)}
        except (ShellStartError, SandboxUnavailable) as exc:
            return {"status": 503, "error": str(exc)}

    def _holds(self, room: str) -> bool:
        return self.lease is None or room in self.lease.held

    async def _do(self, room: str, op: str, args: dict[str, Any]) -> Any:
        if op == "list":
            if not self._holds(room):
                raise NotHeld(room)
            return await self._local_listing(room)
        if op == "create":
            await self._take(room)
            created = await self.create(room, principal_from_json(args["by"]), args.get("name"))
            return self.describe(created)
        terminal_id = args["terminal"]
        terminal = self.get(room, terminal_id)
        if terminal is None:
            return await self._not_here(room, op, terminal_id, args)
        if op == "end":
            return await self.end(room, terminal_id)
        if op == "restart":
            await terminal.restart()
            return self.describe(terminal)
        if op == "writers":
            terminal.set_write(args["user"], args["write"])
            user = args["user"]
            name = next((v.principal.name for v in terminal.viewers if v.principal.user_id == user), user)
            terminal.notice_all(f"{args['by']} {'granted' if args['write'] else 'revoked'} typing for {name}")
            return self.describe(terminal)
        if op == "size":
            try:
                terminal.set_size_policy(args["policy"])
            except ValueError as exc:
                raise ApiError(400, str(exc)) from exc
            return self.describe(terminal)
        if op == "cast":
            return terminal.cast.export(f"{room} / {terminal.name}")
        assert self.remote is not None
        self.remote.attach(terminal, args["viewer"], principal_from_json(args["by"]), args["node"])
        return {"node": self.node}

    async def _not_here(self, room: str, op: str, terminal_id: str, args: dict[str, Any]) -> Any:
        """A terminal this node does not run: lost with its node (end clears it, restart starts it
        again here), held by another node (forwarded), or unknown (404)."""
        missing = ApiError(404, f"no terminal {terminal_id!r} in room {room!r}")
        if self.lease is None:
            raise missing
        entry = (await self._entries(room)).get(terminal_id)
        if entry is not None and self._is_lost(entry) and op not in ("end", "restart"):
            raise ApiError(404, f"terminal {terminal_id!r} ended: the node running it stopped; restart it")
        if entry is not None and self._is_lost(entry):
            if op == "end":
                await self._forget_lost(room, terminal_id)
                return True
            await self._take(room)
            return self.describe(await self._restart_lost(room, terminal_id, entry))
        if room in self.lease.held:
            raise missing
        raise NotHeld(room)

    async def _forget_lost(self, room: str, terminal_id: str) -> None:
        async with self.registry.hold(room) as loaded:
            with loaded.local_change(LocalOrigin("terminal-lost")) as doc:
                entry = doc.get(TERMINALS_ROOT, type=Map).get(terminal_id)
                if isinstance(entry, Map):
                    entry["status"] = "ended"
                    if "lost" in entry:
                        del entry["lost"]

    async def _restart_lost(self, room: str, terminal_id: str, entry: dict[str, Any]) -> Terminal:
        by = str(entry.get("by") or "unknown")
        creator = Principal(user_id=by, name=by, color="#888888", role=Role.EDITOR, room=room)
        terminal = await self.create(room, creator, entry.get("name"), terminal_id=terminal_id)
        terminal.notice_all("restarted: the node running this terminal had stopped")
        return terminal

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
                            log.exception(
                                "ending an idle terminal failed", extra={"room": room, "terminal": terminal.id}
                            )
