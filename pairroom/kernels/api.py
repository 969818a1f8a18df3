"""HTTP routes for running code in a room, and who may.

::

    POST /api/rooms/{room}/runs              {"code": "..."} or {"path": "main.py"} [+ "client"] -> 201 {"id"}
    GET  /api/rooms/{room}/runs/{id}         the run as in the document (status, outputs, ...)
    POST /api/rooms/{room}/runs/{id}/input   {"value": "...", "client": "..."} -> 202 (answers input())
    POST /api/rooms/{room}/kernel/interrupt  -> 202 {"interrupted": bool}
    POST /api/rooms/{room}/kernel/restart    -> 200 the kernel's state
    GET  /api/rooms/{room}/kernel            -> 200 the kernel's state
    GET  /api/rooms/{room}/runners           -> 200 {"python", "javascript", "off"}: what runs files here

Running, interrupting and restarting follow the room's ``meta.policy.run``: ``"editors"`` (the
default: editors and owners) or ``"owners"``; viewers and reviewers never. Reading a run or the
kernel's state needs only a valid token for the room. Errors are JSON ``{"error": reason}``; on a
cluster, a 503 says the node running the room's kernel did not answer in time.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pairroom.kernels import rundoc
from pairroom.kernels.runners import NotRunnable, kernel_code, language_of
from pairroom.kernels.service import MAX_INPUT_CHARS, InputRefused, KernelService
from pairroom.kernels.workdir import valid_path
from pairroom.rooms.room import Room
from pairroom.web.api import ApiError, json_body
from pairroom.web.auth import Principal, Role, authenticate, forbidden

MAX_CODE_BYTES = 1024 * 1024


def check_may_run(room: Room, principal: Principal) -> None:
    """Raise a 403 AuthError unless the room's run policy lets ``principal`` run code."""
    stale = room.stale_token(principal)
    if stale is not None:
        raise forbidden(stale)
    role = room.role_of(principal)
    policy = rundoc.read_run_policy(room)
    if policy == "owners" and role is not Role.OWNER:
        raise forbidden(f"only owners may run code in this room (policy run={policy!r}); you are {role.value}")
    if not role.writes_files:
        raise forbidden(f"a {role.value} may not run code in this room")


def _service(request: Request) -> KernelService:
    service = getattr(request.app.state, "kernels", None)
    if service is None:
        reason = getattr(request.app.state, "kernels_error", None) or "kernels are not enabled on this server"
        raise ApiError(503, reason)
    return service  # type: ignore[no-any-return]


async def _json_body(request: Request) -> dict[str, Any]:
    return await json_body(request, MAX_CODE_BYTES + 4096, '{"code": ...} or {"path": ...}')


async def create_run(request: Request) -> Response:
    name = request.path_params["room"]
    service = _service(request)
    principal = authenticate(request, name)
    body = await _json_body(request)
    code, path, client = body.get("code"), body.get("path"), body.get("client")
    language = body.get("language", "python")
    if (code is None) == (path is None):
        raise ApiError(400, 'give exactly one of "code" or "path"')
    if language not in ("python", "javascript"):
        raise ApiError(400, '"language" must be "python" or "javascript" (for "code"; a file runs as its kind)')
    if client is not None and not (isinstance(client, str) and 0 < len(client) <= 64):
        raise ApiError(400, '"client" must be a string of 1 to 64 characters (the page that answers input())')
    async with service.registry.hold(name) as room:
        check_may_run(room, principal)
        if path is not None:
            if not isinstance(path, str) or not valid_path(path):
                raise ApiError(400, f"invalid path {path!r}")
            files = rundoc.read_files(room)
            if path not in files:
                raise ApiError(404, f"no file {path!r} in room {name!r}")
            code = files[path]
            language = language_of(path)
        if not isinstance(code, str):
            raise ApiError(400, '"code" must be a string')
        if len(code.encode()) > MAX_CODE_BYTES:
            raise ApiError(413, f"code larger than {MAX_CODE_BYTES} bytes")
        try:
            kernel_code(service.runners, language, code, path)  # refused here, whichever node runs it
            run_id = await service.submit(
                name, code=code, path=path, by=principal.user_id, client=client, language=language
            )
        except NotRunnable as exc:
            raise ApiError(422, str(exc)) from exc
    return JSONResponse({"id": run_id}, 201)


