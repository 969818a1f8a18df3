"""Replay as a live room: ``ws://HOST/replay/{room}?session=ID&from=&at=&speed=&token=``.

The endpoint speaks the y-websocket protocol read-only, so the browser client that joins a live room
plays a recording (``new WebsocketProvider('ws://HOST/replay', room, doc, {params: {session, speed}})``):

1. The server sends sync step 1 and answers the client's step 1 with step 2 holding the document
   as of ``from`` (a seq or an ISO time; default the session's start).
2. Then it sends the recorded updates as sync update messages, and the recorded presence as
   awareness updates under synthetic client ids (one per recorded connection and awareness client),
   with the original gaps divided by ``speed`` (0.25 to 16, default 1). Leaves remove those states.
3. Whatever the client sends is dropped (its updates and awareness are not applied anywhere); a
   step 1 is answered with what the client lacks of the replay's current document.

Without ``session`` the whole retained log is played.

**Control** (text frames of JSON, client to server; anything else is closed with 4400)::

    {"type": "pause"}
    {"type": "play"}
    {"type": "speed", "value": 2}               0.25 .. 16
    {"type": "seek", "seq": 1234}  or  {"type": "seek", "at": "2026-05-21T10:00:00Z"}

A seek forward (or to the same seq) sends the skipped updates merged into one update and the
presence as it was at the target. Yjs cannot take changes back, so a seek to an earlier seq closes
the connection with **4410** and the reason ``seek from=<seq>``: the client drops its document,
makes a fresh ``Y.Doc`` and reconnects with ``from=<seq>`` and ``at=<the time it asked for>`` (y-websocket
v3 does not reconnect by itself on 44xx codes, so the old document is not reused by accident). ``at``
places the replay's clock at that moment from the first status on: a reconnect followed by a seek
would show the seq's own time in between, and what is drawn by the clock (terminals, the voice)
would flash back to it.

**Status** is published in the server's own awareness state (client id ``REPLAY_CLIENT_ID``), like
the live server's summary, so no non-protocol frame reaches the client::

    {"pairroom": {"replay": {"seq", "at", "paused", "speed", "from_seq", "to_seq", "ended"}}}

It is sent at the start, after every control message and when the recording ends (the connection
stays open at the end, for seeks).

Close codes: 4400 bad parameters or control message, 4401/4403 as the live endpoint (token,
origin), 4403 also for a room that opted out of recording, 4404 unknown session, 4410 seek back,
1013 storage failed.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
import zlib
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pycrdt import Doc, merge_updates
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from pairroom.protocol import sync as protocol
from pairroom.protocol.close_codes import CloseCode
from pairroom.protocol.sync import AwarenessEntry, MessageType, ProtocolError, SyncStep
from pairroom.recording.events import RecorderObserver
from pairroom.recording.history import History, PointError, iso, parse_point
from pairroom.recording.history_store import Event
from pairroom.storage.store import StoredUpdate, StoreError
from pairroom.web.auth import AuthError, admit
from pairroom.web.hub import Hub
from pairroom.web.websocket import room_name_from_path, truncate_reason

log = logging.getLogger("pairroom.replay")

REPLAY_CLIENT_ID = 1
MIN_SPEED, MAX_SPEED = 0.25, 16.0
_PAGE = 1000
_FIRST_SYNC_WAIT = 2.0  # start playing this long after opening even if the client sent no step 1


class ReplayClosed(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Span:
    """What a replay plays: the log in (from_seq, to_seq] and the events between start and end."""

    start_seq: int
    to_seq: int
    start: datetime | None
    end: datetime | None


def synthetic_client_id(conn: str, client: int) -> int:
    """A stable awareness client id for a recorded connection's client (never REPLAY_CLIENT_ID)."""
    return 2 + zlib.crc32(f"{conn}/{client}".encode()) % (2**31 - 3)


def parse_speed(value: Any) -> float:
    try:
        speed = float(value)
    except (TypeError, ValueError) as exc:
        raise ReplayClosed(CloseCode.MALFORMED, f"speed {value!r} is not a number") from exc
    if not MIN_SPEED <= speed <= MAX_SPEED:
        raise ReplayClosed(CloseCode.MALFORMED, f"speed must be from {MIN_SPEED} to {MAX_SPEED}")
    return speed


