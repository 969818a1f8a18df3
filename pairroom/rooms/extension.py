"""The one way anything plugs into pairroom: a typed ``Extension`` with optional hooks.

Built-in features (persistence, the cluster bridge, chat, review, recording, kernels, rtc) and
third-party packages are all extensions, listed in ``app.py`` or found through the
``pairroom.extensions`` entry point group. Every hook is optional; the runner (``ExtensionRunner``)
works out once which extensions override which hook, so a hook nobody implements costs nothing on the
hot path.

Guarantees (see ``docs/extensions.md``):

- hooks run in ``priority`` order (lower first; ties in the order the extensions were listed);
- a hook that raises is logged at ERROR with the extension's name and counted in
  ``pairroom_extension_errors_total{extension,hook}``; the room and the other extensions carry on.
  ``Reject`` from ``on_authenticate`` is not an error: it refuses the connection;
- async hooks are bounded by ``hook_timeout`` seconds (a timeout counts as an error);
- sync hooks (``on_change``, ``allows_write``, ``on_join`` ...) run on the room's path: keep them cheap,
  and hand slow work to a task of your own ``lifespan``;
- an extension with ``per_room = True`` is off in a room until an owner switches it on there: its room
  hooks (``ROOM_HOOKS``) are not called for rooms where it is off. The runner asks ``switches`` (the
  marketplace's per-room state); only hooks a per-room extension implements pay for the question;
- an extension that declares ``capabilities`` gets only what they allow: no ``routes`` mounted without
  ``routes``, no ``on_awareness`` without ``awareness``; without ``doc.read`` or ``doc.write`` (and not
  built in) its hooks get a ``RoomHandle`` (``rooms/handles.py``) instead of the room and refuse what
  it did not ask for. Only hooks such an extension implements take that path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, cast

from ..protocol.origins import Origin
from .handles import CapabilityError, NodeHandle, RoomHandle, member_view
from .identity import Principal
from .member import Member as MemberType

if TYPE_CHECKING:
    from starlette.routing import BaseRoute

    from .member import Member
    from .owners import OwnerRow
    from .room import Room

log = logging.getLogger("pairroom.extensions")


class Reject(Exception):
    """Raised by ``on_authenticate`` to refuse a connection with a websocket close code."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Connection:
    """Who is knocking, after the token was checked: the payload of ``on_authenticate``."""

    room_name: str
    principal: Principal
    headers: Mapping[str, str]
    endpoint: str  # "yjs", "replay", "signal", "call", or an extension's own


@dataclass(frozen=True, slots=True)
class Change:
    """An update the room's document integrated: the payload of ``on_change`` and
    ``after_client_change``. ``author`` is the person it came from (a client of this node or,
    through the bus, of another), or None for the server's own changes."""

    room: Room
    update: bytes
    origin: Origin
    author: Principal | None


class ErrorCounter(Protocol):
    def extension_error(self, extension: str, hook: str) -> None: ...


class RoomSwitches(Protocol):
    """Which per-room extensions an owner switched on in a room (``marketplace.switches``)."""

    def is_on(self, room: Room, extension: str) -> bool: ...


