"""``GET /api/rtc-config``: the ICE servers a client should use, with short-lived TURN credentials.

TURN credentials follow the shared-secret scheme of coturn's REST API (``use-auth-secret`` with
``static-auth-secret`` in turnserver.conf): the username is ``EXPIRY:USER`` where EXPIRY is a unix
time, and the credential is ``base64(HMAC-SHA1(secret, username))``. coturn recomputes the HMAC and
refuses usernames whose expiry has passed, so pairroom never stores per-user TURN passwords and a
leaked credential dies within ``turn_ttl_seconds``.

The answer is the ``iceServers`` list of an ``RTCConfiguration``, ready for
``new RTCPeerConnection({iceServers})``, plus ``ttl`` so the client knows when to fetch again.
With a server secret the request needs a token (``Authorization: Bearer`` or ``?token=``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from pairroom.web.auth import AuthError, authenticate


def turn_credentials(secret: str, user: str, ttl_seconds: int, now: float | None = None) -> tuple[str, str]:
    """``(username, credential)`` for coturn's shared-secret authentication."""
    expiry = int(now if now is not None else time.time()) + int(ttl_seconds)
    username = f"{expiry}:{user}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


def ice_servers(
    stun_urls: tuple[str, ...],
    turn_urls: tuple[str, ...],
    turn_secret: str | None,
    user: str,
    ttl_seconds: int,
    now: float | None = None,
) -> list[dict[str, Any]]:
    servers: list[dict[str, Any]] = []
    if stun_urls:
        servers.append({"urls": list(stun_urls)})
    if turn_urls and turn_secret:
        username, credential = turn_credentials(turn_secret, user, ttl_seconds, now)
        servers.append({"urls": list(turn_urls), "username": username, "credential": credential})
    return servers


async def rtc_config(request: Request) -> Response:
    settings = request.app.state.rtc.settings
    try:
        principal = authenticate(request, request.query_params.get("room"))
    except AuthError as exc:
        return JSONResponse({"error": exc.reason}, exc.status)
    servers = ice_servers(
        settings.stun_urls, settings.turn_urls, settings.turn_secret, principal.user_id, settings.turn_ttl_seconds
    )
    return JSONResponse(
        {"iceServers": servers, "ttl": settings.turn_ttl_seconds},
        headers={"Cache-Control": "no-store"},
    )
