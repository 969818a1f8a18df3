"""HTTP routes of version control (docs/git.md).

::

    GET  /api/rooms/{room}/git/status                        -> changes with who made them, co-authors
    GET  /api/rooms/{room}/git/diff?path=P[&format=json]     -> text/x-diff against the last commit
    GET  /api/rooms/{room}/git/log?limit=N                   -> {"commits": [...]}
    POST /api/rooms/{room}/git/commit  {"message", "paths"?, "series"?}     (meta.policy.git)
    POST /api/rooms/{room}/git/push    {"force"?}                           (force: owners)
    POST /api/rooms/{room}/git/pull    {"ref"?}                             (meta.policy.git)
    PUT  /api/rooms/{room}/git/remote  {"url"?, "branch"?, "credential"?}   (owners)
    GET  /api/rooms/{room}/files/{path}/blame                -> per line: who last changed it, when

Every decision uses the live role (``Room.role_of``): reading needs a token for the room; commit,
pull and push need an editor or an owner (only owners with ``meta.policy.git = "owners"``).
"""

from __future__ import annotations

from typing import Any

from pycrdt import Map
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from pairroom.rooms.identity import Principal, Role
from pairroom.rooms.room import Room
from pairroom.web.api import ApiError, json_body, room_of
from pairroom.web.auth import admit
from pairroom.web.hub import Hub

from .gitcli import GitError
from .service import Prepared, VcsService, check_path

MAX_MESSAGE = 64 * 1024


def _service(request: Request) -> VcsService:
    service = getattr(request.app.state, "git", None)
    if service is None:
        reason = getattr(request.app.state, "git_error", None) or "version control is not enabled on this server"
        raise ApiError(503, reason)
    return service  # type: ignore[no-any-return]


def git_policy(room: Room) -> str:
    policy = room.doc.get("meta", type=Map).get("policy")
    value = policy.get("git") if isinstance(policy, Map) else None
    return value if value in ("editors", "owners") else "editors"


def check_may_change(room: Room, principal: Principal) -> Role:
    role = room.role_of(principal)
    if not role.writes_files:
        raise ApiError(403, f"a {role.value} may not commit, push or pull in this room")
    if git_policy(room) == "owners" and role is not Role.OWNER:
        raise ApiError(403, "only owners may commit, push or pull in this room (policy git='owners')")
    return role


def record(request: Request, room_name: str, principal: Principal, data: dict[str, Any]) -> None:
    """Put the action on the room's recorded timeline (the recording feature, found at run time
    through ``app.state.recorder``; a node without it records nothing)."""
    recorder = getattr(request.app.state, "recorder", None)
    if recorder is not None:
        recorder.record(room_name, "git", principal.user_id, data)


async def _door(request: Request) -> tuple[str, Principal, Hub, VcsService]:
    room_name = room_of(request)
    principal = await admit(request, room_name, "git")
    hub: Hub = request.app.state.hub
    return room_name, principal, hub, _service(request)


async def status(request: Request) -> Response:
    room_name, principal, hub, service = await _door(request)
    async with hub.registry.hold(room_name) as room:
        answer = await service.status(room, principal)
        answer["canCommit"] = room.role_of(principal).writes_files and (
            git_policy(room) == "editors" or room.role_of(principal) is Role.OWNER)
    return JSONResponse(answer)


async def diff(request: Request) -> Response:
    room_name, principal, hub, service = await _door(request)
    path = check_path(request.query_params.get("path"))
    async with hub.registry.hold(room_name) as room:
        text = await service.diff(room, path)
    if request.query_params.get("format") == "json":
        return JSONResponse({"path": path, "diff": text})
    return PlainTextResponse(text, media_type="text/x-diff; charset=utf-8")


async def log_route(request: Request) -> Response:
    room_name, principal, hub, service = await _door(request)
    raw = request.query_params.get("limit", "50")
    if not raw.isdigit() or not 0 < int(raw) <= 500:
        raise ApiError(400, "limit must be a number from 1 to 500")
    async with hub.registry.hold(room_name) as room:
        commits = await service.log(room, int(raw))
    return JSONResponse({"commits": commits})


