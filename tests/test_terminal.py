"""Shared terminals: real bash on real PTYs in the real sandbox, behind a real server, real websockets.

One server serves the module (its terminal service probes the sandbox once); every test uses its own
room. Members are Ada (owner), Bob (viewer), Cy (editor) with tokens minted for the room.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import websockets
from pycrdt import Map, Text

from pairroom.app import create_app
from pairroom.config import Settings
from pairroom.kernels import KernelSettings
from pairroom.sandbox.bubblewrap import SandboxUnavailable, probe
from pairroom.terminal.extension import Terminals
from pairroom.terminal.service import TerminalService
from pairroom.terminal.settings import TerminalSettings
from pairroom.web.auth import Role, mint
from pairroom.web.runner import Server, start_serving, uvicorn_config
from tests.yclient import YClient, eventually


def _sandbox_problem() -> str | None:
    try:
        probe(KernelSettings())
    except SandboxUnavailable as exc:
        return str(exc)
    return None


_PROBLEM = _sandbox_problem()
pytestmark = [
    pytest.mark.skipif(_PROBLEM is not None, reason=f"sandbox unavailable here ({_PROBLEM}); run scripts/ensure-bwrap"),
    pytest.mark.asyncio(loop_scope="module"),
]

SECRET = "terminal-tests-secret-of-at-least-32-bytes"
KERNELS = KernelSettings(memory_bytes=512 * 2**20, pids=64)
TERMINALS = TerminalSettings(output_bytes_per_second=256 * 1024, idle_seconds=600)


@dataclasses.dataclass
class TermServer:
    server: Server
    task: asyncio.Task[None]
    http: httpx.AsyncClient
    db: Path

    @property
    def port(self) -> int:
        assert self.server.port is not None
        return self.server.port

    @property
    def service(self) -> TerminalService:
        return self.server.config.app.state.terminals  # type: ignore[no-any-return]

    @property
    def registry(self) -> Any:
        return self.server.config.app.state.hub.registry


async def start_terminal_server(tmp: Path, terminals: TerminalSettings) -> TermServer:
    settings = dataclasses.replace(
        Settings(), port=0, db=f"sqlite:///{tmp / 'pairroom.db'}", log_format="text", secret=SECRET, kernels=False
    )
    app = create_app(settings, extensions=[Terminals(KERNELS, enabled=True, settings=terminals)])
    server = Server(uvicorn_config(app, settings, signals=False))
    task = await start_serving(server)
    http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=30)
    return TermServer(server, task, http, tmp / "pairroom.db")


async def stop_terminal_server(ts: TermServer) -> None:
    await ts.http.aclose()
    ts.server.should_exit = True
    await ts.task


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def ts(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[TermServer]:
    server = await start_terminal_server(tmp_path_factory.mktemp("terminals"), TERMINALS)
    yield server
    await stop_terminal_server(server)


@dataclasses.dataclass
class Member:
    name: str
    user: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}


def members(room: str) -> tuple[Member, Member, Member]:
    def one(name: str, role: Role) -> Member:
        user = f"{name.lower()}-{uuid.uuid4().hex[:6]}"
        return Member(name, user, mint(SECRET, room, role, name, user_id=user))

    return one("Ada", Role.OWNER), one("Bob", Role.VIEWER), one("Cy", Role.EDITOR)


async def until(check: Any, timeout: float = 20.0, what: str = "") -> None:
    """``eventually`` with room for a loaded 2-core machine (a real sandbox starts in each test)."""
    await eventually(check, timeout=timeout, what=what)


def new_room() -> str:
    return "t-" + uuid.uuid4().hex[:10]


class TermClient:
    """A terminal websocket client: collects frames; ``output`` is the stdout seen since connecting."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.frames: list[list[Any]] = []
        self.output = ""
        self.close_code: int | None = None
        self.close_reason = ""
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, ts: TermServer, room: str, terminal_id: str, member: Member | None) -> TermClient:
        query = f"?token={member.token}" if member else ""
        ws = await websockets.connect(f"ws://127.0.0.1:{ts.port}/terminal/{room}/{terminal_id}{query}", max_size=None)
        return cls(ws)

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                frame = json.loads(message)
                self.frames.append(frame)
                if frame[0] == "stdout":
                    self.output += frame[1]
        except websockets.ConnectionClosed:
            pass
        self.close_code = self.ws.close_code
        self.close_reason = self.ws.close_reason or ""

    def of(self, kind: str) -> list[Any]:
        return [frame[1] if len(frame) == 2 else frame[1:] for frame in self.frames if frame[0] == kind]

    @property
    def setup(self) -> dict[str, Any]:
        return self.of("setup")[-1]  # type: ignore[no-any-return]

    async def send(self, *frame: Any) -> None:
        await self.ws.send(json.dumps(list(frame)))

    async def type(self, text: str) -> None:
        await self.send("stdin", text)

    async def closed(self) -> int | None:
        await asyncio.wait_for(self._reader, 10)
        return self.close_code

    async def close(self) -> None:
        await self.ws.close()
        with contextlib.suppress(Exception):
            await self._reader


