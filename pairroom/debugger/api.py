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

These checks happen on the node that received the request; the action itself runs where the
room's kernel runs (``actions.py``), forwarded there on a cluster.
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

from .actions import state_of
from .extension import OP, Debugger, may_drive, read_run_policy
from .ports import KernelRuns
from .session import DRIVING

MAX_EXPRESSION = 4096
MAX_PATH = 255


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


def _who(request: Request) -> tuple[str, Principal]:
    name = room_of(request)
    return name, authenticate(request, name)


async def _checked(request: Request, name: str, principal: Principal, *, drive: bool) -> Role:
    """The person's live role; 403 if ``drive`` and they may not drive."""
    hub: Hub = request.app.state.hub
    async with hub.registry.hold(name) as room:
        return check_may_drive(room, principal) if drive else room.role_of(principal)


async def _act(request: Request, name: str, principal: Principal, role: Role, action: str, **args: Any) -> Response:
    """The action on the node running the room's kernel (``actions.serve``), and its answer."""
    who = {"user": principal.user_id, "name": principal.name, "owner": role is Role.OWNER}
    debugger: Debugger = request.app.state.debugger
    kernels = debugger.served(_kernels(request))
    answer = await kernels.call(name, OP, {"action": action, "who": who, **args})
    return JSONResponse(answer["body"], answer["status"])


async def start(request: Request) -> Response:
    name, principal = _who(request)
    body = await _body(request)
    path = body.get("path")
    if (
        not isinstance(path, str)
        or not path
        or len(path) > MAX_PATH
        or path.startswith("/")
        or any(part in ("", ".", "..") for part in path.split("/"))
    ):
        raise ApiError(400, f"invalid path {path!r}")
    _kernels(request)
    hub: Hub = request.app.state.hub
    async with hub.registry.hold(name) as room:
        role = check_may_drive(room, principal)
        with room.local_change(LocalOrigin("debugger-read")) as doc:
            text = doc.get("files", type=Map).get(path)
        if not isinstance(text, Text):
            raise ApiError(404, f"no file {path!r} in room {name!r}")
        if not path.endswith(".py"):
            raise ApiError(400, f"{path!r} is not a Python file")
    return await _act(request, name, principal, role, "start", path=path)


def _command(command: str) -> Any:
    async def drive(request: Request) -> Response:
        name, principal = _who(request)
        body = await _body(request)
        thread = _thread(body)
        role = await _checked(request, name, principal, drive=True)
        return await _act(
            request, name, principal, role, "drive", command=command, stopId=body.get("stopId"), threadId=thread
        )

    drive.__name__ = f"debug_{command}"
    return drive


async def pause(request: Request) -> Response:
    name, principal = _who(request)
    body = await _body(request)
    thread = _thread(body)
    role = await _checked(request, name, principal, drive=True)
    return await _act(request, name, principal, role, "pause", threadId=thread)


async def stop(request: Request) -> Response:
    name, principal = _who(request)
    role = await _checked(request, name, principal, drive=False)
    return await _act(request, name, principal, role, "stop")


async def evaluate(request: Request) -> Response:
    name, principal = _who(request)
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
    role = await _checked(request, name, principal, drive=True)  # evaluating is running code: the run policy
    return await _act(request, name, principal, role, "evaluate", expression=expression, frameId=frame)


async def variables(request: Request) -> Response:
    name, principal = _who(request)
    body = await _body(request)
    ref = integer(body.get("ref"))
    if ref is None or ref <= 0:
        raise ApiError(400, '"ref" must be a positive integer')
    role = await _checked(request, name, principal, drive=False)
    return await _act(request, name, principal, role, "variables", ref=ref)


async def scopes(request: Request) -> Response:
    name, principal = _who(request)
    body = await _body(request)
    frame = integer(body.get("frameId"))
    if frame is None:
        raise ApiError(400, '"frameId" must be an integer')
    role = await _checked(request, name, principal, drive=False)
    return await _act(request, name, principal, role, "scopes", frameId=frame)


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
