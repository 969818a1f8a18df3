"""HTTP routes of version control (docs/git.md).

::

    GET  /api/rooms/{room}/git/status                        -> changes with who made them, co-authors
    GET  /api/rooms/{room}/git/diff?path=P[&format=json]     -> text/x-diff against the last commit
    GET  /api/rooms/{room}/git/log?limit=N                   -> {"commits": [...]}
    POST /api/rooms/{room}/git/commit  {"message", "paths"?, "series"?}     (meta.policy.git)
    POST /api/rooms/{room}/git/push    {"force"?}                           (force: owners)
    POST /api/rooms/{room}/git/pull    {"ref"?}                             (meta.policy.git)
    PUT  /api/rooms/{room}/git/remote  {"url"?, "branch"?, "credential"?}   (owners)
    POST /api/rooms/{room}/git/resolve {"conflict", "take": "ours"|"theirs"} (meta.policy.git)
    GET  /api/rooms/{room}/files/{path}/blame                -> per line: who last changed it, when

Every decision uses the live role (``Room.role_of``): reading needs a token for the room; commit,
pull and push need an editor or an owner (only owners with ``meta.policy.git = "owners"``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
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

from .cluster import Answer
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


def record(state: Any, room_name: str, principal: Principal, data: dict[str, Any]) -> None:
    """Put the action on the room's recorded timeline (the recording feature, found at run time
    through ``app.state.recorder``; a node without it records nothing)."""
    recorder = getattr(state, "recorder", None)
    if recorder is not None:
        recorder.record(room_name, "git", principal.user_id, data)


async def _door(request: Request) -> tuple[str, Principal, Hub, VcsService]:
    room_name = room_of(request)
    principal = await admit(request, room_name, "git")
    hub: Hub = request.app.state.hub
    return room_name, principal, hub, _service(request)


# -- the operations on a room's repository ------------------------------------------------------------
#
# Each route checks its input and admits the member on the node it reached, then ``_dispatch`` runs
# the operation on the node whose disk holds the room's repository: here, or (in a cluster) on the
# lease holder, through ``cluster.GitLeases.forward``. An operation gets the node's ``app.state``, the
# room's name, the member and the checked arguments (plain JSON, as they cross Redis), and returns
# ``{"status", "json"}`` or ``{"status", "text", "type"}``; it raises ApiError/GitError for errors.


async def _op_status(state: Any, room_name: str, principal: Principal, args: dict[str, Any]) -> Answer:
    service: VcsService = state.git
    async with state.hub.registry.hold(room_name) as room:
        answer = await service.status(room, principal)
        role = room.role_of(principal)
        answer["canCommit"] = role.writes_files and (git_policy(room) == "editors" or role is Role.OWNER)
    return {"status": 200, "json": answer}


async def _op_diff(state: Any, room_name: str, principal: Principal, args: dict[str, Any]) -> Answer:
    path = args["path"]
    async with state.hub.registry.hold(room_name) as room:
        text = await state.git.diff(room, path)
    if args.get("json"):
        return {"status": 200, "json": {"path": path, "diff": text}}
    return {"status": 200, "text": text, "type": "text/x-diff; charset=utf-8"}


async def _op_log(state: Any, room_name: str, principal: Principal, args: dict[str, Any]) -> Answer:
    async with state.hub.registry.hold(room_name) as room:
        commits = await state.git.log(room, args["limit"])
    return {"status": 200, "json": {"commits": commits}}


async def _op_commit(state: Any, room_name: str, principal: Principal, args: dict[str, Any]) -> Answer:
    paths = set(args["paths"]) if args.get("paths") is not None else None
    async with state.hub.registry.hold(room_name) as room:
        check_may_change(room, principal)
        answer = await state.git.commit(room, principal, args["message"], paths, args["series"])
    record(
        state,
        room_name,
        principal,
        {"action": "commit", "head": answer["head"], "seq": answer["seq"], "commits": answer["commits"]},
    )
    return {"status": 201, "json": answer}


async def _op_push(state: Any, room_name: str, principal: Principal, args: dict[str, Any]) -> Answer:
    force = args["force"]
    async with state.hub.registry.hold(room_name) as room:
        role = check_may_change(room, principal)
        if force and role is not Role.OWNER:
            raise ApiError(403, "only an owner may force a push")
        answer = await state.git.push(room, force)
    record(
        state,
        room_name,
        principal,
        {"action": "push", "head": answer["head"], "branch": answer["branch"], "force": force},
    )
    return {"status": 200, "json": answer}


async def _op_pull(state: Any, room_name: str, principal: Principal, args: dict[str, Any]) -> Answer:
    async with state.hub.registry.hold(room_name) as room:
        check_may_change(room, principal)
        answer = await state.git.pull(room, principal, args.get("ref"))
    record(
        state,
        room_name,
        principal,
        {
            "action": "pull",
            "head": answer["head"],
            "seq": answer["seq"],
            "fetched": answer["fetched"],
            "changed": answer["changed"],
            "conflicts": len(answer["conflicts"]),
        },
    )
    return {"status": 200, "json": answer}


async def _op_remote(state: Any, room_name: str, principal: Principal, args: dict[str, Any]) -> Answer:
    async with state.hub.registry.hold(room_name) as room:
        if room.role_of(principal) is not Role.OWNER:
            raise ApiError(403, "only an owner may set the remote or its credential")
        answer = await state.git.set_remote(room, args.get("url"), args.get("branch"), args.get("credential"))
    return {"status": 200, "json": answer}


async def _op_fork(state: Any, room_name: str, principal: Principal, args: dict[str, Any]) -> Answer:
    """Give the fork ``args["fork"]`` of this room a repository of its own (``VcsService.fork``); run
    where the room's repository is, which then holds the fork's too."""
    async with state.hub.registry.hold(args["fork"]) as fork:
        answer = await state.git.fork(room_name, fork, args["seq"])
    return {"status": 201, "json": answer}


OPS: dict[str, Callable[[Any, str, Principal, dict[str, Any]], Awaitable[Answer]]] = {
    "status": _op_status,
    "diff": _op_diff,
    "log": _op_log,
    "commit": _op_commit,
    "push": _op_push,
    "pull": _op_pull,
    "remote": _op_remote,
    "fork": _op_fork,
}


def serve_forwarded(state: Any) -> Callable[[str, str, Principal, dict[str, Any]], Awaitable[Answer]]:
    """What the lease holder runs for a request another node forwarded: the same operation, its
    errors turned into answers."""

    async def serve(room_name: str, op: str, principal: Principal, args: dict[str, Any]) -> Answer:
        run = OPS.get(op)
        if run is None:
            return {"status": 400, "error": f"unknown git operation {op!r}"}
        try:
            return await run(state, room_name, principal, args)
        except (ApiError, GitError) as exc:
            return {"status": exc.status, "error": exc.reason}

    return serve


async def run_op(state: Any, room_name: str, principal: Principal, op: str, args: dict[str, Any]) -> Answer:
    """Run an operation on the node that holds the room's repository: here, or forwarded."""
    service: VcsService = state.git
    if service.leases is not None and not await service.here(room_name):
        answer = await service.leases.forward(room_name, op, principal, args)
        if "error" in answer:
            raise ApiError(int(answer["status"]), str(answer["error"]))
        return answer
    return await OPS[op](state, room_name, principal, args)