async def create(ts: TermServer, room: str, member: Member, name: str | None = None) -> dict[str, Any]:
    response = await ts.http.post(
        f"/api/rooms/{room}/terminals", json={"name": name} if name else {}, headers=member.headers
    )
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


async def ready(client: TermClient) -> None:
    """Until the client had its setup and snapshot and the shell printed its prompt."""
    try:
        # a snapshot renders the screen with each line's trailing spaces trimmed: "~ $" ends its line
        await until(
            lambda: (
                client.of("snapshot")
                and ("$ " in client.output or re.search(r"\$ ?(\r|\n|$)", str(client.of("snapshot")[-1])) is not None)
            ),
            timeout=30,
        )
    except AssertionError:
        raise AssertionError(f"no prompt within 30 s; frames: {[str(f)[:80] for f in client.frames][:20]!r}") from None


# -- the basics ------------------------------------------------------------------------------------


async def test_two_members_see_the_same_output_and_a_viewer_cannot_type(ts: TermServer) -> None:
    room = new_room()
    ada, bob, _ = members(room)
    terminal = await create(ts, room, ada, "main")
    a = await TermClient.connect(ts, room, terminal["id"], ada)
    b = await TermClient.connect(ts, room, terminal["id"], bob)
    await ready(a)
    await until(lambda: b.of("snapshot"))
    assert a.setup["can_write"] is True and a.setup["role"] == "owner"
    assert b.setup["can_write"] is False and b.setup["role"] == "viewer"

    await a.type("echo $((6*7))\r")
    await until(lambda: "42\r\n" in a.output and "42\r\n" in b.output, what="both see 42")

    await b.type("touch hacked; echo typed-by-bob\r")
    await until(lambda: any("read-only" in n for n in b.of("notice")), what="bob is told")
    await a.type("ls -a; echo listed\r")
    await until(lambda: "listed\r\n" in a.output)
    assert "hacked" not in a.output and "typed-by-bob" not in a.output
    workspace = ts.service.get(room, terminal["id"]).workspace  # type: ignore[union-attr]
    assert not (workspace.path / "hacked").exists()
    commands = [c["line"] for c in a.of("command")]
    assert "echo $((6*7))" in commands and not any("hacked" in c for c in commands)
    # the terminal and its commands are in the document too, for late joiners, storage and replay
    doc = await YClient.connect(f"ws://127.0.0.1:{ts.port}/yjs/{room}?token={bob.token}")
    await until(lambda: terminal["id"] in doc.doc.get("terminals", type=Map), what="the terminal's entry")
    entry = doc.doc.get("terminals", type=Map)[terminal["id"]].to_py()
    assert entry["status"] == "running" and entry["by"] == ada.user and entry["name"] == "main"
    assert any(c["by"] == ada.user and c["line"] == "echo $((6*7))" for c in entry["commands"])
    assert not any("hacked" in c["line"] for c in entry["commands"])
    await doc.close()
    await a.close()
    await b.close()


async def test_a_grant_lets_a_viewer_type_live_and_a_revoke_stops_it(ts: TermServer) -> None:
    room = new_room()
    ada, bob, _ = members(room)
    terminal = await create(ts, room, ada)
    a = await TermClient.connect(ts, room, terminal["id"], ada)
    b = await TermClient.connect(ts, room, terminal["id"], bob)
    doc = await YClient.connect(f"ws://127.0.0.1:{ts.port}/yjs/{room}?token={ada.token}")
    await ready(a)
    await until(lambda: b.of("snapshot"))

    url = f"/api/rooms/{room}/terminals/{terminal['id']}/writers"
    assert (await ts.http.post(url, json={"user": bob.user, "write": True}, headers=bob.headers)).status_code == 403
    response = await ts.http.post(url, json={"user": bob.user, "write": True}, headers=ada.headers)
    assert response.status_code == 200, response.text
    await until(lambda: b.setup["can_write"] is True, what="bob's setup says he may type")
    await until(lambda: any("granted typing for Bob" in n for n in a.of("notice")), what="named in the notice")
    assert {"id": bob.user, "name": "Bob"} in a.setup["writers"]
    await b.type("echo bob-was-here > bob.txt\r")

    def bob_file() -> str | None:
        value = doc.doc.get("files", type=Map).get("bob.txt")
        return str(value) if isinstance(value, Text) else None

    await until(lambda: bob_file() == "bob-was-here\n", timeout=10, what="bob.txt in the document")
    loaded = ts.registry.rooms[room]
    await loaded.flush()
    stored = await loaded.store.load(room)
    assert f"local:disk:{bob.user}" in [u.origin for u in stored.updates]

    response = await ts.http.post(url, json={"user": bob.user, "write": False}, headers=ada.headers)
    assert response.status_code == 200
    await until(lambda: b.setup["can_write"] is False)
    notices = len(b.of("notice"))
    await b.type("echo after-revoke\r")
    await until(lambda: len(b.of("notice")) > notices)
    await a.type("echo done\r")
    await until(lambda: "done\r\n" in a.output)
    assert "after-revoke" not in a.output
    await a.close()
    await b.close()
    await doc.close()


