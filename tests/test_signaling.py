"""Signaling: the y-webrtc protocol at /signal, room calls at /call/ROOM, limits, ICE configuration.

Pure websocket and HTTP against a real server on 127.0.0.1; no media, so no network namespace.
"Nothing else arrived" is checked by sending a ping and getting the pong next: the server handles
one connection's messages in order, so anything delivered earlier would be in front of the pong.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from pairroom.rtc.api import RtcSettings
from pairroom.rtc.calls import sdp_sends_media
from pairroom.rtc.limits import Limits
from pairroom.web.auth import mint
from tests.rtc.serve import RtcServer, start

SECRET = "signaling-test-secret-of-32-bytes-or-more"
TIMEOUT = 5.0

Start = Callable[..., Awaitable[RtcServer]]


@pytest.fixture
async def rtc_server(tmp_path: Path) -> AsyncIterator[Start]:
    running: list[RtcServer] = []

    async def start_(secret: str | None = None, **rtc: Any) -> RtcServer:
        it = await start(f"sqlite:///{tmp_path / 'p.db'}", RtcSettings(**rtc), secret)
        running.append(it)
        return it

    yield start_
    for it in running:
        await it.stop()


@pytest.fixture
async def open_ws() -> AsyncIterator[Callable[[str], Awaitable[ClientConnection]]]:
    opened: list[ClientConnection] = []

    async def open_(url: str) -> ClientConnection:
        ws = await websockets.connect(url, open_timeout=TIMEOUT)
        opened.append(ws)
        return ws

    yield open_
    for ws in opened:
        await ws.close()


async def send(ws: ClientConnection, message: dict[str, Any] | str) -> None:
    await ws.send(message if isinstance(message, str) else json.dumps(message))


async def recv(ws: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(TIMEOUT):
        data = await ws.recv()
    assert isinstance(data, str)
    return json.loads(data)  # type: ignore[no-any-return]


async def nothing_else(ws: ClientConnection) -> None:
    await send(ws, {"type": "ping"})
    assert await recv(ws) == {"type": "pong"}


async def closed_with(ws: ClientConnection) -> int:
    with pytest.raises(websockets.ConnectionClosed) as info:
        async with asyncio.timeout(TIMEOUT):
            while True:
                await ws.recv()
    assert info.value.rcvd is not None
    return info.value.rcvd.code


# -- y-webrtc ------------------------------------------------------------------------------------------


async def test_ywebrtc_subscribe_publish_receive(rtc_server: Start, open_ws: Any) -> None:
    server = await rtc_server()
    a = await open_ws(f"{server.ws}/signal")
    b = await open_ws(f"{server.ws}/signal")
    # The messages y-webrtc 10.x's SignalingConn sends on connect, and its announce.
    for ws in (a, b):
        await send(ws, {"type": "subscribe", "topics": ["lesson-1"]})
    await nothing_else(a)
    await nothing_else(b)
    announce = {"type": "publish", "topic": "lesson-1", "data": {"type": "announce", "from": "peer-a"}}
    await send(a, announce)
    expected = {**announce, "clients": 2}
    assert await recv(a) == expected  # the sender too, as y-webrtc's server does
    assert await recv(b) == expected

    await send(b, {"type": "unsubscribe", "topics": ["lesson-1"]})
    await nothing_else(b)
    await send(a, {"type": "publish", "topic": "lesson-1", "data": {"type": "signal", "to": "x"}})
    assert (await recv(a))["clients"] == 1
    await nothing_else(b)

    # A topic nobody holds: published into the void, like y-webrtc's server.
    await send(b, {"type": "publish", "topic": "empty", "data": {}})
    await nothing_else(b)
    await b.close()
    await send(a, announce)
    assert (await recv(a))["clients"] == 1
    assert server.rtc.bus.channels() == 1


async def test_topics_are_scoped_to_the_token_room(rtc_server: Start, open_ws: Any) -> None:
    server = await rtc_server(secret=SECRET)
    token_a = mint(SECRET, "room-a", "editor", "ann")
    token_b = mint(SECRET, "room-b", "editor", "bob")
    a = await open_ws(f"{server.ws}/signal?token={token_a}")
    a2 = await open_ws(f"{server.ws}/signal?token={mint(SECRET, 'room-a', 'viewer', 'amy')}")
    b = await open_ws(f"{server.ws}/signal?token={token_b}")

    await send(b, {"type": "subscribe", "topics": ["room-b"]})
    await send(a, {"type": "subscribe", "topics": ["room-a", "room-a/files", "room-b"]})
    error = await recv(a)
    assert error["type"] == "error" and error["code"] == 4403 and "room-b" in error["reason"]
    await send(a2, {"type": "subscribe", "topics": ["room-a/files"]})
    await nothing_else(a2)

    # Cross-room publishing is refused; the connection lives on, room B hears nothing.
    await send(a, {"type": "publish", "topic": "room-b", "data": {"type": "announce", "from": "ann"}})
    error = await recv(a)
    assert error["code"] == 4403
    await nothing_else(b)
    await send(a, {"type": "publish", "topic": "room-a/files", "data": {"hello": 1}})
    assert (await recv(a2))["data"] == {"hello": 1}
    assert (await recv(a))["clients"] == 2

    missing = await open_ws(f"{server.ws}/signal")
    assert await closed_with(missing) == 4401
    forged = await open_ws(
        f"{server.ws}/signal?token={mint('another-secret-of-32-bytes-or-longer', 'room-b', 'owner', 'eve')}"
    )
    assert await closed_with(forged) == 4401


async def test_bad_messages_get_error_frames_then_a_close(rtc_server: Start, open_ws: Any) -> None:
    server = await rtc_server(limits=Limits(max_message_bytes=1024, max_strikes=3))
    ws = await open_ws(f"{server.ws}/signal")
    await send(ws, "{not json")
    assert (await recv(ws))["code"] == 4400
    await send(ws, {"type": "subscribe", "topics": "not-a-list"})
    assert (await recv(ws))["code"] == 4400
    await nothing_else(ws)  # two strikes: still served
    await send(ws, {"type": "publish", "topic": "t", "data": "x" * 2000})
    error = await recv(ws)
    assert error == {"type": "error", "code": 1009, "reason": error["reason"]} and "over 1024" in error["reason"]
    assert await closed_with(ws) == 1009

    ws = await open_ws(f"{server.ws}/signal")
    for message in ({"type": "shout"}, [1, 2], {"type": 7}):
        await send(ws, message)  # type: ignore[arg-type]
    assert [(await recv(ws))["code"] for _ in range(3)] == [4406, 4400, 4400]
    assert await closed_with(ws) == 4400


async def test_rate_limit(rtc_server: Start, open_ws: Any) -> None:
    server = await rtc_server(limits=Limits(rate_per_second=1, burst=5, max_strikes=2))
    ws = await open_ws(f"{server.ws}/signal")
    for _ in range(8):
        await send(ws, {"type": "ping"})
    replies = [await recv(ws) for _ in range(7)]
    assert replies[:5] == [{"type": "pong"}] * 5
    assert [r["code"] for r in replies[5:]] == [4429, 4429]
    assert await closed_with(ws) == 4429


# -- room calls --------------------------------------------------------------------------------------

SENDS_AUDIO = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=sendrecv\r\n"
LISTENS = SENDS_AUDIO.replace("a=sendrecv", "a=recvonly")


def test_sdp_direction() -> None:
    assert sdp_sends_media(SENDS_AUDIO)
    assert not sdp_sends_media(LISTENS)
    assert sdp_sends_media(LISTENS.replace("a=recvonly\r\n", ""))  # no direction: sendrecv
    assert not sdp_sends_media("v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n")
    assert not sdp_sends_media(SENDS_AUDIO.replace("m=audio 9", "m=audio 0"))  # rejected section


async def join(
    open_ws: Any, server: RtcServer, room: str, token: str | None = None, **media: bool
) -> tuple[ClientConnection, dict[str, Any]]:
    ws = await open_ws(f"{server.ws}/call/{room}" + (f"?token={token}" if token else ""))
    await send(ws, {"type": "join", **media})
    joined = await recv(ws)
    assert joined["type"] == "joined", joined
    return ws, joined


async def test_call_signals_reach_only_the_addressed_peer(rtc_server: Start, open_ws: Any) -> None:
    server = await rtc_server()
    a, ja = await join(open_ws, server, "r1", audio=True)
    b, jb = await join(open_ws, server, "r1", audio=True, video=True)
    assert [p["peer"] for p in jb["peers"]] == [ja["peer"]]
    joined_b = await recv(a)
    assert joined_b["type"] == "peer-joined" and joined_b["peer"] == jb["peer"] and joined_b["video"] is True
    c, jc = await join(open_ws, server, "r1")
    other_room, _ = await join(open_ws, server, "r2")
    for ws in (a, b):
        assert (await recv(ws))["peer"] == jc["peer"]

    await send(c, {"type": "offer", "to": ja["peer"], "sdp": SENDS_AUDIO})
    await send(
        c,
        {
            "type": "candidate",
            "to": ja["peer"],
            "candidate": {"candidate": "candidate:1 1 udp 1 127.0.0.1 5000 typ host", "sdpMid": "0"},
        },
    )
    offer = await recv(a)
    assert offer == {"type": "offer", "from": jc["peer"], "sdp": SENDS_AUDIO}
    assert (await recv(a))["type"] == "candidate"
    await send(a, {"type": "answer", "to": jc["peer"], "sdp": SENDS_AUDIO})
    assert (await recv(c))["from"] == ja["peer"]
    await send(b, {"type": "state", "muted": True})
    for ws in (a, b, c):
        assert await recv(ws) == {"type": "state", "peer": jb["peer"], "muted": True, "camera": True}
    for ws in (b, other_room):
        await nothing_else(ws)

    # Another room's peer id is not in this call; neither is a peer who left.
    await send(other_room, {"type": "offer", "to": ja["peer"], "sdp": LISTENS})
    assert (await recv(other_room))["code"] == 4403
    await send(b, {"type": "leave"})
    for ws in (a, c):
        assert await recv(ws) == {"type": "peer-left", "peer": jb["peer"]}
    await send(a, {"type": "offer", "to": jb["peer"], "sdp": LISTENS})
    refused = await recv(a)
    assert refused["code"] == 4403 and "not in the call" in refused["reason"]
    await nothing_else(b)
    await c.close()
    assert await recv(a) == {"type": "peer-left", "peer": jc["peer"]}


async def test_owners_policy_lets_learners_listen_until_allowed(rtc_server: Start, open_ws: Any) -> None:
    server = await rtc_server(secret=SECRET, owners_speak_rooms=frozenset({"lesson"}))
    mentor, jm = await join(open_ws, server, "lesson", mint(SECRET, "lesson", "owner", "mia"), audio=True)
    learner, jl = await join(open_ws, server, "lesson", mint(SECRET, "lesson", "editor", "leo"), audio=True)
    assert jl["policy"] == {"speak": "owners", "record": False}
    seen = await recv(mentor)
    assert seen["peer"] == jl["peer"] and seen["speaker"] is False and seen["audio"] is False
    assert jl["peers"][0]["speaker"] is True

    await send(learner, {"type": "offer", "to": jm["peer"], "sdp": SENDS_AUDIO})
    assert (await recv(learner))["reason"] == "listeners may not send audio or video"
    await send(learner, {"type": "state", "muted": False})
    assert (await recv(learner))["code"] == 4403
    await send(learner, {"type": "allow", "peer": jl["peer"], "speak": True})
    assert (await recv(learner))["reason"] == "only owners change who may speak"
    await send(learner, {"type": "offer", "to": jm["peer"], "sdp": LISTENS})
    assert (await recv(mentor))["type"] == "offer"

    await send(mentor, {"type": "allow", "peer": jl["peer"], "speak": True})
    for ws in (mentor, learner):
        policy = await recv(ws)
        assert policy["type"] == "policy" and set(policy["speakers"]) == {jm["peer"], jl["peer"]}
    await send(learner, {"type": "offer", "to": jm["peer"], "sdp": SENDS_AUDIO})
    assert (await recv(mentor))["sdp"] == SENDS_AUDIO

    outsider = await open_ws(f"{server.ws}/call/lesson?token={mint(SECRET, 'other', 'owner', 'eve')}")
    assert await closed_with(outsider) == 4403


# -- ICE configuration -------------------------------------------------------------------------------


async def test_rtc_config_gives_coturn_credentials(rtc_server: Start) -> None:
    server = await rtc_server(
        secret=SECRET,
        stun_urls=("stun:stun.example.org:3478",),
        turn_urls=("turn:turn.example.org:3478?transport=udp",),
        turn_secret="coturn-secret",
        turn_ttl_seconds=600,
    )
    token = mint(SECRET, "room-a", "editor", "ann", user_id="u-ann")
    async with httpx.AsyncClient(base_url=server.http) as http:
        assert (await http.get("/api/rtc-config")).status_code == 401
        response = await http.get("/api/rtc-config", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200 and response.headers["cache-control"] == "no-store"
    body = response.json()
    stun, turn = body["iceServers"]
    assert stun == {"urls": ["stun:stun.example.org:3478"]}
    expiry, user = turn["username"].split(":")
    assert user == "u-ann" and 590 <= int(expiry) - time.time() <= 600
    digest = hmac.new(b"coturn-secret", turn["username"].encode(), hashlib.sha1).digest()
    assert turn["credential"] == base64.b64encode(digest).decode()
    assert body["ttl"] == 600
