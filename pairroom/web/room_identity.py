"""One check at the door of every room route: the token was minted for this room, not for an earlier
room of the same name (``Room.stale_token``; tokens carry the room's epoch, see web/lobby.py)."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import unquote

from starlette.requests import HTTPConnection

from pairroom.protocol.sync import ProtocolError
from pairroom.web.auth import AuthError, authenticate, check_room_identity
from pairroom.web.websocket import room_name_from_path

ROOM_PATH = re.compile(r"^/(?:api/rooms|rtc)/([^/]+)")


class RoomIdentityDoor:
    """ASGI middleware: a token of an earlier room of the same name (deleted, then created again)
    is refused with 403 on every HTTP route under ``/api/rooms/{room}`` and ``/rtc/{room}``, before
    any handler runs. Handlers check the live role; this checks that the room is the one the token
    was minted for, once, so a new route cannot forget it. A token that does not verify is left to
    the route, which answers 401/403 with its own reason."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and (match := ROOM_PATH.match(scope["path"])):
            refused = await self._refusal(HTTPConnection(scope), match.group(1))
            if refused is not None:
                body = json.dumps({"error": refused}).encode()
                headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                await send({"type": "http.response.start", "status": 403, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)

    async def _refusal(self, conn: HTTPConnection, segment: str) -> str | None:
        if conn.app.state.hub.settings.secret is None:
            return None
        try:
            room = room_name_from_path(unquote(segment), conn.app.state.hub.settings.max_room_name)
            principal = authenticate(conn, room)
        except (AuthError, ProtocolError):
            return None  # the route answers with its own status and reason
        if principal.anonymous:
            return None
        hub = conn.app.state.hub
        if room not in hub.registry.rooms and (await hub.store.load(room)).last_seq == 0:
            return None  # no such room, loaded or stored: nothing a token could be stale for (and no load)
        try:
            await check_room_identity(conn, room, principal)
        except AuthError as exc:
            return exc.reason
        return None