class _Pager:
    """The log after a seq, read a page at a time (a long session is not read into memory at once)."""

    def __init__(self, history: History, room: str, after: int, upto: int) -> None:
        self.history, self.room, self.after, self.upto = history, room, after, upto
        self.buffer: deque[StoredUpdate] = deque()
        self.done = after >= upto

    async def peek(self) -> StoredUpdate | None:
        if not self.buffer and not self.done:
            page = await self.history.db.read_updates_page(self.room, self.after, _PAGE)
            page = [u for u in page if u.seq <= self.upto]
            self.buffer.extend(page)
            if page:
                self.after = page[-1].seq
            self.done = len(page) < _PAGE or self.after >= self.upto
        return self.buffer[0] if self.buffer else None

    def restart(self, after: int) -> None:
        self.buffer.clear()
        self.after = after
        self.done = after >= self.upto


class Player:
    """One replay connection's position, clock and output. ``send`` writes a frame to the client."""

    def __init__(self, send: Any, history: History, room: str, span: Span, events: list[Event], speed: float) -> None:
        self.send = send
        self.history = history
        self.room = room
        self.span = span
        self.events = events
        self._event_times = [e.at for e in events]
        self.speed = speed
        self.paused = False
        self.ended = False
        self.doc: Doc[Any] = Doc()
        self.seq = 0
        self.rec_at: datetime = datetime.now(UTC)
        self.presence: dict[int, dict[str, Any]] = {}
        self._clocks: dict[int, int] = {}
        self._next_event = 0
        self._pager = _Pager(history, room, 0, span.to_seq)
        self._anchor_wall = 0.0
        self._anchor_rec = self.rec_at
        self._changed = asyncio.Event()
        self.started = asyncio.Event()

    # -- position -------------------------------------------------------------------------------------

    async def open(self, from_seq: int, from_at: datetime | None) -> None:
        state = await self.history.state(self.room, from_seq)
        self.doc, self.seq = state.doc, from_seq
        self.rec_at = from_at or state.at or self.span.start or datetime.now(UTC)
        self._pager.restart(from_seq)
        self._reposition_events()
        self._anchor(self.rec_at)
        await self.send(protocol.sync_step1(self.doc.get_state()))
        await self._send_presence(self._presence_at(self.rec_at))
        await self.publish_status()

    def _anchor(self, rec_at: datetime) -> None:
        self._anchor_rec = rec_at
        self._anchor_wall = asyncio.get_running_loop().time()
        self._changed.set()

    def position(self) -> datetime:
        """Where the recording's clock stands now."""
        if self.paused or not self.started.is_set():
            return self._anchor_rec
        elapsed = asyncio.get_running_loop().time() - self._anchor_wall
        return self._anchor_rec + timedelta(seconds=elapsed * self.speed)

    def _reposition_events(self) -> None:
        self._next_event = bisect.bisect_right(self._event_times, self.rec_at)

    def _presence_at(self, when: datetime) -> dict[int, dict[str, Any]]:
        """The recorded presence states as they were at ``when``."""
        states: dict[int, dict[str, Any]] = {}
        for event in self.events[: bisect.bisect_right(self._event_times, when)]:
            self._fold(states, event)
        return states

    @staticmethod
    def _fold(states: dict[int, dict[str, Any]], event: Event) -> None:
        conn = str(event.data.get("conn", event.user))
        if event.kind == "presence":
            cid = synthetic_client_id(conn, int(event.data.get("client", 0)))
            if event.data.get("state") is None:
                states.pop(cid, None)
            else:
                states[cid] = event.data["state"]
        elif event.kind == "leave":
            for cid in [c for c, s in states.items() if s.get("_conn") == conn]:
                del states[cid]

    async def _send_presence(self, target: dict[int, dict[str, Any]]) -> None:
        """Move the client's awareness from ``self.presence`` to ``target``: one message."""
        entries: list[AwarenessEntry] = []
        for cid in set(self.presence) | set(target):
            old, new = self.presence.get(cid), target.get(cid)
            if old == new:
                continue
            clock = self._clocks.get(cid, 0) + 1
            self._clocks[cid] = clock
            shown = None if new is None else {k: v for k, v in new.items() if k != "_conn"}
            entries.append(AwarenessEntry(cid, clock, json.dumps(shown)))
        self.presence = dict(target)
        if entries:
            await self.send(protocol.awareness_message(protocol.encode_awareness(entries)))

    async def publish_status(self) -> None:
        status = {
            "seq": self.seq,
            "at": iso(self.position()),
            "paused": self.paused,
            "speed": self.speed,
            "from_seq": self.span.start_seq,
            "to_seq": self.span.to_seq,
            "ended": self.ended,
        }
        clock = self._clocks.get(REPLAY_CLIENT_ID, 0) + 1
        self._clocks[REPLAY_CLIENT_ID] = clock
        entry = AwarenessEntry(REPLAY_CLIENT_ID, clock, json.dumps({"pairroom": {"replay": status}}))
        await self.send(protocol.awareness_message(protocol.encode_awareness([entry])))

    # -- the client's messages ------------------------------------------------------------------------

    async def receive(self, frame: bytes) -> None:
        message = protocol.decode_message(frame)
        if message.type is MessageType.SYNC and message.step is SyncStep.STEP1:
            try:
                missing = self.doc.get_update(message.payload)
            except ValueError as exc:
                raise ReplayClosed(CloseCode.MALFORMED, f"invalid state vector: {exc}") from exc
            await self.send(protocol.sync_step2(missing))
            self.start()
        elif message.type is MessageType.QUERY_AWARENESS:
            await self._resend_presence()
        # updates and awareness from the client: read-only, dropped

    async def _resend_presence(self) -> None:
        current, self.presence = self.presence, {}
        await self._send_presence(current)
        await self.publish_status()

    def start(self) -> None:
        if not self.started.is_set():
            self.started.set()
            self._anchor(self.rec_at)

    async def control(self, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError as exc:
            raise ReplayClosed(CloseCode.MALFORMED, "control messages are JSON objects") from exc
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "pause":
            self._anchor(self.position())
            self.paused = True
        elif kind == "play":
            self.paused = False
            self._anchor(self._anchor_rec)
        elif kind == "speed":
            position = self.position()
            self.speed = parse_speed(message.get("value"))
            self._anchor(position)
        elif kind == "seek":
            await self.seek(message)
        else:
            raise ReplayClosed(CloseCode.MALFORMED, f"unknown control message type {kind!r}")
        await self.publish_status()

    async def seek(self, message: dict[str, Any]) -> None:
        target_at: datetime | None = None
        try:
            if "seq" in message and isinstance(message["seq"], int) and not isinstance(message["seq"], bool):
                target = message["seq"]
            elif isinstance(message.get("at"), str):
                point = parse_point(message["at"])
                if isinstance(point, int):
                    raise PointError(400, "seek at must be a time; use seq for a seq")
                target_at = point
                target = await self.history.db.seq_at(self.room, point)
            else:
                raise PointError(400, 'seek needs "seq" (an integer) or "at" (an ISO time)')
        except PointError as exc:
            raise ReplayClosed(CloseCode.MALFORMED, exc.reason) from exc
        target = min(max(target, self.span.start_seq), self.span.to_seq)
        if target < self.seq:
            raise ReplayClosed(CloseCode.SEEK_BACK, f"seek from={target}")
        if target > self.seq:
            updates = await self.history.store.read_updates(self.room, self.seq, target)
            if updates:
                merged = merge_updates(*[u.data for u in updates])
                self.doc.apply_update(merged)
                await self.send(protocol.sync_update(merged))
                target_at = target_at or updates[-1].at
            self.seq = target
        self.rec_at = target_at or self.position()
        self._pager.restart(self.seq)
        self._reposition_events()
        await self._send_presence(self._presence_at(self.rec_at))
        self.ended = False
        self._anchor(self.rec_at)

    # -- playing --------------------------------------------------------------------------------------

    async def _next(self) -> tuple[datetime, StoredUpdate | Event] | None:
        update = await self._pager.peek()
        event = self.events[self._next_event] if self._next_event < len(self.events) else None
        if update is None and event is None:
            return None
        if event is None or (update is not None and update.at <= event.at):
            assert update is not None
            return update.at, update
        return event.at, event

    async def play(self) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_FIRST_SYNC_WAIT):
                await self.started.wait()
        self.start()
        while True:
            item = await self._next()
            if item is None and not self.ended:
                self.ended = True
                await self.publish_status()
            if item is None or self.paused:
                self._changed.clear()
                await self._changed.wait()
                continue
            at, what = item
            due = self._anchor_wall + (at - self._anchor_rec).total_seconds() / self.speed
            delay = due - loop.time()
            if delay > 0:
                self._changed.clear()
                try:
                    async with asyncio.timeout(delay):
                        await self._changed.wait()
                    continue  # a control message moved the clock: recompute
                except TimeoutError:
                    pass
            await self._consume(what)

    async def _consume(self, what: StoredUpdate | Event) -> None:
        if isinstance(what, StoredUpdate):
            self._pager.buffer.popleft()
            self.doc.apply_update(what.data)
            self.seq = what.seq
            self.rec_at = what.at
            await self.send(protocol.sync_update(what.data))
            return
        self._next_event += 1
        self.rec_at = what.at
        states = dict(self.presence)
        self._fold(states, what)
        await self._send_presence(states)


