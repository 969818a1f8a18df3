"""HTTP routes and the websocket of shared terminals (docs/terminal.md has the wire protocol).

::

    POST   /api/rooms/{room}/terminals               {"name"?}          -> 201 the terminal
    GET    /api/rooms/{room}/terminals                                  -> 200 {"terminals": [...]}
    DELETE /api/rooms/{room}/terminals/{id}                             -> 204
    POST   /api/rooms/{room}/terminals/{id}/restart                     -> 200 the terminal
    POST   /api/rooms/{room}/terminals/{id}/writers  {"user", "write"}  -> 200 (owners)
    POST   /api/rooms/{room}/terminals/{id}/size     {"policy"}         -> 200 (owners)
    GET    /api/rooms/{room}/terminals/{id}/cast                        -> asciicast v2
    WS     /terminal/{room}/{id}?token=...

Starting, ending and restarting a terminal is running code: it follows ``meta.policy.run`` as runs
do (editors and owners by default; viewers and reviewers never). Listing, watching and the
recording need only a token for the room.
"""

from __future__ import annotations

import asyncio
import json
import logging

from pycrdt import Map
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from pairroom.protocol.origins import LocalOrigin
from pairroom.protocol.sync import CloseCode, ProtocolError
from pairroom.rooms.identity import Principal, Role
from pairroom.rooms.limits import TokenBucket
from pairroom.rooms.room import Room
from pairroom.web.api import ApiError, json_body, room_of
from pairroom.web.auth import AuthError, admit, authenticate
from pairroom.web.hub import Hub
from pairroom.web.websocket import StarletteTransport, room_name_from_path

from .service import TerminalService
from .session import Terminal, Viewer

log = logging.getLogger("pairroom.terminal")



def _service(request: Request | WebSocket) -> TerminalService:
    service = getattr(request.app.state, "terminals", None)
    if service is None:
        reason = getattr(request.app.state, "terminals_error", None) or "terminals are not enabled on this server"
        raise ApiError(503, reason)
    return service  # type: ignore[no-any-return]


def _role(room: Room | None, principal: Principal) -> Role:
    return room.role_of(principal) if room is not None else principal.role


def _run_policy(room: Room) -> str:
    with room.local_change(LocalOrigin("terminal-read")) as doc:
        policy = doc.get("meta", type=Map).get("policy")
        value = policy.get("run") if isinstance(policy, Map) else None
    return value if value in ("editors", "owners") else "editors"


def check_may_start(room: Room, principal: Principal) -> None:
    role = _role(room, principal)
    if not role.writes_files:
        raise ApiError(403, f"a {role.value} may not start or end terminals in this room")
    if _run_policy(room) == "owners" and role is not Role.OWNER:
        raise ApiError(403, "only owners may start or end terminals in this room (policy run='owners')")


def _terminal(service: TerminalService, room: str, terminal_id: str) -> Terminal:
    terminal = service.get(room, terminal_id)
    if terminal is None:
        raise ApiError(404, f"no terminal {terminal_id!r} in room {room!r}")
    return terminal


async def create_terminal(request: Request) -> Response:
    name = room_of(request)
    service = _service(request)
    principal = authenticate(request, name)
    body = await json_body(request, 4096, '{"name"?: "a title"}')
    title = body.get("name")
    if title is not None and not isinstance(title, str):
        raise ApiError(400, '"name" must be a string')
    async with service.registry.hold(name) as room:
        check_may_start(room, principal)
        terminal = await service.create(name, principal, title)
    return JSONResponse(terminal.describe(), 201)


async def list_terminals(request: Request) -> Response:
    """The room's terminals; on a server without terminals an empty list that says why (``available``
    false), so a page can hide its panel without a failed request."""
    name = room_of(request)
    authenticate(request, name)
    service = getattr(request.app.state, "terminals", None)
    if service is None:
        reason = getattr(request.app.state, "terminals_error", None) or "terminals are not enabled on this server"
        return JSONResponse({"terminals": [], "available": False, "reason": reason})
    return JSONResponse({"terminals": [t.describe() for t in service.list(name)], "available": True})


async def end_terminal(request: Request) -> Response:
    name = room_of(request)
    service = _service(request)
    principal = authenticate(request, name)
    _terminal(service, name, request.path_params["id"])
    async with service.registry.hold(name) as room:
        check_may_start(room, principal)
    await service.end(name, request.path_params["id"])
    return Response(status_code=204)


async def restart_terminal(request: Request) -> Response:
    name = room_of(request)
    service = _service(request)
    principal = authenticate(request, name)
    terminal = _terminal(service, name, request.path_params["id"])
    async with service.registry.hold(name) as room:
        check_may_start(room, principal)
    await terminal.restart()
    return JSONResponse(terminal.describe())


async def set_writer(request: Request) -> Response:
    name = room_of(request)
    service = _service(request)
    principal = authenticate(request, name)
    terminal = _terminal(service, name, request.path_params["id"])
    async with service.registry.hold(name) as room:
        role = room.role_of(principal)
    if role is not Role.OWNER:
        raise ApiError(403, "only an owner may grant or revoke typing in a terminal")
    body = await json_body(request, 4096, '{"user": "user id", "write": true}')
    user, write = body.get("user"), body.get("write")
    if not isinstance(user, str) or not user or len(user) > 200 or not isinstance(write, bool):
        raise ApiError(400, 'give {"user": "user id", "write": true or false}')
    terminal.set_write(user, write)
    terminal.notice_all(f"{principal.name} {'granted' if write else 'revoked'} typing for {user}")
    return JSONResponse(terminal.describe())


