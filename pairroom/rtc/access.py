"""Who is on a signaling or media request, checked once at the handshake with the server's tokens.

Browsers cannot set headers on websockets, so the token comes as ``?token=``; HTTP clients may use
``Authorization: Bearer`` instead. The room is the one in the path when there is one; ``/signal``
and ``/api/rtc-config`` have none, so there the room is the one the token names (``verify`` checks
the signature, so reading the claim first grants nothing).

Without a server secret the server is in open mode: everyone is an anonymous editor of any room.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import HTTPConnection

from pairroom.web.auth import AuthError, Principal, anonymous, bearer, pyjwt, unauthorized, verify


def server_secret(connection: HTTPConnection) -> str | None:
    hub: Any = connection.app.state.hub
    return getattr(hub.settings, "secret", None) or None


def token_of(connection: HTTPConnection) -> str | None:
    return connection.query_params.get("token") or bearer(connection.headers.get("authorization"))


def claimed_room(token: str | None) -> str:
    """The ``room`` claim of a token, unverified (``verify`` checks it next)."""
    if not token:
        raise unauthorized("missing token")
    jwt = pyjwt()
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError as exc:
        raise unauthorized(f"invalid token: {exc}") from exc
    room = claims.get("room")
    if not isinstance(room, str) or not room:
        raise unauthorized("invalid token: no room")
    return room


def authenticate(connection: HTTPConnection, room: str | None = None) -> Principal:
    """The principal of this request, for ``room`` (or the token's room). Raises AuthError."""
    secret = server_secret(connection)
    if secret is None:
        return anonymous(room or "*")
    token = token_of(connection)
    return verify(secret, token, room if room is not None else claimed_room(token))


__all__ = ["AuthError", "Principal", "authenticate", "server_secret"]
