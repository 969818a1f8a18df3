"""The rooms a node holds in memory: loading on first join, batching writes, unloading when idle.

Life of a room::

    (absent) --first join--> LOADING --store.load ok--> ACTIVE --last member leaves--> idle timer
    idle timer fires, still empty --> UNLOADING --final flush ok--> CLOSED (absent again)
                                                 --flush failed--> ACTIVE (kept, retried later)

A join never sees a half-loaded room: joiners wait on the room's ``ready`` future, and a failed or
timed-out load fails every waiting join (the room is forgotten, the next join tries again) instead of
handing out an empty document. A join that arrives while a room unloads waits for the unload to finish
and then loads the room afresh from storage, which by then holds everything.

Writes are batched: rooms mark themselves dirty on every integrated update; one flusher task waits
``flush_interval`` (or less when a room has ``flush_max_updates`` waiting) and then writes each dirty
room's batch in one transaction. After ``snapshot_every`` logged updates a room's log is compacted into
a snapshot (``storage/compaction.py``) by the one node holding the room's compaction lease.

Loading and unloading go through the cluster bridge (``cluster.py``): the room's channel is subscribed
before the storage load and peers are asked for what storage lacks before anyone joins.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

from pairroom.cluster.bridge import Cluster
from pairroom.cluster.broker import BrokerError
from pairroom.protocol import keys
from pairroom.protocol import sync as protocol
from pairroom.protocol.origins import Origin
from pairroom.rooms.extension import ExtensionRunner
from pairroom.rooms.heap import release_freed_memory
from pairroom.rooms.member import Member
from pairroom.rooms.persistence import write_pending
from pairroom.rooms.presence import PresenceLimits
from pairroom.rooms.room import Room, RoomListener, RoomState
from pairroom.storage.compaction import compact
from pairroom.storage.store import Store, StoreError
from pairroom.storage.writer import Backoff

log = logging.getLogger("pairroom.rooms")

GROUP_MAX_ROOMS = 100  # rooms written in one transaction by the flusher


def _groups(rooms: list[Room], size: int) -> Iterator[list[Room]]:
    for start in range(0, len(rooms), size):
        yield rooms[start : start + size]


class RoomLoadError(Exception):
    """The room could not be loaded from storage; the join fails rather than serve an empty doc."""


class RoomBusy(Exception):
    """The room is loading or unloading on this node; the operation can be tried again shortly."""


@dataclass(frozen=True, slots=True)
class RoomSettings:
    idle_unload_seconds: float = 30.0
    load_timeout: float = 10.0
    flush_interval: float = 0.25
    flush_max_updates: int = 200
    snapshot_every: int = 1000
    keepalive_seconds: float = 15.0
    shutdown_flush_timeout: float = 10.0
    awareness_tick: float = 0.02
    presence_limits: PresenceLimits = field(default_factory=PresenceLimits)
    broadcast_window: float = 0.01
    stamp_identity: bool = True


class RegistryMetrics:
    """What the registry reports; the server's metrics module implements it."""

    def room_loaded(self, count: int) -> None: ...
    def update_integrated(self, origin: Origin, size: int) -> None: ...
    def updates_stored(self, count: int, seconds: float) -> None: ...
    def flush_failed(self) -> None: ...
    def update_dropped(self) -> None: ...
    def write_reverted(self, root: str, key: str | None) -> None: ...