async def commit(request: Request) -> Response:
    room_name, principal, hub, service = await _door(request)
    body = await json_body(request, shape='{"message", "paths"?, "series"?}')
    message = body.get("message")
    if not isinstance(message, str) or not message.strip() or len(message.encode()) > MAX_MESSAGE:
        raise ApiError(400, f"message must be a non-empty string of at most {MAX_MESSAGE // 1024} KiB")
    paths = body.get("paths")
    if paths is not None:
        if not isinstance(paths, list) or not paths or len(paths) > 10_000:
            raise ApiError(400, "paths must be a non-empty list of room file paths")
        paths = {check_path(p) for p in paths}
    series = body.get("series", False)
    if not isinstance(series, bool):
        raise ApiError(400, "series must be true or false")
    async with hub.registry.hold(room_name) as room:
        check_may_change(room, principal)
        answer = await service.commit(room, principal, message.strip(), paths, series)
    record(request, room_name, principal, {"action": "commit", "head": answer["head"], "seq": answer["seq"],
                                           "commits": answer["commits"]})
    return JSONResponse(answer, 201)


async def push(request: Request) -> Response:
    room_name, principal, hub, service = await _door(request)
    body = await json_body(request, shape='{"force"?}')
    force = body.get("force", False)
    if not isinstance(force, bool):
        raise ApiError(400, "force must be true or false")
    async with hub.registry.hold(room_name) as room:
        role = check_may_change(room, principal)
        if force and role is not Role.OWNER:
            raise ApiError(403, "only an owner may force a push")
        answer = await service.push(room, force)
    record(request, room_name, principal, {"action": "push", "head": answer["head"], "branch": answer["branch"], "force": force})
    return JSONResponse(answer)


async def pull(request: Request) -> Response:
    room_name, principal, hub, service = await _door(request)
    body = await json_body(request, shape='{"ref"?}')
    async with hub.registry.hold(room_name) as room:
        check_may_change(room, principal)
        answer = await service.pull(room, principal, body.get("ref"))
    record(request, room_name, principal, {"action": "pull", "head": answer["head"], "fetched": answer["fetched"],
                                           "changed": answer["changed"], "conflicts": len(answer["conflicts"])})
    return JSONResponse(answer)


async def set_remote(request: Request) -> Response:
    room_name, principal, hub, service = await _door(request)
    body = await json_body(request, shape='{"url"?, "branch"?, "credential"?}')
    async with hub.registry.hold(room_name) as room:
        if room.role_of(principal) is not Role.OWNER:
            raise ApiError(403, "only an owner may set the remote or its credential")
        answer = await service.set_remote(room, body.get("url"), body.get("branch"), body.get("credential"))
    return JSONResponse(answer)


async def blame(request: Request) -> Response:
    room_name, principal, hub, service = await _door(request)
    path = check_path(request.path_params["path"])
    async with hub.registry.hold(room_name) as room:
        answer = await service.blame(room, path)
    return JSONResponse(answer)


class LobbyOpener:
    """What the lobby's ``POST /api/rooms {"git"}`` calls (through ``app.state.git_opener``): clone
    first, then make the room, so a bad URL leaves nothing behind."""

    def __init__(self, service: VcsService) -> None:
        self.service = service

    async def prepare(self, spec: object) -> Prepared:
        try:
            return await self.service.prepare(spec)
        except GitError as exc:
            raise ApiError(exc.status, exc.reason) from exc

    async def install(self, room: Room, prepared: Prepared) -> dict[str, Any]:
        try:
            return await self.service.install(room, prepared)
        except GitError as exc:
            raise ApiError(exc.status, exc.reason) from exc

    async def discard(self, prepared: Prepared) -> None:
        await self.service.discard(prepared)


routes: list[BaseRoute] = [
    Route("/api/rooms/{room}/git/status", status, methods=["GET"]),
    Route("/api/rooms/{room}/git/diff", diff, methods=["GET"]),
    Route("/api/rooms/{room}/git/log", log_route, methods=["GET"]),
    Route("/api/rooms/{room}/git/commit", commit, methods=["POST"]),
    Route("/api/rooms/{room}/git/push", push, methods=["POST"]),
    Route("/api/rooms/{room}/git/pull", pull, methods=["POST"]),
    Route("/api/rooms/{room}/git/remote", set_remote, methods=["PUT"]),
    Route("/api/rooms/{room}/files/{path:path}/blame", blame, methods=["GET"]),
]