async def test_a_proposal_accepted_runs_once_attributed_to_both(ts: TermServer) -> None:
    room = new_room()
    ada, bob, _ = members(room)
    terminal = await create(ts, room, ada)
    a = await TermClient.connect(ts, room, terminal["id"], ada)
    b = await TermClient.connect(ts, room, terminal["id"], bob)
    await ready(a)
    await b.send("propose", "echo proposed-$((1+1))")
    await until(lambda: a.of("proposal"), what="ada sees the proposal")
    proposal = a.of("proposal")[-1]
    assert proposal["by"] == bob.user and proposal["line"] == "echo proposed-$((1+1))"
    await b.send("accept", proposal["id"])  # a viewer cannot accept
    await until(lambda: any("only those who may type" in n for n in b.of("notice")))
    await a.send("accept", proposal["id"])
    await until(lambda: "proposed-2\r\n" in a.output and "proposed-2\r\n" in b.output)
    command = a.of("command")[-1]
    assert command["by"] == bob.user and command["approvedBy"] == ada.user
    await a.send("accept", proposal["id"])  # twice: nothing more runs
    await until(lambda: any("no such open proposal" in n for n in a.of("notice")))
    assert a.output.count("proposed-2\r\n") == 1
    await b.send("propose", "echo dismissed-$((1+2))")
    await until(lambda: a.of("proposal")[-1]["status"] == "open" and a.of("proposal")[-1]["id"] != proposal["id"])
    second = a.of("proposal")[-1]
    await a.send("dismiss", second["id"])
    await until(lambda: b.of("proposal")[-1]["status"] == "dismissed", what="b is told")
    assert b.of("proposal")[-1]["id"] == second["id"] and b.of("proposal")[-1]["answeredBy"] == ada.user
    await a.type("echo after-$((2+2))\r")
    await until(lambda: "after-4\r\n" in a.output)
    assert "dismissed-3" not in a.output
    await a.close()
    await b.close()


async def test_a_file_made_in_the_shell_reaches_the_editor_and_an_editor_edit_is_what_cat_shows(ts: TermServer) -> None:
    room = new_room()
    ada, _, cy = members(room)
    doc = await YClient.connect(f"ws://127.0.0.1:{ts.port}/yjs/{room}?token={cy.token}")
    await doc.synced.wait()
    terminal = await create(ts, room, cy)
    c = await TermClient.connect(ts, room, terminal["id"], cy)
    await ready(c)
    files = doc.doc.get("files", type=Map)
    files["notes.txt"] = Text("written in the editor\n")
    await until(lambda: "notes.txt" in ts.registry.rooms[room].doc.get("files", type=Map))
    await c.type("cat notes.txt; printf 'from the shell\\n' > shell.txt\r")
    await until(lambda: "written in the editor\r\n" in c.output, what="cat shows the editor's text")
    await until(
        lambda: isinstance(files.get("shell.txt"), Text) and str(files["shell.txt"]) == "from the shell\n",
        timeout=10,
        what="the shell's file in the editor",
    )
    await c.type("mv shell.txt moved.txt; rm notes.txt\r")
    await until(
        lambda: (
            "shell.txt" not in files and "notes.txt" not in files and str(files.get("moved.txt")) == "from the shell\n"
        ),
        timeout=10,
        what="a rename and a delete in the shell reach the editor",
    )
    await c.close()
    await doc.close()


