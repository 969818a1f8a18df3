"""Debugging together as an extension: the debug routes, the breakpoints' guard and one session per room.

The kernel service is reached at run time (``node.state.kernels``, behind ``ports.KernelRuns``) and
the recorder too (``node.state.recorder``): this package imports no other feature.

What clients may write is this extension's rows of the document's owner table (``document_rows``,
enforced by ``rooms/guards.py``): every key of the ``breakpoints`` root (one entry each, an object of
plain values; a failed check removes that entry alone), and under the ``debug`` root only
``breakpoints``, the earlier place older pages still write, moved into the root on arrival. Both by
anyone who writes the document, reviewers too. Every other key of ``debug`` (``state``, ``session``,
``stopped``, ``frames``, ``scopes``, ``checks``) has no row, so it is the server's and a client's
change to it is reverted. Entries' fields are checked here, right after the client's update
(``after_client_change``: members get both back to back).

The session lives on the node that runs the room's kernel; on a cluster, a debug request to another
node is forwarded there by the kernel service (``KernelRuns.call`` of op ``debug``, ``actions.py``).
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
from pairroom.rooms.identity import Role
from pairroom.rooms.owners import EVERYONE_WHO_WRITES, OwnerRow, plain_value
from pairroom.rooms.partial_writes import ReviewerWrites, StructIndex

from . import breakpoints as bps
from .ports import KernelRuns
from .session import ORIGIN, AdapterRequests, DebugSession, SessionError

if TYPE_CHECKING:
    from pairroom.rooms.member import Member
    from pairroom.rooms.room import Room

log = logging.getLogger("pairroom.debugger")

GUARD = LocalOrigin("debug-guard")
OP = "debug"  # the kernel service's op that reaches this node's sessions from any node
DEBUG_ROOTS = frozenset({"debug", bps.ROOT})


def entry_shape(value: Any) -> bool:
    """The owner table's check of one ``breakpoints`` entry: an object of plain values (the debugger
    checks the fields and the key; a failed check removes this entry alone)."""
    return isinstance(value, dict) and plain_value(value, depth=2, max_string=64 * 1024)


def legacy_shape(value: Any) -> bool:
    """``debug.breakpoints`` as older pages write it (path -> line -> entry), migrated on arrival."""
    return isinstance(value, Map) and plain_value(value, depth=4, max_string=64 * 1024)


ROWS = (
    OwnerRow(
        bps.ROOT,
        "*",
        EVERYONE_WHO_WRITES,
        entry_shape,
        '`"path:line"` to `{author, condition?, hitCondition?, logMessage?}`; '
        "entries checked and stamped by the debugger",
    ),
    OwnerRow(
        "debug",
        bps.LEGACY,
        EVERYONE_WHO_WRITES,
        legacy_shape,
        "the earlier place of breakpoints (path to line to entry): moved into `breakpoints` on arrival",
    ),
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

    def __init__(self, extra: Mapping[str, Any] | None = None, *, clustered: bool = False) -> None:
        extra = extra or {}
        self.clustered = clustered
        self.pause_limit = float(extra.get("debug_pause_limit", 600.0))
        self.max_seconds = float(extra.get("debug_max_seconds", 3600.0))
        self.rooms: dict[str, DebugRoom] = {}
        self.counter = AdapterRequests()
        self.node: Any = None
        self._served: KernelRuns | None = None

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
            "pairroom_debug_adapter_requests",
            "DAP requests the server sent to kernels' debuggers",
            ["command"],
            registry=node.metrics.registry,
        )
        self.counter.on_send = lambda command: requests.labels(command=command).inc()
        kernels = getattr(node.state, "kernels", None)
        if kernels is not None:
            self.served(kernels)
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
                        log.warning(
                            "debug session not stopped at shutdown",
                            extra={"room": debug_room.room.name, "error": str(exc) or "timeout"},
                        )
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

    def served(self, kernels: KernelRuns) -> KernelRuns:
        """``kernels`` with this node's ``debug`` handler registered (once per kernel service)."""
        if kernels is not self._served:
            from .actions import serve

            kernels.serve(OP, lambda room, args: serve(self, room, args))
            self._served = kernels
        return kernels

    def kernels(self) -> KernelRuns:
        return self.node.state.kernels  # type: ignore[no-any-return]

    def new_session(self, room: Room, path: str, by: str, by_name: str) -> DebugSession:
        debug_room = self.rooms[room.name]
        session = DebugSession(
            room,
            path,
            by,
            by_name,
            node=self.node.node_id if self.node is not None else "",
            counter=self.counter,
            spawn=self.spawn,
            record=lambda kind, user, data: self.record(room.name, kind, user, data),
            pause_limit=self.pause_limit,
            max_seconds=self.max_seconds,
            on_end=self._ended,
            write=lambda values: self._write(debug_room, values),
        )
        debug_room.session = session
        return session

    def _ended(self, session: DebugSession) -> None:
        log.info("debug session ended", extra={"room": session.room.name, "session": session.id})

    def session_of(self, room_name: str) -> DebugSession | None:
        debug_room = self.rooms.get(room_name)
        return debug_room.session if debug_room is not None else None

    def _ours(self, session: Any) -> bool:
        """Whether a session the document says is alive was this node's (on one node: always)."""
        if not self.clustered:
            return True
        plain = _plain(session)
        node = plain.get("node") if isinstance(plain, dict) else None
        return node in (None, "", getattr(self.node, "node_id", None))

    def end_stale(self, room: Room) -> None:
        """The document says a session is alive but none runs here, where the room's kernel runs (or
        none runs anywhere): its node died or stopped. Say it ended, for everyone."""
        debug_room = self.rooms.get(room.name)
        debug = room.doc.get("debug", type=Map)
        if debug_room is None or debug.get("state") not in ("queued", "running", "stopped"):
            return
        local = debug_room.session
        if local is not None and local.state != "ended":
            return
        session = dict(_plain(debug.get("session")) or {})
        session.update(state="ended", stopId=None, notice="the server running this session stopped")
        log.info("stale debug session ended", extra={"room": room.name, "session": session.get("id")})
        self._write(debug_room, {"state": "ended", "session": session, "stopped": None, "frames": [], "scopes": []})

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
        breakpoints = room.doc.get(bps.ROOT, type=Map)
        if debug.get(bps.LEGACY) is not None:  # stored in the earlier shape: written once, here
            try:
                with room.local_change(ORIGIN):
                    moved = bps.migrate_legacy(debug, breakpoints)
                log.info("breakpoints moved to their root", extra={"room": room.name, "count": moved})
            except RuntimeError as exc:  # the room closed under us (server shutdown)
                log.warning("breakpoints not migrated", extra={"room": room.name, "error": str(exc)})
        for bp in bps.read(breakpoints):
            debug_room.known[(bp.path, str(bp.line))] = breakpoints.get(bps.key_of(bp.path, bp.line))
        if debug.get("state") in ("queued", "running", "stopped") and self._ours(debug.get("session")):
            # A session of this room was alive when its node stopped or died: it is gone.
            session = dict(_plain(debug.get("session")) or {})
            session.update(state="ended", stopId=None, notice="the server running this session stopped")
            self._write(debug_room, {"state": "ended", "session": session, "stopped": None, "frames": [], "scopes": []})
        debug_room.subscriptions = [
            (debug, debug.observe_deep(lambda events: self._on_debug(debug_room, events))),
            (breakpoints, breakpoints.observe(lambda event: self._on_breakpoints(debug_room))),
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

    def _on_breakpoints(self, debug_room: DebugRoom) -> None:
        debug_room.breakpoints_changed = True
        if isinstance(debug_room.room.current_origin, ClientOrigin):
            debug_room.client_touched_keys.add(bps.ROOT)

    def _on_files(self, debug_room: DebugRoom, events: list[Any]) -> None:
        if not isinstance(debug_room.room.current_origin, ClientOrigin):
            return
        for event in events:
            path = list(event.path)
            if path:
                debug_room.edited_paths.add(str(path[0]))

    def allows_write(self, room: Room, member: Member, update: bytes) -> bool:
        """Reviewers may write breakpoints (the ``breakpoints`` root, and ``debug`` for older pages;
        its other keys are reverted afterwards)."""
        if member.role is not Role.REVIEWER:
            return False
        return self._index_of(room).touches_only(update, DEBUG_ROOTS)

    def _index_of(self, room: Room) -> StructIndex:
        """The room's struct index, kept up to date by ``ReviewerWrites``: building one here for each
        update decoded the whole document for every keystroke or chat line of a reviewer."""
        extensions = getattr(room, "extensions", None)
        for extension in getattr(extensions, "extensions", ()):
            if isinstance(extension, ReviewerWrites):
                return extension.index_of(room)
        return StructIndex.of(room.doc)  # no ReviewerWrites on this node: a one-off index

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
        # ``bps.ROOT``: the root was written; ``bps.LEGACY``: an older page wrote ``debug.breakpoints``
        if bps.ROOT not in touched and bps.LEGACY not in touched and not paths:
            return  # other keys of ``debug`` are the owner table's to revert
        author = change.author
        with change.room.local_change(GUARD) as doc:
            debug = doc.get("debug", type=Map)
            files = doc.get("files", type=Map)
            breakpoints = doc.get(bps.ROOT, type=Map)
            if bps.LEGACY in touched or bps.ROOT in touched:
                bps.migrate_legacy(debug, breakpoints)
                removed = bps.normalize(
                    breakpoints,
                    files,
                    debug_room.known,
                    author.user_id if author else "anonymous",
                    None if author is None or author.anonymous else author.name,
                )
                if removed:
                    log.info("breakpoint entries removed", extra={"room": change.room.name, "count": removed})
            if paths:
                bps.follow_edits(breakpoints, files, paths, debug_room.known)

    def on_leave(self, room: Room, member: Member) -> None:
        """The session ends when nobody left in the room may drive it (never for one browser alone),
        on this node or, on a cluster, on another (``_driver_on_another_node``). A node that does not
        run the session and sees its last driver leave asks the one that does to check
        (``actions.abandon``)."""
        session = self.session_of(room.name)
        here = session is not None and session.state in ("queued", "running", "stopped")
        if not here and not self._live_elsewhere(room):
            return
        if self.driver_left(room, exclude_member=member.id):
            return
        if session is not None and here:
            self.spawn(
                session.stop("nobody who may drive the debugger is left in the room"), f"debug-abandoned-{room.name}"
            )
            return
        kernels = getattr(self.node.state, "kernels", None) if self.node is not None else None
        if kernels is None:
            return
        # the leaver's presence may not have left the holder's copy yet: name it
        clients = sorted(member.awareness_clients)
        args = {"action": "abandon", "who": {"user": "", "name": "", "owner": False}, "clients": clients}
        self.spawn(self._ask_abandon(self.served(kernels), room.name, args), f"debug-abandon-{room.name}")

    async def _ask_abandon(self, kernels: KernelRuns, room: str, args: dict[str, Any]) -> None:
        try:
            answer = await kernels.call(room, OP, args)
        except RuntimeError as exc:  # the kernels' Unavailable/Unreachable: the pause limit still ends it
            log.warning(
                "the session's node was not asked to check for drivers", extra={"room": room, "error": str(exc)}
            )
            return
        log.info("asked the session's node to check for drivers", extra={"room": room, "answer": answer})

    def _live_elsewhere(self, room: Room) -> bool:
        """Whether the document says a session of another node is alive (on a cluster)."""
        debug = room.doc.get("debug", type=Map)
        return (
            self.clustered
            and debug.get("state") in ("queued", "running", "stopped")
            and not self._ours(debug.get("session"))
        )

    def driver_left(
        self, room: Room, exclude_member: str | None = None, exclude_clients: frozenset[int] = frozenset()
    ) -> bool:
        """Whether someone who may drive is in the room: a member here, or on another node."""
        for other in room.members.values():
            if other.id == exclude_member:
                continue
            role = room.role_of(other.principal) if other.principal is not None else other.role
            if may_drive(room, role):
                return True
        return self._driver_on_another_node(room, exclude_clients)

    def _driver_on_another_node(self, room: Room, exclude: frozenset[int] = frozenset()) -> bool:
        """Whether someone who may drive is connected to another node of the cluster: their presence,
        relayed here, carries the role their node stamped (and restamps when it changes). A state
        without a stamped role is open mode, where everyone edits."""
        if not self.clustered:
            return False
        presence = room.presence
        for client_id in list(presence.remote_owner):
            if client_id in exclude:
                continue
            user = (presence.awareness.states.get(client_id) or {}).get("user")
            if not isinstance(user, dict):
                continue
            try:
                role = Role(user.get("role") or Role.EDITOR.value)
            except ValueError:
                continue
            if may_drive(room, role):
                return True
        return False


def _plain(value: Any) -> Any:
    if isinstance(value, (Map,)):
        return value.to_py()
    if isinstance(value, Text):
        return str(value)
    return value
