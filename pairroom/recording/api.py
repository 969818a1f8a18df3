"""The history HTTP API and the replay endpoint; ``attach(app, settings)`` wires them and the recorder.

Routes (``Authorization: Bearer`` for the room in the path; open mode: everyone is an editor):

| route | who |
|---|---|
| ``GET /api/rooms/{room}/sessions`` | any role |
| ``GET /api/rooms/{room}/files?at=`` | any role |
| ``GET /api/rooms/{room}/versions`` | any role |
| ``POST /api/rooms/{room}/versions {"name", "at"?}`` | editor, owner |
| ``GET /api/rooms/{room}/diff?from=&to=[&path=]`` | any role |
| ``GET /api/rooms/{room}/timeline?session=`` | any role |
| ``GET /api/rooms/{room}/casts?session=`` | any role: the terminals recorded (``casts.py``) |
| ``GET /api/rooms/{room}/casts/{terminal}?session=`` | any role: one terminal's asciicast v2 file |
| ``POST /api/rooms/{room}/restore {"at", "path"?}`` | editor, owner |
| ``POST /api/rooms/{room}/fork {"at"?, "room"}`` | editor, owner |
| ``DELETE /api/rooms/{room}`` | owner |
| ``ws /replay/{room}?session=&from=&speed=&token=`` | any role (``replay.py``) |

A room whose owners turned recording off (``meta.policy.recording`` false) answers 403 to every
route that shows or uses its past (everything above but ``files`` without ``at`` and ``DELETE``).
Points (``at``, ``from``, ``to``) are a seq or an ISO 8601 time with a zone (``history.py``); a
malformed one or one in the future is 400, a seq past the log 400, an unknown session 404, a purged
point 410. Errors are ``{"error": reason}``.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from pairroom.protocol.asciicast import CastError
from pairroom.protocol.origins import LocalOrigin
from pairroom.protocol.sync import ProtocolError
from pairroom.recording.casts import TERMINAL_ID, terminal_casts
from pairroom.recording.events import RecorderObserver
from pairroom.recording.history import History, files_of, iso, recording_enabled, restore_files
from pairroom.recording.history_store import Version
from pairroom.rooms.identity import Principal
from pairroom.rooms.registry import RoomBusy
from pairroom.rooms.room import RoomState
from pairroom.web.api import ApiError, json_body, live_role, require_owner, room_of
from pairroom.web.auth import authenticate
from pairroom.web.hub import Hub
from pairroom.web.websocket import room_name_from_path

log = logging.getLogger("pairroom.recording.api")

NAME_MAX = 255


def link_call_audio(state: Any, recorder: RecorderObserver) -> None:
    """Saved call recordings become ``audio`` events on the room's timeline (at their first frame),
    so a replay finds the voice that goes with the code."""
    rtc = getattr(state, "rtc", None)
    if rtc is None:
        return

    def saved(info: Any) -> None:
        at = datetime.fromtimestamp(info.started_at or info.ended_at, UTC)
        data = {
            "session": info.session,
            "peer": info.peer,
            "file": info.file,
            "source": info.source,
            "duration_seconds": info.duration_seconds,
            "format": info.format,
        }
        recorder.record(info.room, "audio", str((info.user or {}).get("id", "")), data, at=at)

    rtc.on_recording_saved = saved


# -- helpers --------------------------------------------------------------------------------------------


def _recorder(request: Request) -> RecorderObserver:
    return request.app.state.recorder  # type: ignore[no-any-return]


def _hub(request: Request) -> Hub:
    return request.app.state.hub  # type: ignore[no-any-return]


async def _flush_live(hub: Hub, room: str) -> None:
    """Store what a loaded room has not flushed yet, so "now" in storage is now."""
    live = hub.registry.rooms.get(room)
    if live is not None and live.state is RoomState.ACTIVE:
        await live.flush()


async def recording_visible(hub: Hub, history: History, room: str) -> bool:
    """False when the room's owners turned recording off (read from the live room if loaded)."""
    live = hub.registry.rooms.get(room)
    if live is not None and live.state is RoomState.ACTIVE:
        return recording_enabled(live.doc)
    return await history.recording_enabled(room)


async def _readable(request: Request, *, history_needed: bool = True) -> tuple[str, Principal, History]:
    """The room, the caller (401/403), and 404 for a room with nothing stored, 403 if opted out."""
    room = room_of(request)
    principal = authenticate(request, room)
    hub, history = _hub(request), _recorder(request).history
    await _flush_live(hub, room)
    if room not in hub.registry.rooms and not await history.db.has_anything(room):
        raise ApiError(404, f"room {room!r} has nothing recorded")
    if history_needed and not await recording_visible(hub, history, room):
        raise ApiError(403, "recording is off for this room (meta.policy.recording is false)")
    return room, principal, history