async def test_an_editor_and_a_shell_loop_editing_one_file_at_once_both_survive(ts: TermServer) -> None:
    """A member types at the top of a file while a command in the terminal appends to it, line by
    line, for 1.5 s: every line of both ends up once in the document and on disk, in order."""
    room = new_room()
    _, _, cy = members(room)
    doc = await YClient.connect(f"ws://127.0.0.1:{ts.port}/yjs/{room}?token={cy.token}")
    await doc.synced.wait()
    files = doc.doc.get("files", type=Map)
    files["both.txt"] = Text("middle\n")
    terminal = await create(ts, room, cy)
    c = await TermClient.connect(ts, room, terminal["id"], cy)
    await ready(c)
    await until(lambda: "both.txt" in ts.registry.rooms[room].doc.get("files", type=Map))
    await c.type("for i in $(seq 1 15); do echo disk-$i >> both.txt; sleep 0.1; done; echo loop-'done'\r")
    await until(lambda: "disk-" in str(files["both.txt"]), what="the loop's first line in the editor")
    for i in range(15):
        files["both.txt"].insert(0, f"editor-{i}\n")
        await asyncio.sleep(0.1)
    await until(lambda: "loop-done\r\n" in c.output, timeout=30, what="the loop ends")
    want = [f"editor-{i}" for i in reversed(range(15))] + ["middle"] + [f"disk-{i}" for i in range(1, 16)]
    await until(lambda: str(files["both.txt"]).splitlines() == want, timeout=15, what=f"both: {want}")
    workspace = ts.service.get(room, terminal["id"]).workspace  # type: ignore[union-attr]
    await until(lambda: (workspace.path / "both.txt").read_text().splitlines() == want, what="the disk agrees")
    await c.close()
    await doc.close()


# -- late joiners --------------------------------------------------------------------------------


async def test_a_late_joiner_gets_the_alternate_screen_and_the_end_of_a_long_output(ts: TermServer) -> None:
    room = new_room()
    ada, bob, _ = members(room)
    terminal = await create(ts, room, ada)
    a = await TermClient.connect(ts, room, terminal["id"], ada)
    await ready(a)
    await a.type("seq 1 10000; echo seq-'done'\r")
    await until(lambda: "seq-done\r\n" in a.output, timeout=30)
    late = await TermClient.connect(ts, room, terminal["id"], bob)
    await until(lambda: late.of("snapshot"))
    screen = late.of("snapshot")[0]
    assert "9999\r\n10000\r\nseq-done" in screen
    assert "\x1b[?1049h" not in screen

    await a.type("printf '\\e[?1049h\\e[H\\e[2Jfull screen app\\e[5;3Hrow fiv\\x65'\r")
    await until(lambda: "row five" in a.output)
    later = await TermClient.connect(ts, room, terminal["id"], bob)
    await until(lambda: later.of("snapshot"))
    screen = later.of("snapshot")[0]
    normal, _, alternate = screen.partition("\x1b[?1049h")
    assert "seq-done" in normal, "the normal screen is kept under the alternate one"
    assert "full screen app" in alternate and "row five" in alternate
    assert "seq-done" not in alternate
    for client in (a, late, later):
        await client.close()


# -- bad input -----------------------------------------------------------------------------------


async def test_bad_frames_close_with_a_reason_and_the_terminal_carries_on(ts: TermServer) -> None:
    room = new_room()
    ada, bob, cy = members(room)
    terminal = await create(ts, room, ada)
    a = await TermClient.connect(ts, room, terminal["id"], ada)
    await ready(a)

    unknown = await TermClient.connect(ts, room, "nope", ada)
    assert await unknown.closed() == 4404
    nowhere = new_room()  # a room nobody made, with a token for it
    no_room = await TermClient.connect(ts, nowhere, terminal["id"], members(nowhere)[0])
    assert await no_room.closed() == 4404 and no_room.close_reason
    other_room = await TermClient.connect(ts, "elsewhere", terminal["id"], ada)  # a token for another room
    assert await other_room.closed() == 4403
    no_token = await TermClient.connect(ts, room, terminal["id"], None)
    assert await no_token.closed() == 4401

    cases: list[tuple[Any, int]] = [
        ("not json", 4400),
        (json.dumps({"stdin": "ls"}), 4400),
        (json.dumps([]), 4400),
        (json.dumps(["stdin", 5]), 4400),
        (json.dumps(["launch", "x"]), 4406),
        (json.dumps(["stdin", "x" * (70 * 1024)]), 1009),
        (b"\x01binary", 1003),
    ]
    for frame, code in cases:
        bad = await TermClient.connect(ts, room, terminal["id"], cy)
        await until(lambda: bad.of("snapshot"))
        await bad.ws.send(frame)
        assert await bad.closed() == code, (frame[:40], bad.close_code, bad.close_reason)
        assert bad.close_reason

    await a.send("resize", 0, 100000)  # clamped, not refused
    await until(lambda: a.of("resize") and a.of("resize")[-1] == [1, 500])
    await a.send("resize", "x", None)
    await until(lambda: a.of("resize")[-1] == [24, 80])
    await a.type("stty size\r")
    await until(lambda: "24 80\r\n" in a.output)
    assert a.close_code is None, "the writer's connection carried on"
    await a.close()


