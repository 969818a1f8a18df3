"""Who is asking: HS256 tokens (pyjwt) carrying room, role, name and color, checked at the door.

Websocket clients pass the token as ``?token=`` (browsers cannot set headers on websockets), HTTP
clients as ``Authorization: Bearer``. Without a server secret the server runs in open mode: everyone
is an anonymous editor (and the server only binds a loopback address, see the CLI).
"""

from __future__ import annotations

import secrets
import time
from types import ModuleType

from pairroom.rooms.identity import DEFAULT_COLORS, Principal, Role, anonymous

__all__ = ["AuthError", "Principal", "Role", "anonymous", "bearer", "mint", "verify", "MAX_TOKEN_BYTES"]

ALGORITHM = "HS256"


def pyjwt() -> ModuleType:
    """pyjwt, imported on first use: it loads ``cryptography`` (about 10 MiB) for algorithms HS256
    does not need, and a server in open mode never checks a token."""
    import jwt

    return jwt

MAX_TOKEN_BYTES = 4096


class AuthError(Exception):
    """Refused at the door. ``code`` is the websocket close code; ``status`` the HTTP status."""

    def __init__(self, code: int, status: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.status = status
        self.reason = reason


def unauthorized(reason: str) -> AuthError:
    return AuthError(4401, 401, reason)


def forbidden(reason: str) -> AuthError:
    return AuthError(4403, 403, reason)


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


def verify(secret: str, token: str | None, room: str) -> Principal:
    """The principal a token names, for ``room``. Raises AuthError (4401 or 4403)."""
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
    name = str(claims.get("name") or claims["sub"])[:64]
    color = str(claims.get("color") or DEFAULT_COLORS[0])[:32]
    return Principal(str(claims["sub"]), name, color, role, room)


def bearer(authorization: str | None) -> str | None:
    """The token in an ``Authorization: Bearer ...`` header, if any."""
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None