class RoomRegistry(RoomListener):
    def __init__(
        self,
        store: Store,
        cluster: Cluster,
        settings: RoomSettings | None = None,
        metrics: RegistryMetrics | None = None,
    ) -> None:
        self.store = store
        self.cluster = cluster
        self.node_id = cluster.node_id
        self.settings = settings or RoomSettings()
        self.metrics = metrics or RegistryMetrics()
        self.rooms: dict[str, Room] = cluster.rooms
        self.extensions = ExtensionRunner(())  # the app sets the node's extensions before it runs
        self._retry: dict[Room, tuple[float, Backoff]] = {}  # failing rooms: (next attempt, backoff)
        self._uids = itertools.count(1)
        self._compacting: set[str] = set()
        self._ready: dict[str, asyncio.Future[None]] = {}
        self._unloaded: dict[str, asyncio.Event] = {}
        self._idle_timers: dict[str, asyncio.TimerHandle] = {}
        self._dirty: set[Room] = set()
        self._dirty_event = asyncio.Event()
        self._urgent = asyncio.Event()
        self._tasks: asyncio.TaskGroup | None = None
        self.storage_failing = False
        cluster.on_room_deleted = self._deleted_elsewhere

    # -- lifecycle --------------------------------------------------------------------------------

    async def run(self, started: asyncio.Event) -> None:
        """Run the flusher and the keepalive ticker until cancelled, then flush every room."""
        try:
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                tasks.create_task(self._flusher(), name="pairroom-flusher")
                tasks.create_task(self._ticker(), name="pairroom-ticker")
                started.set()
        finally:
            self._tasks = None
            await self.close_all()

    async def close_all(self) -> None:
        """Flush every loaded room (bounded by ``shutdown_flush_timeout``) and forget them."""
        for handle in self._idle_timers.values():
            handle.cancel()
        self._idle_timers.clear()
        rooms = list(self.rooms.values())
        try:
            async with asyncio.timeout(self.settings.shutdown_flush_timeout):
                for room in rooms:
                    if room.state is RoomState.ACTIVE:
                        try:
                            await room.flush()
                        except Exception as exc:  # the next room is still written
                            log.error(
                                "shutdown flush of a room failed",
                                exc_info=not isinstance(exc, StoreError),
                                extra={"room": room.name, "error": str(exc), "updates_unflushed": len(room.pending)},
                            )
        except TimeoutError:
            lost = sum(len(room.pending) for room in rooms)
            log.error("shutdown flush timed out", extra={"updates_unflushed": lost})
        for room in rooms:
            if room.state is not RoomState.CLOSED:
                room.transition(RoomState.CLOSED)
            await self.cluster.closed(room.name)
        self.rooms.clear()
        self.metrics.room_loaded(0)

    # -- joining and leaving ----------------------------------------------------------------------

    async def join(self, name: str, member: Member) -> Room:
        """Join ``member`` to room ``name``, loading the room first if needed."""
        room = await self._acquire(name)
        room.join(member)
        return room

    @contextlib.asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[Room]:
        """Keep room ``name`` loaded while the block runs (for server-side work on a room that may
        have no members: HTTP API calls, kernels). Raises RoomLoadError like a join."""
        room = await self._acquire(name)
        room.holders += 1
        try:
            yield room
        finally:
            room.holders -= 1
            if not room.members and not room.holders and room.state is RoomState.ACTIVE:
                self._arm_idle_timer(room)

    async def _acquire(self, name: str) -> Room:
        """The ACTIVE room ``name``, loaded if needed; its idle timer is disarmed."""
        while True:
            room = self.rooms.get(name)
            if room is None:
                room = await self._load(name)
            elif room.state is RoomState.LOADING:
                await asyncio.shield(self._ready[name])
                continue
            elif room.state is RoomState.UNLOADING:
                await self._unloaded[name].wait()
                continue
            handle = self._idle_timers.pop(name, None)
            if handle is not None:
                handle.cancel()
            return room

    async def _load(self, name: str) -> Room:
        room = Room(
            name,
            self.store,
            listener=self,
            awareness_tick=self.settings.awareness_tick,
            presence_limits=self.settings.presence_limits,
            broadcast_window=self.settings.broadcast_window,
            stamp_identity=self.settings.stamp_identity,
            extensions=self.extensions,
        )
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not self.cluster.solo:  # alone, nothing would hear it (and renewals need no gathering)
            room.presence.on_publish = lambda payload: self.cluster.publish_awareness(room, payload)
        self.rooms[name] = room
        self._ready[name] = ready
        try:
            async with asyncio.timeout(self.settings.load_timeout):
                await self.cluster.opening(name)
                await room.load()
                await self.extensions.on_load(room)
                await self.cluster.opened(room)
            room.transition(RoomState.ACTIVE)
            self.extensions.notify("on_loaded", room)
        except BaseException as exc:
            del self.rooms[name]
            room.transition(RoomState.CLOSED)
            await self.cluster.closed(name)
            error = RoomLoadError(f"room {name!r} could not be loaded: {exc or type(exc).__name__}")
            ready.set_exception(error)
            ready.exception()  # retrieved here; waiters get their own copy through shield
            if isinstance(exc, (StoreError, TimeoutError)):
                raise error from exc
            raise
        finally:
            del self._ready[name]
        ready.set_result(None)
        self.metrics.room_loaded(len(self.rooms))
        return room

    def leave(self, room: Room, member: Member) -> None:
        left = room.leave(member, time.monotonic())
        if left and not room.members and not room.holders and room.state is RoomState.ACTIVE:
            self._arm_idle_timer(room)

    def _arm_idle_timer(self, room: Room) -> None:
        old = self._idle_timers.pop(room.name, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        self._idle_timers[room.name] = loop.call_later(self.settings.idle_unload_seconds, self._idle_timer_fired, room)

    def _idle_timer_fired(self, room: Room) -> None:
        self._idle_timers.pop(room.name, None)
        if room.members or room.holders or room.state is not RoomState.ACTIVE or self.rooms.get(room.name) is not room:
            return
        if self._tasks is None:
            return  # shutting down: close_all flushes it
        self._tasks.create_task(self._unload(room), name=f"pairroom-unload-{room.name}")

    async def _unload(self, room: Room) -> None:
        room.transition(RoomState.UNLOADING)
        unloaded = self._unloaded[room.name] = asyncio.Event()
        try:
            await room.flush()
        except Exception as exc:  # noqa: BLE001 - any error writing one room is logged and retried for that room alone
            log.error("final flush failed, keeping room", extra={"room": room.name, "error": str(exc)})
            room.transition(RoomState.ACTIVE)
            if not room.members:
                self._arm_idle_timer(room)
            return
        finally:
            del self._unloaded[room.name]
            unloaded.set()
        room.transition(RoomState.CLOSED)
        self.extensions.notify("on_unload", room)
        self._dirty.discard(room)
        self._retry.pop(room, None)
        del self.rooms[room.name]
        await self.cluster.closed(room.name)
        self.metrics.room_loaded(len(self.rooms))
        log.info("room unloaded", extra={"room": room.name})

    async def evict(self, name: str, *, tell_peers: bool = True) -> None:
        """Delete the room from memory, on this node and (``tell_peers``) every other one holding it.

        Its members are kicked with 4404, its unflushed updates dropped, and observers hear
        ``on_room_deleted``, so nothing writes it again. Raises ``RoomBusy`` while it loads or
        unloads here."""
        live = self.rooms.get(name)
        if live is not None and live.state is not RoomState.ACTIVE:
            raise RoomBusy(f"room {name!r} is {live.state.value}")
        if tell_peers:
            self.cluster.publish_deleted(name)
        self.extensions.notify("on_deleted", name)
        if live is None:
            return
        for member in list(live.members.values()):
            member.kick(protocol.CloseCode.ROOM_DELETED, "room deleted")
        timer = self._idle_timers.pop(name, None)
        if timer is not None:
            timer.cancel()
        async with live.flush_lock:  # a flush in progress finishes first
            live.pending.clear()
            self._dirty.discard(live)
            self._retry.pop(live, None)
            if self.rooms.get(name) is live:
                del self.rooms[name]
            live.transition(RoomState.CLOSED)
        await self.cluster.closed(name)
        self.metrics.room_loaded(len(self.rooms))
        log.info("room deleted", extra={"room": name, "here": tell_peers})

    def _deleted_elsewhere(self, name: str) -> None:
        if self._tasks is None:
            return
        self._tasks.create_task(self._evict_deleted(name), name=f"pairroom-evict-{name}")

    async def _evict_deleted(self, name: str) -> None:
        try:
            await self.evict(name, tell_peers=False)
        except RoomBusy as exc:
            log.warning("room deleted on another node while busy here", extra={"room": name, "error": str(exc)})

    # -- RoomListener -----------------------------------------------------------------------------

    def on_dirty(self, room: Room) -> None:
        self._dirty.add(room)
        self._dirty_event.set()
        if len(room.pending) >= self.settings.flush_max_updates:
            self._urgent.set()

    def on_update(self, room: Room, origin: Origin, size: int) -> None:
        self.metrics.update_integrated(origin, size)

    def on_update_dropped(self, room: Room, member: Member) -> None:
        self.metrics.update_dropped()

    def on_write_reverted(self, room: Room, member: Member, root: str, key: str | None) -> None:
        self.metrics.write_reverted(root, key)

    def on_local_update(self, room: Room, uid: str, update: bytes) -> None:
        self.cluster.publish_update(room, uid, update)

    def new_uid(self) -> str:
        return f"{self.node_id}:{next(self._uids)}"

    # -- background tasks -------------------------------------------------------------------------

    async def _flusher(self) -> None:
        """Write what gathered, every ``flush_interval`` (sooner when a room is urgent).

        Each group of rooms is written in one transaction; a group that fails is written room by
        room, so one room's bad batch never holds the others back. Any error counts, not only
        ``StoreError``: a room whose batch fails is retried on its own, with a backoff of its own
        (doubling up to 5 s), and counted in ``pairroom_flush_failures_total``; the loop itself
        never dies of a batch.
        """
        while True:
            await self._dirty_event.wait()
            try:
                async with asyncio.timeout(self._next_wait()):
                    await self._urgent.wait()
            except TimeoutError:
                pass  # the batching window ended; write what gathered
            self._urgent.clear()
            self._dirty_event.clear()
            await self.flush_dirty()

    def _next_wait(self) -> float:
        """The batching window, or less when a failing room is due for its retry sooner."""
        wait = self.settings.flush_interval
        if self._retry and len(self._retry) == len(self._dirty):
            now = time.monotonic()
            wait = max(0.0, min(at for at, _ in self._retry.values()) - now)
            wait = max(wait, 0.001)
        return wait

    async def flush_dirty(self) -> None:
        """One pass of the flusher over the dirty rooms that are due."""
        now = time.monotonic()
        rooms, self._dirty = self._dirty, set()
        live: list[Room] = []
        for room in rooms:
            if room.state is RoomState.CLOSED:
                self._retry.pop(room, None)
                continue
            retry = self._retry.get(room)
            if retry is not None and retry[0] > now:
                self._dirty.add(room)  # backing off: not yet
                continue
            live.append(room)
        live.sort(key=lambda r: r.name)
        for group in _groups(live, GROUP_MAX_ROOMS):
            started = time.perf_counter()
            try:
                # Shielded: a shutdown must not cut a write in half (a transaction cancelled
                # mid-way can hold the room's write lock); close_all waits for it instead.
                count = await asyncio.shield(self._flush_group(group))
            except Exception as exc:  # noqa: BLE001 - any error writing one room is logged and retried for that room alone
                if len(group) > 1:
                    await self._flush_each(group)  # one room's bad batch must not hold the others back
                else:
                    self._flush_failed(group[0], exc)
                continue
            for room in group:
                self._retry.pop(room, None)
            if count:
                self.metrics.updates_stored(count, time.perf_counter() - started)
            self._compact_if_due(group)
        self.storage_failing = bool(self._retry)
        if self._dirty:
            self._dirty_event.set()

    async def _flush_group(self, rooms: list[Room]) -> int:
        """Write the pending updates of ``rooms`` in one transaction (``persistence.write_pending``)."""
        return await write_pending(self.store, rooms)

    async def _flush_each(self, rooms: list[Room]) -> None:
        """Write each room on its own; those that fail stay dirty with their own backoff."""
        for room in rooms:
            started = time.perf_counter()
            try:
                count = await asyncio.shield(room.flush())
            except Exception as exc:  # noqa: BLE001 - any error writing one room is logged and retried for that room alone
                self._flush_failed(room, exc)
                continue
            self._retry.pop(room, None)
            if count:
                self.metrics.updates_stored(count, time.perf_counter() - started)
            self._compact_if_due([room])

    def _flush_failed(self, room: Room, exc: Exception) -> None:
        _, backoff = self._retry.get(room, (0.0, Backoff(min(max(self.settings.flush_interval, 0.05), 5.0), 5.0)))
        wait = backoff.failed()
        self._retry[room] = (time.monotonic() + wait, backoff)
        self._dirty.add(room)
        self.metrics.flush_failed()
        log.error(
            "flush failed, will retry",
            exc_info=not isinstance(exc, StoreError),  # an unexpected error shows its traceback
            extra={
                "room": room.name,
                "error": f"{type(exc).__name__}: {exc}",
                "pending": len(room.pending),
                "retry_in": round(wait, 3),
            },
        )

    def _compact_if_due(self, rooms: list[Room]) -> None:
        for room in rooms:
            if room.stored_seq - room.snapshot_seq >= self.settings.snapshot_every:
                self._start_compaction(room)

    def _start_compaction(self, room: Room) -> None:
        if room.name in self._compacting or self._tasks is None:
            return
        self._compacting.add(room.name)
        self._tasks.create_task(self._compact(room), name=f"pairroom-compact-{room.name}")

    async def _compact(self, room: Room) -> None:
        """Fold the room's log into a snapshot, if this node can take the room's compaction lease."""
        try:
            lease = keys.compaction_lease(room.name)
            if not await self.cluster.broker.try_lease(lease, self.node_id, ttl=60.0):
                room.snapshot_seq = room.stored_seq  # another node is on it; check again later
                return
            seq = await compact(self.store, room.name)
            if seq is not None:
                room.snapshot_seq = max(room.snapshot_seq, seq)
                release_freed_memory()  # compaction's copy of the document is gone
        except (StoreError, BrokerError) as exc:
            log.error("compaction failed", extra={"room": room.name, "error": str(exc)})
            return
        finally:
            self._compacting.discard(room.name)
        # Flushes that landed while this ran found it busy and started nothing: catch up with them.
        if room.state is RoomState.ACTIVE and self.rooms.get(room.name) is room:
            self._compact_if_due([room])

    async def _ticker(self) -> None:
        """Send a keepalive to every member that has heard nothing for ``keepalive_seconds``."""
        period = self.settings.keepalive_seconds / 3
        while True:
            await asyncio.sleep(period)
            deadline = time.monotonic() - self.settings.keepalive_seconds
            for room in list(self.rooms.values()):
                for member in list(room.members.values()):
                    if member.last_sent <= deadline and member.queued == 0:
                        member.send(protocol.KEEPALIVE)
