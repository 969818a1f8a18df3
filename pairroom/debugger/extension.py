"""Debugging together as an extension: the debug routes, the guard on ``debug`` and one session per room.

The kernel service is reached at run time (``node.state.kernels``, behind ``ports.KernelRuns``) and
the recorder too (``node.state.recorder``): this package imports no other feature.

What clients may write under the ``debug`` root is this extension's row of the document's owner
table (``document_rows``, enforced by ``rooms/guards.py``): ``breakpoints`` only, by anyone who writes
the document, reviewers too; every other key (``state``, ``session``, ``stopped``, ``frames``,
``scopes``, ``checks``) has no row, so it is the server's and a client's change to it is reverted.
The row checks only the outer shape (a bounded map of plain values): a stricter check would make the
guard delete the whole key, everyone's breakpoints with it, for one bad entry. Entries are checked one
by one here, right after the client's update (``after_client_change``: members get both back to back).

The session lives on the node that runs the room's kernel; on a cluster, a debug request to another
node answers 409 naming the reason (forwarding debug requests like runs is future work).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pycrdt import Map, Subscription, Text
from starlette.routing import BaseRoute

from pairroom.protocol.origins import ClientOrigin, LocalOrigin
from pairroom.rooms.extension import Change, Extension
from pairroom.rooms.identity import Principal, Role
from pairroom.rooms.owners import EVERYONE_WHO_WRITES, OwnerRow, plain_value
from pairroom.rooms.partial_writes import touches_only

from . import breakpoints as bps
from .session import ORIGIN, AdapterRequests, DebugSession, SessionError

if TYPE_CHECKING:
    from pairroom.rooms.member import Member
    from pairroom.rooms.room import Room

log = logging.getLogger("pairroom.debugger")

GUARD = LocalOrigin("debug-guard")
DEBUG_ROOT = frozenset({"debug"})


def breakpoints_shape(value: Any) -> bool:
    """The owner table's check of ``debug.breakpoints``: a map of plain values, path -> line -> entry."""
    return isinstance(value, Map) and plain_value(value, depth=4, max_string=64 * 1024)


ROWS = (
    OwnerRow("debug", "breakpoints", EVERYONE_WHO_WRITES, breakpoints_shape,
             "`Y.Map` path to `Y.Map` line to `{author, condition?, hitCondition?, logMessage?}`; "
             "entries checked and stamped by the debugger"),
)


@dataclass
class DebugRoom:
    """What the debugger keeps for one loaded room."""

    room: Room
    known: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    session: DebugSession | None = None
    subscriptions: list[tuple[Any, Subscription]] = field(default_factory=list)
    client_touched_keys: set[str] = field(default_factory=set)
    edited_paths: set[str] = field(default_factory=set)
    breakpoints_changed: bool = False


def read_run_policy(room: Room) -> str:
    """``meta.policy.run`` (``"editors"``, the default, or ``"owners"``): debugging follows it."""
    with room.local_change(LocalOrigin("debugger-read")) as doc:
        policy = doc.get("meta", type=Map).get("policy")
        value = policy.get("run") if isinstance(policy, Map) else None
    return value if value in ("editors", "owners") else "editors"


def may_drive(room: Room, role: Role) -> bool:
    """Whether ``role`` (live) may start, step, evaluate: the room's run policy."""
    if read_run_policy(room) == "owners":
        return role is Role.OWNER
    return role.writes_files