async def set_size_policy(request: Request) -> Response:
    name = room_of(request)
    service = _service(request)
    principal = authenticate(request, name)
    terminal = _terminal(service, name, request.path_params["id"])
    async with service.registry.hold(name) as room:
        role = room.role_of(principal)
    if role is not Role.OWNER:
        raise ApiError(403, "only an owner may change a terminal's size policy")
    body = await json_body(request, 4096, '{"policy": "writers" or "smallest"}')
    try:
        terminal.set_size_policy(body.get("policy"))  # type: ignore[arg-type]
    except ValueError as exc:
        raise ApiError(400, str(exc)) from exc
    return JSONResponse(terminal.describe())


async def cast(request: Request) -> Response:
    name = room_of(request)
    service = _service(request)
    authenticate(request, name)
    terminal = _terminal(service, name, request.path_params["id"])
    return Response(terminal.cast.export(f"{name} / {terminal.name}"), media_type="application/x-asciicast")


# -- the websocket ------------------------------------------------------------------------------


class FrameError(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


async def terminal_endpoint(websocket: WebSocket) -> None:
    hub: Hub = websocket.app.state.hub
    await websocket.accept()
    transport = StarletteTransport(websocket)
    try:
        name = room_name_from_path(websocket.path_params["room"], hub.settings.max_room_name)
        principal = await admit(websocket, name, "terminal")
    except (ProtocolError, AuthError) as exc:
        await transport.close(exc.code, exc.reason)
        return
    service = getattr(websocket.app.state, "terminals", None)
    if service is None:
        await transport.close(CloseCode.TRY_AGAIN_LATER, "terminals are not enabled on this server")
        return
    terminal = service.get(name, websocket.path_params["id"])
    if terminal is None:
        await transport.close(CloseCode.NOT_FOUND, f"no terminal {websocket.path_params['id'][:40]!r} in this room")
        return
    viewer = Viewer(principal, websocket.send_text, service.settings.viewer_queue_bytes)
    terminal.attach(viewer)
    sender = asyncio.create_task(terminal.serve_viewer(viewer))
    reader = asyncio.create_task(_read(websocket, terminal, viewer, service))
    ended = asyncio.create_task(terminal.ended.wait())
    tasks = {sender, reader, ended}
    code, reason = 1000, "terminal ended"
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if reader in done and reader.exception() is None:
            outcome = reader.result()
            if outcome is None:
                return  # the client went away
            code, reason = outcome
        elif sender in done and sender.exception() is not None:
            return  # the socket broke while sending
    finally:
        terminal.detach(viewer)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if ended in done:
        code, reason = 1000, "terminal ended"
    await transport.close(code, reason)


async def _read(websocket: WebSocket, terminal: Terminal, viewer: Viewer, service: TerminalService) -> tuple[int, str] | None:
    """Read client frames until the client leaves (None) or breaks the protocol (code, reason)."""
    settings = service.settings
    rate = TokenBucket(settings.frames_per_second, int(settings.frames_per_second * 2))
    while True:
        try:
            message = await websocket.receive()
        except WebSocketDisconnect:
            return None
        if message["type"] == "websocket.disconnect":
            return None
        text = message.get("text")
        if text is None:
            return CloseCode.UNSUPPORTED_DATA, "binary frames are not used: send JSON arrays as text"
        if len(text) > settings.max_frame_bytes:
            return CloseCode.MESSAGE_TOO_BIG, f"frame over {settings.max_frame_bytes // 1024} KiB"
        if not rate.take():
            return CloseCode.RATE_LIMITED, f"more than {settings.frames_per_second:g} frames a second"
        try:
            frame = json.loads(text)
        except ValueError:
            return CloseCode.MALFORMED, 'frames are JSON arrays, like ["stdin", "ls\\r"]'
        if not isinstance(frame, list) or not frame or not isinstance(frame[0], str):
            return CloseCode.MALFORMED, 'frames are JSON arrays, like ["stdin", "ls\\r"]'
        kind = frame[0]
        if kind == "stdin" and len(frame) == 2 and isinstance(frame[1], str):
            await terminal.input(viewer, frame[1])
        elif kind == "resize" and len(frame) == 3:
            terminal.resize(viewer, frame[1], frame[2])
        elif kind == "propose" and len(frame) == 2:
            terminal.propose(viewer, frame[1])
        elif kind in ("accept", "dismiss") and len(frame) == 2:
            await terminal.answer(viewer, frame[1], kind == "accept")
        elif kind in ("stdin", "resize", "propose", "accept", "dismiss"):
            return CloseCode.MALFORMED, f"bad {kind!r} frame: see docs/terminal.md"
        else:
            return CloseCode.UNKNOWN_TYPE, f"unknown frame type {kind[:40]!r}"


routes: list[BaseRoute] = [
    Route("/api/rooms/{room}/terminals", create_terminal, methods=["POST"]),
    Route("/api/rooms/{room}/terminals", list_terminals, methods=["GET"]),
    Route("/api/rooms/{room}/terminals/{id}", end_terminal, methods=["DELETE"]),
    Route("/api/rooms/{room}/terminals/{id}/restart", restart_terminal, methods=["POST"]),
    Route("/api/rooms/{room}/terminals/{id}/writers", set_writer, methods=["POST"]),
    Route("/api/rooms/{room}/terminals/{id}/size", set_size_policy, methods=["POST"]),
    Route("/api/rooms/{room}/terminals/{id}/cast", cast, methods=["GET"]),
    WebSocketRoute("/terminal/{room}/{id}", terminal_endpoint),
]
