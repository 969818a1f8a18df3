"""A terminal's recording on the room's timeline: real bash in the real sandbox, a real server on
SQLite, the stored events read back, ``pairroom export --casts`` and the cast routes.

The format and its batching are pure (``pairroom/protocol/asciicast.py``) and tested first without a
server; the rest shares one server (one sandbox probe) and one terminal where it can.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from pycrdt import Map

from pairroom import cli
from pairroom.protocol.asciicast import CAST_KIND, TERMINAL_KIND, CastBatcher, CastError, assemble, parse_cast
from pairroom.recording.export import read_casts
from tests.test_terminal import (
    _PROBLEM,
    TERMINALS,
    TermClient,
    TermServer,
    create,
    members,
    new_room,
    ready,
    start_terminal_server,
    stop_terminal_server,
    until,
)
from tests.yclient import YClient

# -- the format, pure -------------------------------------------------------------------------------


def test_the_batcher_coalesces_by_time_and_by_size() -> None:
    batcher = CastBatcher("t1", "main", 1_800_000_000, 80, 24, max_bytes=100, max_span=1.0)
    closed = [batcher.add(0.01 * i, "o", "x") for i in range(50)]  # half a second of small writes
    assert closed == [None] * 50, "one batch, not one row per write"
    assert batcher.add(1.2, "r", "100x30") is not None  # a second after its first event: closes
    batch = batcher.add(1.3, "o", "y" * 200)  # over max_bytes: the open batch closes
    assert batch is not None and [e[1] for e in batch.events] == ["r"]
    last = batcher.flush()
    assert last is not None and (last.width, last.height) == (100, 30), "a batch begins at the size then"
    with pytest.raises(CastError):
        batcher.add(2.0, "i", "typed")  # input is never recorded as bytes


def test_assembled_batches_are_a_valid_asciicast_file() -> None:
    batcher = CastBatcher("t1", "main", 1_800_000_000, 80, 24, max_span=0.5)
    batches = [b for b in (batcher.add(t, "o", f"line {t}\r\n") for t in (0.0, 0.2, 0.7, 1.4)) if b]
    batches.append(batcher.flush())
    (cast,) = assemble([b.data() for b in batches if b is not None])
    head, events = parse_cast(cast.text())
    assert head["version"] == 2 and (head["width"], head["height"]) == (80, 24)
    assert head["timestamp"] == 1_800_000_000
    assert [e[0] for e in events] == [0.0, 0.2, 0.7, 1.4]
    with pytest.raises(CastError):
        assemble([{"terminal": "t1", "name": "x", "start": 0, "width": 80, "height": 24, "events": [[0, "i", "a"]]}])


# -- a real terminal --------------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def ts(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[TermServer]:
    server = await start_terminal_server(tmp_path_factory.mktemp("terminal-recording"), TERMINALS)
    yield server
    await stop_terminal_server(server)


def _recorder(ts: TermServer) -> Any:
    return ts.server.config.app.state.recorder


async def _stored(ts: TermServer, room: str, kinds: tuple[str, ...]) -> list[Any]:
    for terminal in ts.service.list(room):
        terminal.cast.flush()  # the open batch, without waiting for its timer
    await _recorder(ts).flush()
    return await _recorder(ts).history.db.events(room, kinds=kinds)  # type: ignore[no-any-return]


@pytest.mark.skipif(_PROBLEM is not None, reason=f"sandbox unavailable here ({_PROBLEM})")
@pytest.mark.asyncio(loop_scope="module")
async def test_a_terminal_is_recorded_on_the_rooms_timeline_and_exported(ts: TermServer, tmp_path: Path) -> None:
    room = new_room()
    ada, bob, _ = members(room)
    doc = await YClient.connect(f"ws://127.0.0.1:{ts.port}/yjs/{room}?token={ada.token}")  # a session
    terminal = await create(ts, room, ada, "main")
    a = await TermClient.connect(ts, room, terminal["id"], ada)
    b = await TermClient.connect(ts, room, terminal["id"], bob)
    await ready(a)
    await a.send("resize", 30, 100)
    await a.type("for i in $(seq 20); do echo tick-$i; sleep 0.05; done; seq 1 300; echo first-$((1+1))\r")
    await until(lambda: "first-2" in a.output)
    await b.type("echo typed-by-bob\r")  # a viewer's stdin: dropped, and never recorded
    await asyncio.sleep(1.5)  # the next output comes at a known, later moment
    typed = time.time()
    await a.type("echo second-$((2+2))\r")
    await until(lambda: "second-4" in a.output)
    seen = time.time()

    batches = await _stored(ts, room, (CAST_KIND,))
    marks = await _stored(ts, room, (TERMINAL_KIND,))
    ticks = [frame for frame in a.of("stdout") if "tick-" in frame]
    stored_ticks = [e for e in batches if "tick-" in str(e.data["events"])]
    assert len(ticks) >= 10 and len(stored_ticks) <= 4, (len(ticks), len(stored_ticks))  # coalesced
    assert all(e.data["events"][-1][0] - e.data["events"][0][0] <= 1.0 for e in batches)
    (cast,) = assemble([e.data for e in batches])
    assert cast.terminal == terminal["id"] and cast.name == "main"
    output = "".join(data for _, code, data in cast.events if code == "o")
    assert "first-2" in output and "second-4" in output and "300\r\n" in output
    assert "typed-by-bob" not in output
    assert [data for _, code, data in cast.events if code == "r"] == ["100x30"]
    # the output happened when it was printed: start + t on the room's clock
    printed = ""
    for t, code, data in cast.events:  # the event that completed "second-4" (a read may split it)
        printed += data if code == "o" else ""
        if "second-4" in printed:
            when = cast.start + t
            break
    assert typed - 0.05 <= when <= seen + 0.05, (typed, when, seen)
    # a batch's event sits on the timeline at its first event's time
    for event in batches:
        first = event.data["start"] + event.data["events"][0][0]
        assert abs(event.at.timestamp() - first) < 0.01
    # input only as attribution, from writers
    labels = [data for _, code, data in cast.events if code == "m"]
    assert "Ada ran `echo second-$((2+2))`" in labels and not any("bob" in m for m in labels)
    commands = [m for m in marks if m.data["event"] == "command"]
    assert [(m.user, m.data["line"]) for m in commands][-1] == (ada.user, "echo second-$((2+2))")
    assert all(m.user == ada.user for m in commands)
    assert {m.data["event"] for m in marks} >= {"started", "command"}

    # the cast routes: the session's terminals, and one terminal's file
    session = (await ts.http.get(f"/api/rooms/{room}/sessions", headers=bob.headers)).json()["sessions"][0]
    listed = await ts.http.get(f"/api/rooms/{room}/casts", params={"session": session["id"]}, headers=bob.headers)
    assert listed.status_code == 200, listed.text
    assert [c["terminal"] for c in listed.json()["casts"]] == [terminal["id"]]
    served = await ts.http.get(f"/api/rooms/{room}/casts/{terminal['id']}", headers=bob.headers)
    assert served.status_code == 200 and served.headers["content-type"].startswith("application/x-asciicast")
    head, events = parse_cast(served.text)
    assert (head["width"], head["height"]) == (80, 24)
    assert [list(e) for e in events[: len(cast.events)]] == [[round(t, 6), c, d] for t, c, d in cast.events]
    assert (await ts.http.get(f"/api/rooms/{room}/casts/no.such", headers=bob.headers)).status_code == 400
    assert (await ts.http.get(f"/api/rooms/{room}/casts/nosuch", headers=bob.headers)).status_code == 404
    timeline = (await ts.http.get(f"/api/rooms/{room}/timeline", headers=bob.headers)).json()["marks"]
    assert any(m["kind"] == "terminal" and m.get("line") == "echo second-$((2+2))" for m in timeline)
    assert not any(m["kind"] == CAST_KIND for m in timeline), "output is not a timeline mark"

    # pairroom export --casts: one valid asciicast v2 file per terminal
    db = ts.server.config.app.state.hub.settings.db
    out = tmp_path / "casts"
    assert await asyncio.to_thread(cli.main, ["export", room, "--casts", str(out), "--db", db]) == 0
    (written,) = sorted(out.iterdir())
    assert written.name == f"{terminal['id']}.cast"
    head, events = parse_cast(written.read_text(encoding="utf-8"))
    assert head["title"] == f"{room} / main" and head["timestamp"] == cast.start
    assert "second-4" in "".join(data for _, code, data in events if code == "o")
    assert await asyncio.to_thread(cli.main, ["export", room, "--casts", str(out), "-o", "x", "--db", db]) == 2
    # a room's export file carries its terminals: imported elsewhere, the same recordings come back
    exported, copy = tmp_path / "room.jsonl.gz", f"sqlite:///{tmp_path / 'copy.db'}"
    assert await asyncio.to_thread(cli.main, ["export", room, "-o", str(exported), "--db", db]) == 0
    assert await asyncio.to_thread(cli.main, ["import", str(exported), "--db", copy]) == 0
    (imported,), (original,) = await read_casts(copy, room), await read_casts(db, room)
    assert imported.text() == original.text() and "second-4" in imported.text()
    await a.close()
    await b.close()
    await doc.close()


@pytest.mark.skipif(_PROBLEM is not None, reason=f"sandbox unavailable here ({_PROBLEM})")
@pytest.mark.asyncio(loop_scope="module")
async def test_the_stored_recording_is_capped_with_a_notice(ts: TermServer) -> None:
    room = new_room()
    ada, _, _ = members(room)
    terminal = await create(ts, room, ada)
    a = await TermClient.connect(ts, room, terminal["id"], ada)
    await ready(a)
    live = ts.service.get(room, terminal["id"])
    assert live is not None
    live.cast.max_bytes = live.cast.size + 8 * 1024  # a small cap, for a quick test
    await a.type("seq 1 5000; echo after-$((3*3))\r")
    await until(lambda: "after-9" in a.output)
    await until(lambda: any("recording reached its cap" in n for n in a.of("notice")), what="the cap notice")
    await ts.service.end(room, terminal["id"])
    (cast,) = assemble([e.data for e in await _stored(ts, room, (CAST_KIND,))])
    stored = sum(len(data) for _, _, data in cast.events)
    assert stored < 12 * 1024, f"{stored} characters stored past an 8 KiB cap"
    assert cast.events[-1][1] == "m" and cast.events[-1][2].startswith("recording capped at")
    assert "after-9" not in "".join(data for _, _, data in cast.events)
    await a.close()


@pytest.mark.skipif(_PROBLEM is not None, reason=f"sandbox unavailable here ({_PROBLEM})")
@pytest.mark.asyncio(loop_scope="module")
async def test_a_room_that_turns_recording_off_records_no_more_of_its_terminals(ts: TermServer) -> None:
    room = new_room()
    ada, _, _ = members(room)
    doc = await YClient.connect(f"ws://127.0.0.1:{ts.port}/yjs/{room}?token={ada.token}")
    terminal = await create(ts, room, ada)
    a = await TermClient.connect(ts, room, terminal["id"], ada)
    await ready(a)
    await a.type("echo before-$((1+1))\r")
    await until(lambda: "before-2" in a.output)
    assert "before-2" in "".join(d for e in await _stored(ts, room, (CAST_KIND,)) for _, _, d in e.data["events"])
    doc.doc.get("meta", type=Map)["policy"] = Map({"recording": False})
    live = ts.registry.rooms[room]
    await until(lambda: isinstance(live.doc.get("meta", type=Map).get("policy"), Map), what="the policy arrived")
    await a.type("echo after-$((2+2))\r")
    await until(lambda: "after-4" in a.output)
    stored = await _stored(ts, room, (CAST_KIND, TERMINAL_KIND))
    assert "after" not in str([e.data for e in stored])
    await a.close()
    await doc.close()
