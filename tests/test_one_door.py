"""One door: every route authenticates through ``web/auth.authenticate`` and decides with the live role.

Against a real server with a secret, the real kernel service (its pool empty: nothing refused starts a
kernel) and the rtc routes:

- ``DOORS`` is every HTTP route that decides on a role, one row each: a member whose token would be
  enough is demoted live by an owner (``PUT /roles``) and is refused what the new role may not do,
  both while the room is loaded and after it was unloaded (the stored ``meta.roles`` answers); a
  member with the same token who was not demoted then gets the route's success status, so the refusal
  is the demotion's doing. A new route that decides on a role is one more row.
- ``WEBSOCKETS`` is every websocket route: a foreign ``Origin`` is refused with 4403 before anything
  else, an allowed one is let in.
- A room named ``*`` is no wildcard over other rooms' signaling topics; a call member demoted live
  loses the floor; an SDP offer that lists ``recvonly`` then ``sendrecv`` counts as sending.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
import websockets
from pycrdt import Map, Text
from websockets.asyncio.client import ClientConnection

from pairroom.app import create_app
from pairroom.config import Settings
from pairroom.protocol.origins import LocalOrigin
from pairroom.rooms.identity import Role
from pairroom.rtc.settings import RtcSettings
from pairroom.web.auth import mint
from pairroom.web.hub import Hub
from pairroom.web.runner import Server, start_serving, uvicorn_config
from tests.test_kernels import TEST_KERNELS, requires_sandbox, with_kernels
from tests.yclient import YClient, eventually

SECRET = "one-door-test-secret-0123456789abcdef"
ORIGIN = "https://ide.example"
TIMEOUT = 5.0

pytestmark = pytest.mark.asyncio(loop_scope="module")


def token(room: str, role: Role | str, user: str) -> str:
    return mint(SECRET, room, role, user.capitalize(), user_id=user)


def auth(room: str, role: Role | str, user: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token(room, role, user)}"}


@dataclasses.dataclass
class Running:
    server: Server
    task: asyncio.Task[None]
    http: httpx.AsyncClient

    @property
    def hub(self) -> Hub:
        return self.server.config.app.state.hub  # type: ignore[no-any-return]

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.server.port}"

    async def stop(self) -> None:
        await self.http.aclose()
        self.server.should_exit = True
        await self.task


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def door(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    """Secret, Origin allowlist, calls where only owners speak, rooms unloaded 0.1 s after their last
    user, and the kernel service with an empty pool."""
    tmp = tmp_path_factory.mktemp("door")
    settings = dataclasses.replace(
        Settings(),
        port=0,
        db=f"sqlite:///{tmp / 'p.db'}",
        log_format="text",
        secret=SECRET,
        kernels=False,
        allowed_origins=ORIGIN,
        room_idle_seconds=0.1,
        rtc=RtcSettings(speak="owners", recording_dir=str(tmp / "recordings")),
    )
    app = with_kernels(create_app(settings), dataclasses.replace(TEST_KERNELS, pool_size=0))
    server = Server(uvicorn_config(app, settings, signals=False))
    task = await start_serving(server)
    running = Running(server, task, httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=30))
    yield running
    await running.stop()


# -- HTTP: every route that decides on a role ---------------------------------------------------------

SDP_GARBAGE = "v=0\r\n"  # gets past the role check, then the relay refuses it as an offer (400)


@dataclasses.dataclass(frozen=True)
class Door:
    """A route that decides on a role: ``token_role`` may use it, ``demoted_to`` may not."""

    name: str
    method: str
    path: str  # {room}, {thread} (a thread with a suggestion), {pass} (an open review pass)
    token_role: Role
    demoted_to: Role
    ok: int  # what an undemoted member with the same token gets
    body: dict[str, Any] | None = None
    sdp: str | None = None  # sent as application/sdp instead of JSON


OWNER, EDITOR, REVIEWER, VIEWER = Role.OWNER, Role.EDITOR, Role.REVIEWER, Role.VIEWER
DOORS = [
    # web/api.py
    Door("invites", "POST", "/api/rooms/{room}/invites", OWNER, EDITOR, 201, {"roles": ["viewer"]}),
    Door("set-role", "PUT", "/api/rooms/{room}/roles/someone", OWNER, EDITOR, 200, {"role": "editor"}),
    # review/api.py
    Door(
        "review-create",
        "POST",
        "/api/rooms/{room}/reviews",
        EDITOR,
        VIEWER,
        201,
        {"path": "main.py", "line": 1, "text": "why?"},
    ),
    Door("review-reply", "POST", "/api/rooms/{room}/reviews/{thread}/messages", EDITOR, VIEWER, 201, {"text": "ok"}),
    Door("review-resolve", "POST", "/api/rooms/{room}/reviews/{thread}/resolve", EDITOR, VIEWER, 200),
    Door("review-reopen", "POST", "/api/rooms/{room}/reviews/{thread}/reopen", EDITOR, VIEWER, 200),
    Door("review-apply", "POST", "/api/rooms/{room}/reviews/{thread}/apply", EDITOR, REVIEWER, 200, {}),
    Door("review-pass-start", "POST", "/api/rooms/{room}/review-passes", EDITOR, VIEWER, 201, {"title": "t"}),
    Door("review-pass-finish", "POST", "/api/rooms/{room}/review-passes/{pass}/finish", EDITOR, VIEWER, 200),
    # recording/api.py
    Door("version", "POST", "/api/rooms/{room}/versions", EDITOR, VIEWER, 201, {"name": "v1"}),
    Door("restore", "POST", "/api/rooms/{room}/restore", EDITOR, VIEWER, 200, {"at": 1}),
    Door("fork", "POST", "/api/rooms/{room}/fork", EDITOR, VIEWER, 201, {"room": "{room}-fork"}),
    Door("delete", "DELETE", "/api/rooms/{room}", OWNER, EDITOR, 200),
    # kernels/api.py (the missing file is checked after the role: 404, and no kernel starts)
    Door("run", "POST", "/api/rooms/{room}/runs", EDITOR, VIEWER, 404, {"path": "missing.py"}),
    Door("interrupt", "POST", "/api/rooms/{room}/kernel/interrupt", EDITOR, VIEWER, 202),
    Door("restart", "POST", "/api/rooms/{room}/kernel/restart", EDITOR, VIEWER, 200),
    # rtc/api.py (this server's calls let only owners speak)
    Door("relay-speak", "POST", "/rtc/{room}/speak", OWNER, EDITOR, 400, sdp=SDP_GARBAGE),
]


async def prepare(door: Running, room: str) -> dict[str, str]:
    """A room with a file, a stored log, a review thread with a suggestion and an open review pass."""
    async with door.hub.registry.hold(room) as live:
        with live.local_change(LocalOrigin("test")) as doc:
            doc.get("files", type=Map)["main.py"] = Text("print('hi')\n")
        await live.flush()
    boss = auth(room, OWNER, "boss")
    thread = await door.http.post(
        f"/api/rooms/{room}/reviews",
        headers=boss,
        json={"path": "main.py", "line": 1, "text": "say hello", "suggestion": "print('hello')\n"},
    )
    assert thread.status_code == 201, thread.text
    review_pass = await door.http.post(f"/api/rooms/{room}/review-passes", headers=boss, json={"title": "p"})
    assert review_pass.status_code == 201, review_pass.text
    return {"room": room, "thread": thread.json()["id"], "pass": review_pass.json()["id"]}


async def knock(door: Running, row: Door, names: dict[str, str], user: str) -> httpx.Response:
    path = row.path.format(**names)
    headers = auth(names["room"], row.token_role, user)
    if row.sdp is not None:
        headers["content-type"] = "application/sdp"
        return await door.http.request(row.method, path, headers=headers, content=row.sdp)
    body = json.loads(json.dumps(row.body).replace("{room}", names["room"])) if row.body is not None else None
    return await door.http.request(row.method, path, headers=headers, json=body)


@requires_sandbox
@pytest.mark.parametrize("loaded", [True, False], ids=["loaded", "unloaded"])
@pytest.mark.parametrize("row", DOORS, ids=[d.name for d in DOORS])
async def test_a_member_demoted_live_is_refused(door: Running, row: Door, loaded: bool) -> None:
    room = f"door-{row.name}-{'loaded' if loaded else 'unloaded'}"
    names = await prepare(door, room)
    keeper = await YClient.connect(f"{door.ws}/yjs/{room}?token={token(room, OWNER, 'keeper')}", origin=ORIGIN)
    await asyncio.wait_for(keeper.synced.wait(), TIMEOUT)
    if not loaded:
        await keeper.close()
    demoted = await door.http.put(
        f"/api/rooms/{room}/roles/actor", json={"role": row.demoted_to.value}, headers=auth(room, OWNER, "boss")
    )
    assert demoted.status_code == 200, demoted.text
    if loaded:
        assert room in door.hub.registry.rooms
    else:
        await eventually(lambda: room not in door.hub.registry.rooms, what="the room unloads")

    refused = await knock(door, row, names, "actor")
    assert refused.status_code == 403, (refused.status_code, refused.text)
    assert row.demoted_to.value in refused.json()["error"] or "only owners" in refused.json()["error"]

    allowed = await knock(door, row, names, "peer")  # same token role, never demoted
    assert allowed.status_code == row.ok, (allowed.status_code, allowed.text)
    if loaded:
        await keeper.close()


@requires_sandbox
async def test_a_promotion_is_honoured_after_a_restart_of_the_room(door: Running) -> None:
    """The other way round: a viewer promoted live to owner may invite, from the stored meta.roles."""
    room = "door-promoted"
    await prepare(door, room)
    promoted = await door.http.put(
        f"/api/rooms/{room}/roles/lea", json={"role": "owner"}, headers=auth(room, OWNER, "boss")
    )
    assert promoted.status_code == 200
    await eventually(lambda: room not in door.hub.registry.rooms, what="the room unloads")
    made = await door.http.post(
        f"/api/rooms/{room}/invites", json={"roles": ["viewer"]}, headers=auth(room, VIEWER, "lea")
    )
    assert made.status_code == 201, made.text


# -- websockets: the Origin check on every route ------------------------------------------------------

WEBSOCKETS = {
    "yjs": "/yjs/{room}",
    "replay": "/replay/{room}",
    "signal": "/signal",
    "call": "/call/{room}",
}


async def close_of(ws: ClientConnection) -> tuple[int, str]:
    with pytest.raises(websockets.ConnectionClosed) as info:
        async with asyncio.timeout(TIMEOUT):
            while True:
                await ws.recv()
    assert info.value.rcvd is not None
    return info.value.rcvd.code, info.value.rcvd.reason


@requires_sandbox
@pytest.mark.parametrize("route", list(WEBSOCKETS), ids=list(WEBSOCKETS))
async def test_a_foreign_origin_is_refused_on_every_websocket(door: Running, route: str) -> None:
    room = f"origin-{route}"
    url = f"{door.ws}{WEBSOCKETS[route].format(room=room)}?token={token(room, OWNER, 'ada')}"
    async with websockets.connect(url, origin="https://evil.example", open_timeout=TIMEOUT) as ws:
        code, reason = await close_of(ws)
    assert code == 4403 and "origin" in reason, (code, reason)
    async with websockets.connect(url, open_timeout=TIMEOUT) as ws:  # no Origin at all: not a listed one
        assert (await close_of(ws))[0] == 4403
    assert room not in door.hub.registry.rooms or not door.hub.registry.rooms[room].members

    async with websockets.connect(url, origin=ORIGIN, open_timeout=TIMEOUT) as ws:
        if route in ("signal", "call"):
            await ws.send(json.dumps({"type": "ping"}))
            async with asyncio.timeout(TIMEOUT):
                assert json.loads(await ws.recv()) == {"type": "pong"}
        else:  # yjs: the server's sync step 1; replay: the player's first frame
            async with asyncio.timeout(TIMEOUT):
                assert isinstance(await ws.recv(), bytes)


# -- signaling: a room named * is a room, not a wildcard ----------------------------------------------


async def recv_json(ws: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(TIMEOUT):
        return json.loads(await ws.recv())  # type: ignore[no-any-return]


@requires_sandbox
async def test_a_room_named_star_is_no_wildcard(door: Running) -> None:
    def signal(room: str, user: str) -> Any:
        return websockets.connect(f"{door.ws}/signal?token={token(room, OWNER, user)}", origin=ORIGIN)

    async with signal("*", "mallory") as star, signal("victim", "vic") as victim:
        await star.send(json.dumps({"type": "subscribe", "topics": ["victim", "victim/doc"]}))
        refused = await recv_json(star)
        assert refused["code"] == 4403 and "another room" in refused["reason"], refused
        await star.send(json.dumps({"type": "publish", "topic": "victim", "from": "mallory"}))
        assert (await recv_json(star))["code"] == 4403
        await star.send(json.dumps({"type": "subscribe", "topics": ["*", "*/doc"]}))  # its own room's
        await victim.send(json.dumps({"type": "subscribe", "topics": ["victim"]}))
        await victim.send(json.dumps({"type": "publish", "topic": "victim", "from": "vic", "secret": 1}))
        assert (await recv_json(victim))["secret"] == 1
        await star.send(json.dumps({"type": "ping"}))
        assert await recv_json(star) == {"type": "pong"}, "nothing of the victim's room reached '*'"
        await victim.send(json.dumps({"type": "publish", "topic": "*", "from": "vic"}))
        assert (await recv_json(victim))["code"] == 4403


# -- calls: the live role and every media section ----------------------------------------------------

LISTEN_THEN_SEND = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=recvonly\r\na=sendrecv\r\n"
)
SECOND_SECTION_SENDS = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=recvonly\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=sendonly\r\n"
)
LISTENS = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=recvonly\r\n"


async def join_call(door: Running, room: str, role: Role, user: str, **media: bool) -> tuple[ClientConnection, str]:
    ws = await websockets.connect(f"{door.ws}/call/{room}?token={token(room, role, user)}", origin=ORIGIN)
    await ws.send(json.dumps({"type": "join", **media}))
    joined = await recv_json(ws)
    assert joined["type"] == "joined", joined
    return ws, joined["peer"]


@requires_sandbox
async def test_a_listener_cannot_speak_with_a_two_faced_offer(door: Running) -> None:
    mentor, mentor_id = await join_call(door, "lesson", OWNER, "mia", audio=True)
    learner, _ = await join_call(door, "lesson", EDITOR, "leo", audio=True)
    assert (await recv_json(mentor))["type"] == "peer-joined"
    for sdp in (LISTEN_THEN_SEND, SECOND_SECTION_SENDS):
        await learner.send(json.dumps({"type": "offer", "to": mentor_id, "sdp": sdp}))
        refused = await recv_json(learner)
        assert refused["code"] == 4403 and refused["reason"] == "listeners may not send audio or video"
    await learner.send(json.dumps({"type": "offer", "to": mentor_id, "sdp": LISTENS}))
    assert (await recv_json(mentor))["sdp"] == LISTENS, "only the listening offer got through"
    for ws in (mentor, learner):
        await ws.close()


@requires_sandbox
async def test_an_owner_demoted_during_a_call_loses_the_floor(door: Running) -> None:
    room = "demoted-call"
    mentor, mentor_id = await join_call(door, room, OWNER, "mia", audio=True)
    other, other_id = await join_call(door, room, OWNER, "oli", audio=True)
    assert (await recv_json(mentor))["type"] == "peer-joined"
    demoted = await door.http.put(
        f"/api/rooms/{room}/roles/mia", json={"role": "editor"}, headers=auth(room, OWNER, "boss")
    )
    assert demoted.status_code == 200

    await mentor.send(json.dumps({"type": "policy", "speak": "everyone"}))
    policy = await recv_json(other)  # the demotion, told to everyone: mia no longer speaks
    assert policy["type"] == "policy" and policy["speakers"] == [other_id], policy
    got = [await recv_json(mentor) for _ in range(2)]  # the same policy news, and the refusal
    refusal = next(m for m in got if m["type"] == "error")
    assert refusal["code"] == 4403 and refusal["reason"] == "only owners change who may speak", got
    await mentor.send(
        json.dumps({"type": "offer", "to": other_id, "sdp": LISTEN_THEN_SEND.replace("a=recvonly\r\n", "")})
    )
    assert (await recv_json(mentor))["reason"] == "listeners may not send audio or video"
    await other.send(json.dumps({"type": "allow", "peer": mentor_id, "speak": True}))  # an owner gives it back
    assert set((await recv_json(other))["speakers"]) == {mentor_id, other_id}
    for ws in (mentor, other):
        await ws.close()
