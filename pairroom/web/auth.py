"""The one door: who is asking, checked once per request by ``authenticate``, for every route.

Tokens are HS256 JWTs (pyjwt) carrying room, role, name and color. Websocket clients pass the token
as ``?token=`` (browsers cannot set headers on websockets), HTTP clients as ``Authorization: Bearer``
(``?token=`` also works, for media elements that cannot send headers). Without a server secret the
server runs in open mode: everyone is an anonymous editor of any room (and the server only binds a
loopback address, see the CLI).

``authenticate`` answers who the token names and the role it carries; what a member may do is
decided with the *live* role, ``Room.role_of(principal)``, which an owner's change (``meta.roles``)
overrides. ``mint``, ``verify`` and ``claimed_room`` are pure: no request, no server state.
"""

from __future__ import annotations

import re
import secrets
import time
from types import ModuleType
from typing import Any

from starlette.requests import HTTPConnection

from pairroom.protocol.close_codes import CloseCode
from pairroom.rooms.identity import DEFAULT_COLORS, Principal, Role, anonymous
from pairroom.rooms.extension import Connection, Reject
from pairroom.rooms.registry import RoomLoadError

__all__ = [
    "AuthError", "MAX_TOKEN_BYTES", "Principal", "Role", "anonymous", "authenticate", "bearer",
    "check_origin", "claimed_room", "forbidden", "mint", "unauthorized", "verify",
]

ALGORITHM = "HS256"
MAX_TOKEN_BYTES = 4096


def pyjwt() -> ModuleType:
    """pyjwt, imported on first use: it loads ``cryptography`` (about 10 MiB) for algorithms HS256
    does not need, and a server in open mode never checks a token."""
    import jwt

    return jwt


