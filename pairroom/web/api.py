"""The room HTTP API: room creation, presence, invite links, live role changes and chat for any member.

Every route goes through the one door, ``web/auth.authenticate``, for the room in the path (open
mode: everyone is an anonymous editor), and decides with the live role (``live_role``: the room's
``meta.roles`` over the token's role, the room loaded if it is not). Errors are JSON
``{"error": reason}`` with a precise status.
"""

from __future__ import annotations

from collections.abc import Mapping

import logging

import json
import re
import secrets
import time
from typing import Any

from pycrdt import Map
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pairroom.protocol.origins import LocalOrigin
from pairroom.protocol.sync import ProtocolError
from pairroom.rooms.identity import Principal, Role
from pairroom.rooms.registry import RoomLoadError
from pairroom.rooms.room import Room
from pairroom.storage.store import StoreError
from pairroom.web.auth import AuthError, authenticate, bearer, mint
from pairroom.web.hub import Hub
from pairroom.web.lobby import CreationLimiter, NotCreator, new_epoch, verify_creator
from pairroom.web.websocket import room_name_from_path

EMPTY_STATE = b"\x00"  # the state vector of a document nobody ever wrote
MAX_TTL = 30 * 24 * 3600
NEW_ROOM = re.compile(r"[A-Za-z0-9_-]{1,64}")  # the lobby's names: URL-safe, one path segment
NEW_ROOM_ALPHABET = "abcdefghijkmnopqrstuvwxyz23456789"
CREATED_ROLES = (Role.OWNER, Role.EDITOR, Role.VIEWER)


log = logging.getLogger("pairroom.api")


class ApiError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def error(status: int, reason: str) -> Response:
    return JSONResponse({"error": reason}, status)


async def live_role(hub: Hub, room_name: str, principal: Principal) -> Role:
    """``principal``'s live role in ``room_name`` (``Room.role_of``); a room that is not loaded is
    loaded for the question, so the stored ``meta.roles`` answers. Raises RoomLoadError."""
    async with hub.registry.hold(room_name) as room:
        refuse_stale(room, principal)
        return room.role_of(principal)


def refuse_stale(room: Room, principal: Principal) -> None:
    """403 for a token of an earlier room of this name (deleted, then created again)."""
    stale = room.stale_token(principal)
    if stale is not None:
        raise ApiError(403, stale)