async def _require_editor(request: Request, room: str, principal: Principal) -> None:
    """Writing history (versions, restores, forks) needs a live role that edits files."""
    role = await live_role(_hub(request), room, principal)
    if not role.writes_files:
        raise ApiError(403, f"a {role.value} may not do this; an editor or owner may")


def _point(body: dict[str, Any], key: str, required: bool = True) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise ApiError(400, f'"{key}" is required: a seq or an ISO 8601 time')
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ApiError(400, f'"{key}" must be a seq (integer) or an ISO 8601 time (string)')
    return str(value)


# -- routes ---------------------------------------------------------------------------------------------


async def sessions(request: Request) -> Response:
    room, _, history = await _readable(request)
    found = await history.sessions(room, _recorder(request).recorder_settings.session_gap)
    return JSONResponse({"room": room, "sessions": [s.as_json() for s in found]})


async def files(request: Request) -> Response:
    raw = request.query_params.get("at")
    room, _, history = await _readable(request, history_needed=raw is not None)
    state = await history.state_at(room, raw)
    return JSONResponse({"room": room, "files": state.files(), "seq": state.seq, "at": iso(state.at)})


async def versions(request: Request) -> Response:
    room, principal, history = await _readable(request)
    if request.method == "GET":
        found = await history.db.versions(room)
        return JSONResponse({"room": room, "versions": [_version_json(v) for v in found]})
    await _require_editor(request, room, principal)
    body = await json_body(request)
    name = body.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > NAME_MAX:
        raise ApiError(400, f'"name" must be a non-empty string of at most {NAME_MAX} characters')
    seq = await history.resolve(room, _point(body, "at", required=False))
    at = await history.db.time_of(room, seq) or datetime.now(UTC)
    version = Version(room, name.strip(), seq, at, principal.user_id, False)
    await history.db.add_version(version)
    return JSONResponse(_version_json(version), 201)


def _version_json(version: Version) -> dict[str, Any]:
    return {"name": version.name, "seq": version.seq, "at": iso(version.at), "by": version.by, "auto": version.auto}


async def diff(request: Request) -> Response:
    room, _, history = await _readable(request)
    params = request.query_params
    if "from" not in params:
        raise ApiError(400, '"from" is required: a seq or an ISO 8601 time')
    old = await history.resolve(room, params["from"])
    new = await history.resolve(room, params.get("to"))
    path = params.get("path")
    text = await history.diff(room, old, new, path)
    return JSONResponse({"room": room, "from": old, "to": new, "path": path, "diff": text})


async def timeline(request: Request) -> Response:
    room, _, history = await _readable(request)
    sid = request.query_params.get("session")
    recorder = _recorder(request)
    start = end = None
    low, high = 0, await history.db.last_seq(room)
    if sid:
        session = await history.session(room, sid, recorder.recorder_settings.session_gap)
        start, end, low, high = session.start, session.end, session.first_seq, session.last_seq
    kinds = (
        "join",
        "leave",
        "chat",
        "run",
        "restore",
        "fork",
        "forked",
        "audio",
        "git",
        "debug",
        "terminal",
        "extension",
    )
    marks: list[dict[str, Any]] = [
        {"kind": e.kind, "at": iso(e.at), "user": e.user, **e.data}
        for e in await history.db.events(room, start, end, kinds=kinds)
    ]
    for version in await history.db.versions(room):
        if low <= version.seq <= high:
            marks.append(
                {
                    "kind": "checkpoint" if version.auto else "version",
                    "at": iso(version.at),
                    "seq": version.seq,
                    "name": version.name,
                    "user": version.by,
                }
            )
    marks.sort(key=lambda m: m["at"] or "")
    return JSONResponse(
        {
            "room": room,
            "session": sid,
            "start": iso(start),
            "end": iso(end),
            "from_seq": low,
            "to_seq": high,
            "marks": marks,
        }
    )


async def _window(request: Request, room: str, history: History) -> tuple[datetime | None, datetime | None]:
    """The ``session`` query parameter's start and end (None, None for the whole recording)."""
    sid = request.query_params.get("session")
    if not sid:
        return None, None
    session = await history.session(room, sid, _recorder(request).recorder_settings.session_gap)
    return session.start, session.end


async def casts(request: Request) -> Response:
    """The terminals recorded in a session (or ever): who they were, when they start and end."""
    room, _, history = await _readable(request)
    since, until = await _window(request, room, history)
    try:
        found = await terminal_casts(history.db, room, since, until)
    except CastError as exc:
        raise ApiError(500, f"a stored terminal recording is unreadable: {exc}") from exc
    return JSONResponse(
        {"room": room, "session": request.query_params.get("session"), "casts": [c.describe() for c in found]}
    )