async def _dispatch(request: Request, room_name: str, principal: Principal, op: str, args: dict[str, Any]) -> Response:
    _service(request)
    answer = await run_op(request.app.state, room_name, principal, op, args)
    if "text" in answer:
        return PlainTextResponse(answer["text"], status_code=answer["status"], media_type=answer["type"])
    return JSONResponse(answer["json"], answer["status"])


# -- the routes -----------------------------------------------------------------------------------------


async def status(request: Request) -> Response:
    room_name, principal, _, _ = await _door(request)
    return await _dispatch(request, room_name, principal, "status", {})


async def diff(request: Request) -> Response:
    room_name, principal, _, _ = await _door(request)
    path = check_path(request.query_params.get("path"))
    args = {"path": path, "json": request.query_params.get("format") == "json"}
    return await _dispatch(request, room_name, principal, "diff", args)


async def log_route(request: Request) -> Response:
    room_name, principal, _, _ = await _door(request)
    raw = request.query_params.get("limit", "50")
    if not raw.isdigit() or not 0 < int(raw) <= 500:
        raise ApiError(400, "limit must be a number from 1 to 500")
    return await _dispatch(request, room_name, principal, "log", {"limit": int(raw)})


async def commit(request: Request) -> Response:
    room_name, principal, _, _ = await _door(request)
    body = await json_body(request, shape='{"message", "paths"?, "series"?}')
    message = body.get("message")
    if not isinstance(message, str) or not message.strip() or len(message.encode()) > MAX_MESSAGE:
        raise ApiError(400, f"message must be a non-empty string of at most {MAX_MESSAGE // 1024} KiB")
    paths = body.get("paths")
    if paths is not None:
        if not isinstance(paths, list) or not paths or len(paths) > 10_000:
            raise ApiError(400, "paths must be a non-empty list of room file paths")
        paths = sorted({check_path(p) for p in paths})
    series = body.get("series", False)
    if not isinstance(series, bool):
        raise ApiError(400, "series must be true or false")
    args = {"message": message.strip(), "paths": paths, "series": series}
    return await _dispatch(request, room_name, principal, "commit", args)