async def replay_endpoint(websocket: WebSocket) -> None:
    hub: Hub = websocket.app.state.hub
    recorder: RecorderObserver = websocket.app.state.recorder
    history = recorder.history
    await websocket.accept()
    lock = asyncio.Lock()

    async def send(frame: bytes) -> None:
        async with lock:
            await websocket.send_bytes(frame)

    try:
        try:
            room = room_name_from_path(websocket.path_params["room"], hub.settings.max_room_name)
            await admit(websocket, room, "replay")
        except (ProtocolError, AuthError) as exc:
            raise ReplayClosed(int(exc.code), exc.reason) from exc
        player = await _open(websocket, hub, history, recorder, room, send)
        await _serve(websocket, player)
    except ReplayClosed as exc:
        await _close(websocket, exc.code, exc.reason)
    except StoreError as exc:
        log.error("replay failed: storage", extra={"error": str(exc)})
        await _close(websocket, CloseCode.TRY_AGAIN_LATER, "storage failed; try again")


async def _open(
    websocket: WebSocket, hub: Hub, history: History, recorder: RecorderObserver, room: str, send: Any
) -> Player:
    from pairroom.recording.api import recording_visible

    params = websocket.query_params
    if not await recording_visible(hub, history, room):
        raise ReplayClosed(CloseCode.FORBIDDEN, "recording is off for this room")
    speed = parse_speed(params.get("speed", "1"))
    sid = params.get("session")
    try:
        if sid:
            session = await history.session(room, sid, recorder.recorder_settings.session_gap)
            span = Span(session.first_seq, session.last_seq, session.start, session.end)
        else:
            span = Span(0, await history.db.last_seq(room), None, None)
        raw_from = params.get("from")
        from_at: datetime | None = None
        if raw_from:
            point = parse_point(raw_from)
            from_seq = await history.resolve(room, point)
            from_at = point if isinstance(point, datetime) else None
            if params.get("at"):  # a seek back's reconnect: that seq's document, the moment asked
                moment = parse_point(params["at"])
                if not isinstance(moment, datetime):
                    raise ReplayClosed(CloseCode.MALFORMED, f"at={params['at']} is not a time")
                from_at = moment
            if not span.start_seq <= from_seq <= span.to_seq:
                raise ReplayClosed(
                    CloseCode.MALFORMED, f"from={raw_from} is outside seqs {span.start_seq}..{span.to_seq}"
                )
        else:
            from_seq, from_at = span.start_seq, span.start
        events = await history.db.events(room, span.start, span.end, kinds=("presence", "leave"))
    except PointError as exc:
        code = CloseCode.NOT_FOUND if exc.status == 404 else CloseCode.MALFORMED
        raise ReplayClosed(code, exc.reason) from exc
    for event in events:
        if event.kind == "presence" and isinstance(event.data.get("state"), dict):
            event.data["state"]["_conn"] = str(event.data.get("conn", event.user))
    player = Player(send, history, room, span, events, speed)
    await player.open(from_seq, from_at)
    return player


async def _serve(websocket: WebSocket, player: Player) -> None:
    playing = asyncio.create_task(player.play(), name="pairroom-replay")
    try:
        while True:
            reading = asyncio.create_task(websocket.receive())
            done, _ = await asyncio.wait({reading, playing}, return_when=asyncio.FIRST_COMPLETED)
            if playing in done:
                reading.cancel()
                error = playing.exception()
                if isinstance(error, (ReplayClosed, StoreError)):
                    raise error
                if error is not None:  # the client went away mid-send: nothing left to tell it
                    log.info("replay ended", extra={"room": player.room, "error": repr(error)})
                return
            message = reading.result()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                await player.control(message["text"])
            elif message.get("bytes") is not None:
                try:
                    await player.receive(message["bytes"])
                except ProtocolError as exc:
                    raise ReplayClosed(int(exc.code), exc.reason) from exc
    finally:
        playing.cancel()
        await asyncio.gather(playing, return_exceptions=True)


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    if websocket.application_state is WebSocketState.DISCONNECTED:
        return
    with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):
        await websocket.close(code, truncate_reason(reason))
