"""The classroom extension: quick polls and a timer, shown in every member's page.

State lives in the document's ``ext.classroom`` map, written only by the server (its document row
gives the root to the server alone): ``poll`` (the open poll: ``id``, ``question``, ``options``,
``votes`` user id -> option index, ``by``, ``at``), ``timer`` (``endsAt`` in ms, ``seconds``,
``label``, ``by``) and ``results`` (closed polls with their counts, the last 20). Being in the
document, it reaches every member and node live, is stored and replays with the room; closing a poll
also puts its counts on the room's timeline (an ``extension`` event). Members act through the routes
below, which the panel calls through the browser API's ``pairroom.request``.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from pycrdt import Map
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from pairroom.extensions import SERVER, Extension, LocalOrigin, OwnerRow, Principal, Role, authenticate, plain_value

ROOT = "ext.classroom"
ORIGIN = LocalOrigin("classroom")
MAX_BODY = 16 * 1024
MAX_RESULTS = 20
KEYS = ("poll", "timer", "results")


class Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def now_ms() -> int:
    return int(time.time() * 1000)


def counts_of(poll: dict[str, Any]) -> list[int]:
    counts = [0] * len(poll["options"])
    for choice in poll.get("votes", {}).values():
        if 0 <= int(choice) < len(counts):
            counts[int(choice)] += 1
    return counts


def text(value: Any, label: str, limit: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise Refused(400, f"{label} must be a non-empty string")
    if len(value) > limit:
        raise Refused(400, f"{label} is longer than {limit} characters")
    return value.strip()


class Classroom(Extension):
    """Polls and a timer (see the module's docstring)."""

    name = "classroom"
    version = "0.1.0"
    per_room = True

    def __init__(self) -> None:
        self.node: Any = None

    def document_rows(self) -> Sequence[OwnerRow]:
        return [OwnerRow(ROOT, key, SERVER, plain_value, f"the classroom's {key}") for key in KEYS]

    def lifespan(self, node: Any) -> contextlib.AbstractAsyncContextManager[None]:
        return self._running(node)

    @contextlib.asynccontextmanager
    async def _running(self, node: Any) -> AsyncIterator[None]:
        self.node = node  # a NodeHandle: its registry (doc.read, doc.write) and the timeline (record)
        try:
            yield
        finally:
            self.node = None

    def routes(self) -> Sequence[BaseRoute]:
        return [
            Route("/rooms/{room}", self.show, methods=["GET"]),
            Route("/rooms/{room}/poll", self.open_poll, methods=["POST"]),
            Route("/rooms/{room}/vote", self.vote, methods=["POST"]),
            Route("/rooms/{room}/close", self.close_poll, methods=["POST"]),
            Route("/rooms/{room}/timer", self.timer, methods=["POST"]),
        ]

    # -- the routes -----------------------------------------------------------------------------

    async def show(self, request: Request) -> Response:
        return await self._act(request, None, lambda room, principal, body, state: None)

    async def open_poll(self, request: Request) -> Response:
        def act(room: Any, principal: Principal, body: dict[str, Any], state: Map[Any]) -> dict[str, Any]:
            self._owner(room, principal)
            options = body.get("options")
            if not isinstance(options, list) or not 2 <= len(options) <= 6:
                raise Refused(400, "options must be a list of 2 to 6 strings")
            poll = {
                "id": secrets.token_hex(6),
                "question": text(body.get("question"), "question", 300),
                "options": [text(o, f"options[{i}]", 80) for i, o in enumerate(options)],
                "votes": {},
                "by": principal.name or principal.user_id,
                "at": now_ms(),
            }
            state["poll"] = poll
            return {
                "action": "poll.opened",
                "poll": poll["id"],
                "question": poll["question"],
                "options": poll["options"],
            }

        return await self._act(request, "poll", act)

    async def vote(self, request: Request) -> Response:
        def act(room: Any, principal: Principal, body: dict[str, Any], state: Map[Any]) -> None:
            poll = state.get("poll")
            if not isinstance(poll, dict) or poll.get("id") != body.get("poll"):
                raise Refused(409, "that poll is not the open one")
            choice = body.get("choice")
            if not isinstance(choice, int) or isinstance(choice, bool) or not 0 <= choice < len(poll["options"]):
                raise Refused(400, f"choice must be an option's index, 0 to {len(poll['options']) - 1}")
            state["poll"] = {**poll, "votes": {**poll.get("votes", {}), principal.user_id: choice}}

        return await self._act(request, "vote", act)

    async def close_poll(self, request: Request) -> Response:
        def act(room: Any, principal: Principal, body: dict[str, Any], state: Map[Any]) -> dict[str, Any]:
            self._owner(room, principal)
            poll = state.get("poll")
            if not isinstance(poll, dict):
                raise Refused(409, "no poll is open")
            result = {
                "id": poll["id"],
                "question": poll["question"],
                "options": poll["options"],
                "counts": counts_of(poll),
                "voters": len(poll.get("votes", {})),
                "closedAt": now_ms(),
            }
            past = state.get("results")
            state["results"] = [*(past if isinstance(past, list) else []), result][-MAX_RESULTS:]
            del state["poll"]
            return {"action": "poll.closed", **result}

        return await self._act(request, "close", act)

    async def timer(self, request: Request) -> Response:
        def act(room: Any, principal: Principal, body: dict[str, Any], state: Map[Any]) -> dict[str, Any]:
            self._owner(room, principal)
            seconds = body.get("seconds")
            if not isinstance(seconds, int) or isinstance(seconds, bool) or not 0 <= seconds <= 7200:
                raise Refused(400, "seconds must be a whole number from 0 (stop) to 7200")
            if seconds == 0:
                state.pop("timer", None)
                return {"action": "timer.stopped"}
            label = body.get("label") or "Timer"
            state["timer"] = {
                "endsAt": now_ms() + seconds * 1000,
                "seconds": seconds,
                "label": text(label, "label", 80),
                "by": principal.name or principal.user_id,
            }
            return {"action": "timer.started", "seconds": seconds, "label": state["timer"]["label"]}

        return await self._act(request, "timer", act)

    # -- the common part ------------------------------------------------------------------------

    @staticmethod
    def _owner(room: Any, principal: Principal) -> None:
        if room.role_of(principal) is not Role.OWNER:
            raise Refused(403, "only an owner of the room can do that")

    async def _act(self, request: Request, what: str | None, act: Any) -> Response:
        """Authenticate, check the extension is on in the room, run ``act`` in one server change,
        put what it returns on the timeline, and answer with the classroom's state."""
        if self.node is None:
            return JSONResponse({"error": "the server is starting or stopping"}, 503)
        room_name = request.path_params["room"]
        principal = authenticate(request, room_name)
        body: dict[str, Any] = {}
        if what is not None:
            raw = await request.body()
            if len(raw) > MAX_BODY:
                return JSONResponse({"error": f"body over {MAX_BODY} bytes"}, 413)
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                return JSONResponse({"error": "body must be JSON"}, 400)
            if not isinstance(body, dict):
                return JSONResponse({"error": "body must be a JSON object"}, 400)
        async with self.node.registry.hold(room_name) as room:
            switched = room.doc.get("meta", type=Map).get("extensions")
            if not isinstance(switched, Map) or switched.get(self.name) is not True:
                return JSONResponse({"error": "the classroom is off in this room: an owner switches it on"}, 409)
            event = None
            try:
                if what is not None:
                    with room.local_change(ORIGIN) as doc:
                        event = act(room, principal, body, doc.get(ROOT, type=Map))
            except Refused as refused:
                return JSONResponse({"error": refused.reason}, refused.status)
            if event is not None:
                self.node.record(room_name, principal.user_id, {"extension": self.name, **event})
            state = room.doc.get(ROOT, type=Map)
            shown = {key: state.get(key) for key in KEYS}
        return JSONResponse(shown)