def room_of(request: Request) -> str:
    hub: Hub = request.app.state.hub
    try:
        return room_name_from_path(request.path_params["room"], hub.settings.max_room_name)
    except ProtocolError as exc:
        raise ApiError(400, exc.reason) from exc


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request's body, refused with 413 on a ``Content-Length`` over ``max_bytes`` before reading,
    and as soon as the bytes read pass it (a chunked body, or one longer than it said): a client
    never makes the server hold more than ``max_bytes`` of it."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, f"request body over {max_bytes // 1024} KiB")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise ApiError(413, f"request body over {max_bytes // 1024} KiB")
        chunks.append(chunk)
    return b"".join(chunks)


async def json_body(request: Request, max_bytes: int = 64 * 1024, shape: str = "") -> dict[str, Any]:
    """The request's JSON object (an empty body is ``{}``); ``shape`` shows the caller what is expected."""
    raw = await read_body(request, max_bytes)
    try:
        body = json.loads(raw or b"{}")
    except RecursionError as exc:
        raise ApiError(400, "body is not JSON: nested too deeply") from exc
    except ValueError as exc:
        raise ApiError(400, f"body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "body must be a JSON object" + (f": {shape}" if shape else ""))
    return body


async def stored(room: Room) -> None:
    """Write the room's pending updates now: a 2xx for a write means it is durable, so a crash right
    after the answer loses nothing the client was told was done. Raises StoreError (a 503)."""
    await room.flush()


def require_owner(role: Role) -> None:
    """``role`` is the live one (``Room.role_of``), never the token's alone."""
    if role is not Role.OWNER:
        raise ApiError(403, f"only an owner may do this; you are {role.value}")


ErrorStatus = int | None  # the HTTP status an exception answers with; None: its own ``status``


def http_error_handlers(extra: Mapping[type[Exception], ErrorStatus]) -> dict[Any, Any]:
    """Errors mapped to HTTP once, for every route (Starlette exception handlers): the web kit's
    own, then each extension's (``Extension.http_errors``). An error answers ``{"error": reason}``."""
    mapping: dict[type[Exception], ErrorStatus] = {
        ApiError: None,
        AuthError: None,
        RoomLoadError: 503,
        StoreError: 503,
        **extra,
    }
    return {kind: _answer_with(status) for kind, status in mapping.items()}


def _answer_with(status: ErrorStatus) -> Any:
    async def answer(request: Request, exc: Exception) -> Response:
        code = status if status is not None else int(getattr(exc, "status", 500))
        reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
        if isinstance(exc, StoreError):
            log.error("request failed: storage", extra={"path": request.url.path, "error": str(exc)})
            reason = f"not stored: {exc}; the change is kept in memory and written when storage is back"
        response = error(code, reason)
        if code == 413:  # the rest of the body is not read: end the connection
            response.headers["connection"] = "close"
        return response

    return answer


async def presence(request: Request) -> Response:
    room_name = room_of(request)
    principal = authenticate(request, room_name)
    hub: Hub = request.app.state.hub
    room = hub.registry.rooms.get(room_name)
    if room is not None:
        refuse_stale(room, principal)
    members = room.presence.members_view() if room is not None else []
    return JSONResponse({"room": room_name, "members": members})


async def invites(request: Request) -> Response:
    room_name = room_of(request)
    principal = authenticate(request, room_name)
    hub: Hub = request.app.state.hub
    base = (hub.settings.public_url or str(request.base_url)).rstrip("/")
    link = f"{base}/r/{room_name}"
    if hub.settings.secret is None:
        return JSONResponse({"open": True, "url": link})
    require_owner(await live_role(hub, room_name, principal))
    body = await json_body(request)
    roles = body.get("roles", ["editor", "viewer"])
    ttl = body.get("ttl", 8 * 3600)
    if not isinstance(ttl, (int, float)) or not 0 < ttl <= MAX_TTL:
        raise ApiError(400, f"ttl must be seconds between 1 and {MAX_TTL}")
    if not isinstance(roles, list) or not roles:
        raise ApiError(400, "roles must be a non-empty list")
    async with hub.registry.hold(room_name) as room:
        epoch = room.doc.get("meta", type=Map).get("epoch")  # invites are for this room, not a later one
    out = []
    for role in roles:
        try:
            parsed = Role(role)
        except ValueError as exc:
            raise ApiError(400, f"unknown role {role!r}") from exc
        name = str(body.get("name") or "")[:64]  # without one, the person types theirs when they join
        token = mint(hub.settings.secret, room_name, parsed, name, ttl_seconds=ttl,
                     epoch=epoch if isinstance(epoch, str) else None)
        out.append({"role": parsed.value, "token": token, "url": f"{link}?token={token}"})
    return JSONResponse({"open": False, "invites": out}, 201)


async def create_room(request: Request) -> Response:
    """A new room, for the lobby: ``{"room"?, "name"?, "ttl"?, "git"?}`` -> 201.

    Open mode answers the room's link (anyone with it is an editor). With a secret, the caller needs a
    creator token unless the lobby is open (then each client address is rate-limited; web/lobby.py),
    the room must not exist yet (not loaded, no members, nothing stored, no content) and the answer
    carries an owner, an editor and a viewer link, each with its token; the owner's token carries
    ``name``. The room is marked as created (``meta.createdAt``, ``meta.epoch``) and stored before the
    answer, so a second request for the name gets 409 instead of another owner token, even after a
    crash; every room's existing members and content stay out of reach (409). With
    ``"git": {"url", "ref"?}`` the room starts as that repository (docs/git.md); in open mode too,
    and then the room must be new.
    """
    hub: Hub = request.app.state.hub
    if hub.settings.secret is not None:
        admit_creator(request, hub)
    body = await json_body(request)
    room_name = body.get("room") or "".join(secrets.choice(NEW_ROOM_ALPHABET) for _ in range(10))
    if not isinstance(room_name, str) or not NEW_ROOM.fullmatch(room_name):
        raise ApiError(400, "room must be 1 to 64 letters, digits, - or _")
    base = (hub.settings.public_url or str(request.base_url)).rstrip("/")
    link = f"{base}/r/{room_name}"
    ttl = body.get("ttl", 8 * 3600)
    if hub.settings.secret is not None and (
            not isinstance(ttl, (int, float)) or isinstance(ttl, bool) or not 0 < ttl <= MAX_TTL):
        raise ApiError(400, f"ttl must be seconds between 1 and {MAX_TTL}")
    owner_name = body.get("name") or "Owner"
    if not isinstance(owner_name, str):
        raise ApiError(400, "name must be a string")
    taken = ApiError(409, f"room {room_name!r} already exists: ask its owner for a link")
    # ``git``: the version-control feature clones first (app.state.git_opener), so a bad URL leaves
    # no room behind, then fills the new room's files.
    opener: Any = getattr(request.app.state, "git_opener", None) if "git" in body else None
    if "git" in body and opener is None:
        raise ApiError(503, "opening git repositories is not enabled on this server")
    if hub.settings.secret is None and opener is None:
        return JSONResponse({"open": True, "room": room_name, "url": link}, 201)
    if room_name in hub.registry.rooms:  # loaded: someone is in it, or was a moment ago
        raise taken
    prepared = await opener.prepare(body["git"]) if opener is not None else None
    opened: dict[str, Any] | None = None
    epoch = new_epoch()
    try:
        async with hub.registry.hold(room_name) as room:
            # No await between the check and the mark: two requests for one name cannot both pass.
            if room_exists(room):
                raise taken
            with room.local_change(LocalOrigin("create")) as doc:
                meta = doc.get("meta", type=Map)
                meta["createdAt"] = int(time.time() * 1000)
                meta["epoch"] = epoch
            if prepared is not None:
                opened, prepared = await opener.install(room, prepared), None
            await stored(room)  # the claim is durable before anyone holds its owner token
    finally:
        if prepared is not None:
            await opener.discard(prepared)
    extra = {"git": opened} if opened is not None else {}
    if hub.settings.secret is None:
        return JSONResponse({"open": True, "room": room_name, "url": link, **extra}, 201)
    out = []
    for role in CREATED_ROLES:
        name = owner_name[:64] if role is Role.OWNER else ""  # each person types theirs when they join
        token = mint(hub.settings.secret, room_name, role, name, ttl_seconds=ttl, epoch=epoch)
        out.append({"role": role.value, "token": token, "url": f"{link}?token={token}"})
    return JSONResponse({"open": False, "room": room_name, "url": link, "invites": out, **extra}, 201)


def room_exists(room: Room) -> bool:
    """Anyone is in it (here or, as far as presence tells, on another node), anything was ever stored
    for it, or it has content."""
    return bool(
        room.members or room.presence.remote_owner or room.stored_seq > 0 or room.doc.get_state() != EMPTY_STATE
    )


def admit_creator(request: Request, hub: Hub) -> None:
    """With a secret: a creator token, or an open lobby within its per-address rate. Raises ApiError."""
    assert hub.settings.secret is not None
    if hub.settings.open_lobby:
        limiter = getattr(request.app.state, "lobby_limiter", None)
        if limiter is None:
            limiter = request.app.state.lobby_limiter = CreationLimiter(hub.settings.lobby_rooms_per_minute)
        address = request.client.host if request.client is not None else "unknown"
        wait = limiter.take(address)
        if wait > 0:
            raise ApiError(429, f"too many rooms created from {address}; try again in {wait:.0f} s")
        return
    try:
        verify_creator(hub.settings.secret, bearer(request.headers.get("authorization")))
    except NotCreator as exc:
        raise ApiError(401, str(exc)) from exc


async def set_role(request: Request) -> Response:
    room_name = room_of(request)
    principal = authenticate(request, room_name)
    body = await json_body(request)
    try:
        role = Role(body.get("role"))
    except ValueError as exc:
        raise ApiError(400, f"unknown role {body.get('role')!r}") from exc
    hub: Hub = request.app.state.hub
    user_id = request.path_params["user"]
    async with hub.registry.hold(room_name) as room:
        require_owner(room.role_of(principal))
        room.set_role(user_id, role)
        await stored(room)
    return JSONResponse({"user": user_id, "role": role.value})


routes = [
    Route("/api/rooms", create_room, methods=["POST"]),
    Route("/api/rooms/{room}/presence", presence, methods=["GET"]),
    Route("/api/rooms/{room}/invites", invites, methods=["POST"]),
    Route("/api/rooms/{room}/roles/{user}", set_role, methods=["PUT"]),
]