async def test_limits_and_who_may_start_a_terminal(ts: TermServer) -> None:
    room = new_room()
    ada, bob, cy = members(room)
    response = await ts.http.post(f"/api/rooms/{room}/terminals", json={}, headers=bob.headers)
    assert response.status_code == 403 and "viewer" in response.json()["error"]
    made = [await create(ts, room, cy) for _ in range(TERMINALS.max_per_room)]
    response = await ts.http.post(f"/api/rooms/{room}/terminals", json={}, headers=ada.headers)
    assert response.status_code == 409 and "maximum" in response.json()["error"]
    listed = (await ts.http.get(f"/api/rooms/{room}/terminals", headers=bob.headers)).json()["terminals"]
    assert [t["id"] for t in listed] == [t["id"] for t in made]
    assert (
        await ts.http.delete(f"/api/rooms/{room}/terminals/{made[0]['id']}", headers=bob.headers)
    ).status_code == 403
    for terminal in made:
        assert (
            await ts.http.delete(f"/api/rooms/{room}/terminals/{terminal['id']}", headers=cy.headers)
        ).status_code == 204
    assert (await ts.http.get(f"/api/rooms/{room}/terminals", headers=ada.headers)).json()["terminals"] == []


async def test_ending_a_terminal_leaves_no_process_and_an_exit_is_reported(ts: TermServer) -> None:
    room = new_room()
    ada, bob, _ = members(room)
    terminal = await create(ts, room, ada)
    a = await TermClient.connect(ts, room, terminal["id"], ada)
    b = await TermClient.connect(ts, room, terminal["id"], bob)
    await ready(a)
    await a.type("exit 7\r")
    await until(lambda: a.of("exit") == [7] and b.of("exit") == [7], what="exit 7 to everyone")
    response = await ts.http.post(f"/api/rooms/{room}/terminals/{terminal['id']}/restart", headers=ada.headers)
    assert response.status_code == 200 and response.json()["status"] == "running"
    await a.type("sleep 1000 & echo started-'bg'\r")
    await until(lambda: "started-bg\r\n" in a.output)
    shell = ts.service.get(room, terminal["id"]).shell  # type: ignore[union-attr]
    pid = shell.process.pid  # type: ignore[union-attr]
    assert (
        await ts.http.delete(f"/api/rooms/{room}/terminals/{terminal['id']}", headers=ada.headers)
    ).status_code == 204
    assert await a.closed() == 1000 and await b.closed() == 1000
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    sandboxed = [p for p in os.listdir("/proc") if p.isdigit() and _cmdline(p).startswith("sleep\x001000")]
    assert sandboxed == [], "the background sleep died with the terminal"


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return ""


# -- the sandbox -----------------------------------------------------------------------------------


async def test_the_shell_is_contained_like_a_kernel(ts: TermServer) -> None:
    room = new_room()
    ada, _, _ = members(room)
    terminal = await create(ts, room, ada)
    a = await TermClient.connect(ts, room, terminal["id"], ada)
    await ready(a)
    await a.type(
        f"cat /etc/shadow; (echo > /dev/tcp/127.0.0.1/{ts.port}) 2>/dev/null && echo NET-'OPEN' || echo net-'closed'\r"
    )
    await until(lambda: "net-closed\r\n" in a.output or "NET-OPEN\r\n" in a.output, timeout=10)
    assert "NET-OPEN\r\n" not in a.output and "root:" not in a.output
    # the outside world, the server's database and environment, and the host outside the workspace
    assert ts.db.exists()
    await a.type(
        "(echo > /dev/tcp/1.1.1.1/53) 2>/dev/null && echo DNS-'OPEN' || echo dns-'closed'; "
        f"head -c1 {ts.db} >/dev/null 2>&1 && echo DB-'READ' || echo db-'hidden'; "
        f"head -c1 /proc/{os.getpid()}/environ >/dev/null 2>&1 && echo ENV-'READ' || echo env-'hidden'; "
        "touch /usr/x /etc/x /x 2>/dev/null && echo WROTE-'OUTSIDE' || echo read-'only'\r"
    )
    await until(lambda: "read-only\r\n" in a.output or "WROTE-OUTSIDE\r\n" in a.output, timeout=10)
    for closed in ("dns-closed", "db-hidden", "env-hidden", "read-only"):
        assert f"{closed}\r\n" in a.output, a.output[-400:]
    await a.type("id -u; ls /home/room >/dev/null && echo in-'workspace'; echo $SECRET$PAIRROOM_SECRET end-'env'\r")
    await until(lambda: "end-env\r\n" in a.output)
    assert "\r\n1000\r\n" in a.output and "in-workspace\r\n" in a.output
    assert SECRET not in a.output
    # a memory bomb: the limit stops it, not the host
    await a.type("python3 -c \"x = b'x' * (4 * 1024**3)\" 2>/dev/null; echo mem-'status'-$?\r")
    await until(lambda: re.search(r"mem-status-\d+\r\n", a.output), timeout=30, what="memory bomb")
    assert re.search(r"mem-status-(1|137)\r\n", a.output), a.output[-300:]  # MemoryError or killed
    # a fork bomb (last: its processes linger until the terminal ends) hits the pids limit; the shell and the server carry on
    await a.type("bomb() { bomb | bomb & }; (bomb) 2>/dev/null; sleep 2; echo sur'vived'\r")
    await until(lambda: "survived\r\n" in a.output, timeout=30, what="fork bomb")
    assert (await ts.http.get("/healthz")).status_code == 200
    assert (
        await ts.http.delete(f"/api/rooms/{room}/terminals/{terminal['id']}", headers=ada.headers)
    ).status_code == 204
    await a.close()


