"""HTTP routes of the room's debug session, and who may use them.

::

    POST /api/rooms/{room}/debug/start      {"path"}                     -> 201 the state
    POST /api/rooms/{room}/debug/continue   {"stopId", "threadId"?}      -> 202 (also next, stepIn, stepOut)
    POST /api/rooms/{room}/debug/pause      {"threadId"?}                -> 202
    POST /api/rooms/{room}/debug/stop       {}                           -> 202
    POST /api/rooms/{room}/debug/evaluate   {"expression", "frameId"?}   -> 200 {"result", "type", "ref"}
    POST /api/rooms/{room}/debug/variables  {"ref"}                      -> 200 {"variables": [...]}
    POST /api/rooms/{room}/debug/scopes     {"frameId"}                  -> 200 {"scopes": [...]}
    GET  /api/rooms/{room}/debug                                         -> 200 the state

Driving (start, steps, pause, evaluate) follows the room's run policy with the live role
(``Room.role_of``): editors and owners, or owners only; viewers and reviewers inspect. Stopping is
for the session's starter or an owner. Reading the state, variables and scopes needs only a token
for the room: they come from the server's cache, never one kernel request per watcher.
"""

from __future__ import annotations

from typing import Any

from pycrdt import Map, Text
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pairroom.protocol.origins import LocalOrigin
from pairroom.rooms.identity import Principal, Role
from pairroom.rooms.room import Room
from pairroom.web.api import ApiError, json_body, room_of
from pairroom.web.auth import authenticate
from pairroom.web.hub import Hub

from .extension import Debugger, may_drive, read_run_policy
from .ports import KernelRuns
from .session import DRIVING, run_code

MAX_EXPRESSION = 4096
MAX_PATH = 255


def _debugger(request: Request) -> Debugger:
    return request.app.state.debugger  # type: ignore[no-any-return]


def _kernels(request: Request) -> KernelRuns:
    service = getattr(request.app.state, "kernels", None)
    if service is None:
        reason = getattr(request.app.state, "kernels_error", None) or "kernels are not enabled on this server"
        raise ApiError(503, reason)
    return service  # type: ignore[no-any-return]


def check_may_drive(room: Room, principal: Principal) -> Role:
    role = room.role_of(principal)
    if not may_drive(room, role):
        policy = read_run_policy(room)
        raise ApiError(403, f"a {role.value} may not drive the debugger in this room (policy run={policy!r})")
    return role


def state_of(room: Room) -> dict[str, Any]:
    with room.local_change(LocalOrigin("debugger-read")) as doc:
        debug = doc.get("debug", type=Map)
        out = {key: (value.to_py() if isinstance(value, Map) else value) for key, value in debug.items()}
    out.setdefault("state", "off")
    return out


async def _body(request: Request) -> dict[str, Any]:
    return await json_body(request, 16 * 1024, '{"stopId": ...}')


