"""Who is in the room: tokens at the door, roles enforced by the server, stamped presence and chat."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import websockets
from pycrdt import Array, Map, Text

from pairroom.protocol import sync as protocol
from pairroom.protocol.sync import CloseCode
from pairroom.web.auth import mint, verify
from pairroom.web.lobby import mint_creator

from .support.yjs_node import node_clients, wait_for  # noqa: F401
from .yclient import YClient, eventually

SECRET = "test-secret-0123456789abcdef0123456789"


@pytest.fixture
async def secured(start_server):
    return await start_server(secret=SECRET, awareness_tick_ms=20)


def token(room: str, role: str = "editor", name: str = "Ada", **kw) -> str:
    return mint(SECRET, room, role, name, **kw)


def url(server, room: str, tok: str | None) -> str:
    return server.ws(room) + (f"?token={tok}" if tok else "")


async def refused(server, room: str, tok: str | None) -> tuple[int, str]:
    """Connect and expect a close before any message arrives."""
    async with websockets.connect(url(server, room, tok)) as ws:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            frame = await asyncio.wait_for(ws.recv(), 5)
            raise AssertionError(f"received {frame!r} before being refused")
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code, closed.value.rcvd.reason


@pytest.mark.parametrize(
    "tok, code, reason",
    [
        (None, 4401, "missing token"),
        ("not-a-jwt", 4401, "invalid token"),
        (mint("another-secret-0123456789abcdef0123", "r", "editor", "Eve"), 4401, "invalid token"),
        (mint(SECRET, "r", "editor", "Old", ttl_seconds=1, now=time.time() - 3600), 4401, "expired"),
        (mint(SECRET, "other-room", "owner", "Eve"), 4403, "another room"),
        ("x" * 5000, 4401, "longer than"),
    ],
    ids=["missing", "garbage", "wrong-secret", "expired", "wrong-room", "too-long"],
)
async def test_bad_tokens_are_refused_before_any_document_byte(secured, tok, code, reason):
    got_code, got_reason = await refused(secured, "r", tok)
    assert got_code == code and reason in got_reason
    assert "r" not in secured.hub.registry.rooms or not secured.hub.registry.rooms["r"].members


async def test_origin_allow_list(start_server):
    server = await start_server(allowed_origins="https://ide.example")
    async with websockets.connect(server.ws("o"), origin="https://evil.example") as ws:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd.code == CloseCode.FORBIDDEN
    ok = await YClient.connect(server.ws("o"), origin="https://ide.example")
    await asyncio.wait_for(ok.synced.wait(), 5)
    await ok.close()


async def test_member_cap(start_server):
    server = await start_server(max_members=2)
    a = await YClient.connect(server.ws("cap"))
    b = await YClient.connect(server.ws("cap"))
    await asyncio.wait_for(asyncio.gather(a.synced.wait(), b.synced.wait()), 5)
    third = await YClient.connect(server.ws("cap"))
    assert await third.closed() == CloseCode.ROOM_FULL
    assert len(server.hub.registry.rooms["cap"].members) == 2
    for c in (a, b):
        await c.close()


async def test_rate_limit(start_server):
    server = await start_server(rate_limit=5, rate_burst=10)
    a = await YClient.connect(server.ws("rate"))
    await asyncio.wait_for(a.synced.wait(), 5)
    for _ in range(30):
        await a.send_raw(bytes([protocol.MessageType.QUERY_AWARENESS]))
    assert await a.closed() == CloseCode.RATE_LIMITED
    polite = await YClient.connect(server.ws("rate"))
    await asyncio.wait_for(polite.synced.wait(), 5)
    await polite.close()


async def test_a_viewer_receives_everything_and_changes_nothing(secured):
    editor = await YClient.connect(url(secured, "v", token("v", "editor", "Ed")))
    viewer = await YClient.connect(url(secured, "v", token("v", "viewer", "Vi")))
    other = await YClient.connect(url(secured, "v", token("v", "editor", "Ot")))
    await asyncio.wait_for(asyncio.gather(editor.synced.wait(), viewer.synced.wait(), other.synced.wait()), 5)
    editor.insert(0, "from the editor")
    await eventually(lambda: str(viewer.text) == "from the editor", what="viewer receives")
    viewer.insert(0, "VIEWER WAS HERE ")
    editor.insert(len(str(editor.text)), "!")
    await eventually(lambda: str(other.text) == "from the editor!", what="later edit arrives")
    room = secured.hub.registry.rooms["v"]
    assert "VIEWER" not in str(room.doc.get("text", type=Text))
    assert "VIEWER" not in str(other.text)
    assert secured.hub.metrics.updates_dropped._value.get() >= 1
    await room.flush()
    for update in await secured.hub.store.read_updates("v"):
        assert b"VIEWER" not in update.data
    assert viewer.close_code is None, "a viewer is not disconnected for its client's habits"
    for c in (editor, viewer, other):
        await c.close()


@pytest.mark.slow
async def test_a_viewers_connection_outlives_the_clients_30s_message_timeout(secured, node_clients):
    viewer = await node_clients.start(secured.ws_base, "quiet", "v1", params={"token": token("quiet", "viewer")})
    await viewer.wait_synced()
    await viewer.insert(0, "dropped")
    await asyncio.sleep(35)  # the y-websocket client closes after 30 s without a message
    status = await viewer.status()
    assert status["closeCount"] == 0 and status["connected"]
    assert str(secured.hub.registry.rooms["quiet"].doc.get("text", type=Text)) == ""


async def test_live_promotion_and_demotion_without_reconnect(secured):
    owner = token("live", "owner", "Mentor")
    learner_token = token("live", "viewer", "Learner", user_id="learner-1")
    mentor = await YClient.connect(url(secured, "live", owner))
    learner = await YClient.connect(url(secured, "live", learner_token))
    await asyncio.wait_for(asyncio.gather(mentor.synced.wait(), learner.synced.wait()), 5)
    headers = {"authorization": f"Bearer {owner}"}
    async with httpx.AsyncClient(base_url=secured.http) as http:
        denied = await http.put(
            "/api/rooms/live/roles/learner-1",
            json={"role": "editor"},
            headers={"authorization": f"Bearer {learner_token}"},
        )
        assert denied.status_code == 403
        assert (
            await http.put("/api/rooms/live/roles/learner-1", json={"role": "editor"}, headers=headers)
        ).status_code == 200
        await eventually(
            lambda: learner.doc.get("meta", type=Map).get("roles", {}).get("learner-1") == "editor",
            what="the change is visible in meta.roles",
        )
        learner.insert(0, "my turn")
        await eventually(lambda: str(mentor.text) == "my turn", what="promoted learner edits")
        assert (
            await http.put("/api/rooms/live/roles/learner-1", json={"role": "viewer"}, headers=headers)
        ).status_code == 200
        await eventually(lambda: learner.doc.get("meta", type=Map)["roles"]["learner-1"] == "viewer")
        learner.insert(0, "not anymore ")
        mentor.insert(len(str(mentor.text)), ".")
        await eventually(lambda: str(learner.text).endswith("."), what="mentor edit arrives")
        assert str(mentor.text) == "my turn."
        assert learner.close_code is None and mentor.close_code is None
    for c in (mentor, learner):
        await c.close()


async def test_an_editor_cannot_grant_itself_a_role(secured):
    ed = await YClient.connect(url(secured, "esc", token("esc", "editor", "Ed", user_id="ed")))
    await asyncio.wait_for(ed.synced.wait(), 5)
    ed.doc.get("meta", type=Map)["roles"] = Map({"ed": "owner"})
    room = secured.hub.registry.rooms["esc"]
    await eventually(lambda: room.integrated >= 2, what="forged change and its revert")
    assert room.roles == {}
    # The server had no role map: the forged one is removed (docs/doc-schema.md, the owner table).
    assert "roles" not in room.doc.get("meta", type=Map)
    await eventually(lambda: "roles" not in ed.doc.get("meta", type=Map), what="reverted for the client")
    await ed.close()


async def test_presence_is_stamped_with_the_tokens_identity(secured):
    mallory = await YClient.connect(url(secured, "imp", token("imp", "editor", "Mallory", user_id="m")))
    witness = await YClient.connect(url(secured, "imp", token("imp", "editor", "Wit")))
    await mallory.set_awareness(
        {"user": {"name": "Ada", "color": "#000", "colorLight": "#0003"}, "cursor": {"anchor": 1, "head": 2}}
    )

    def users() -> list[dict]:
        return [s.get("user", {}) for s in witness.awareness.states.values() if s]

    await eventually(lambda: any(u.get("id") == "m" for u in users()), what="witness sees Mallory")
    user = next(u for u in users() if u.get("id") == "m")
    assert user["name"] == "Mallory" and user["role"] == "editor" and user["color"] != "#000"
    assert user["colorLight"] == user["color"] + "33", "the selection colour follows the caret colour"
    # hijacking another connection's awareness client id is ignored
    forged = protocol.encode_awareness(
        [
            protocol.AwarenessEntry(
                witness.awareness.client_id, 99, json.dumps({"user": {"name": "Wit"}, "cursor": {"anchor": 0}})
            )
        ]
    )
    await witness.set_awareness({"user": {"name": "Wit"}})
    await eventually(lambda: witness.awareness.client_id in secured.hub.registry.rooms["imp"].presence.owner)
    await mallory.send_raw(protocol.awareness_message(forged))
    await asyncio.sleep(0.1)
    state = secured.hub.registry.rooms["imp"].awareness.states[witness.awareness.client_id]
    assert "cursor" not in state
    for c in (mallory, witness):
        await c.close()


async def test_chat_entries_are_stamped_by_the_server(secured):
    ada = await YClient.connect(url(secured, "chat", token("chat", "editor", "Ada", user_id="ada")))
    bob = await YClient.connect(url(secured, "chat", token("chat", "editor", "Bob", user_id="bob")))
    await asyncio.wait_for(asyncio.gather(ada.synced.wait(), bob.synced.wait()), 5)
    chat = ada.doc.get("chat", type=Array)
    chat.append({"id": "c1", "text": "hello", "author": "bob", "name": "Bob", "at": 0})
    chat.append({"id": "c2", "text": "x" * 5000})
    chat.append("not an object")

    def bob_chat() -> list:
        return list(bob.doc.get("chat", type=Array))

    await eventually(
        lambda: len(bob_chat()) == 1 and bob_chat()[0].get("author") == "ada",
        what=f"forged entry corrected, bad ones removed: {bob_chat()}",
    )
    entry = bob_chat()[0]
    assert entry["name"] == "Ada" and entry["text"] == "hello" and abs(entry["at"] - time.time() * 1000) < 10_000
    viewer = token("chat", "viewer", "Vic", user_id="vic")
    async with httpx.AsyncClient(base_url=secured.http) as http:
        posted = await http.post(
            "/api/rooms/chat/chat", json={"text": "a question"}, headers={"authorization": f"Bearer {viewer}"}
        )
        assert posted.status_code == 201
        too_long = await http.post(
            "/api/rooms/chat/chat", json={"text": "q" * 5000}, headers={"authorization": f"Bearer {viewer}"}
        )
        assert too_long.status_code == 400
    await eventually(lambda: len(bob_chat()) == 2 and bob_chat()[1]["author"] == "vic")
    for c in (ada, bob):
        await c.close()


async def test_invite_links_and_presence_api(secured):
    owner = token("inv", "owner", "Owner")
    async with httpx.AsyncClient(base_url=secured.http) as http:
        made = await http.post(
            "/api/rooms/inv/invites",
            json={"roles": ["editor", "viewer"], "ttl": 600},
            headers={"authorization": f"Bearer {owner}"},
        )
        assert made.status_code == 201
        links = {i["role"]: i for i in made.json()["invites"]}
        assert links["viewer"]["url"].endswith(f"/r/inv?token={links['viewer']['token']}")
        editor_try = await http.post(
            "/api/rooms/inv/invites", json={}, headers={"authorization": f"Bearer {links['editor']['token']}"}
        )
        assert editor_try.status_code == 403
        assert (await http.get("/api/rooms/inv/presence")).status_code == 401
        guest = await YClient.connect(url(secured, "inv", links["viewer"]["token"]))
        await asyncio.wait_for(guest.synced.wait(), 5)
        await guest.set_awareness({"user": {}, "file": "main.py", "hand": True})
        await eventually(lambda: secured.hub.registry.rooms["inv"].awareness.states.get(guest.awareness.client_id))
        listing = (await http.get("/api/rooms/inv/presence", headers={"authorization": f"Bearer {owner}"})).json()
        (member,) = listing["members"]
        assert member["role"] == "viewer" and member["hand"] is True and member["file"] == "main.py"
        await guest.close()


async def test_the_lobby_creates_a_room_with_owner_editor_and_viewer_links(secured, start_server):
    creator = {"authorization": f"Bearer {mint_creator(SECRET, 'ops')}"}  # tests/test_hardening.py: without one
    async with httpx.AsyncClient(base_url=secured.http, headers=creator) as http:
        made = await http.post("/api/rooms", json={"room": "fresh", "name": "Ada", "ttl": 600})
        assert made.status_code == 201, made.text
        body = made.json()
        assert body["open"] is False and body["room"] == "fresh"
        links = {i["role"]: i for i in body["invites"]}
        assert list(links) == ["owner", "editor", "viewer"]
        for role, invite in links.items():
            assert invite["url"] == f"{secured.http}/r/fresh?token={invite['token']}"
            principal = verify(SECRET, invite["token"], "fresh")
            assert principal.role.value == role
        assert verify(SECRET, links["owner"]["token"], "fresh").name == "Ada"
        # The room exists now: nobody gets a second owner token for it, nor for a room with content.
        again = await http.post("/api/rooms", json={"room": "fresh"})
        assert again.status_code == 409 and "already exists" in again.json()["error"]
        writer = await YClient.connect(url(secured, "used", token("used", "editor")))
        await asyncio.wait_for(writer.synced.wait(), 5)
        writer.doc.get("files", type=Map)["a.py"] = Text("x = 1")
        await eventually(lambda: "a.py" in secured.hub.registry.rooms["used"].doc.get("files", type=Map))
        taken = await http.post("/api/rooms", json={"room": "used"})
        assert taken.status_code == 409
        await writer.close()
        # The owner link works: the owner may mint further invites.
        more = await http.post(
            "/api/rooms/fresh/invites",
            json={"roles": ["reviewer"]},
            headers={"authorization": f"Bearer {links['owner']['token']}"},
        )
        assert more.status_code == 201
        random_name = await http.post("/api/rooms", json={})
        assert random_name.status_code == 201 and re.fullmatch(r"[a-z0-9]{10}", random_name.json()["room"])
        for bad in ({"room": "a/b"}, {"room": "x" * 65}, {"room": 5}, {"ttl": 0}, {"name": 7}):
            assert (await http.post("/api/rooms", json=bad)).status_code == 400, bad
    open_server = await start_server()
    async with httpx.AsyncClient(base_url=open_server.http) as http:
        made = await http.post("/api/rooms", json={"room": "fresh"})
        assert made.status_code == 201
        assert made.json() == {"open": True, "room": "fresh", "url": f"{open_server.http}/r/fresh"}


async def test_viewers_presence_goes_to_participants_and_viewers_get_a_summary(secured):
    mentor = await YClient.connect(url(secured, "class", token("class", "owner", "Mentor")))
    learners = [
        await YClient.connect(url(secured, "class", token("class", "viewer", f"L{i}", user_id=f"l{i}")))
        for i in range(5)
    ]
    await asyncio.wait_for(asyncio.gather(*(c.synced.wait() for c in [mentor, *learners])), 5)
    await mentor.set_awareness({"user": {}, "cursor": None})
    for i, learner in enumerate(learners):
        await learner.set_awareness({"user": {}, "hand": i == 0})

    def names(client: YClient) -> set:
        return {s["user"].get("name") for s in client.awareness.states.values() if s and "user" in s}

    await eventually(lambda: names(mentor) >= {f"L{i}" for i in range(5)}, what="mentor sees every learner")
    await eventually(lambda: "Mentor" in names(learners[3]), what="learners see the mentor")

    def summary(client: YClient) -> dict:
        return next((s["pairroom"] for s in client.awareness.states.values() if s and "pairroom" in s), {})

    await eventually(lambda: summary(learners[3]).get("viewers") == 5, what="summary with the viewer count")
    assert [h["name"] for h in summary(learners[3])["hands"]] == ["L0"]
    others = {f"L{i}" for i in range(5)} - {"L3"}
    assert not names(learners[3]) & others, "viewers do not see each other"
    await eventually(lambda: "L3" in names(learners[3]), what="a viewer's own stamped state comes back to it")
    for c in (mentor, *learners):
        await c.close()


def test_open_mode_is_refused_on_a_non_loopback_address():
    pairroom = str(Path(sys.executable).with_name("pairroom"))
    done = subprocess.run(
        [pairroom, "serve", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 2 and "refusing open mode" in done.stderr


def test_token_command_mints_a_token_the_server_accepts():
    from pairroom.web.auth import verify

    pairroom = str(Path(sys.executable).with_name("pairroom"))
    out = subprocess.run(
        [pairroom, "token", "room-9", "--role", "viewer", "--name", "Ada", "--ttl", "2h"],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", "PAIRROOM_SECRET": SECRET},
    )
    assert out.returncode == 0, out.stderr
    principal = verify(SECRET, out.stdout.strip(), "room-9")
    assert principal.role.value == "viewer" and principal.name == "Ada"


async def test_open_mode_principals_may_use_any_signaling_topic(start_server):
    """Open mode's wildcard is the principal's ``any_room`` flag (a room named ``*`` is none: see
    tests/test_one_door.py)."""
    server = await start_server()
    async with (
        websockets.connect(f"ws://127.0.0.1:{server.port}/signal") as a,
        websockets.connect(f"ws://127.0.0.1:{server.port}/signal") as b,
    ):
        for ws in (a, b):
            await ws.send(json.dumps({"type": "subscribe", "topics": ["anything", "else/x"]}))
        await a.send(json.dumps({"type": "ping"}))
        assert json.loads(await asyncio.wait_for(a.recv(), 5)) == {"type": "pong"}
        await b.send(json.dumps({"type": "ping"}))
        assert json.loads(await asyncio.wait_for(b.recv(), 5)) == {"type": "pong"}
        await a.send(json.dumps({"type": "publish", "topic": "anything", "from": "a"}))
        assert json.loads(await asyncio.wait_for(b.recv(), 5))["from"] == "a"


def test_a_token_for_the_room_named_star_is_for_that_room_only():
    principal = verify(SECRET, token("*", "owner", "Star"), "*")
    assert principal.room == "*" and not principal.any_room
    with pytest.raises(Exception, match="another room"):
        verify(SECRET, token("*", "owner", "Star"), "elsewhere")


def test_an_offer_that_lists_recvonly_then_sendrecv_sends():
    from pairroom.rtc.calls import sdp_sends_media

    head = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    listens = head + "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=recvonly\r\n"
    assert not sdp_sends_media(listens)
    assert sdp_sends_media(listens + "a=sendrecv\r\n"), "a second direction that sends wins"
    assert sdp_sends_media((listens + "a=sendrecv\r\n").replace("\r\n", "\n"))
    assert sdp_sends_media(listens.replace("a=recvonly", "a=RECVONLY\r\na=SendOnly"))
    assert sdp_sends_media(listens + "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=sendonly\r\n"), "every section"
    assert not sdp_sends_media(listens + "m=video 0 UDP/TLS/RTP/SAVPF 96\r\na=sendonly\r\n"), "rejected section"