class AuthError(Exception):
    """Refused at the door. ``code`` is the websocket close code; ``status`` the HTTP status."""

    def __init__(self, code: int, status: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.status = status
        self.reason = reason


def unauthorized(reason: str) -> AuthError:
    return AuthError(CloseCode.UNAUTHORIZED, 401, reason)


def forbidden(reason: str) -> AuthError:
    return AuthError(CloseCode.FORBIDDEN, 403, reason)


# -- the door ------------------------------------------------------------------------------------


def authenticate(conn: HTTPConnection, room: str | None) -> Principal:
    """The principal of this request or websocket, for ``room``. Raises AuthError (4401/4403).

    Every route calls this first. On a websocket the ``Origin`` must be in ``--allowed-origins``
    (when set): a page of another site cannot open a member's connection with the member's token.
    ``room`` is None only on routes without one (``/signal``, ``/api/rtc-config``): the token's own
    room is used (``verify`` checks the signature, so reading the claim first grants nothing).
    """
    settings: Any = conn.app.state.hub.settings
    if conn.scope["type"] == "websocket":
        check_origin(settings.origins, conn.headers.get("origin"))
    if settings.secret is None:
        return anonymous(room)
    token = conn.query_params.get("token") or bearer(conn.headers.get("authorization"))
    return verify(settings.secret, token, room if room is not None else claimed_room(token))


async def admit(conn: HTTPConnection, room: str | None, endpoint: str) -> Principal:
    """``authenticate``, then the extensions' ``on_authenticate``: the door of every websocket.

    An extension refuses with ``Reject(code, reason)``; that becomes an ``AuthError`` with its close
    code, so every endpoint closes the same way whoever refused."""
    principal = authenticate(conn, room)
    if room is not None and not principal.anonymous:  # a room's token: this room's, or an earlier one's?
        await check_room_identity(conn, room, principal)
    runner: Any = getattr(conn.app.state, "extensions", None)
    if runner is not None and runner.has("on_authenticate"):
        connection = Connection(room if room is not None else principal.room, principal, conn.headers, endpoint)
        try:
            await runner.authenticate(connection)
        except Reject as exc:
            raise AuthError(exc.code, 403, exc.reason) from exc
    return principal


async def check_room_identity(conn: HTTPConnection, room: str, principal: Principal) -> None:
    """Raise 4403 when the token is for an earlier room of this name (``Room.stale_token``). The room
    is loaded for the question (the join that follows uses it)."""
    hub: Any = conn.app.state.hub
    try:
        async with hub.registry.hold(room) as held:
            stale = held.stale_token(principal)
    except RoomLoadError:
        return  # the join that follows fails with its own code (1013: try again later)
    if stale is not None:
        raise forbidden(stale)


def check_origin(allowed: frozenset[str], origin: str | None) -> None:
    """Raise 4403 unless ``origin`` is allowed (an empty allowlist allows any)."""
    if not allowed:
        return
    origin = (origin or "").rstrip("/")
    if origin not in allowed:
        raise forbidden(f"origin {origin or '(none)'!r} not allowed")


# -- tokens (pure) --------------------------------------------------------------------------------


def mint(
    secret: str,
    room: str,
    role: Role | str,
    name: str,
    *,
    ttl_seconds: float = 8 * 3600,
    color: str | None = None,
    user_id: str | None = None,
    now: float | None = None,
    epoch: str | None = None,
) -> str:
    """A signed token for ``room`` (``epoch``: the room's ``meta.epoch``, see web/lobby.py)."""
    issued = int(now if now is not None else time.time())
    user_id = user_id or "u-" + secrets.token_hex(6)
    claims = {
        "sub": user_id,
        "room": room,
        "role": Role(role).value,
        "name": name,
        "color": color or DEFAULT_COLORS[sum(user_id.encode()) % len(DEFAULT_COLORS)],
        "iat": issued,
        "exp": issued + int(ttl_seconds),
    }
    if epoch is not None:
        claims["epoch"] = epoch
    return pyjwt().encode(claims, secret, algorithm=ALGORITHM)


EMAIL = re.compile(r"[^\s<>@,]{1,64}@[^\s<>@,]{1,190}")


def verify(secret: str, token: str | None, room: str) -> Principal:
    """The principal a token names, for ``room``. Raises AuthError (4401 or 4403).

    A token names exactly one room: a room called ``*`` is a room like any other, never a wildcard
    (only open mode's anonymous principals have ``any_room``)."""
    if not token:
        raise unauthorized("missing token")
    if len(token) > MAX_TOKEN_BYTES:
        raise unauthorized(f"token longer than {MAX_TOKEN_BYTES} bytes")
    jwt = pyjwt()
    try:
        claims = jwt.decode(
            token, secret, algorithms=[ALGORITHM], options={"require": ["exp", "sub", "room", "role"]}
        )
    except jwt.ExpiredSignatureError as exc:
        raise unauthorized("token expired") from exc
    except jwt.InvalidTokenError as exc:
        raise unauthorized(f"invalid token: {exc}") from exc
    try:
        role = Role(claims["role"])
    except ValueError as exc:
        raise unauthorized(f"invalid token: unknown role {claims['role']!r}") from exc
    if claims["room"] != room:
        raise forbidden("token is for another room")
    # A token without a name (a link for a role): the person types theirs (presence, chat and reviews
    # keep it); where the server needs one of its own (recordings, calls), the role's.
    name = str(claims.get("name") or role.value.capitalize())[:64]
    color = str(claims.get("color") or DEFAULT_COLORS[0])[:32]
    email = claims.get("email")
    if not isinstance(email, str) or not EMAIL.fullmatch(email):
        email = None
    epoch = claims.get("epoch")
    issued = claims.get("iat")
    return Principal(
        str(claims["sub"]), name, color, role, room, named=bool(claims.get("name")), email=email,
        epoch=epoch if isinstance(epoch, str) else None,
        issued_at=issued if isinstance(issued, int) and not isinstance(issued, bool) else 0,
    )


def claimed_room(token: str | None) -> str:
    """The ``room`` claim of a token, unverified (``verify`` checks it next)."""
    if not token:
        raise unauthorized("missing token")
    if len(token) > MAX_TOKEN_BYTES:
        raise unauthorized(f"token longer than {MAX_TOKEN_BYTES} bytes")
    jwt = pyjwt()
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError as exc:
        raise unauthorized(f"invalid token: {exc}") from exc
    room = claims.get("room")
    if not isinstance(room, str) or not room:
        raise unauthorized("invalid token: no room")
    return room


def bearer(authorization: str | None) -> str | None:
    """The token in an ``Authorization: Bearer ...`` header, if any."""
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None
