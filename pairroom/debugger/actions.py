"""What a debug request does, on the node that runs the room's kernel.

The session lives beside the kernel it debugs. The routes (``api.py``) check the request and the
person's live role on the node that received it, then hand the action to the kernel service's
``call(room, "debug", args)`` (``ports.KernelRuns``): it runs ``serve`` below on this node when this node
holds the room's kernel or nobody does, and on a cluster forwards it to the holder otherwise, as runs
are forwarded (kernels/cluster_lease.py). ``args`` is plain JSON::

    {"action": "start" | "drive" | "pause" | "stop" | "evaluate" | "variables" | "scopes" | "abandon",
     "who": {"user", "name", "owner"}, ...the action's own fields}

and the answer ``{"status": HTTP status, "body": JSON}``: a refusal (409, 404, 403) travels back as
an answer, not as a failure of the forwarding.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from pycrdt import Map, Text

from pairroom.protocol.origins import LocalOrigin
from pairroom.rooms.room import Room

from . import breakpoints as bps
from .session import DebugSession, SessionError, conflict, run_code

if TYPE_CHECKING:
    from .extension import Debugger

log = logging.getLogger("pairroom.debugger")

LIVE = ("queued", "running", "stopped")
Answer = tuple[int, dict[str, Any]]


def state_of(room: Room) -> dict[str, Any]:
    with room.local_change(LocalOrigin("debugger-read")) as doc:
        debug = doc.get("debug", type=Map)
        out = {key: (value.to_py() if isinstance(value, Map) else value) for key, value in debug.items()}
        out["breakpoints"] = doc.get(bps.ROOT, type=Map).to_py()
    out.setdefault("state", "off")
    return out


def live_session(debugger: Debugger, room: Room) -> DebugSession:
    """The room's session on this node, or 409. The document saying a session is alive while this
    node (which holds the room's kernel, or nobody does) has none means its node died: say it ended."""
    session = debugger.session_of(room.name)
    if session is not None and session.state != "ended":
        return session
    debugger.end_stale(room)
    raise conflict("no debug session is running in this room")


async def start(debugger: Debugger, room: Room, args: dict[str, Any]) -> Answer:
    path, who = args["path"], args["who"]
    with room.local_change(LocalOrigin("debugger-read")) as doc:
        text = doc.get("files", type=Map).get(path)
    if not isinstance(text, Text):
        raise SessionError(404, f"no file {path!r} in room {room.name!r}")
    current = debugger.session_of(room.name)
    if current is not None and current.state != "ended":
        raise conflict(f"a debug session is already {current.state}, started by {current.by_name} ({current.by})")
    debugger.end_stale(room)
    session = debugger.new_session(room, path, who["user"], who["name"])  # no await since the check
    try:
        session.run_id = await debugger.kernels().submit_here(
            room.name, code=run_code(path), path=path, by=who["user"], hooks=session
        )
    except BaseException:
        session.end("failed")
        raise
    session.publish(event="queued")
    return 201, state_of(room)


async def drive(debugger: Debugger, room: Room, args: dict[str, Any]) -> Answer:
    command = args["command"]
    live_session(debugger, room).drive(command, args.get("stopId"), args.get("threadId"), args["who"]["user"])
    return 202, {"ok": True, "command": command}


async def pause(debugger: Debugger, room: Room, args: dict[str, Any]) -> Answer:
    await live_session(debugger, room).pause(args.get("threadId"))
    return 202, {"ok": True, "command": "pause"}


async def stop(debugger: Debugger, room: Room, args: dict[str, Any]) -> Answer:
    who = args["who"]
    session = live_session(debugger, room)
    if not who["owner"] and who["user"] != session.by:
        raise SessionError(403, f"only the session's starter ({session.by_name}) or an owner may stop it")
    if session.state == "queued":
        raise conflict("the debug run is still queued; interrupt the kernel's current run first")
    await session.stop(f"stopped by {who['name']}")
    interrupted = await debugger.kernels().interrupt(room.name)
    return 202, {"ok": True, "command": "stop", "interrupted": interrupted}


async def evaluate(debugger: Debugger, room: Room, args: dict[str, Any]) -> Answer:
    expression = args["expression"]
    result = await live_session(debugger, room).evaluate(expression, args.get("frameId"))
    debugger.record(room.name, "evaluate", args["who"]["user"], {"expression": expression[:200]})
    return 200, result


async def variables(debugger: Debugger, room: Room, args: dict[str, Any]) -> Answer:
    ref = args["ref"]
    return 200, {"ref": ref, "variables": await live_session(debugger, room).variables(ref)}


async def scopes(debugger: Debugger, room: Room, args: dict[str, Any]) -> Answer:
    frame = args["frameId"]
    return 200, {"frameId": frame, "scopes": await live_session(debugger, room).frame_scopes(frame)}


async def abandon(debugger: Debugger, room: Room, args: dict[str, Any]) -> Answer:
    """Another node saw the last person there who may drive leave: end the session if nobody who
    may drive is left anywhere (this node's members, and the others' through their presence)."""
    session = debugger.session_of(room.name)
    if session is None or session.state not in LIVE:
        return 200, {"ended": False}
    if debugger.driver_left(room, exclude_clients=frozenset(args.get("clients") or ())):
        return 200, {"ended": False}
    await session.stop("nobody who may drive the debugger is left in the room")
    return 200, {"ended": True}


ACTIONS: dict[str, Callable[[Debugger, Room, dict[str, Any]], Awaitable[Answer]]] = {
    "start": start,
    "drive": drive,
    "pause": pause,
    "stop": stop,
    "evaluate": evaluate,
    "variables": variables,
    "scopes": scopes,
    "abandon": abandon,
}


async def serve(debugger: Debugger, room_name: str, args: dict[str, Any]) -> dict[str, Any]:
    """The kernel service's handler of ``debug`` (``KernelRuns.serve``): the action, here."""
    action = ACTIONS.get(args.get("action"))  # type: ignore[arg-type]
    if action is None:
        return {"status": 400, "body": {"error": f"unknown debug action {args.get('action')!r}"}}
    try:
        async with debugger.node.registry.hold(room_name) as room:
            status, body = await action(debugger, room, args)
    except SessionError as exc:
        return {"status": exc.status, "body": {"error": exc.reason}}
    return {"status": status, "body": body}
