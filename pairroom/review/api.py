"""HTTP routes for review threads and review passes, for integrations (the browser writes the document).

::

    GET  /api/rooms/{room}/reviews                       threads, with where their anchors point now
    POST /api/rooms/{room}/reviews                       {"path", "start", "end"} or {"path", "line", "endLine"},
                                                         "text", optional "suggestion" and "run" -> 201 thread
    POST /api/rooms/{room}/reviews/{id}/messages         {"text", optional "run"} -> 201 message
    POST /api/rooms/{room}/reviews/{id}/resolve          -> thread
    POST /api/rooms/{room}/reviews/{id}/reopen           -> thread (409 if its code was deleted)
    POST /api/rooms/{room}/reviews/{id}/apply            editors and owners: replace the range with the suggestion
    GET  /api/rooms/{room}/review-passes                 passes
    POST /api/rooms/{room}/review-passes                 {"title"} start a review: marks a version -> 201 pass + diff
    POST /api/rooms/{room}/review-passes/{id}/finish     summary of the pass's open/resolved/outdated threads
    GET  /api/rooms/{room}/reviews/{id}.md               review pass {id} as Markdown

Reading needs a valid token for the room; writing threads needs a role other than viewer; applying a
suggestion edits a file, so it needs an editor or owner. Offsets are characters (code points).
Authors, names and times come from the token and the server's clock, never from the body.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from pycrdt import Doc, Map, Text
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pairroom.protocol.origins import LocalOrigin
from pairroom.review import export as review_export
from pairroom.review import passes as review_passes
from pairroom.review import threads as review
from pairroom.review.threads import ReviewError
from pairroom.rooms.identity import Principal, Role
from pairroom.rooms.owners import review_thread
from pairroom.rooms.room import Room
from pairroom.web.api import ApiError, json_body, room_of
from pairroom.web.auth import authenticate
from pairroom.web.hub import Hub

log = logging.getLogger("pairroom.review")

ORIGIN = LocalOrigin("review")


def require(room: Room, principal: Principal, *, files: bool = False) -> None:
    """Writing needs a live role other than viewer; ``files`` needs one that edits files."""
    role = room.role_of(principal)
    if role is Role.VIEWER:
        raise ApiError(403, "a viewer may not write reviews")
    if files and not role.writes_files:
        raise ApiError(403, f"a {role.value} may not edit files; ask an editor to apply the suggestion")


def author_message(principal: Principal, body: dict[str, Any], text_key: str = "text") -> dict[str, Any]:
    """The message as stored: author and time from the server; the name from the token, or in open mode
    (no names are checked) the body's ``name`` when it gives one, as chat does."""
    name = principal.name
    if principal.names_itself and isinstance(body.get("name"), str) and body["name"].strip():
        name = body["name"]
    return review.message_entry(body.get(text_key), author=principal.user_id, name=name, run=body.get("run"))


def _int_field(body: dict[str, Any], key: str) -> int:
    value = body.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ApiError(400, f"{key} must be an integer")
    return value


async def list_threads(request: Request) -> Response:
    name = room_of(request)
    authenticate(request, name)
    hub: Hub = request.app.state.hub
    async with hub.registry.hold(name) as room:
        with room.local_change(ORIGIN) as doc:
            threads = valid_threads(doc)
    return JSONResponse({"room": name, "threads": threads})


def valid_threads(doc: Doc) -> list[dict[str, Any]]:
    """The threads as ``review.list_threads`` shows them, leaving out any that does not have the
    shape of the owner table's ``reviews`` row (stored before the guards checked it, say): one bad
    thread must not make the list answer 500."""
    views = []
    for thread_id, thread in review.reviews_of(doc).items():
        if not review_thread(thread):
            log.warning("malformed review thread left out", extra={"review_thread": thread_id})
            continue
        try:
            view = review.thread_view(doc, thread_id, thread)
            json.dumps(view, allow_nan=False)  # what JSONResponse will do
        except (ValueError, TypeError, KeyError, RecursionError):
            log.warning("review thread that cannot be shown left out", extra={"review_thread": thread_id})
            continue
        views.append(view)
    return sorted(views, key=lambda v: (v.get("createdAt") or 0, v["id"]))


async def create_thread(request: Request) -> Response:
    name = room_of(request)
    principal = authenticate(request, name)
    body = await json_body(request)
    path = body.get("path")
    if not isinstance(path, str):
        raise ApiError(400, "path must be a file path")
    message = author_message(principal, body)
    hub: Hub = request.app.state.hub
    async with hub.registry.hold(name) as room:
        require(room, principal)
        with room.local_change(ORIGIN) as doc:
            if "line" in body:
                text = doc.get("files", type=Map).get(path)
                if not isinstance(text, Text):
                    raise ReviewError("invalid", f"no file {path!r} in this room")
                first = _int_field(body, "line")
                last = _int_field(body, "endLine") if "endLine" in body else first
                start, end = review.line_range(str(text), first, last)
            else:
                start, end = _int_field(body, "start"), _int_field(body, "end")
            thread_id = review.create_thread(
                doc,
                path=path,
                start=start,
                end=end,
                message=message,
                by=principal.user_id,
                suggestion=body.get("suggestion"),
                review_pass=review_passes.active_pass(doc),
            )
            view = review.thread_view(doc, thread_id, review.thread_of(doc, thread_id))
    return JSONResponse(view, 201)