async def test_a_flood_is_rate_capped_and_a_slow_viewer_gets_snapshots(ts: TermServer) -> None:
    room = new_room()
    ada, bob, _ = members(room)
    terminal = await create(ts, room, ada)
    a = await TermClient.connect(ts, room, terminal["id"], ada)
    await ready(a)
    live = ts.service.get(room, terminal["id"])
    assert live is not None
    # a viewer that stops reading: its queue passes the cap and it is owed a snapshot; nobody waits for it
    from pairroom.terminal.session import Viewer

    reading = asyncio.Event()
    reading.set()
    received: list[list[Any]] = []

    async def send(frame: str) -> None:
        await reading.wait()
        received.append(json.loads(frame))

    slow = Viewer(_principal(bob), send, 64 * 1024)
    live.attach(slow)
    serving = asyncio.create_task(live.serve_viewer(slow))
    await until(lambda: any(f[0] == "snapshot" for f in received), what="the slow viewer's first snapshot")
    reading.clear()
    started = time.monotonic()
    await a.type("head -c 3000000 /dev/zero | tr '\\0' 'y'; echo; echo flood-'done'\r")
    await until(lambda: "flood-done\r\n" in a.output, timeout=60, what="the flood ends")
    elapsed = time.monotonic() - started
    assert any("rate-capped" in n for n in a.of("notice"))
    assert elapsed > 3_000_000 / TERMINALS.output_bytes_per_second * 0.5, "the cap slowed the program down"
    assert slow.needs_snapshot, "the slow viewer fell behind"
    reading.set()
    await until(lambda: sum(f[0] == "snapshot" for f in received) >= 2, what="a fresh snapshot, not the backlog")
    streamed = sum(len(f[1]) for f in received if f[0] == "stdout")
    assert streamed < 1_000_000, "the backlog was dropped"
    last = max(i for i, f in enumerate(received) if f[0] == "snapshot")
    seen = received[last][1] + "".join(f[1] for f in received[last + 1 :] if f[0] == "stdout")
    assert "flood-done" in seen, "after catching up the viewer's screen is the current one"
    serving.cancel()
    live.detach(slow)
    await a.close()


async def test_a_flood_keeps_another_clients_edits_under_100_ms_and_another_terminal_answering(
    tmp_path: Path,
) -> None:
    """``yes`` at the default rate cap, watched by two members, while a third member's edits travel
    to a fourth over /yjs in the same room, and a second terminal of the room runs a command."""
    flood_server = await start_terminal_server(
        tmp_path, dataclasses.replace(TERMINALS, output_bytes_per_second=TerminalSettings().output_bytes_per_second)
    )
    try:
        room = new_room()
        ada, bob, cy = members(room)
        flooded = await create(flood_server, room, ada, "flood")
        quiet = await create(flood_server, room, cy, "quiet")
        flooder = await TermClient.connect(flood_server, room, flooded["id"], ada)
        watcher = await TermClient.connect(flood_server, room, flooded["id"], bob)
        other = await TermClient.connect(flood_server, room, quiet["id"], cy)
        await ready(flooder)
        await ready(other)
        url = f"ws://127.0.0.1:{flood_server.port}/yjs/{room}?token="
        writer, reader = await YClient.connect(url + cy.token), await YClient.connect(url + bob.token)
        await writer.synced.wait()
        await reader.synced.wait()

        await flooder.type("yes\r")
        await until(lambda: len(watcher.output) > 200_000, what="the flood reaches the watcher")
        flooded_before = len(watcher.output)
        frames_before, frames_since = len(watcher.of("stdout")), time.perf_counter()
        times: list[float] = []
        for i in range(40):
            start = time.perf_counter()
            writer.text.insert(len(writer.text), "x")
            while len(str(reader.text)) <= i:  # polled finely: the delay itself is measured
                assert time.perf_counter() - start < 10, "an edit did not arrive within 10 s"
                await asyncio.sleep(0.0005)
            times.append((time.perf_counter() - start) * 1000)
            await asyncio.sleep(0.01)
        frames_per_second = (len(watcher.of("stdout")) - frames_before) / (time.perf_counter() - frames_since)
        assert frames_per_second < 1 / 0.016 + 5, f"output coalesced into frames 16 ms apart: {frames_per_second:.0f}/s"
        start = time.perf_counter()
        await other.type("echo other-$((3*3))\r")
        await until(lambda: "other-9\r\n" in other.output, what="the other terminal answers")
        other_echo = time.perf_counter() - start
        # (the cap's notice is test_a_flood_is_rate_capped...'s: on a loaded machine this flood may stay under 1 MiB/s)
        assert len(watcher.output) - flooded_before > 100_000, "the flood went on while the edits were measured"

        ordered = sorted(times)
        p50, p90 = statistics.median(times), ordered[int(len(ordered) * 0.9) - 1]
        print(f"edit round trip beside a flood: p50 {p50:.1f} ms, p90 {p90:.1f} ms; other terminal {other_echo:.3f} s")
        assert p50 < 100 and p90 < 100, f"edit round trips beside a flood: {[round(t) for t in times]} ms"
        assert other_echo < 2.0, f"the other terminal took {other_echo:.2f} s to answer"
        await flooder.type("\x03")  # job control: ^C reaches the foreground job, the prompt comes back
        await flooder.type("echo stopped-$((2+2))\r")
        await until(lambda: "stopped-4\r\n" in watcher.output, timeout=30, what="yes stopped by ^C")
        for client in (flooder, watcher, other, writer, reader):
            await client.close()
    finally:
        await stop_terminal_server(flood_server)


