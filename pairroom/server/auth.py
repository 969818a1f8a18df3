"""Who is asking: HS256 tokens (pyjwt) carrying room, role, name and color, checked at the door.

Websocket clients pass the token as ``?token=`` (browsers cannot set headers on websockets), HTTP
clients as ``Authorization: Bearer``. Without a server secret the server runs in open mode: everyone
is an anonymous editor (and the server only binds a loopback address, see the CLI).
"""

from __future__ import annotations

import enum
import secrets
import time
from dataclasses import dataclass
from typing import Any

import jwt

ALGORITHM = "HS256"
DEFAULT_COLORS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#bcf60c")


class Role(str, enum.Enum):
    OWNER = "owner"
    EDITOR = "editor"
    REVIEWER = "reviewer"
    VIEWER = "viewer"

    @property
    def writes_files(self) -> bool:
        return self in (Role.OWNER, Role.EDITOR)

    @property
    def writes_document(self) -> bool:
        """May send document updates at all (reviewers only to review threads and chat)."""
        return self is not Role.VIEWER


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


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: str
    name: str
    color: str
    role: Role
    room: str  # the room the token is for; "*" in open mode
    anonymous: bool = False

    def identity(self) -> dict[str, Any]:
        """The awareness ``user`` field the server stamps on this member's presence."""
        return {"id": self.user_id, "name": self.name, "color": self.color, "role": self.role.value}


def anonymous(room: str) -> Principal:
    user_id = "anon-" + secrets.token_hex(4)
    color = DEFAULT_COLORS[int(user_id[-2:], 16) % len(DEFAULT_COLORS)]
    return Principal(user_id, "Guest " + user_id[-4:].upper(), color, Role.EDITOR, "*", anonymous=True)


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
) -> str:
    """A signed token for ``room``."""
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
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify(secret: str, token: str | None, room: str) -> Principal:
    """The principal a token names, for ``room``. Raises AuthError (4401 or 4403)."""
    if not token:
        raise unauthorized("missing token")
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
