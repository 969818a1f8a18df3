"""The recording around the update log: joins, leaves, presence samples, chat and run marks, and
automatic checkpoints, written in batches.

The update log (``store.py``) already holds every edit with its time, seq and origin; this observer
adds what a replay and a timeline need besides. It is called on the room's path (an ``Extension``),
so it only appends to memory there; a ``BatchWriter`` (``storage/writer.py``) stores the buffer
``flush_interval`` after its first event (at once past ``flush_max_events``, or when a room closes),
events and versions in one transaction a batch, never one per event. A failed write keeps the batch
and is retried with backoff; while storage stays down the oldest presence samples go first past
``MAX_BUFFERED_EVENTS``.

**Presence** is sampled per connection and awareness client: at most ``presence_per_second`` (10)
samples a second each. A change inside the window replaces the pending sample (coalesced), and the
pending one is written when the window ends, so the last position is never lost. Only the fields a
replay shows are kept: ``user``, ``file``, ``cursor``, ``selection``, ``viewport``, ``following``,
``hand``; a sample equal to the previous one is skipped.

**Opting out.** Owners set ``meta.policy.recording`` to false: from then on no event is recorded
for the room (the policy is read when the room loads and again after ``meta`` changes). The update
log is the room's storage and stays, but the history and replay APIs answer 403 for such a room
(``api.py``); ``pairroom export`` (an operator's backup) still includes everything.

**Checkpoints** are versions with ``auto`` set, named ``checkpoint``: one when a room closes (after
its final flush) and one every ``checkpoint_minutes`` of activity, at the room's last stored seq.

**Retention.** With ``keep_days`` set, ``run`` also purges history older than that every
``purge_interval_seconds`` (``History.purge``).

Settings come from ``Settings.extra`` keys (``recording_keep_days`` ...) or else ``PAIRROOM_RECORDING_*``
variables, read when the server starts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pycrdt import Array, ArrayEvent, Map, MapEvent

from pairroom.recording.history import History, recording_enabled
from pairroom.recording.history_store import Event, HistoryStore, Version
from pairroom.rooms.extension import Change, Extension
from pairroom.storage.store import StoreError
from pairroom.storage.writer import Backoff, BatchWriter

if TYPE_CHECKING:
    from pairroom.rooms.member import Member
    from pairroom.rooms.room import Room

log = logging.getLogger("pairroom.recorder")

PRESENCE_FIELDS = ("user", "file", "cursor", "selection", "viewport", "following", "hand")
MAX_BUFFERED_EVENTS = 200_000  # while storage is down; past it the oldest presence samples go


@dataclass(frozen=True, slots=True)
class RecorderSettings:
    presence_per_second: float = 10.0
    flush_interval: float = 0.5
    flush_max_events: int = 500
    session_gap_seconds: float = 300.0
    checkpoint_minutes: float = 10.0
    keep_days: float = 0.0  # 0 keeps recordings forever
    purge_interval_seconds: float = 3600.0

    @property
    def session_gap(self) -> timedelta:
        return timedelta(seconds=self.session_gap_seconds)

    @classmethod
    def from_mapping(cls, extra: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> RecorderSettings:
        """``extra["recording_<field>"]`` wins, then ``PAIRROOM_RECORDING_<FIELD>``, then the default."""
        environ = {} if environ is None else environ  # config.py puts PAIRROOM_RECORDING_* in extra
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = extra.get(f"recording_{f.name}", environ.get(f"PAIRROOM_RECORDING_{f.name.upper()}"))
            if raw is None:
                continue
            kind = type(getattr(cls(), f.name))
            try:
                values[f.name] = kind(raw)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"recording_{f.name}={raw!r} is not a valid {kind.__name__}") from exc
        return replace(cls(), **values)


@dataclass
class _RoomRecord:
    room: Room
    recording: bool = True
    policy_stale: bool = False
    updates: int = 0  # since the last checkpoint
    last_checkpoint: float = field(default_factory=time.monotonic)
    last_sample: dict[tuple[str, int], tuple[float, dict[str, Any] | None]] = field(default_factory=dict)
    # (wall time of the change, user, sample): the Event is built when the window ends, not per change
    pending: dict[tuple[str, int], tuple[datetime, str, dict[str, Any] | None]] = field(default_factory=dict)
    timers: dict[tuple[str, int], asyncio.TimerHandle] = field(default_factory=dict)
    subscriptions: list[tuple[Any, Any]] = field(default_factory=list)


class RecorderObserver(Extension):
    """Records what happens in rooms (joins, presence, chat and run marks, checkpoints) as events."""

    name = "recorder"
    builtin = True
    priority = 200  # after the server's own extensions

    def __init__(self, history: History | None, settings: RecorderSettings | None = None) -> None:
        if history is not None:
            self.bind(history)
        self.recorder_settings = settings or RecorderSettings()
        self._rooms: dict[str, _RoomRecord] = {}
        interval = self.recorder_settings.flush_interval
        self.writer: BatchWriter[Event | Version] = BatchWriter(
            self._store_batch,
            quiet=interval,
            max_delay=interval,
            max_items=self.recorder_settings.flush_max_events,
            backoff=Backoff(max(interval, 0.05), 5.0),
            on_failure=self._write_failed,
        )

    @property
    def write_lock(self) -> asyncio.Lock:
        """Held while a batch is written: deleting a room holds it so no batch of the room commits after."""
        return self.writer.lock

    @property
    def failing(self) -> bool:
        return self.writer.failing

    def bind(self, history: History) -> None:
        """The history it writes to (known once the node's storage is open)."""
        self.history = history
        self.db: HistoryStore = history.db

    # -- what other parts record (audio sidecars, kernels) --------------------------------------------

    def record(self, room: str, kind: str, user: str, data: dict[str, Any], at: datetime | None = None) -> None:
        """Record an event for ``room`` unless the room opted out (only known while it is loaded)."""
        record = self._rooms.get(room)
        if record is not None and not record.recording:
            return
        self.writer.add(Event(room, at or datetime.now(UTC), kind, user, data))

    def on_deleted(self, name: str) -> None:
        self.forget(name)

    def forget(self, room: str) -> None:
        """The room is being deleted: drop what is buffered for it and stop watching it."""
        record = self._rooms.pop(room, None)
        if record is not None:
            for timer in record.timers.values():
                timer.cancel()
            for shared, subscription in record.subscriptions:
                shared.unobserve(subscription)
        self.writer.discard(lambda item: item.room == room)

    # -- Extension hooks ---------------------------------------------------------------------------------

    def on_loaded(self, room: Room) -> None:
        record = _RoomRecord(room, recording=recording_enabled(room.doc))
        chat = room.doc.get("chat", type=Array)
        runs = room.doc.get("runs", type=Map)
        meta = room.doc.get("meta", type=Map)
        record.subscriptions = [
            (chat, chat.observe(lambda event: self._on_chat(record, event))),
            (runs, runs.observe(lambda event: self._on_runs(record, event))),
            (meta, meta.observe_deep(lambda _events: self._policy_changed(record))),
        ]
        self._rooms[room.name] = record

    def on_unload(self, room: Room) -> None:
        record = self._rooms.pop(room.name, None)
        if record is None:
            return
        self._flush_presence(record)
        for shared, subscription in record.subscriptions:
            shared.unobserve(subscription)
        if record.recording and record.updates:
            self._checkpoint(record)
        self.writer.write_soon()

    def on_join(self, room: Room, member: Member) -> None:
        record = self._refresh(room)
        if record is None or not record.recording:
            return
        self.record(room.name, "join", _user(member), _identity(member))

    def on_leave(self, room: Room, member: Member) -> None:
        record = self._refresh(room)
        if record is None:
            return
        for key in [k for k in record.pending if k[0] == member.id]:
            self._emit(record, key)
        if record.recording:
            self.record(room.name, "leave", _user(member), _identity(member))

    def on_awareness(self, room: Room, member: Member, states: dict[int, Any]) -> None:
        record = self._refresh(room)
        if record is None or not record.recording:
            return
        now = time.monotonic()
        window = 1.0 / self.recorder_settings.presence_per_second
        for client_id, state in states.items():
            key = (member.id, client_id)
            sample = None if state is None else {k: state[k] for k in PRESENCE_FIELDS if k in state}
            last_time, last_sample = record.last_sample.get(key, (0.0, {}))
            if sample == last_sample and key not in record.pending:
                continue
            record.pending[key] = (datetime.now(UTC), _user(member), sample)  # last wins within the window
            wait = last_time + window - now
            if wait <= 0:
                self._emit(record, key)
            elif key not in record.timers:
                loop = asyncio.get_running_loop()
                record.timers[key] = loop.call_later(wait, self._emit, record, key)

    def on_change(self, change: Change) -> None:
        record = self._rooms.get(change.room.name)
        if record is not None:
            record.updates += 1

    # -- inside the room's transactions: no document reads, only what the event carries ----------------

    def _on_chat(self, record: _RoomRecord, event: ArrayEvent) -> None:
        if not record.recording:
            return
        for step in event.delta:  # type: ignore[attr-defined]  # pycrdt's event types lack it
            for item in step.get("insert", ()):
                # Clients append unstamped entries that the server replaces with stamped ones
                # (guards.py): the stamped one is the chat line.
                if isinstance(item, dict) and "author" in item and "at" in item:
                    self.record(
                        record.room.name,
                        "chat",
                        str(item.get("author")),
                        {"id": item.get("id"), "name": item.get("name"), "text": item.get("text")},
                    )

    def _on_runs(self, record: _RoomRecord, event: MapEvent) -> None:
        if not record.recording:
            return
        for run_id, change in event.keys.items():  # type: ignore[attr-defined]  # pycrdt's event types lack it
            if change.get("action") == "add":
                self.record(record.room.name, "run", "", {"run": run_id})

    def _policy_changed(self, record: _RoomRecord) -> None:
        """Re-read right after this transaction (not inside it), so what ``record`` is handed next,
        from any feature, follows the owners' choice at once, not at the next join or presence."""
        record.policy_stale = True
        try:
            asyncio.get_running_loop().call_soon(self._refresh, record.room)
        except RuntimeError:  # no loop: the next hook re-reads it
            pass

    # -- helpers ----------------------------------------------------------------------------------------

    def _refresh(self, room: Room) -> _RoomRecord | None:
        """The room's record, with its policy re-read if ``meta`` changed (outside a transaction)."""
        record = self._rooms.get(room.name)
        if record is not None and record.policy_stale:
            record.policy_stale = False
            record.recording = recording_enabled(room.doc)
        return record

    def _emit(self, record: _RoomRecord, key: tuple[str, int]) -> None:
        timer = record.timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        pending = record.pending.pop(key, None)
        if pending is None:
            return
        at, user, sample = pending
        record.last_sample[key] = (time.monotonic(), sample)
        if sample is None:
            record.last_sample.pop(key, None)
        self.record(record.room.name, "presence", user, {"conn": key[0], "client": key[1], "state": sample}, at=at)

    def _flush_presence(self, record: _RoomRecord) -> None:
        for key in list(record.pending):
            self._emit(record, key)

    def _checkpoint(self, record: _RoomRecord) -> None:
        seq = record.room.stored_seq
        if seq <= 0:
            return
        self.writer.add(Version(record.room.name, "checkpoint", seq, datetime.now(UTC), "", True))
        record.updates = 0
        record.last_checkpoint = time.monotonic()

    # -- the writer ---------------------------------------------------------------------------------------

    async def run(self, started: asyncio.Event) -> None:
        """Write buffered events (and purge old history, if configured) until cancelled; then flush."""
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self.writer.run(), name="pairroom-recorder-writer")
                tasks.create_task(self._checkpoints(), name="pairroom-recorder-checkpoints")
                if self.recorder_settings.keep_days > 0:
                    tasks.create_task(self._purger(), name="pairroom-recorder-purge")
                started.set()
        finally:
            for record in list(self._rooms.values()):
                self._flush_presence(record)
            try:
                await asyncio.shield(self.flush())
            except StoreError as exc:
                log.error("final event flush failed", extra={"error": str(exc), "events": len(self.writer.pending)})

    async def flush(self) -> int:
        """Store what is buffered (events and versions) in one transaction; on failure it stays buffered.
        Returns how many items went."""
        return await self.writer.flush()

    async def _store_batch(self, batch: list[Event | Version]) -> None:
        events = [item for item in batch if isinstance(item, Event)]
        versions = [item for item in batch if isinstance(item, Version)]
        await self.db.append_events(events, versions)

    def _write_failed(self, exc: BaseException, pending: list[Event | Version]) -> None:
        self._trim()
        log.error("event flush failed, will retry", extra={"error": str(exc), "events": len(self.writer.pending)})

    async def _checkpoints(self) -> None:
        """Name a checkpoint in every room active for ``checkpoint_minutes`` since its last one."""
        while True:
            await asyncio.sleep(self.recorder_settings.flush_interval)
            self._due_checkpoints()

    def _due_checkpoints(self) -> None:
        every = self.recorder_settings.checkpoint_minutes * 60
        now = time.monotonic()
        for record in list(self._rooms.values()):
            record = self._refresh(record.room) or record
            if record.recording and record.updates and now - record.last_checkpoint >= every:
                self._checkpoint(record)

    def _trim(self) -> None:
        """Bound memory while storage is down: drop the oldest presence samples first, loudly."""
        excess = len(self.writer.pending) - MAX_BUFFERED_EVENTS
        if excess <= 0:
            return
        seen = 0

        def oldest_presence(item: Event | Version) -> bool:
            nonlocal seen
            if seen < excess and isinstance(item, Event) and item.kind == "presence":
                seen += 1
                return True
            return False

        dropped = self.writer.discard(oldest_presence)
        log.warning("dropped presence samples while storage is down", extra={"dropped": dropped})

    async def _purger(self) -> None:
        keep = timedelta(days=self.recorder_settings.keep_days)
        while True:
            try:
                removed = await self.history.purge(keep)
            except StoreError as exc:
                log.error("purge failed, will retry", extra={"error": str(exc)})
            else:
                if removed:
                    log.info("purged old recordings", extra={"rows": sum(removed.values()), "rooms": len(removed)})
            await asyncio.sleep(self.recorder_settings.purge_interval_seconds)


def _user(member: Member) -> str:
    return member.principal.user_id if member.principal is not None else member.id


def _identity(member: Member) -> dict[str, Any]:
    out: dict[str, Any] = {"conn": member.id, "role": member.role.value}
    if member.principal is not None:
        out.update(name=member.principal.name, color=member.principal.color)
    return out