class Extension:
    """Subclass and override the hooks you need; the defaults do nothing.

    ``name`` is how the operator enables it and where its routes mount (``/ext/{name}/`` for
    third-party extensions); ``settings`` holds its ``PAIRROOM_EXT_<NAME>_<KEY>`` values.
    """

    name: ClassVar[str] = ""
    version: ClassVar[str] = "0"
    priority: ClassVar[int] = 100
    hook_timeout: ClassVar[float] = 5.0
    builtin: ClassVar[bool] = False  # built-ins mount their routes at the root
    per_room: ClassVar[bool] = False  # off in a room until an owner switches it on there
    # What it asks for (``doc.read``, ``doc.write``, ``awareness``, ``routes``, ``frontend``, ``kernel``,
    # ``network``): the loader sets it from the package's manifest, built-ins declare theirs. None
    # (an extension handed to ``create_app`` in code) is not restricted.
    capabilities: frozenset[str] | None = None

    settings: Mapping[str, str] = {}

    # -- the node -------------------------------------------------------------------------------

    def routes(self) -> Sequence[BaseRoute]:
        """HTTP and websocket routes of this extension."""
        return ()

    def lifespan(self, node: Any) -> AbstractAsyncContextManager[None] | None:
        """An async context entered at start-up (in priority order) and left at shutdown (in
        reverse). ``node`` is the running node (``web.hub.Hub``): settings, store, registry,
        cluster, metrics and ``node.supervisor`` to run background loops under supervision."""
        return None

    # -- connections ----------------------------------------------------------------------------

    async def on_authenticate(self, conn: Connection) -> None:
        """Refuse with ``raise Reject(code, reason)``; return to let the connection in."""

    # -- rooms ----------------------------------------------------------------------------------

    async def on_load(self, room: Room) -> None:
        """The room's document was loaded from storage and is about to become active."""

    def on_loaded(self, room: Room) -> None:
        """The room is active: members can join."""

    def on_unload(self, room: Room) -> None:
        """The room is leaving memory (idle, deleted or shutdown)."""

    def allows_write(self, room: Room, member: Member, update: bytes) -> bool:
        """For a member whose role may write only parts of the document (a reviewer): True if
        this update stays within what this extension lets them write. Members with full write
        rights never reach it. Any extension saying True lets the update in."""
        return False

    def on_change(self, change: Change) -> None:
        """The document integrated an update (any origin)."""

    def after_client_change(self, change: Change) -> None:
        """A client's update was integrated and the guards have run (the place to stamp or
        revert what a client wrote, in a server transaction)."""

    def on_join(self, room: Room, member: Member) -> None: ...

    def on_leave(self, room: Room, member: Member) -> None: ...

    def on_awareness(self, room: Room, member: Member, states: dict[int, Any]) -> None:
        """A member's awareness states changed (client id -> state; None when removed)."""

    def on_deleted(self, room_name: str) -> None:
        """The room was deleted (here or on another node) and evicted without a final flush."""

    async def on_forked(self, source: str, fork: str, seq: int, by: Principal) -> Mapping[str, Any] | None:
        """Room ``fork`` was just made from ``source`` as it was at ``seq`` (its log is stored; it
        may not be loaded). What this returns goes into the fork's answer under the extension's name."""
        return None

    def http_errors(self) -> Mapping[type[Exception], int | None]:
        """This extension's exceptions and the HTTP status each answers with (None: the
        exception's own ``status``), so its routes raise instead of catching: errors are mapped to
        HTTP once, for every route, as ``{"error": reason}``."""
        return {}

    def document_rows(self) -> Sequence[OwnerRow]:
        """Rows this extension adds to the document's owner table (``rooms/owners.py``): the roots
        and keys it owns, who may write them and their shape. The guards enforce them like the
        built-in rows; a root nobody claims is not checked."""
        return ()


SYNC_HOOKS = (
    "on_loaded",
    "on_unload",
    "on_change",
    "after_client_change",
    "on_join",
    "on_leave",
    "on_awareness",
    "on_deleted",
)
ASYNC_HOOKS = ("on_authenticate", "on_load", "on_forked")
ALL_HOOKS = ("routes", "lifespan", "http_errors", *ASYNC_HOOKS, "allows_write", *SYNC_HOOKS)
# The hooks about one room, switched per room. ``on_authenticate`` (the door's policy, the room may
# not be loaded), ``on_deleted`` (the room is gone) and ``on_forked`` (two rooms, by name) reach
# every extension.
ROOM_HOOKS = frozenset(ALL_HOOKS) - {"routes", "lifespan", "on_authenticate", "on_deleted", "on_forked"}
CHANGE_HOOKS = frozenset({"on_change", "after_client_change"})  # their payload is a Change


def hooks_of(extension: Extension) -> list[str]:
    """The hooks an extension overrides (for ``GET /api/extensions`` and the runner)."""
    return [hook for hook in ALL_HOOKS if getattr(type(extension), hook) is not getattr(Extension, hook)]


HOOK_NEEDS = {"routes": "routes", "on_awareness": "awareness"}  # hooks not called without the capability
FULL_ROOM = frozenset({"doc.read", "doc.write"})  # who gets the room itself in its hooks
FULL_NODE = frozenset({"doc.read", "doc.write", "kernel"})  # who gets the node itself in its lifespan


def allowed_hooks(extension: Extension) -> list[str]:
    """The hooks of ``extension`` the runner calls: those its capabilities allow."""
    caps = extension.capabilities
    return [h for h in hooks_of(extension) if caps is None or HOOK_NEEDS.get(h, "") in caps or h not in HOOK_NEEDS]