async def post_message(request: Request) -> Response:
    name = room_of(request)
    principal = authenticate(request, name)
    message = author_message(principal, await json_body(request))
    hub: Hub = request.app.state.hub
    async with hub.registry.hold(name) as room:
        require(room, principal)
        with room.local_change(ORIGIN) as doc:
            review.add_message(doc, request.path_params["id"], message)
            message["evidence"] = review.run_evidence(doc, message.get("run"))
    return JSONResponse(message, 201)


def _status_route(status: str):  # type: ignore[no-untyped-def]
    async def endpoint(request: Request) -> Response:
        name = room_of(request)
        principal = authenticate(request, name)
        hub: Hub = request.app.state.hub
        thread_id = request.path_params["id"]
        async with hub.registry.hold(name) as room:
            require(room, principal)
            with room.local_change(ORIGIN) as doc:
                review.set_status(doc, thread_id, status)
                view = review.thread_view(doc, thread_id, review.thread_of(doc, thread_id))
        return JSONResponse(view)

    return endpoint


async def apply_suggestion(request: Request) -> Response:
    name = room_of(request)
    principal = authenticate(request, name)
    hub: Hub = request.app.state.hub
    thread_id = request.path_params["id"]
    body = await json_body(request)
    message = author_message(principal, {"text": "Applied the suggestion.", "name": body.get("name")})
    async with hub.registry.hold(name) as room:
        require(room, principal, files=True)
        with room.local_change(ORIGIN) as doc:
            review.apply_suggestion(doc, thread_id, message)
            view = review.thread_view(doc, thread_id, review.thread_of(doc, thread_id))
    return JSONResponse(view)


async def list_passes(request: Request) -> Response:
    name = room_of(request)
    authenticate(request, name)
    hub: Hub = request.app.state.hub
    async with hub.registry.hold(name) as room:
        with room.local_change(ORIGIN) as doc:
            passes = review_passes.list_passes(doc)
    return JSONResponse({"room": name, "passes": passes})


async def start_pass(request: Request) -> Response:
    name = room_of(request)
    principal = authenticate(request, name)
    body = await json_body(request)
    title = body.get("title")
    if title is not None and not isinstance(title, str):
        raise ApiError(400, "title must be a string")
    hub: Hub = request.app.state.hub
    async with hub.registry.hold(name) as room:
        require(room, principal)
        await room.flush()  # the version is the log as stored: write what is pending first
        with room.local_change(ORIGIN) as doc:
            record = review_passes.start_pass(
                doc, seq=room.stored_seq, by=principal.user_id, name=principal.name, title=title
            )
    changes = await review_passes.changes_between(hub.store, name, record["since"], record["seq"])
    return JSONResponse(
        {
            **record,
            "changes": [{"path": c.path, "kind": c.kind, "diff": c.diff} for c in changes],
        },
        201,
    )


async def finish_pass(request: Request) -> Response:
    name = room_of(request)
    principal = authenticate(request, name)
    hub: Hub = request.app.state.hub
    async with hub.registry.hold(name) as room:
        require(room, principal)
        with room.local_change(ORIGIN) as doc:
            result = review_passes.finish_pass(doc, request.path_params["id"])
    return JSONResponse(result)


async def export_pass(request: Request) -> Response:
    name = room_of(request)
    authenticate(request, name)
    hub: Hub = request.app.state.hub
    async with hub.registry.hold(name) as room:
        with room.local_change(ORIGIN) as doc:
            record = review_passes.pass_of(doc, request.path_params["id"])
            threads = review_passes.threads_of_pass(doc, record)
    changes = await review_passes.changes_between(
        hub.store, name, int(record.get("since") or 0), int(record.get("seq") or 0)
    )
    text = review_export.pass_markdown(name, record, changes, threads, review_passes.summary(threads))
    return Response(text, media_type="text/markdown; charset=utf-8")


routes = [
    Route("/api/rooms/{room}/reviews", list_threads, methods=["GET"]),
    Route("/api/rooms/{room}/reviews", create_thread, methods=["POST"]),
    Route("/api/rooms/{room}/reviews/{id}.md", export_pass, methods=["GET"]),
    Route("/api/rooms/{room}/reviews/{id}/messages", post_message, methods=["POST"]),
    Route("/api/rooms/{room}/reviews/{id}/resolve", _status_route("resolved"), methods=["POST"]),
    Route("/api/rooms/{room}/reviews/{id}/reopen", _status_route("open"), methods=["POST"]),
    Route("/api/rooms/{room}/reviews/{id}/apply", apply_suggestion, methods=["POST"]),
    Route("/api/rooms/{room}/review-passes", list_passes, methods=["GET"]),
    Route("/api/rooms/{room}/review-passes", start_pass, methods=["POST"]),
    Route("/api/rooms/{room}/review-passes/{id}/finish", finish_pass, methods=["POST"]),
]