async def get_run(request: Request) -> Response:
    name, run_id = request.path_params["room"], request.path_params["run"]
    service = _service(request)
    authenticate(request, name)
    async with service.registry.hold(name) as room:
        run = rundoc.read_run(room, run_id)
    if run is None:
        raise ApiError(404, f"no run {run_id!r} in room {name!r}")
    return JSONResponse({"id": run_id, **run})


async def answer_input(request: Request) -> Response:
    """The answer to a run's ``input()``, from the page that ran it (its ``client``, and with tokens
    the same user): 202, or 409 when the run does not wait for input, 403 from anyone else."""
    name, run_id = request.path_params["room"], request.path_params["run"]
    service = _service(request)
    principal = authenticate(request, name)
    body = await json_body(request, 4 * MAX_INPUT_CHARS + 4096, '{"value": ..., "client": ...}')
    value, client = body.get("value"), body.get("client")
    if not isinstance(value, str) or not isinstance(client, str):
        raise ApiError(400, '"value" and "client" must be strings')
    if len(value) > MAX_INPUT_CHARS:
        raise ApiError(413, f"an answer longer than {MAX_INPUT_CHARS} characters")
    async with service.registry.hold(name) as room:
        check_may_run(room, principal)
        if rundoc.read_run(room, run_id) is None:
            raise ApiError(404, f"no run {run_id!r} in room {name!r}")
    try:
        await service.answer_input(
            name, run_id, value, by=principal.user_id, client=client, check_by=not principal.anonymous
        )
    except InputRefused as exc:
        raise ApiError(exc.status, exc.reason) from exc
    return JSONResponse({"answered": True}, 202)


async def interrupt_kernel(request: Request) -> Response:
    name = request.path_params["room"]
    service = _service(request)
    principal = authenticate(request, name)
    async with service.registry.hold(name) as room:
        check_may_run(room, principal)
    interrupted = await service.interrupt(name)
    return JSONResponse({"interrupted": interrupted}, 202)


async def restart_kernel(request: Request) -> Response:
    name = request.path_params["room"]
    service = _service(request)
    principal = authenticate(request, name)
    async with service.registry.hold(name) as room:
        check_may_run(room, principal)
        await service.restart(name)
        state = rundoc.read_kernel_state(room)
    return JSONResponse({**state, **service.state(name)})


async def kernel_state(request: Request) -> Response:
    name = request.path_params["room"]
    service = _service(request)
    authenticate(request, name)
    async with service.registry.hold(name) as room:
        state = rundoc.read_kernel_state(room)
    return JSONResponse({**state, **service.state(name)})


async def runners(request: Request) -> Response:
    """What this server runs files with, for the page's Run button: always 200, with ``off`` saying
    why nothing runs when kernels are off (the page asks before it can know)."""
    name = request.path_params["room"]
    authenticate(request, name)
    service = getattr(request.app.state, "kernels", None)
    if service is None:
        off = getattr(request.app.state, "kernels_error", None) or "kernels are not enabled on this server"
        return JSONResponse({"python": None, "javascript": None, "off": off})
    return JSONResponse({**service.runners.describe(), "off": None})


routes: list[Route] = [
    Route("/api/rooms/{room}/runners", runners, methods=["GET"]),
    Route("/api/rooms/{room}/runs", create_run, methods=["POST"]),
    Route("/api/rooms/{room}/runs/{run}", get_run, methods=["GET"]),
    Route("/api/rooms/{room}/runs/{run}/input", answer_input, methods=["POST"]),
    Route("/api/rooms/{room}/kernel/interrupt", interrupt_kernel, methods=["POST"]),
    Route("/api/rooms/{room}/kernel/restart", restart_kernel, methods=["POST"]),
    Route("/api/rooms/{room}/kernel", kernel_state, methods=["GET"]),
]
