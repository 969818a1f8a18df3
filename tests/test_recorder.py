"""Every session recorded: files at any time, sessions, timeline, versions, diff, restore, fork,
export and import, deletion, retention and the errors, with real clients on a real server."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pycrdt import Array, Doc, Map, Text

from pairroom.recording import export
from pairroom.recording.history import History, files_of, iso, set_text, text_edits
from pairroom.recording.sql_history import SqlHistoryStore
from pairroom.storage.sql import SqlStore
from pairroom.storage.store import NewUpdate
from pairroom.web.auth import mint
from tests.conftest import RunningServer
from tests.support.postgres import database_fixture
from tests.yclient import YClient, eventually

SECRET = "recording-tests-secret-of-at-least-32-bytes"
StartRecorded = Callable[..., Awaitable[RunningServer]]
pg_url = database_fixture(scope="module")


@pytest.fixture
async def start_recorded(start_server) -> AsyncIterator[StartRecorded]:
    """Start pairroom (the recorder is part of the app) with short windows, on a free port."""

    async def start(**overrides: object) -> RunningServer:
        values: dict[str, object] = {
            "secret": SECRET,
            "room_idle_seconds": 0.3,
            "flush_interval_ms": 20.0,
            "snapshot_every": 10,
            "extra": {"recording_flush_interval": 0.05},
        }
        values.update(overrides)
        return await start_server(**values)

    yield start


def token(room: str, role: str, name: str) -> str:
    return mint(SECRET, room, role, name, user_id=f"u-{name.lower()}")


def auth(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


def live_files(server: RunningServer, room: str) -> dict[str, str]:
    live = server.hub.registry.rooms.get(room)
    return files_of(live.doc) if live is not None else {}


async def join(server: RunningServer, room: str, tok: str) -> YClient:
    client = await YClient.connect(f"{server.ws(room)}?token={tok}")
    await asyncio.wait_for(client.synced.wait(), 5)
    return client


async def type_text(client: YClient, path: str, text: str, at: int | None = None) -> None:
    """Type one character per update, as an editor does."""
    for i, ch in enumerate(text):
        target = client.doc.get("files", type=Map)[path]
        target.insert(len(target) if at is None else at + i, ch)
        await asyncio.sleep(0)


async def moment(server: RunningServer, room: str, expected: dict[str, str]) -> str:
    """Wait until the server holds ``expected``; the time right after is a point that shows it."""
    await eventually(lambda: live_files(server, room) == expected, timeout=15, what=f"server has {expected}")
    return iso(datetime.now(UTC)) or ""


async def test_a_recorded_session_answers_files_sessions_timeline_versions_diff_restore_and_fork(
    start_recorded: StartRecorded, tmp_path: Path
) -> None:
    server = await start_recorded()
    room = "pair"
    ada_tok, bob_tok, vic_tok = token(room, "owner", "Ada"), token(room, "editor", "Bob"), token(room, "viewer", "Vic")
    ada, bob = await join(server, room, ada_tok), await join(server, room, bob_tok)
    ada.doc.get("files", type=Map)["main.py"] = Text("")
    await type_text(ada, "main.py", "def f():\n")
    await ada.set_awareness({"file": "main.py", "cursor": {"anchor": 9, "head": 9}})
    t1 = await moment(server, room, {"main.py": "def f():\n"})
    await eventually(lambda: "main.py" in bob.doc.get("files", type=Map))
    await type_text(bob, "main.py", "    return 1\n")
    await bob.set_awareness({"file": "main.py", "cursor": {"anchor": 20, "head": 22}})
    bob.doc.get("chat", type=Array).append({"id": "c1", "text": "looks good"})
    t2 = await moment(server, room, {"main.py": "def f():\n    return 1\n"})
    ada.doc.get("files", type=Map)["util.py"] = Text("X = 2\n")
    await type_text(ada, "main.py", "# top\n", at=0)
    t3 = await moment(server, room, {"main.py": "# top\ndef f():\n    return 1\n", "util.py": "X = 2\n"})
    async with httpx.AsyncClient(base_url=server.http, headers=auth(vic_tok)) as http:
        # files at several moments, read by a viewer
        for when, expected in (
            (t1, {"main.py": "def f():\n"}),
            (t2, {"main.py": "def f():\n    return 1\n"}),
            (t3, {"main.py": "# top\ndef f():\n    return 1\n", "util.py": "X = 2\n"}),
        ):
            answer = (await http.get(f"/api/rooms/{room}/files", params={"at": when})).json()
            assert answer["files"] == expected, when
            by_seq = (await http.get(f"/api/rooms/{room}/files", params={"at": str(answer["seq"])})).json()
            assert by_seq["files"] == expected and by_seq["at"] <= when
        now = (await http.get(f"/api/rooms/{room}/files")).json()
        assert now["files"] == live_files(server, room) and now["seq"] > 20  # past snapshots

        # versions: a named one by an editor; viewers may list, not create
        bob_http = {"headers": auth(bob_tok)}
        made = await http.post(f"/api/rooms/{room}/versions", json={"name": "nope"})
        assert made.status_code == 403
        made = await http.post(f"/api/rooms/{room}/versions", json={"name": "first body", "at": t2}, **bob_http)
        assert made.status_code == 201, made.text
        diff = (await http.get(f"/api/rooms/{room}/diff", params={"from": t1, "to": t3})).json()["diff"]
        assert "+    return 1\n" in diff and "+# top\n" in diff and "+++ b/util.py" in diff
        one = (await http.get(f"/api/rooms/{room}/diff", params={"from": t1, "path": "util.py"})).json()["diff"]
        assert "--- /dev/null" in one and "main.py" not in one

        # restore main.py to t2 while Bob edits util.py: both converge, Bob's edit survives
        await type_text(bob, "util.py", "Y = 3\n")
        restored = await http.post(f"/api/rooms/{room}/restore", json={"at": t2, "path": "main.py"}, **bob_http)
        assert restored.status_code == 200, restored.text
        expected_after = {"main.py": "def f():\n    return 1\n", "util.py": "X = 2\nY = 3\n"}
        for client in (ada, bob):
            await eventually(lambda c=client: files_of(c.doc) == expected_after, what="clients converge")
        assert live_files(server, room) == expected_after

        # fork from t1
        forked = await http.post(f"/api/rooms/{room}/fork", json={"at": t1, "room": "pair-fork"}, **bob_http)
        assert forked.status_code == 201, forked.text
        again = await http.post(f"/api/rooms/{room}/fork", json={"at": t1, "room": "pair-fork"}, **bob_http)
        assert again.status_code == 409
        fork_viewer = auth(token("pair-fork", "viewer", "Vic"))
        fork_files = (await http.get("/api/rooms/pair-fork/files", headers=fork_viewer)).json()
        assert fork_files["files"] == {"main.py": "def f():\n"}
        forker = await join(server, "pair-fork", token("pair-fork", "editor", "Bob"))
        assert files_of(forker.doc) == {"main.py": "def f():\n"}
        await forker.close()

        # the session ends when both leave; the room unloads and gets a checkpoint
        await ada.close()
        await bob.close()
        await eventually(lambda: room not in server.hub.registry.rooms, what="room unloaded")
        sessions = (await http.get(f"/api/rooms/{room}/sessions")).json()["sessions"]
        assert len(sessions) == 1
        session = sessions[0]
        assert session["end"] is not None and not session["ongoing"]
        people = {p["id"]: p for p in session["participants"]}
        assert set(people) == {"u-ada", "u-bob"} and people["u-ada"]["edits"] > 0 and people["u-bob"]["edits"] > 0

        async def checkpointed() -> bool:
            found = (await http.get(f"/api/rooms/{room}/versions")).json()["versions"]
            return any(v["auto"] for v in found) and any(v["name"] == "first body" for v in found)

        await eventually(checkpointed, what="a checkpoint after the room closed")
        marks = (await http.get(f"/api/rooms/{room}/timeline", params={"session": session["id"]})).json()["marks"]
        kinds = [m["kind"] for m in marks]
        assert kinds.count("join") >= 2 and kinds.count("leave") >= 2
        assert {"chat", "version", "checkpoint", "restore"} <= set(kinds)
        assert next(m for m in marks if m["kind"] == "chat")["text"] == "looks good"

        # the errors
        anon = httpx.AsyncClient(base_url=server.http)
        checks = [
            (http.get, f"/api/rooms/{room}/files", {"params": {"at": "yesterday"}}, 400),
            (http.get, f"/api/rooms/{room}/files", {"params": {"at": "2026-01-01T10:00:00"}}, 400),
            (http.get, f"/api/rooms/{room}/files", {"params": {"at": "2999-01-01T00:00:00Z"}}, 400),
            (http.get, f"/api/rooms/{room}/files", {"params": {"at": "99999999"}}, 400),
            (http.get, f"/api/rooms/{room}/diff", {}, 400),
            (http.get, f"/api/rooms/{room}/timeline", {"params": {"session": "123"}}, 404),
            (http.get, "/api/rooms/nowhere/sessions", {"headers": auth(token("nowhere", "owner", "Ada"))}, 404),
            (anon.get, f"/api/rooms/{room}/sessions", {}, 401),
            (http.get, f"/api/rooms/{room}/sessions", {"headers": auth(token("other", "owner", "Ada"))}, 403),
            (http.post, f"/api/rooms/{room}/restore", {"json": {"at": t1}}, 403),
            (http.post, f"/api/rooms/{room}/restore", {"json": {}, **bob_http}, 400),
            (http.post, f"/api/rooms/{room}/fork", {"json": {"at": t1, "room": "x"}}, 403),
            (http.delete, f"/api/rooms/{room}", bob_http, 403),
        ]
        async with anon:
            for method, url, kwargs, status in checks:
                response = await method(url, **kwargs)
                assert response.status_code == status, (url, kwargs, response.text)
                assert isinstance(response.json()["error"], str)

        # export, then import under another name: identical rows
        path = tmp_path / "pair.pairroom.jsonl.gz"
        counts = await export.export_room(server.settings.db, room, path)
        assert counts["update"] > 30 and counts["snapshot"] >= 1 and counts["event"] > 0 and counts["version"] >= 2
        await export.import_room(server.settings.db, path, "pair-copy")
        assert await rows_of(server.settings.db, "pair-copy") == await rows_of(server.settings.db, room)
        with pytest.raises(ValueError, match="already exists"):
            await export.import_room(server.settings.db, path, "pair-copy")
        out = tmp_path / "files"
        assert await export.export_files(server.settings.db, room, out, t3) == 2
        assert (out / "main.py").read_text() == "# top\ndef f():\n    return 1\n"

        # deletion by the owner removes everything, and kicks who is in
        ada = await join(server, room, ada_tok)
        deleted = await http.delete(f"/api/rooms/{room}", headers=auth(ada_tok))
        assert deleted.status_code == 200, deleted.text
        assert await ada.closed(timeout=15) == 4404  # the kick waits behind the export work on a busy machine
        assert await rows_of(server.settings.db, room) == ([], [], [], [])
        assert (await http.get(f"/api/rooms/{room}/files")).status_code == 404


async def rows_of(db: str, room: str) -> tuple[list[Any], ...]:
    """Everything stored for a room, without the room name (to compare two rooms)."""
    async with SqlStore(db) as store:
        history = SqlHistoryStore(store)
        updates = [(u.seq, u.uid, u.at, u.origin, bytes(u.data)) for u in await store.read_updates(room)]
        snapshots = [(s.seq, s.at, bytes(s.data)) for s in await history.snapshots(room)]
        events = [(e.at, e.kind, e.user, e.data) for e in await history.events(room)]
        versions = [(v.name, v.seq, v.at, v.by, v.auto) for v in await history.versions(room)]
    return updates, snapshots, events, versions


async def test_a_room_that_opted_out_records_no_events_and_hides_its_history(start_recorded: StartRecorded) -> None:
    server = await start_recorded()
    room = "private"
    ada_tok = token(room, "owner", "Ada")
    ada = await join(server, room, ada_tok)
    ada.doc.get("meta", type=Map)["policy"] = Map({"recording": False})
    ada.doc.get("files", type=Map)["a.txt"] = Text("secret")
    await eventually(lambda: live_files(server, room) == {"a.txt": "secret"})
    # what features record through the recorder (git, debugger, terminals) follows it at once too
    server.hub.state.recorder.record(room, "git", "u-ada", {"event": "commit"})
    await ada.set_awareness({"file": "a.txt"})
    await ada.close()
    await eventually(lambda: room not in server.hub.registry.rooms, what="room unloaded")
    async with httpx.AsyncClient(base_url=server.http, headers=auth(ada_tok)) as http:
        assert (await http.get(f"/api/rooms/{room}/files")).json()["files"] == {"a.txt": "secret"}
        for path in ("sessions", "versions", "timeline"):
            response = await http.get(f"/api/rooms/{room}/{path}")
            assert response.status_code == 403 and "recording is off" in response.json()["error"]
        assert (await http.get(f"/api/rooms/{room}/files", params={"at": "1"})).status_code == 403
    async with SqlStore(server.settings.db) as store:
        events = await SqlHistoryStore(store).events(room)
    # the join came before the policy was set; nothing after it was recorded
    assert [e.kind for e in events] == ["join"]


async def test_retention_keeps_the_document_whole_and_drops_older_history(tmp_path: Path) -> None:
    async with SqlStore(f"sqlite:///{tmp_path / 'r.db'}") as store:
        history = History(store)
        old = datetime.now(UTC) - timedelta(days=10)
        doc, updates = edits_doc(200, start=old, step=timedelta(seconds=1))
        await store.append("r", updates[:150])
        recent = [dataclasses.replace(u, at=datetime.now(UTC)) for u in updates[150:]]
        await store.append("r", recent)
        before = (await history.state("r", 200)).files()
        removed = await history.purge(timedelta(days=7))
        assert removed["r"] == 149  # seqs 1..149; the row at 150 and the snapshot there stay
        assert (await history.state("r", 200)).files() == before == files_of(doc)
        assert (await store.load("r")).last_seq == 200
        with pytest.raises(ValueError, match="retention"):
            await history.state("r", 20)
        assert await store.append("r", [NewUpdate("n:new", datetime.now(UTC), "t", b"\x00\x00")]) == 201


def edits_doc(count: int, start: datetime, step: timedelta, node: str = "n") -> tuple[Doc, list[NewUpdate]]:
    """``count`` small realistic edits (typing with the odd deletion) in two files."""
    doc = Doc()
    updates: list[NewUpdate] = []
    doc.observe(
        lambda event: updates.append(
            NewUpdate(f"{node}:{len(updates) + 1}", start + step * len(updates), "client:c:u", event.update)
        )
    )
    files = doc.get("files", type=Map)
    files["a.py"] = Text("")
    files["b.py"] = Text("")
    for i in range(count - 2):
        target = files["a.py" if i % 3 else "b.py"]
        if i % 17 == 16 and len(target) > 2:
            del target[len(target) - 1 : len(target)]
        else:
            target.insert(len(target), "abcdefghij\n"[i % 11])
    return doc, updates


async def test_history_round_trip_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    """States at seqs and times, a lazy seek snapshot, and export/import byte-identical on PostgreSQL."""
    start = datetime.now(UTC) - timedelta(hours=1)
    doc, updates = edits_doc(2600, start=start, step=timedelta(milliseconds=200))
    async with SqlStore(pg_url) as store:
        history = History(store)
        for i in range(0, len(updates), 200):
            await store.append("pg-room", updates[i : i + 200])
        replay = Doc()
        expected: dict[int, dict[str, str]] = {}
        for seq, update in enumerate(updates, start=1):
            replay.apply_update(update.data)
            if seq in (1, 700, 2599, 2600):
                expected[seq] = files_of(replay)
        for seq, files in expected.items():
            assert (await history.state("pg-room", seq)).files() == files
        assert await history.db.snapshot_at_or_before("pg-room", 2600) is not None  # the lazy snapshot
        at_700 = (await history.state_at("pg-room", iso(updates[699].at))).files()
        assert at_700 == expected[700]
        path = tmp_path / "pg.jsonl.gz"
    await export.export_room(pg_url, "pg-room", path)
    await export.import_room(pg_url, path, "pg-copy")
    assert await rows_of(pg_url, "pg-copy") == await rows_of(pg_url, "pg-room")


def test_restore_edits_are_minimal_and_handle_any_unicode() -> None:
    (edit,) = text_edits("hello world\n", "hello brave world\n")  # one insertion, nothing deleted
    assert edit[0] == edit[1] and len(edit[2]) == 6
    doc = Doc()
    text = doc.get("text", type=Text)
    text += "héllo 😀 wörld\nzweite Zeile\n"
    with doc.transaction():
        set_text(text, "hallo 😀 welt\nzweite Zeile\ndritte\n")
    assert str(text) == "hallo 😀 welt\nzweite Zeile\ndritte\n"


async def test_a_saved_call_recording_is_an_audio_mark_on_the_sessions_timeline(start_recorded, tmp_path) -> None:
    """The call recorder's saved file (its RecordingInfo, as rtc/recording.py writes it) is linked into the
    room's session at its first frame, so a replay can play the voice with the code."""
    import time as clock

    from pairroom.rtc.recording import RecordingInfo

    server = await start_recorded()
    room = "voiced"
    owner = token(room, "owner", "Ada")
    client = await join(server, room, owner)
    app = server.server.config.app
    first_frame = clock.time()
    app.state.rtc.on_recording_saved(
        RecordingInfo(
            room=room,
            session="s1",
            peer="p1",
            user={"id": "u-ada", "name": "Ada"},
            file="p1.ogg",
            source="call",
            started_at=first_frame,
            ended_at=first_frame + 2.0,
            duration_seconds=2.0,
            frames=100,
        )
    )
    async with httpx.AsyncClient(base_url=server.http, headers=auth(owner)) as http:

        async def audio_marks() -> list:
            sessions = (await http.get(f"/api/rooms/{room}/sessions")).json()["sessions"]
            if not sessions:
                return []
            marks = (await http.get(f"/api/rooms/{room}/timeline", params={"session": sessions[-1]["id"]})).json()[
                "marks"
            ]
            return [m for m in marks if m["kind"] == "audio"]

        deadline = asyncio.get_running_loop().time() + 5
        while not (found := await audio_marks()):
            assert asyncio.get_running_loop().time() < deadline, "no audio mark on the timeline"
            await asyncio.sleep(0.05)
    (mark,) = found
    assert (mark["file"], mark["session"], mark["user"], mark["duration_seconds"]) == ("p1.ogg", "s1", "u-ada", 2.0)
    await client.close()