class Debugger(Extension):
    name = "debugger"
    builtin = True
    priority = 60  # after the kernels (50): started after them, stopped before them

    def __init__(self, extra: Mapping[str, Any] | None = None) -> None:
        extra = extra or {}
        self.pause_limit = float(extra.get("debug_pause_limit", 600.0))
        self.max_seconds = float(extra.get("debug_max_seconds", 3600.0))
        self.rooms: dict[str, DebugRoom] = {}
        self.counter = AdapterRequests()
        self.node: Any = None

    # -- the node -------------------------------------------------------------------------------

    def routes(self) -> Sequence[BaseRoute]:
        from .api import routes

        return routes

    def http_errors(self) -> Mapping[type[Exception], int | None]:
        return {SessionError: None}

    def document_rows(self) -> Sequence[OwnerRow]:
        return ROWS

    def lifespan(self, node: Any) -> contextlib.AbstractAsyncContextManager[None]:
        return self._run(node)

    @contextlib.asynccontextmanager
    async def _run(self, node: Any) -> AsyncIterator[None]:
        from prometheus_client import Counter as PromCounter

        self.node = node
        node.state.debugger = self
        requests = PromCounter(
            "pairroom_debug_adapter_requests", "DAP requests the server sent to kernels' debuggers",
            ["command"], registry=node.metrics.registry,
        )
        self.counter.on_send = lambda command: requests.labels(command=command).inc()
        try:
            yield
        finally:
            for debug_room in list(self.rooms.values()):
                session = debug_room.session
                if session is not None and session.state in ("running", "stopped"):
                    try:
                        async with asyncio.timeout(2.0):
                            await session.stop("the server is shutting down")
                    except (TimeoutError, SessionError) as exc:
                        log.warning("debug session not stopped at shutdown",
                                    extra={"room": debug_room.room.name, "error": str(exc) or "timeout"})
            self.node = None

    def spawn(self, coro: Any, name: str) -> Any:
        """Background work of a session, under the node's supervisor. A request the kernel could not
        answer (it died, it timed out) is logged here: it ends that step, not the node's health; any
        other failure is a bug, and the supervisor logs and reports it."""
        async def run() -> None:
            try:
                await coro
            except SessionError as exc:
                log.warning("debug step failed", extra={"task": name, "status": exc.status, "error": exc.reason})
        return self.node.supervisor.spawn(name, run)

    def record(self, room: str, kind: str, user: str, data: dict[str, Any]) -> None:
        recorder = getattr(self.node.state, "recorder", None) if self.node is not None else None
        if recorder is not None:
            recorder.record(room, "debug", user, {"event": kind, **data})

    # -- sessions -------------------------------------------------------------------------------

    def new_session(self, room: Room, path: str, principal: Principal) -> DebugSession:
        debug_room = self.rooms[room.name]
        session = DebugSession(
            room, path, principal.user_id, principal.name, counter=self.counter, spawn=self.spawn,
            record=lambda kind, user, data: self.record(room.name, kind, user, data),
            pause_limit=self.pause_limit, max_seconds=self.max_seconds, on_end=self._ended,
            write=lambda values: self._write(debug_room, values),
        )
        debug_room.session = session
        return session

    def _ended(self, session: DebugSession) -> None:
        log.info("debug session ended", extra={"room": session.room.name, "session": session.id})

    def session_of(self, room_name: str) -> DebugSession | None:
        debug_room = self.rooms.get(room_name)
        return debug_room.session if debug_room is not None else None

    def _write(self, debug_room: DebugRoom, values: dict[str, Any]) -> None:
        try:
            with debug_room.room.local_change(ORIGIN) as doc:
                debug = doc.get("debug", type=Map)
                for key, value in values.items():
                    debug[key] = value
        except RuntimeError as exc:  # the room closed under us (server shutdown)
            log.warning("debug state not written", extra={"room": debug_room.room.name, "error": str(exc)})

    # -- rooms ----------------------------------------------------------------------------------

    def on_loaded(self, room: Room) -> None:
        debug_room = DebugRoom(room)
        debug = room.doc.get("debug", type=Map)
        files = room.doc.get("files", type=Map)
        for path, lines in (debug.get("breakpoints") or {}).items() if isinstance(debug.get("breakpoints"), Map) else ():
            if isinstance(lines, Map):
                for key, value in lines.items():
                    if isinstance(value, dict):
                        debug_room.known[(path, key)] = value
        if debug.get("state") in ("queued", "running", "stopped"):
            # A session of this room was alive when its node stopped or died: it is gone.
            session = dict(_plain(debug.get("session")) or {})
            session.update(state="ended", stopId=None, notice="the server running this session stopped")
            self._write(debug_room, {"state": "ended", "session": session, "stopped": None, "frames": [], "scopes": []})
        debug_room.subscriptions = [
            (debug, debug.observe_deep(lambda events: self._on_debug(debug_room, events))),
            (files, files.observe_deep(lambda events: self._on_files(debug_room, events))),
        ]
        self.rooms[room.name] = debug_room

    def on_unload(self, room: Room) -> None:
        debug_room = self.rooms.pop(room.name, None)
        if debug_room is None:
            return
        for shared, subscription in debug_room.subscriptions:
            shared.unobserve(subscription)

    def on_deleted(self, room_name: str) -> None:
        self.rooms.pop(room_name, None)

    def _on_debug(self, debug_room: DebugRoom, events: list[Any]) -> None:
        from_client = isinstance(debug_room.room.current_origin, ClientOrigin)
        for event in events:
            path = list(event.path)
            keys = set(path[:1]) if path else set(getattr(event, "keys", {}) or {})
            if "breakpoints" in keys:
                debug_room.breakpoints_changed = True
            if from_client:
                debug_room.client_touched_keys |= keys

    def _on_files(self, debug_room: DebugRoom, events: list[Any]) -> None:
        if not isinstance(debug_room.room.current_origin, ClientOrigin):
            return
        for event in events:
            path = list(event.path)
            if path:
                debug_room.edited_paths.add(str(path[0]))

    def allows_write(self, room: Room, member: Member, update: bytes) -> bool:
        """Reviewers may write breakpoints (``debug``; its other keys are reverted afterwards)."""
        return member.role is Role.REVIEWER and touches_only(room.doc, update, DEBUG_ROOT)

    def on_change(self, change: Change) -> None:
        debug_room = self.rooms.get(change.room.name)
        if debug_room is None or not debug_room.breakpoints_changed:
            return
        debug_room.breakpoints_changed = False
        if debug_room.session is not None:
            debug_room.session.breakpoints_changed()

    def after_client_change(self, change: Change) -> None:
        debug_room = self.rooms.get(change.room.name)
        if debug_room is None:
            return
        touched, debug_room.client_touched_keys = debug_room.client_touched_keys, set()
        edited, debug_room.edited_paths = debug_room.edited_paths, set()
        # Only files with breakpoints matter: an edit anywhere else costs this set lookup, no write.
        paths = {path for path, _ in debug_room.known if path in edited}
        if "breakpoints" not in touched and not paths:
            return  # other keys of ``debug`` are the owner table's to revert
        author = change.author
        with change.room.local_change(GUARD) as doc:
            debug = doc.get("debug", type=Map)
            files = doc.get("files", type=Map)
            if "breakpoints" in touched:
                removed = bps.normalize(
                    debug, files, debug_room.known,
                    author.user_id if author else "anonymous",
                    None if author is None or author.anonymous else author.name,
                )
                if removed:
                    log.info("breakpoint entries removed", extra={"room": change.room.name, "count": removed})
            if paths:
                bps.follow_edits(debug, files, paths, debug_room.known)

    def on_leave(self, room: Room, member: Member) -> None:
        """The session ends when nobody left in the room may drive it (never for one browser alone)."""
        session = self.session_of(room.name)
        if session is None or session.state not in ("queued", "running", "stopped"):
            return
        for other in room.members.values():
            if other.id == member.id:
                continue
            role = room.role_of(other.principal) if other.principal is not None else other.role
            if may_drive(room, role):
                return
        self.spawn(session.stop("nobody who may drive the debugger is left in the room"),
                   f"debug-abandoned-{room.name}")


def _plain(value: Any) -> Any:
    if isinstance(value, (Map,)):
        return value.to_py()
    if isinstance(value, Text):
        return str(value)
    return value