def restricted(extension: Extension) -> bool:
    """True if the extension's hooks get handles instead of the room (``rooms/handles.py``)."""
    caps = extension.capabilities
    return caps is not None and not extension.builtin and not FULL_ROOM <= caps


@dataclass(frozen=True, slots=True)
class Failure:
    """The last error of an extension on this node, for ``GET /api/extensions``."""

    hook: str
    error: str
    at: float


class _NoCounter:
    def extension_error(self, extension: str, hook: str) -> None:
        pass


@dataclass(slots=True)
class ExtensionRunner:
    """Runs every extension's hooks in priority order, each isolated from the others."""

    extensions: Sequence[Extension]
    errors: ErrorCounter = field(default_factory=_NoCounter)
    switches: RoomSwitches | None = None  # None: every per-room extension is off everywhere
    _by_hook: dict[str, tuple[Extension, ...]] = field(init=False)
    document_rows: tuple[OwnerRow, ...] = field(init=False)  # every extension's owner-table rows
    _gated: frozenset[str] = field(init=False)
    last_failure: dict[str, Failure] = field(init=False)  # extension name -> its last error here
    _handled: frozenset[str] = field(init=False)  # hooks some restricted extension implements
    _slow: frozenset[str] = field(init=False)  # _gated | _handled: the hooks notify does not call directly
    _rooms: dict[str, Any] = field(init=False)  # restricted extension -> {room: its RoomHandle}

    def __post_init__(self) -> None:
        ordered = sorted(enumerate(self.extensions), key=lambda pair: (pair[1].priority, pair[0]))
        self.extensions = [extension for _, extension in ordered]
        allowed = {id(e): allowed_hooks(e) for e in self.extensions}
        self._by_hook = {hook: tuple(e for e in self.extensions if hook in allowed[id(e)]) for hook in ALL_HOOKS}
        for e in self.extensions:
            for hook in sorted(set(hooks_of(e)) - set(allowed[id(e)])):
                log.error(
                    "extension hook not called: capability not declared",
                    extra={"extension": e.name, "hook": hook, "capability": HOOK_NEEDS[hook]},
                )
        self.document_rows = tuple(row for e in self.extensions for row in e.document_rows())
        # The room hooks some per-room extension implements: the only ones that ask ``switches``.
        self._gated = frozenset(h for h in ROOM_HOOKS if any(e.per_room for e in self._by_hook[h]))
        self.last_failure = {}
        self._rooms = {e.name: weakref.WeakKeyDictionary() for e in self.extensions if restricted(e)}
        self._handled = frozenset(h for h in ROOM_HOOKS if any(e.name in self._rooms for e in self._by_hook[h]))
        self._slow = self._gated | self._handled

    def implementing(self, hook: str) -> tuple[Extension, ...]:
        return self._by_hook[hook]

    def has(self, hook: str) -> bool:
        return bool(self._by_hook[hook])

    def failed(self, extension: Extension, hook: str) -> None:
        log.exception("extension hook failed", extra={"extension": extension.name, "hook": hook})
        self.errors.extension_error(extension.name, hook)
        exc = sys.exc_info()[1]
        self.last_failure[extension.name] = Failure(hook, f"{type(exc).__name__}: {exc}", time.time())

    # -- capabilities ---------------------------------------------------------------------------

    def refuser(self, extension: Extension) -> Callable[[str, str], Exception]:
        """What a handle calls when ``extension`` tries what it did not ask for: logged, kept, raised."""
        name = extension.name

        def refuse(capability: str, what: str) -> Exception:
            error = CapabilityError(f"extension {name!r} did not ask for {capability!r}: {what} refused")
            log.error("extension capability refused", extra={"extension": name, "capability": capability, "what": what})
            self.errors.extension_error(name, f"capability:{capability}")
            self.last_failure[name] = Failure(f"capability:{capability}", f"CapabilityError: {error}", time.time())
            return error

        return refuse

    def room_for(self, extension: Extension, room: Room) -> Room | RoomHandle:
        """The room as ``extension`` may see it: the room itself, or its handle (one per room)."""
        handles = self._rooms.get(extension.name)
        if handles is None:
            return room
        handle = handles.get(room)
        if handle is None:
            caps = extension.capabilities or frozenset()
            handle = handles[room] = RoomHandle(room, caps, self.refuser(extension))
        return cast("RoomHandle", handle)

    def node_for(self, extension: Extension, node: Any) -> Any:
        """The node ``extension``'s lifespan gets: the node itself, or a ``NodeHandle``."""
        caps = extension.capabilities
        if caps is None or extension.builtin or FULL_NODE <= caps:
            return node
        return NodeHandle(node, caps, self.refuser(extension))

    def _handled_args(self, extension: Extension, hook: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
        """A hook's arguments with the room, its members and (without doc.read) the update replaced."""
        if extension.name not in self._rooms:
            return args
        if hook in CHANGE_HOOKS:
            change: Change = args[0]
            caps = extension.capabilities or frozenset()
            update = change.update if "doc.read" in caps else b""
            return (Change(cast("Room", self.room_for(extension, change.room)), update, change.origin, change.author),)
        room, *rest = args
        if hook == "on_deleted":
            return args
        return (self.room_for(extension, room), *(member_view(a) if isinstance(a, MemberType) else a for a in rest))

    def _in_room(self, hook: str, room: Room) -> tuple[Extension, ...]:
        """The extensions with ``hook`` that are on in ``room``: per-room ones only if switched on."""
        switches = self.switches
        return tuple(
            e for e in self._by_hook[hook] if not e.per_room or (switches is not None and switches.is_on(room, e.name))
        )

    # -- sync hooks -----------------------------------------------------------------------------

    def notify(self, hook: str, *args: object) -> None:
        """Call a sync hook on every extension that has it (and is on in the room); errors are isolated."""
        if hook in self._slow:  # switched per room, or implemented by a restricted extension
            self._notify_slow(hook, args)
            return
        for extension in self._by_hook[hook]:
            try:
                getattr(extension, hook)(*args)
            except Exception:  # noqa: BLE001 - an extension's failure is isolated: logged at ERROR and counted
                self.failed(extension, hook)

    def _notify_slow(self, hook: str, args: tuple[Any, ...]) -> None:
        """``notify`` for a hook that is switched per room or that a restricted extension has: only
        the extensions on in the room, each with the arguments it may see."""
        extensions = self._by_hook[hook]
        if hook in self._gated:
            payload: Any = args[0]
            extensions = self._in_room(hook, payload.room if hook in CHANGE_HOOKS else payload)
        if hook not in self._handled:
            for extension in extensions:
                try:
                    getattr(extension, hook)(*args)
                except Exception:  # noqa: BLE001 - an extension's failure is isolated: logged at ERROR and counted
                    self.failed(extension, hook)
            return
        for extension in extensions:
            try:
                getattr(extension, hook)(*self._handled_args(extension, hook, args))
            except Exception:  # noqa: BLE001 - an extension's failure is isolated: logged at ERROR and counted
                self.failed(extension, hook)

    def allows_write(self, room: Room, member: Member, update: bytes) -> bool:
        extensions = self._by_hook["allows_write"]
        if "allows_write" in self._gated:
            extensions = self._in_room("allows_write", room)
        for extension in extensions:
            try:
                if "allows_write" in self._handled and extension.name in self._rooms:
                    handle = self.room_for(extension, room)
                    if extension.allows_write(cast("Room", handle), cast("Member", member_view(member)), update):
                        return True
                elif extension.allows_write(room, member, update):
                    return True
            except Exception:  # noqa: BLE001 - an extension's failure is isolated: logged at ERROR and counted
                self.failed(extension, "allows_write")  # fails closed: not allowed by this one
        return False

    # -- async hooks ----------------------------------------------------------------------------

    async def _bounded(self, extension: Extension, hook: str, call: Awaitable[None]) -> None:
        try:
            async with asyncio.timeout(extension.hook_timeout):
                await call
        except Reject:
            raise
        except TimeoutError:
            log.error(
                "extension hook timed out",
                extra={"extension": extension.name, "hook": hook, "seconds": extension.hook_timeout},
            )
            self.errors.extension_error(extension.name, hook)
            error = f"TimeoutError: no answer in {extension.hook_timeout} s"
            self.last_failure[extension.name] = Failure(hook, error, time.time())
        except Exception:  # noqa: BLE001 - an extension's failure is isolated: logged at ERROR and counted
            self.failed(extension, hook)

    async def authenticate(self, conn: Connection) -> None:
        """Run ``on_authenticate``; the first ``Reject`` refuses the connection."""
        for extension in self._by_hook["on_authenticate"]:
            await self._bounded(extension, "on_authenticate", extension.on_authenticate(conn))

    async def on_load(self, room: Room) -> None:
        extensions = self._by_hook["on_load"]
        if "on_load" in self._gated:
            extensions = self._in_room("on_load", room)
        for extension in extensions:
            handle = cast("Room", self.room_for(extension, room))
            await self._bounded(extension, "on_load", extension.on_load(handle))

    async def forked(self, source: str, fork: str, seq: int, by: Principal) -> dict[str, Any]:
        """Run ``on_forked``: each extension's answer under its name (one that fails or times out is
        logged and counted, and left out)."""
        answers: dict[str, Any] = {}
        for extension in self._by_hook["on_forked"]:
            found: list[Mapping[str, Any] | None] = []

            async def call(extension: Extension = extension, found: list[Mapping[str, Any] | None] = found) -> None:
                found.append(await extension.on_forked(source, fork, seq, by))

            await self._bounded(extension, "on_forked", call())
            if found and found[0] is not None:
                answers[extension.name] = dict(found[0])
        return answers


@dataclass(slots=True)
class LoopFailure:
    name: str
    error: str
    at: float


class Supervisor:
    """The node's background work in one TaskGroup, owned by the lifespan.

    A loop that crashes is logged at ERROR with its traceback and recorded in ``failures``, which
    turns ``/readyz`` 503 naming it; the other loops carry on (a crash does not cancel its siblings,
    as a bare TaskGroup would). A loop that should restart passes ``restart=True`` and is run again
    after a backoff.
    """

    def __init__(self) -> None:
        self.failures: dict[str, LoopFailure] = {}
        self._group: asyncio.TaskGroup | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Supervisor:
        self._group = asyncio.TaskGroup()
        await self._group.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        group, self._group = self._group, None
        if group is None:
            return
        for task in list(self._tasks):  # whatever its owner did not stop is stopped here
            task.cancel()
        await group.__aexit__(None, None, None)

    def spawn(self, name: str, loop: Callable[[], Awaitable[None]], *, restart: bool = False) -> asyncio.Task[None]:
        if self._group is None:
            raise RuntimeError("the supervisor is not running")
        task = self._group.create_task(self._supervised(name, loop, restart), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _supervised(self, name: str, loop: Callable[[], Awaitable[None]], restart: bool) -> None:
        backoff = 0.5
        while True:
            try:
                await loop()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("background loop crashed", exc_info=True, extra={"task": name})
                self.failures[name] = LoopFailure(name, f"{type(exc).__name__}: {exc}", time.time())
                if not restart:
                    return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)
            self.failures.pop(name, None)

    async def start(self, name: str, run: Callable[[asyncio.Event], Awaitable[None]]) -> asyncio.Task[None]:
        """Spawn a loop that says when it has started (``run(started)``) and wait for that; if it
        dies first, its error is raised here, so start-up fails loudly instead of serving."""
        started = asyncio.Event()
        task = self.spawn(name, lambda: run(started))
        waiter = asyncio.ensure_future(started.wait())
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if not started.is_set():
            failure = self.failures.pop(name, None)
            raise RuntimeError(f"{name} stopped during start-up: {failure.error if failure else 'no error'}")
        return task

    @contextlib.asynccontextmanager
    async def running(
        self, name: str, run: Callable[[asyncio.Event], Awaitable[None]], stop_timeout: float
    ) -> AsyncIterator[None]:
        """``start`` on entry, ``stop`` on exit: the whole lifespan of an extension that owns one loop
        (the cluster bridge, the rooms' flusher, the recorder)."""
        task = await self.start(name, run)
        try:
            yield
        finally:
            await self.stop(task, stop_timeout)

    async def stop(self, task: asyncio.Task[None], timeout: float) -> None:
        """Cancel one loop and wait for it to finish its own cleanup, at most ``timeout`` seconds."""
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            log.error("background loop did not stop in time", extra={"task": task.get_name(), "seconds": timeout})

    @property
    def healthy(self) -> bool:
        return not self.failures