async def push(request: Request) -> Response:
    room_name, principal, _, _ = await _door(request)
    body = await json_body(request, shape='{"force"?}')
    force = body.get("force", False)
    if not isinstance(force, bool):
        raise ApiError(400, "force must be true or false")
    return await _dispatch(request, room_name, principal, "push", {"force": force})


async def pull(request: Request) -> Response:
    room_name, principal, _, _ = await _door(request)
    body = await json_body(request, shape='{"ref"?}')
    return await _dispatch(request, room_name, principal, "pull", {"ref": body.get("ref")})


async def set_remote(request: Request) -> Response:
    room_name, principal, _, _ = await _door(request)
    body = await json_body(request, shape='{"url"?, "branch"?, "credential"?}')
    args = {key: body.get(key) for key in ("url", "branch", "credential")}
    return await _dispatch(request, room_name, principal, "remote", args)


async def blame(request: Request) -> Response:
    """Computed from the room's stored log, which every node reads: answered where it is asked."""
    room_name, principal, hub, service = await _door(request)
    path = check_path(request.path_params["path"])
    async with hub.registry.hold(room_name) as room:
        answer = await service.blame(room, path)
    return JSONResponse(answer)


async def resolve(request: Request) -> Response:
    """Settle a pull's conflict (``meta.git.conflicts``): keep the room's lines or take the remote's.
    Only the document changes, so it is answered where it is asked."""
    room_name, principal, hub, service = await _door(request)
    body = await json_body(request, shape='{"conflict", "take": "ours" | "theirs"}')
    conflict, take = body.get("conflict"), body.get("take")
    if not isinstance(conflict, str) or not conflict:
        raise ApiError(400, "conflict must be the id of a conflict in meta.git.conflicts")
    if take not in ("ours", "theirs"):
        raise ApiError(400, 'take must be "ours" (the room\'s lines) or "theirs" (the remote\'s)')
    async with hub.registry.hold(room_name) as room:
        check_may_change(room, principal)
        answer = await service.resolve(room, principal, conflict, take)
    record(request.app.state, room_name, principal, {"action": "resolve", "path": answer["path"], "take": take})
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
    Route("/api/rooms/{room}/git/resolve", resolve, methods=["POST"]),
    Route("/api/rooms/{room}/files/{path:path}/blame", blame, methods=["GET"]),
]