def _principal(member: Member) -> Any:
    from pairroom.rooms.identity import Principal

    return Principal(member.user, member.name, "#000", Role.VIEWER, "*")


async def test_the_recording_is_asciicast_with_commands_as_markers(ts: TermServer) -> None:
    room = new_room()
    ada, bob, _ = members(room)
    terminal = await create(ts, room, ada)
    a = await TermClient.connect(ts, room, terminal["id"], ada)
    await ready(a)
    await a.send("resize", 30, 100)
    await a.type("echo recorded-$((2*21))\r")
    await until(lambda: "recorded-42" in a.output)
    response = await ts.http.get(f"/api/rooms/{room}/terminals/{terminal['id']}/cast", headers=bob.headers)
    assert response.status_code == 200
    header, *events = [json.loads(line) for line in response.text.splitlines()]
    assert header["version"] == 2 and header["width"] == 80
    kinds = {kind for _, kind, _ in events}
    assert {"o", "r", "m"} <= kinds
    assert any(kind == "r" and data == "100x30" for _, kind, data in events)
    assert any(kind == "m" and data == "Ada ran `echo recorded-$((2*21))`" for _, kind, data in events)
    assert "recorded-42" in "".join(data for _, kind, data in events if kind == "o")
    times = [t for t, _, _ in events]
    assert times == sorted(times)
    await a.close()


async def test_deleting_the_room_ends_its_terminals(ts: TermServer) -> None:
    room = new_room()
    ada, _, _ = members(room)
    terminal = await create(ts, room, ada)
    a = await TermClient.connect(ts, room, terminal["id"], ada)
    await ready(a)
    pid = ts.service.get(room, terminal["id"]).shell.process.pid  # type: ignore[union-attr]
    await ts.registry.evict(room)  # what DELETE /api/rooms/{room} does on every node holding it
    assert await a.closed() == 1000
    await until(lambda: ts.service.get(room, terminal["id"]) is None, what="the terminal is gone")
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_a_terminal_nobody_watches_that_stays_quiet_ends(tmp_path: Path) -> None:
    idle = await start_terminal_server(tmp_path, dataclasses.replace(TERMINALS, idle_seconds=1.0))
    try:
        room = new_room()
        ada, _, _ = members(room)
        terminal = await create(idle, room, ada)
        watcher = await TermClient.connect(idle, room, terminal["id"], ada)
        await ready(watcher)
        await watcher.close()  # nobody watches from here on
        await until(lambda: idle.service.get(room, terminal["id"]) is None, what="the idle terminal ended")
        listed = (await idle.http.get(f"/api/rooms/{room}/terminals", headers=ada.headers)).json()["terminals"]
        assert listed == []
    finally:
        await stop_terminal_server(idle)


async def test_settings_come_from_pairroom_ext_terminals_variables() -> None:
    from pairroom.terminal.extension import parse_options

    terminal, workspace = parse_options(
        {"max_per_room": "5", "workspace_ignore": ".git/, *.log", "workspace_max_file_bytes": "2048"}, TERMINALS
    )
    assert terminal.max_per_room == 5 and terminal.output_bytes_per_second == TERMINALS.output_bytes_per_second
    assert workspace == {"ignore": (".git/", "*.log"), "max_file_bytes": 2048}
    for bad, says in (
        ({"max_per_room": "many"}, "not a int"),
        ({"idle_seconds": "-1"}, "positive"),
        ({"colour": "x"}, "unknown"),
    ):
        with pytest.raises(ValueError, match=says):
            parse_options(bad, TERMINALS)