def integer(value: object) -> int | None:
    """An integer from JSON, or None. Numbers read from the document come back as floats (Yjs
    numbers are doubles), so an integral float is accepted too."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _thread(body: dict[str, Any]) -> int | None:
    thread = body.get("threadId")
    if thread is None:
        return None
    parsed = integer(thread)
    if parsed is None:
        raise ApiError(400, "threadId must be an integer")
    return parsed


async def start(request: Request) -> Response:
    name = room_of(request)
    principal = authenticate(request, name)
    body = await _body(request)
    path = body.get("path")
    if not isinstance(path, str) or not path or len(path) > MAX_PATH or path.startswith("/") or any(
        part in ("", ".", "..") for part in path.split("/")
    ):
        raise ApiError(400, f"invalid path {path!r}")
    debugger = _debugger(request)
    hub: Hub = request.app.state.hub
    service = _kernels(request)
    async with hub.registry.hold(name) as room:
        check_may_drive(room, principal)
        with room.local_change(LocalOrigin("debugger-read")) as doc:
            text = doc.get("files", type=Map).get(path)
        if not isinstance(text, Text):
            raise ApiError(404, f"no file {path!r} in room {name!r}")
        if not path.endswith(".py"):
            raise ApiError(400, f"{path!r} is not a Python file")
        current = debugger.session_of(name)
        if current is not None and current.state != "ended":
            raise ApiError(409, f"a debug session is already {current.state}, started by {current.by_name} ({current.by})")
        session = debugger.new_session(room, path, principal)  # no await since the check
        try:
            session.run_id = await service.submit_here(name, code=run_code(path), path=path,
                                                       by=principal.user_id, hooks=session)
        except BaseException:
            session.end("failed")
            raise
        session.publish(event="queued")
        state = state_of(room)
    return JSONResponse(state, 201)


def _command(command: str) -> Any:
    async def drive(request: Request) -> Response:
        name = room_of(request)
        principal = authenticate(request, name)
        body = await _body(request)
        hub: Hub = request.app.state.hub
        async with hub.registry.hold(name) as room:
            check_may_drive(room, principal)
            session = _debugger(request).session_of(name)
            if session is None or session.state == "ended":
                raise ApiError(409, "no debug session is running in this room")
            session.drive(command, body.get("stopId"), _thread(body), principal.user_id)
        return JSONResponse({"ok": True, "command": command}, 202)

    drive.__name__ = f"debug_{command}"
    return drive


async def pause(request: Request) -> Response:
    name = room_of(request)
    principal = authenticate(request, name)
    body = await _body(request)
    hub: Hub = request.app.state.hub
    async with hub.registry.hold(name) as room:
        check_may_drive(room, principal)
        session = _debugger(request).session_of(name)
        if session is None or session.state == "ended":
            raise ApiError(409, "no debug session is running in this room")
        await session.pause(_thread(body))
    return JSONResponse({"ok": True, "command": "pause"}, 202)


async def stop(request: Request) -> Response:
    name = room_of(request)
    principal = authenticate(request, name)
    hub: Hub = request.app.state.hub
    debugger = _debugger(request)
    async with hub.registry.hold(name) as room:
        role = room.role_of(principal)
        session = debugger.session_of(name)
        if session is None or session.state == "ended":
            raise ApiError(409, "no debug session is running in this room")
        if role is not Role.OWNER and principal.user_id != session.by:
            raise ApiError(403, f"only the session's starter ({session.by_name}) or an owner may stop it")
        if session.state == "queued":
            raise ApiError(409, "the debug run is still queued; interrupt the kernel's current run first")
        await session.stop(f"stopped by {principal.name}")
    interrupted = await _kernels(request).interrupt(name)
    return JSONResponse({"ok": True, "command": "stop", "interrupted": interrupted}, 202)


async def evaluate(request: Request) -> Response:
    name = room_of(request)
    principal = authenticate(request, name)
    body = await _body(request)
    expression, frame = body.get("expression"), body.get("frameId")
    if not isinstance(expression, str) or not expression.strip():
        raise ApiError(400, '"expression" must be a non-empty string')
    if len(expression.encode()) > MAX_EXPRESSION:
        raise ApiError(413, f"expression larger than {MAX_EXPRESSION} bytes")
    if frame is not None:
        frame = integer(frame)
        if frame is None:
            raise ApiError(400, "frameId must be an integer")
    hub: Hub = request.app.state.hub
    async with hub.registry.hold(name) as room:
        check_may_drive(room, principal)  # evaluating is running code: the run policy
        session = _debugger(request).session_of(name)
        if session is None or session.state == "ended":
            raise ApiError(409, "no debug session is running in this room")
        result = await session.evaluate(expression, frame)
    _debugger(request).record(name, "evaluate", principal.user_id, {"expression": expression[:200]})
    return JSONResponse(result)


async def variables(request: Request) -> Response:
    name = room_of(request)
    authenticate(request, name)
    body = await _body(request)
    ref = integer(body.get("ref"))
    if ref is None or ref <= 0:
        raise ApiError(400, '"ref" must be a positive integer')
    session = _debugger(request).session_of(name)
    if session is None or session.state == "ended":
        raise ApiError(409, "no debug session is running in this room")
    return JSONResponse({"ref": ref, "variables": await session.variables(ref)})


async def scopes(request: Request) -> Response:
    name = room_of(request)
    authenticate(request, name)
    body = await _body(request)
    frame = integer(body.get("frameId"))
    if frame is None:
        raise ApiError(400, '"frameId" must be an integer')
    session = _debugger(request).session_of(name)
    if session is None or session.state == "ended":
        raise ApiError(409, "no debug session is running in this room")
    return JSONResponse({"frameId": frame, "scopes": await session.frame_scopes(frame)})


async def state(request: Request) -> Response:
    name = room_of(request)
    authenticate(request, name)
    hub: Hub = request.app.state.hub
    async with hub.registry.hold(name) as room:
        return JSONResponse(state_of(room))


routes: list[Route] = [
    Route("/api/rooms/{room}/debug", state, methods=["GET"]),
    Route("/api/rooms/{room}/debug/start", start, methods=["POST"]),
    *(Route(f"/api/rooms/{{room}}/debug/{command}", _command(command), methods=["POST"]) for command in DRIVING),
    Route("/api/rooms/{room}/debug/pause", pause, methods=["POST"]),
    Route("/api/rooms/{room}/debug/stop", stop, methods=["POST"]),
    Route("/api/rooms/{room}/debug/evaluate", evaluate, methods=["POST"]),
    Route("/api/rooms/{room}/debug/variables", variables, methods=["POST"]),
    Route("/api/rooms/{room}/debug/scopes", scopes, methods=["POST"]),
]