async def cast_file(request: Request) -> Response:
    """One terminal's recording as an asciicast v2 file, up to the session's end if one is given."""
    room, _, history = await _readable(request)
    terminal = request.path_params["terminal"]
    if not TERMINAL_ID.fullmatch(terminal):
        raise ApiError(400, "a terminal id is 1 to 64 letters, digits, _ or -")
    _, until = await _window(request, room, history)
    try:
        found = await terminal_casts(history.db, room, None, until, terminal)
    except CastError as exc:
        raise ApiError(500, f"a stored terminal recording is unreadable: {exc}") from exc
    if not found:
        raise ApiError(404, f"no recording of terminal {terminal!r} in room {room!r}")
    return Response(found[0].text(f"{room} / {found[0].name}"), media_type="application/x-asciicast")


async def restore(request: Request) -> Response:
    room, principal, history = await _readable(request)
    await _require_editor(request, room, principal)
    body = await json_body(request)
    path = body.get("path")
    if path is not None and (not isinstance(path, str) or not path):
        raise ApiError(400, '"path" must be a file path (or "/text" for the root text)')
    state = await history.state_at(room, _point(body, "at"))
    target = state.files()
    async with _hub(request).registry.hold(room) as live:
        if path is not None and path not in target and path not in files_of(live.doc):
            raise ApiError(404, f"no file {path!r} at seq {state.seq} or now")
        with live.local_change(LocalOrigin("restore")) as doc:
            changed = restore_files(doc, target, path)
        await live.flush()
        now_seq = live.stored_seq
    _recorder(request).record(room, "restore", principal.user_id, {"seq": state.seq, "path": path, "changed": changed})
    return JSONResponse({"room": room, "restored_from": state.seq, "seq": now_seq, "changed": changed})


async def fork(request: Request) -> Response:
    room, principal, history = await _readable(request)
    await _require_editor(request, room, principal)
    body = await json_body(request)
    new_room = body.get("room")
    if not isinstance(new_room, str):
        raise ApiError(400, '"room" (the new room\'s name) is required')
    hub = _hub(request)
    try:
        new_room = room_name_from_path(new_room, hub.settings.max_room_name)
    except ProtocolError as exc:
        raise ApiError(400, exc.reason) from exc
    if "/" in body["room"] or new_room == room:
        raise ApiError(400, "the new room needs another name, without /")
    if new_room in hub.registry.rooms:
        raise ApiError(409, f"room {new_room!r} already exists")
    seq = await history.resolve(room, _point(body, "at", required=False))
    last = await history.fork(room, seq, new_room, principal.user_id)
    # What other features made of the fork (a repository room's fork gets its own: docs/git.md)
    extras = await hub.extensions.forked(room, new_room, seq, principal)
    return JSONResponse({**extras, "room": new_room, "from": room, "from_seq": seq, "seq": last}, 201)


async def delete_room(request: Request) -> Response:
    room = room_of(request)
    principal = authenticate(request, room)
    hub, history = _hub(request), _recorder(request).history
    if room not in hub.registry.rooms and not await history.db.has_anything(room):
        raise ApiError(404, f"room {room!r} has nothing stored")
    require_owner(await live_role(hub, room, principal))
    recorder = _recorder(request)
    await _evict(hub, room)
    async with recorder.write_lock:  # no batch holding this room's events commits after the delete
        rows = await history.db.delete_room(room)
    history.forget(room)
    return JSONResponse({"deleted": room, "rows": rows})


async def _evict(hub: Hub, name: str) -> None:
    """Close the room on every node without a final flush (members get 4404, "room deleted")."""
    try:
        await hub.registry.evict(name)
    except RoomBusy as exc:
        raise ApiError(409, f"{exc}; try again") from exc


async def replay(websocket: WebSocket) -> None:
    """``ws /replay/{room}``: the player (``replay.py``) is imported with the first replay, not at startup."""
    from pairroom.recording.replay import replay_endpoint

    await replay_endpoint(websocket)


routes = [
    Route("/api/rooms/{room}/sessions", sessions, methods=["GET"]),
    Route("/api/rooms/{room}/files", files, methods=["GET"]),
    Route("/api/rooms/{room}/versions", versions, methods=["GET", "POST"]),
    Route("/api/rooms/{room}/diff", diff, methods=["GET"]),
    Route("/api/rooms/{room}/timeline", timeline, methods=["GET"]),
    Route("/api/rooms/{room}/casts", casts, methods=["GET"]),
    Route("/api/rooms/{room}/casts/{terminal}", cast_file, methods=["GET"]),
    Route("/api/rooms/{room}/restore", restore, methods=["POST"]),
    Route("/api/rooms/{room}/fork", fork, methods=["POST"]),
    Route("/api/rooms/{room}", delete_room, methods=["DELETE"]),
    WebSocketRoute("/replay/{room}", replay),
]