async def test_viewers_joining_together_share_one_render(ts: TermServer) -> None:
    room = new_room()
    ada, bob, _ = members(room)
    terminal = await create(ts, room, ada)
    a = await TermClient.connect(ts, room, terminal["id"], ada)
    await ready(a)
    await a.type("seq 1 3000; echo seq-'done'\r")
    await until(lambda: "seq-done\r\n" in a.output)
    live = ts.service.get(room, terminal["id"])
    assert live is not None
    from pairroom.terminal.session import Viewer

    renders = 0
    original = live._render

    async def counted() -> None:
        nonlocal renders
        renders += 1
        await original()

    live._render = counted  # type: ignore[method-assign]
    inboxes: list[list[Any]] = [[] for _ in range(20)]

    def sender(inbox: list[Any]) -> Any:
        async def send(frame: str) -> None:
            inbox.append(json.loads(frame))

        return send

    viewers = [Viewer(_principal(bob), sender(inbox), 1 << 20) for inbox in inboxes]
    for viewer in viewers:
        live.attach(viewer)
    tasks = [asyncio.create_task(live.serve_viewer(v)) for v in viewers]
    await until(lambda: all(any(f[0] == "snapshot" for f in inbox) for inbox in inboxes), what="every snapshot")
    assert renders == 1
    for inbox in inboxes:
        screen = next(f[1] for f in inbox if f[0] == "snapshot")
        assert "2999\r\n3000\r\nseq-done" in screen
    for task, viewer in zip(tasks, viewers):
        task.cancel()
        live.detach(viewer)
    await a.close()


async def test_a_client_cannot_forge_the_terminals_record(ts: TermServer) -> None:
    """An editor's client writing the server's ``terminals`` map (a forged command) is reverted."""
    room = new_room()
    ada, _, cy = members(room)
    terminal = await create(ts, room, ada)
    a = await TermClient.connect(ts, room, terminal["id"], ada)
    await ready(a)
    await a.type("echo real-$((1+1))\r")
    await until(lambda: "real-2\r\n" in a.output)
    editor = await YClient.connect(f"ws://127.0.0.1:{ts.port}/yjs/{room}?token={cy.token}")
    await until(lambda: _commands(editor, terminal["id"]), what="the editor has the record")
    entry = editor.doc.get("terminals", type=Map)[terminal["id"]]
    entry["commands"].append({"by": ada.user, "name": "Ada", "line": "rm -rf / # forged", "at": 1})
    editor.doc.get("terminals", type=Map)["fake"] = Map({"name": "fake"})
    await until(
        lambda: (
            "fake" not in editor.doc.get("terminals", type=Map)
            and not any("forged" in c["line"] for c in _commands(editor, terminal["id"]))
        ),
        what="the forgery is reverted",
    )
    server_side = ts.registry.rooms[room].doc.get("terminals", type=Map).to_py()
    assert "fake" not in server_side
    assert [c["line"] for c in server_side[terminal["id"]]["commands"]] == ["echo real-$((1+1))"]
    await editor.close()
    await a.close()


def _commands(client: YClient, terminal_id: str) -> list[dict[str, Any]]:
    entry = client.doc.get("terminals", type=Map).get(terminal_id)
    return list(entry.to_py().get("commands", [])) if isinstance(entry, Map) else []


async def test_the_smallest_size_policy_takes_the_smallest_client(ts: TermServer) -> None:
    room = new_room()
    ada, bob, _ = members(room)
    terminal = await create(ts, room, ada)
    a = await TermClient.connect(ts, room, terminal["id"], ada)
    b = await TermClient.connect(ts, room, terminal["id"], bob)
    await ready(a)
    await a.send("resize", 40, 120)
    await until(lambda: a.of("resize") and a.of("resize")[-1] == [40, 120])
    await b.send("resize", 20, 50)  # a viewer's size counts for nothing under the default policy
    await until(lambda: any("keeps the size" in n for n in b.of("notice")))
    url = f"/api/rooms/{room}/terminals/{terminal['id']}/size"
    assert (await ts.http.post(url, json={"policy": "smallest"}, headers=bob.headers)).status_code == 403
    assert (await ts.http.post(url, json={"policy": "tiny"}, headers=ada.headers)).status_code == 400
    assert (await ts.http.post(url, json={"policy": "smallest"}, headers=ada.headers)).status_code == 200
    await until(lambda: b.setup["size_policy"] == "smallest")
    await b.send("resize", 20, 50)
    await a.send("resize", 40, 120)
    await until(lambda: a.of("resize")[-1] == [20, 50], what="the phone's size wins")
    await a.type("stty size\r")
    await until(lambda: "20 50\r\n" in a.output)
    await b.close()  # the smallest client leaves: the next smallest is the size again
    await until(lambda: a.of("resize")[-1] == [40, 120], what="back to the larger size")
    await a.close()
