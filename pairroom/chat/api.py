"""``POST /api/rooms/{room}/chat``: a chat line from any role, viewers included.

Members who may write the document append to ``chat`` themselves (the guards stamp what they append,
``rooms/guards.py``); viewers cannot write the document, so they post here and the server appends
the line for them, stamped the same way. The answer comes once the line is stored.
"""

from __future__ import annotations

from pycrdt import Array
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pairroom.protocol.origins import LocalOrigin
from pairroom.rooms.guards import stamped_chat_entry
from pairroom.web.api import ApiError, json_body, refuse_stale, room_of, stored
from pairroom.web.auth import authenticate
from pairroom.web.hub import Hub

async def post_chat(request: Request) -> Response:
    """Chat for every role, viewers included (they cannot write the document themselves)."""
    room_name = room_of(request)
    principal = authenticate(request, room_name)
    body = await json_body(request)
    hub: Hub = request.app.state.hub
    entry = stamped_chat_entry({"text": body.get("text"), "name": body.get("name")}, principal, "api")
    if entry is None:
        raise ApiError(400, "text must be a non-empty string of at most 4096 bytes")
    async with hub.registry.hold(room_name) as room:
        refuse_stale(room, principal)
        with room.local_change(LocalOrigin("chat")) as doc:
            doc.get("chat", type=Array).append(entry)
        await stored(room)
    return JSONResponse(entry, 201)


routes = [Route("/api/rooms/{room}/chat", post_chat, methods=["POST"])]
