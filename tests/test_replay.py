"""Replay as a live room: the recorded updates and presence come back with their timing, and seeks."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx
import websockets
from pycrdt import Doc, Map, Text

from pairroom.protocol import sync as protocol
from pairroom.recording.history import files_of
from pairroom.recording.replay import REPLAY_CLIENT_ID
from tests.test_recorder import StartRecorded, auth, join, live_files, start_recorded, token  # noqa: F401
from tests.yclient import eventually

GAPS = (0.0, 0.4, 0.8, 1.2, 1.6)  # seconds after the first edit, real time gaps


class ReplayClient:
    """Reads a replay stream into a Doc, noting when each update and awareness message arrived."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.doc = Doc()
        self.updates: list[float] = []
        self.presence: dict[int, Any] = {}
        self.seen: list[tuple[int, Any]] = []  # every awareness state received, in order
        self.close_code: int | None = None
        self.close_reason = ""
        self.synced = asyncio.Event()
        self.task = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, url: str) -> ReplayClient:
        ws = await websockets.connect(url, max_size=None)
        client = cls(ws)
        try:
            await ws.send(protocol.sync_step1(client.doc.get_state()))
        except websockets.ConnectionClosed:
            pass  # refused at the door: the reader has the close code
        return client

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                message = protocol.decode_message(frame)
                if message.type is protocol.MessageType.SYNC and message.step is not protocol.SyncStep.STEP1:
                    self.doc.apply_update(message.payload)
                    if message.step is protocol.SyncStep.STEP2:
                        self.synced.set()
                    else:
                        self.updates.append(time.monotonic())
                elif message.type is protocol.MessageType.AWARENESS:
                    for entry in protocol.decode_awareness(message.payload):
                        self.presence[entry.client_id] = json.loads(entry.state)
                        self.seen.append((entry.client_id, self.presence[entry.client_id]))
        except websockets.ConnectionClosed:
            pass
        self.close_code, self.close_reason = self.ws.close_code, self.ws.close_reason or ""

    @property
    def status(self) -> dict[str, Any]:
        return (self.presence.get(REPLAY_CLIENT_ID) or {}).get("pairroom", {}).get("replay", {})

    async def control(self, **message: Any) -> None:
        await self.ws.send(json.dumps(message))


async def test_replay_plays_updates_and_presence_with_their_timing_and_seeks(start_recorded: StartRecorded) -> None:
    server = await start_recorded()
    room = "lesson"
    ada_tok = token(room, "owner", "Ada")
    ada = await join(server, room, ada_tok)
    ada.doc.get("files", type=Map)["a.py"] = Text("")
    await eventually(lambda: live_files(server, room) == {"a.py": ""})
    started = time.monotonic()
    for i, gap in enumerate(GAPS):
        await asyncio.sleep(max(0.0, started + gap - time.monotonic()))  # real gaps the replay must keep
        ada.doc.get("files", type=Map)["a.py"].insert(i, "abcde"[i])
        await ada.set_awareness({"file": "a.py", "cursor": {"anchor": i + 1, "head": i + 1}})
    await eventually(lambda: live_files(server, room) == {"a.py": "abcde"})
    await ada.close()
    await eventually(lambda: room not in server.hub.registry.rooms, what="room unloaded")
    viewer = token(room, "viewer", "Vic")
    async with httpx.AsyncClient(base_url=server.http, headers=auth(viewer)) as http:
        (session,) = (await http.get(f"/api/rooms/{room}/sessions")).json()["sessions"]
    base = f"ws://127.0.0.1:{server.port}/replay/{room}?token={viewer}&session={session['id']}"

    # at 4x: the final state, and the gaps between the typed updates divided by 4. The client reads
    # in this test's own event loop, so a stall of the shared machine bunches arrivals that the
    # server spaced; a replay is read-only and repeatable, so a bunched reading is taken again.
    for attempt in range(3):
        replay = await ReplayClient.connect(f"{base}&speed=4")
        await eventually(lambda: files_of(replay.doc) == {"a.py": "abcde"}, timeout=5, what="replayed")
        arrivals = replay.updates[-len(GAPS) :]
        paced = all(abs((arrival - arrivals[0]) - gap / 4) < 0.1 for arrival, gap in zip(arrivals, GAPS))
        if paced or attempt == 2:
            break
        await replay.ws.close()
    assert paced, (arrivals, GAPS)
    cursors = [s for cid, s in replay.seen if cid != REPLAY_CLIENT_ID and s]
    assert cursors[-1]["cursor"] == {"anchor": 5, "head": 5} and cursors[-1]["user"]["name"] == "Ada"
    await eventually(  # Ada left at the end; her leave is replayed at its own (scaled) time
        lambda: not any(s for cid, s in replay.presence.items() if cid != REPLAY_CLIENT_ID), what="Ada leaves"
    )
    await eventually(lambda: replay.status.get("ended") is True, what="replay says it ended")
    await replay.ws.close()

    # paused at the start, seek forward to the end, then back: 4410 and a reconnect from there
    replay = await ReplayClient.connect(f"{base}&speed=1")
    await replay.control(type="pause")
    await replay.synced.wait()
    start_seq = session["from_seq"]
    await eventually(lambda: replay.status.get("paused") is True)
    assert files_of(replay.doc) == {"a.py": ""} or start_seq == 0
    await replay.control(type="seek", seq=session["to_seq"])
    await eventually(lambda: files_of(replay.doc) == {"a.py": "abcde"}, what="seek forward")
    await replay.control(type="seek", seq=session["to_seq"] - 3)
    await asyncio.wait_for(replay.task, 5)
    assert replay.close_code == 4410 and replay.close_reason == f"seek from={session['to_seq'] - 3}"
    again = await ReplayClient.connect(f"{base}&from={session['to_seq'] - 3}")
    await again.control(type="pause")
    await eventually(lambda: files_of(again.doc) == {"a.py": "ab"}, what="state at the seek target")
    await again.control(type="speed", value=16)
    await again.control(type="play")
    await eventually(lambda: files_of(again.doc) == {"a.py": "abcde"}, what="plays on after the seek")
    await again.ws.close()
    # the page's reconnect names the moment it asked for too: the clock stands there from the first
    # status on, never at the seq's own time in between
    moment = session["start"]
    again = await ReplayClient.connect(f"{base}&from={start_seq}&at={quote(moment)}")
    await again.control(type="pause")
    await eventually(lambda: bool(again.status), what="a status")
    first = next(state for cid, state in again.seen if cid == REPLAY_CLIENT_ID)["pairroom"]["replay"]
    assert datetime.fromisoformat(first["at"]) == datetime.fromisoformat(moment)
    await again.ws.close()

    # bad parameters and callers
    bad_queries = (
        ("&speed=99", 4400),
        ("&session=42", 4404),
        ("&from=tomorrow", 4400),
        (f"&from={start_seq}&at=5", 4400),
    )
    for query, code in bad_queries:
        bad = await ReplayClient.connect(f"ws://127.0.0.1:{server.port}/replay/{room}?token={viewer}{query}")
        await asyncio.wait_for(bad.task, 5)
        assert bad.close_code == code, query
    nobody = await ReplayClient.connect(f"ws://127.0.0.1:{server.port}/replay/{room}")
    await asyncio.wait_for(nobody.task, 5)
    assert nobody.close_code == 4401
    rude = await ReplayClient.connect(f"{base}")
    await rude.control(type="rewind")
    await asyncio.wait_for(rude.task, 5)
    assert rude.close_code == 4400
