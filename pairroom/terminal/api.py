"""HTTP routes and the websocket of shared terminals (docs/terminals.md has the wire protocol).

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
from typing import Any

from pycrdt import Map
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from pairroom.protocol.origins import LocalOrigin
from pairroom.protocol.sync import CloseCode, ProtocolError
from pairroom.rooms.identity import Principal, Role, principal_to_json
from pairroom.rooms.limits import TokenBucket
from pairroom.rooms.room import Room
from pairroom.web.api import ApiError, json_body, room_of
from pairroom.web.auth import AuthError, admit, authenticate
from pairroom.web.hub import Hub
from pairroom.web.websocket import StarletteTransport, room_name_from_path

from .relay import WATCH_SECONDS
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
    described = await service.call(name, "create", {"by": principal_to_json(principal), "name": title})
    return JSONResponse(described, 201)


async def list_terminals(request: Request) -> Response:
    """The room's terminals (from any node of a cluster); on a server without terminals an empty
    list that says why (``available`` false), so a page can hide its panel without a failed request."""
    name = room_of(request)
    authenticate(request, name)
    service = getattr(request.app.state, "terminals", None)
    if service is None:
        reason = getattr(request.app.state, "terminals_error", None) or "terminals are not enabled on this server"
        return JSONResponse({"terminals": [], "available": False, "reason": reason})
    return JSONResponse({"terminals": await service.listing(name), "available": True})


async def end_terminal(request: Request) -> Response:
    name = room_of(request)
    service = _service(request)
    principal = authenticate(request, name)
    async with service.registry.hold(name) as room:
        check_may_start(room, principal)
    if not await service.call(name, "end", {"terminal": request.path_params["id"]}):
        raise ApiError(404, f"no terminal {request.path_params['id']!r} in room {name!r}")
    return Response(status_code=204)


async def restart_terminal(request: Request) -> Response:
    name = room_of(request)
    service = _service(request)
    principal = authenticate(request, name)
    async with service.registry.hold(name) as room:
        check_may_start(room, principal)
    return JSONResponse(await service.call(name, "restart", {"terminal": request.path_params["id"]}))


async def set_writer(request: Request) -> Response:
    name = room_of(request)
    service = _service(request)
    principal = authenticate(request, name)
    async with service.registry.hold(name) as room:
        role = room.role_of(principal)
    if role is not Role.OWNER:
        raise ApiError(403, "only an owner may grant or revoke typing in a terminal")
    body = await json_body(request, 4096, '{"user": "user id", "write": true}')
    user, write = body.get("user"), body.get("write")
    if not isinstance(user, str) or not user or len(user) > 200 or not isinstance(write, bool):
        raise ApiError(400, 'give {"user": "user id", "write": true or false}')
    args = {"terminal": request.path_params["id"], "user": user, "write": write, "by": principal.name}
    return JSONResponse(await service.call(name, "writers", args))


async def set_size_policy(request: Request) -> Response:
    name = room_of(request)
    service = _service(request)
    principal = authenticate(request, name)
    async with service.registry.hold(name) as room:
        role = room.role_of(principal)
    if role is not Role.OWNER:
        raise ApiError(403, "only an owner may change a terminal's size policy")
    body = await json_body(request, 4096, '{"policy": "writers" or "smallest"}')
    policy = body.get("policy")
    if policy not in ("writers", "smallest"):
        raise ApiError(400, f"unknown size policy {str(policy)[:40]!r}: writers or smallest")
    return JSONResponse(await service.call(name, "size", {"terminal": request.path_params["id"], "policy": policy}))


async def cast(request: Request) -> Response:
    name = room_of(request)
    service = _service(request)
    authenticate(request, name)
    terminal_id = request.path_params["id"]
    text = await service.call(name, "cast", {"terminal": terminal_id})
    return Response(text, media_type="application/x-asciicast")


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
        if service.relays is not None:
            await _relay(websocket, transport, service, name, websocket.path_params["id"], principal)
            return
        await transport.close(CloseCode.NOT_FOUND, f"no terminal {websocket.path_params['id'][:40]!r} in this room")
        return
    viewer = Viewer(principal, websocket.send_text, service.settings.viewer_queue_bytes)
    terminal.attach(viewer)
    sender = asyncio.create_task(terminal.serve_viewer(viewer))
    reader = asyncio.create_task(_read(websocket, service, lambda frame: _apply(terminal, viewer, frame)))
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


async def _read(websocket: WebSocket, service: TerminalService, apply: Any) -> tuple[int, str] | None:
    """Read client frames, checked, into ``apply`` until the client leaves (None) or breaks the
    protocol (code, reason)."""
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
        if (
            (kind == "stdin" and len(frame) == 2 and isinstance(frame[1], str))
            or (kind == "resize" and len(frame) == 3)
            or (kind in ("propose", "accept", "dismiss") and len(frame) == 2)
        ):
            await apply(frame)
        elif kind in ("stdin", "resize", "propose", "accept", "dismiss"):
            return CloseCode.MALFORMED, f"bad {kind!r} frame: see docs/terminals.md"
        else:
            return CloseCode.UNKNOWN_TYPE, f"unknown frame type {kind[:40]!r}"


async def _apply(terminal: Terminal, viewer: Viewer, frame: list[Any]) -> None:
    """A checked client frame, on the node running the terminal (roles are checked in there)."""
    kind = frame[0]
    if kind == "stdin":
        await terminal.input(viewer, frame[1])
    elif kind == "resize":
        terminal.resize(viewer, frame[1], frame[2])
    elif kind == "propose":
        terminal.propose(viewer, frame[1])
    else:
        await terminal.answer(viewer, frame[1], kind == "accept")


async def _relay(
    websocket: WebSocket,
    transport: StarletteTransport,
    service: TerminalService,
    room: str,
    terminal_id: str,
    principal: Principal,
) -> None:
    """A terminal held by another node (relay.py): attach a remote viewer there, pass its frames to
    this client and this client's frames to it, until either side ends or the holder's node dies."""
    relays = service.relays
    assert relays is not None
    relayed = relays.open(room)
    args = {"terminal": terminal_id, "viewer": relayed.id, "by": principal_to_json(principal), "node": service.node}
    try:
        attached = await service.call(room, "attach", args, timeout=5.0)
    except ApiError as exc:
        relays.local.pop(relayed.id, None)
        code = CloseCode.NOT_FOUND if exc.status == 404 else CloseCode.TRY_AGAIN_LATER
        await transport.close(code, exc.reason[:120])
        return
    holder = attached.get("node", "")

    async def forward(frame: list[Any]) -> None:
        await relays.send(room, {"v": relayed.id, "f": frame})

    async def deliver() -> tuple[int, str]:
        while True:
            await relayed.wake.wait()
            relayed.wake.clear()
            while relayed.queue:
                frame = relayed.queue.popleft()
                relayed.queued -= len(frame)
                await websocket.send_text(frame)
            if relayed.closed is not None:
                return relayed.closed

    async def watch() -> tuple[int, str]:
        while service.alive(holder):  # noqa: ASYNC110 - heartbeats are polled: nothing to wait on
            await asyncio.sleep(WATCH_SECONDS)
        log.warning("terminal's node stopped", extra={"room": room, "terminal": terminal_id, "node": holder})
        await websocket.send_text(json.dumps(["notice", "the server running this terminal stopped: restart it"]))
        await websocket.send_text(json.dumps(["exit", None]))
        return 1000, "terminal ended: its node stopped"

    tasks = {
        asyncio.create_task(_read(websocket, service, forward)),
        asyncio.create_task(deliver()),
        asyncio.create_task(watch()),
    }
    outcome: tuple[int, str] | None = None
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if not task.cancelled() and task.exception() is None:
                outcome = task.result()
                break
    finally:
        relays.close(room, relayed)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if outcome is not None:
        await transport.close(*outcome)


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
