"""Debugging together: one debug session per room on a real sandboxed kernel (ipykernel's debugpy),
breakpoints written by real Yjs clients, stops read from the document by every member.

One server with a secret (tokens and live roles) serves the module; every test uses its own room.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from pycrdt import Map, Text

from pairroom.debugger.extension import Debugger
from pairroom.web.auth import Role, mint
from tests.test_kernels import KernelServer, requires_sandbox, run_and_wait, start_kernel_server
from tests.yclient import YClient, eventually

pytestmark = [requires_sandbox, pytest.mark.asyncio(loop_scope="module")]

SECRET = "a-test-secret-that-is-long-enough-for-hs256"
STOP_TIMEOUT = 60.0

MAIN = """\
import helper
total = 0
for x in [1, 2, 3]:
    total = helper.add(total, x)
name = "pairroom"
print("total", total)
"""
HELPER = """\
def add(a, b):
    result = a + b
    return result
"""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def ks(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[KernelServer]:
    server = await start_kernel_server(tmp_path_factory.mktemp("debugger"), secret=SECRET, pool_size=1)
    yield server
    await server.stop()


def new_room() -> str:
    return "d-" + uuid.uuid4().hex[:10]


def token(name: str, role: Role, who: str) -> str:
    """One user id per name, so Ada's browser and Ada's HTTP calls are the same person."""
    return mint(SECRET, name, role, who, user_id="u-" + who.lower())


def auth(name: str, role: Role = Role.EDITOR, who: str = "Ada") -> dict[str, str]:
    return {"authorization": "Bearer " + token(name, role, who)}


async def member(ks: KernelServer, name: str, role: Role = Role.EDITOR, who: str = "Ada") -> YClient:
    client = await YClient.connect(f"{ks.ws(name)}?token={token(name, role, who)}")
    await client.synced.wait()
    return client


def debug_of(client: YClient) -> dict[str, Any]:
    debug = client.doc.get("debug", type=Map)
    return {key: (value.to_py() if isinstance(value, Map) else value) for key, value in debug.items()}


def set_breakpoint(client: YClient, path: str, line: int, **fields: str) -> None:
    """As the page does: one key ``path:line`` in the ``breakpoints`` root."""
    client.doc.get("breakpoints", type=Map)[f"{path}:{line}"] = {"author": "whoever-i-claim", **fields}


def by_file(flat: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        path, _, line = key.rpartition(":")
        out.setdefault(path, {})[line] = value
    return out


def breakpoints_of(client: YClient) -> dict[str, dict[str, Any]]:
    """``{path: {line: entry}}`` of the client's ``breakpoints`` root."""
    return by_file(client.doc.get("breakpoints", type=Map).to_py())


async def write_files(ks: KernelServer, client: YClient, name: str, files: dict[str, str]) -> None:
    doc_files = client.doc.get("files", type=Map)
    with client.doc.transaction():
        for path, content in files.items():
            doc_files[path] = Text(content)

    def server_has() -> bool:
        room = ks.hub.registry.rooms.get(name)
        if room is None:
            return False
        there = room.doc.get("files", type=Map)
        return all(path in there and str(there[path]) == content for path, content in files.items())

    await eventually(server_has, what="the server has the files")


async def server_breakpoints(ks: KernelServer, name: str, expected: dict[str, set[str]]) -> None:
    def check() -> bool:
        room = ks.hub.registry.rooms.get(name)
        if room is None:
            return False
        bps = room.doc.get("breakpoints", type=Map).to_py()
        return {path: set(lines) for path, lines in by_file(bps).items()} == expected

    await eventually(check, what=f"the server has breakpoints {expected}")


async def wait_state(
    client: YClient,
    state: str,
    *,
    line: int | None = None,
    after: dict[str, Any] | None = None,
    timeout: float = STOP_TIMEOUT,
) -> dict[str, Any]:
    """Wait until ``client``'s document shows ``state`` (at ``line``); ``after`` (a state seen
    before) must have been left: the 202 of a step can reach the test before the document's update."""
    left = (after or {}).get("session", {}).get("stopId")

    def check() -> bool:
        debug = debug_of(client)
        if debug.get("state") != state or (left is not None and (debug.get("session") or {}).get("stopId") == left):
            return False
        return line is None or (debug.get("stopped") or {}).get("line") == line

    await eventually(check, timeout=timeout, what=f"debug state {state} (line {line}): {debug_of(client)}")
    return debug_of(client)


def adapter_requests(ks: KernelServer) -> int:
    debugger: Debugger = ks.app.state.debugger
    return sum(debugger.counter.sent.values())


def locals_of(debug: dict[str, Any]) -> dict[str, str]:
    scope = next(s for s in debug["scopes"] if s["name"] == "Locals")
    return {v["name"]: v["value"] for v in scope["variables"] or []}


async def start(ks: KernelServer, name: str, path: str = "main.py", headers: dict[str, str] | None = None) -> Any:
    return await ks.http.post(f"/api/rooms/{name}/debug/start", json={"path": path}, headers=headers or auth(name))


async def command(
    ks: KernelServer, name: str, what: str, stop_id: str | None, headers: dict[str, str] | None = None
) -> Any:
    return await ks.http.post(
        f"/api/rooms/{name}/debug/{what}", json={"stopId": stop_id}, headers=headers or auth(name)
    )


async def test_two_members_breakpoints_hold_and_every_watcher_sees_the_stop_at_one_cost(ks: KernelServer) -> None:
    name = new_room()
    ada = await member(ks, name, who="Ada")
    bob = await member(ks, name, who="Bob")
    await write_files(ks, ada, name, {"main.py": MAIN, "helper.py": HELPER})
    set_breakpoint(ada, "main.py", 5)
    await server_breakpoints(ks, name, {"main.py": {"5"}})
    await eventually(lambda: "5" in breakpoints_of(bob).get("main.py", {}), what="bob sees ada's breakpoint")
    set_breakpoint(bob, "helper.py", 2)
    await server_breakpoints(ks, name, {"main.py": {"5"}, "helper.py": {"2"}})
    await eventually(lambda: set(breakpoints_of(ada)) == {"main.py", "helper.py"}, what="both hold for ada")
    held = breakpoints_of(ada)
    assert held["main.py"]["5"]["authorName"] == "Ada" and held["helper.py"]["2"]["authorName"] == "Bob"
    assert held["main.py"]["5"]["author"] != "whoever-i-claim" and held["main.py"]["5"]["anchor"]

    response = await start(ks, name)
    assert response.status_code == 201, response.text
    first = await wait_state(bob, "stopped", line=2)
    assert first["stopped"]["path"] == "helper.py" and first["stopped"]["reason"] == "breakpoint"
    assert first["stopped"]["breakpointBy"] == "Bob"
    assert [f["path"] for f in first["frames"]][:2] == ["helper.py", "main.py"]
    assert locals_of(first) == {"a": "0", "b": "1"}

    # 20 watchers join and read the state: the adapter is not asked once more
    before = adapter_requests(ks)
    watchers = [await member(ks, name, Role.VIEWER, f"W{i}") for i in range(20)]
    for watcher in watchers:
        seen = await wait_state(watcher, "stopped", line=2)
        assert locals_of(seen) == {"a": "0", "b": "1"}
    for _ in range(20):
        got = await ks.http.get(f"/api/rooms/{name}/debug", headers=auth(name, Role.VIEWER, "W"))
        assert got.status_code == 200 and got.json()["stopped"]["line"] == 2
    assert adapter_requests(ks) == before

    # a watcher expanding the main.py frame's variables: fetched once, then served from the cache
    frame = first["frames"][1]["id"]
    scopes = await ks.http.post(
        f"/api/rooms/{name}/debug/scopes", json={"frameId": frame}, headers=auth(name, Role.VIEWER, "W")
    )
    assert scopes.status_code == 200, scopes.text
    main_locals = {v["name"]: v["value"] for v in scopes.json()["scopes"][0]["variables"]}
    assert main_locals["total"] == "0" and main_locals["x"] == "1"
    ref = scopes.json()["scopes"][0]["ref"]
    counted = adapter_requests(ks)
    for _ in range(5):
        again = await ks.http.post(
            f"/api/rooms/{name}/debug/variables", json={"ref": ref}, headers=auth(name, Role.VIEWER, "W")
        )
        assert again.status_code == 200 and {v["name"] for v in again.json()["variables"]} >= {"total", "x"}
    assert adapter_requests(ks) == counted

    # continue: the helper breakpoint again (x=2), then remove it and go on to main.py:5
    assert (await command(ks, name, "continue", first["session"]["stopId"])).status_code == 202
    second = await wait_state(ada, "stopped", line=2, after=first)
    assert locals_of(second) == {"a": "1", "b": "2"}
    with bob.doc.transaction():
        del bob.doc.get("breakpoints", type=Map)["helper.py:2"]
    await server_breakpoints(ks, name, {"main.py": {"5"}})
    await eventually(
        lambda: (
            ks.app.state.debugger.session_of(name)._sync_task is not None
            and ks.app.state.debugger.session_of(name)._sync_task.done()
        ),
        what="breakpoints re-sent",
    )
    assert (await command(ks, name, "continue", second["session"]["stopId"])).status_code == 202
    third = await wait_state(ada, "stopped", line=5, after=second)
    assert third["stopped"]["path"] == "main.py" and third["stopped"]["breakpointBy"] == "Ada"
    assert locals_of(third)["total"] == "6"

    assert (await command(ks, name, "continue", third["session"]["stopId"])).status_code == 202
    ended = await wait_state(ada, "ended")
    run = await run_and_wait(ks, name, ended["session"]["run"], headers=auth(name))
    assert run["status"] == "ok" and "total 6" in "".join(o.get("text", "") for o in run["outputs"])
    # the breakpoints outlive the session
    assert set(breakpoints_of(ada)) == {"main.py"}
    for client in (ada, bob, *watchers):
        await client.close()


STEPS = """\
def square(n):
    doubled = n * n
    return doubled

a = 3
b = square(a)
c = b + 1
print(c)
"""


async def test_evaluate_in_a_frame_step_over_into_out_and_two_steps_on_one_stop_advance_once(ks: KernelServer) -> None:
    name = new_room()
    ada = await member(ks, name)
    await write_files(ks, ada, name, {"main.py": STEPS})
    set_breakpoint(ada, "main.py", 5)
    await server_breakpoints(ks, name, {"main.py": {"5"}})
    assert (await start(ks, name)).status_code == 201
    stop = await wait_state(ada, "stopped", line=5)

    # two people press Step over on the same stop at once: one advances, the other gets 409
    stop_id = stop["session"]["stopId"]
    first, second = await asyncio.gather(
        command(ks, name, "next", stop_id),
        command(ks, name, "next", stop_id, auth(name, Role.EDITOR, "Bob")),
    )
    assert sorted([first.status_code, second.status_code]) == [202, 409], (first.text, second.text)
    refused = first if first.status_code == 409 else second
    assert "already left" in refused.json()["error"] or "not stopped" in refused.json()["error"]
    stop = await wait_state(ada, "stopped", line=6, after=stop)
    assert locals_of(stop)["a"] == "3"

    # evaluate in the top frame
    evaluated = await ks.http.post(
        f"/api/rooms/{name}/debug/evaluate", json={"expression": "a * 10"}, headers=auth(name)
    )
    assert evaluated.status_code == 200, evaluated.text
    assert evaluated.json()["result"] == "30"

    # step into square(), evaluate there, step out
    assert (await command(ks, name, "stepIn", stop["session"]["stopId"])).status_code == 202
    stop = await wait_state(ada, "stopped", line=2, after=stop)
    assert stop["frames"][0]["name"] == "square" and locals_of(stop) == {"n": "3"}
    frame = stop["frames"][0]["id"]
    evaluated = await ks.http.post(
        f"/api/rooms/{name}/debug/evaluate", json={"expression": "n + 100", "frameId": frame}, headers=auth(name)
    )
    assert evaluated.json()["result"] == "103"
    assert (await command(ks, name, "stepOut", stop["session"]["stopId"])).status_code == 202
    stop = await wait_state(ada, "stopped", after=stop)
    assert stop["stopped"]["path"] == "main.py" and stop["stopped"]["line"] == 6
    assert (await command(ks, name, "next", stop["session"]["stopId"])).status_code == 202
    stop = await wait_state(ada, "stopped", line=7, after=stop)
    assert locals_of(stop)["b"] == "9"

    # a step for a stop already left is a 409; so is a pause while stopped
    assert (await command(ks, name, "next", "not-the-stop")).status_code == 409
    assert (await ks.http.post(f"/api/rooms/{name}/debug/pause", json={}, headers=auth(name))).status_code == 409
    assert (await command(ks, name, "continue", stop["session"]["stopId"])).status_code == 202
    ended = await wait_state(ada, "ended")
    # after the end: steps, evaluate and variables are 409
    assert (await command(ks, name, "next", stop["session"]["stopId"])).status_code == 409
    assert (
        await ks.http.post(f"/api/rooms/{name}/debug/evaluate", json={"expression": "1"}, headers=auth(name))
    ).status_code == 409
    run = await run_and_wait(ks, name, ended["session"]["run"], headers=auth(name))
    assert run["status"] == "ok"
    # a plain run afterwards never meets the breakpoint (the debugger was detached)
    plain = await ks.http.post(f"/api/rooms/{name}/runs", json={"path": "main.py"}, headers=auth(name))
    assert (await run_and_wait(ks, name, plain.json()["id"], headers=auth(name)))["status"] == "ok"
    await ada.close()


async def test_roles_viewers_inspect_drivers_drive_and_a_demoted_editor_loses_control_live(ks: KernelServer) -> None:
    name = new_room()
    ada = await member(ks, name, Role.OWNER, "Ada")
    bob = await member(ks, name, Role.EDITOR, "Bob")
    rita = await member(ks, name, Role.REVIEWER, "Rita")
    vic = await member(ks, name, Role.VIEWER, "Vic")
    await write_files(ks, ada, name, {"main.py": STEPS})
    viewer, reviewer = auth(name, Role.VIEWER, "Vic"), auth(name, Role.REVIEWER, "Rita")

    # a reviewer may set breakpoints; a viewer's write is dropped
    set_breakpoint(ada, "main.py", 5)
    await server_breakpoints(ks, name, {"main.py": {"5"}})
    await eventually(lambda: "main.py" in breakpoints_of(rita) and "main.py" in breakpoints_of(vic), what="synced")
    set_breakpoint(rita, "main.py", 7)
    await server_breakpoints(ks, name, {"main.py": {"5", "7"}})
    set_breakpoint(vic, "main.py", 2)
    marker = ada.doc.get("files", type=Map)
    with ada.doc.transaction():
        marker["after.txt"] = Text("x")
    await write_files(ks, ada, name, {"after.txt": "x"})
    await server_breakpoints(ks, name, {"main.py": {"5", "7"}})

    # viewers and reviewers may not start, step or evaluate
    for headers in (viewer, reviewer):
        response = await start(ks, name, headers=headers)
        assert response.status_code == 403, response.text
    assert (await start(ks, name, headers=auth(name, Role.EDITOR, "Bob"))).status_code == 201
    stop = await wait_state(ada, "stopped", line=5)
    stop_id = stop["session"]["stopId"]
    for headers in (viewer, reviewer):
        assert (await command(ks, name, "next", stop_id, headers)).status_code == 403
        evaluated = await ks.http.post(f"/api/rooms/{name}/debug/evaluate", json={"expression": "1"}, headers=headers)
        assert evaluated.status_code == 403
        assert (await ks.http.post(f"/api/rooms/{name}/debug/stop", json={}, headers=headers)).status_code == 403
    # but they inspect: the state and the variables
    got = await ks.http.get(f"/api/rooms/{name}/debug", headers=viewer)
    assert got.status_code == 200 and got.json()["stopped"]["line"] == 5
    ref = stop["scopes"][0]["ref"]
    assert (
        await ks.http.post(f"/api/rooms/{name}/debug/variables", json={"ref": ref}, headers=viewer)
    ).status_code == 200
    assert (
        await ks.http.post(f"/api/rooms/{name}/debug/variables", json={"ref": 987654}, headers=viewer)
    ).status_code == 404

    # the owner demotes Bob to viewer: his next step is refused, with no reconnect
    demoted = await ks.http.put(
        f"/api/rooms/{name}/roles/u-bob", json={"role": "viewer"}, headers=auth(name, Role.OWNER, "Ada")
    )
    assert demoted.status_code == 200, demoted.text
    assert (await command(ks, name, "next", stop_id, auth(name, Role.EDITOR, "Bob"))).status_code == 403
    # another editor may not stop Bob's session; the owner may
    assert (
        await ks.http.post(f"/api/rooms/{name}/debug/stop", json={}, headers=auth(name, Role.EDITOR, "Eve"))
    ).status_code == 403
    stopped = await ks.http.post(f"/api/rooms/{name}/debug/stop", json={}, headers=auth(name, Role.OWNER, "Ada"))
    assert stopped.status_code == 202, stopped.text
    ended = await wait_state(ada, "ended")
    assert "stopped by Ada" in ended["session"]["notice"]
    assert set(breakpoints_of(ada)["main.py"]) == {"5", "7"}
    for client in (ada, bob, rita, vic):
        await client.close()


async def test_bad_input_answers_precisely_and_unusable_breakpoints_are_reported_not_sent(ks: KernelServer) -> None:
    name = new_room()
    ada = await member(ks, name)
    await write_files(ks, ada, name, {"main.py": "import time\nx = 1\ntime.sleep(0.5)\ny = 2\n", "notes.md": "# hi\n"})
    assert (await start(ks, name, "missing.py")).status_code == 404
    assert (await start(ks, name, "../etc/passwd")).status_code == 400
    assert (await start(ks, name, "notes.md")).status_code == 400
    assert (
        await ks.http.post(f"/api/rooms/{name}/debug/start", content=b"{not json", headers=auth(name))
    ).status_code == 400
    assert (await command(ks, name, "next", None)).status_code == 409  # no session
    assert (
        await ks.http.post(f"/api/rooms/{name}/debug/variables", json={"ref": "x"}, headers=auth(name))
    ).status_code == 400

    set_breakpoint(ada, "main.py", 4)
    set_breakpoint(ada, "main.py", 99)  # past the end
    set_breakpoint(ada, "notes.md", 1)  # not Python
    set_breakpoint(ada, "main.py", 2, condition="x" * 5000)  # condition over the cap: dropped, line kept
    debug = ada.doc.get("debug", type=Map)
    with ada.doc.transaction():
        ada.doc.get("breakpoints", type=Map)["main.py:zero"] = {"author": "x"}  # not a line
        ada.doc.get("breakpoints", type=Map)["main.py:3"] = "not an object"
        debug["state"] = "stopped"  # the server's key
    await server_breakpoints(ks, name, {"main.py": {"2", "4", "99"}, "notes.md": {"1"}})
    await eventually(lambda: debug_of(ada).get("state") is None, what="the client's state write reverted")
    assert "condition" not in breakpoints_of(ada)["main.py"]["2"]

    assert (await start(ks, name)).status_code == 201
    again = await start(ks, name, headers=auth(name, Role.EDITOR, "Bob"))
    assert again.status_code == 409 and "Ada" in again.json()["error"]
    stop = await wait_state(ada, "stopped", line=2)
    checks = stop["checks"]
    assert checks["main.py"]["99"] == {"verified": False, "message": "past the end of the file"}
    assert checks["notes.md"]["1"]["verified"] is False and "Python" in checks["notes.md"]["1"]["message"]
    assert checks["main.py"]["4"]["verified"] is True
    assert (await command(ks, name, "continue", stop["session"]["stopId"])).status_code == 202
    # while running: a step is 409
    running = await command(ks, name, "next", stop["session"]["stopId"])
    assert running.status_code == 409
    stop = await wait_state(ada, "stopped", line=4, after=stop)
    assert (await command(ks, name, "continue", stop["session"]["stopId"])).status_code == 202
    await wait_state(ada, "ended")
    await ada.close()


async def test_breakpoints_move_with_an_edit_above_and_survive_a_kernel_restart(ks: KernelServer) -> None:
    name = new_room()
    ada = await member(ks, name)
    bob = await member(ks, name, who="Bob")
    await write_files(ks, ada, name, {"main.py": "a = 1\ntotal = a + 1\nprint(total)\n"})
    set_breakpoint(ada, "main.py", 2)
    await server_breakpoints(ks, name, {"main.py": {"2"}})
    await eventually(lambda: "main.py" in breakpoints_of(bob), what="bob has the breakpoint")
    # Bob inserts three lines at the top: the breakpoint follows `total = a + 1` to line 5
    bob.doc.get("files", type=Map)["main.py"].insert(0, "import os\nimport sys\n# three lines\n")
    await server_breakpoints(ks, name, {"main.py": {"5"}})
    await eventually(lambda: set(breakpoints_of(ada).get("main.py", {})) == {"5"}, what="ada sees it moved")

    restarted = await ks.http.post(f"/api/rooms/{name}/kernel/restart", headers=auth(name))
    assert restarted.status_code == 200, restarted.text
    assert (await start(ks, name)).status_code == 201
    stop = await wait_state(ada, "stopped", line=5)
    assert locals_of(stop)["a"] == "1"
    assert (await command(ks, name, "continue", stop["session"]["stopId"])).status_code == 202
    await wait_state(ada, "ended")
    for client in (ada, bob):
        await client.close()


async def test_one_browser_leaving_keeps_the_session_the_last_driver_leaving_ends_it(ks: KernelServer) -> None:
    name = new_room()
    ada = await member(ks, name, Role.EDITOR, "Ada")
    bob = await member(ks, name, Role.EDITOR, "Bob")
    vic = await member(ks, name, Role.VIEWER, "Vic")
    await write_files(ks, ada, name, {"main.py": "x = 1\ny = 2\nprint(x + y)\n"})
    set_breakpoint(ada, "main.py", 2)
    await server_breakpoints(ks, name, {"main.py": {"2"}})
    assert (await start(ks, name)).status_code == 201
    await wait_state(vic, "stopped", line=2)
    await ada.close()  # the starter's browser goes away: nothing changes for the others
    await eventually(lambda: len(ks.hub.registry.rooms[name].members) == 2, what="ada left")
    assert debug_of(vic)["state"] == "stopped" and set(breakpoints_of(vic)["main.py"]) == {"2"}
    await bob.close()  # nobody who may drive is left: the session ends, the breakpoints stay
    ended = await wait_state(vic, "ended")
    assert "nobody who may drive" in ended["session"]["notice"]
    assert set(breakpoints_of(vic)["main.py"]) == {"2"}
    await vic.close()


async def test_the_pause_limit_resumes_the_program_with_a_notice(ks: KernelServer) -> None:
    name = new_room()
    debugger: Debugger = ks.app.state.debugger
    ada = await member(ks, name)
    await write_files(ks, ada, name, {"main.py": "x = 1\ny = 2\nprint('done', x + y)\n"})
    set_breakpoint(ada, "main.py", 2)
    await server_breakpoints(ks, name, {"main.py": {"2"}})
    debugger.pause_limit = 0.5
    try:
        assert (await start(ks, name)).status_code == 201
        await wait_state(ada, "stopped", line=2)
        ended = await wait_state(ada, "ended")
    finally:
        debugger.pause_limit = 600.0
    assert "paused longer than 0.5 s" in ended["session"]["notice"]
    run = await run_and_wait(ks, name, ended["session"]["run"], headers=auth(name))
    assert run["status"] == "ok" and "done 3" in "".join(o.get("text", "") for o in run["outputs"])
    await ada.close()


async def test_the_timeline_and_the_replayed_document_show_the_stop(ks: KernelServer) -> None:
    from pairroom.recording.history import History

    name = new_room()
    ada = await member(ks, name)
    await write_files(ks, ada, name, {"main.py": "secret = 41\nanswer = secret + 1\n"})
    set_breakpoint(ada, "main.py", 2)
    await server_breakpoints(ks, name, {"main.py": {"2"}})
    assert (await start(ks, name)).status_code == 201
    stop = await wait_state(ada, "stopped", line=2)
    assert (await command(ks, name, "continue", stop["session"]["stopId"])).status_code == 202
    await wait_state(ada, "ended")
    recorder = ks.app.state.recorder
    history = History(ks.hub.store)

    async def recorded() -> list[Any]:
        await recorder.flush()
        return [e for e in await history.db.events(name, kinds=("debug",))]

    async def has_all() -> bool:
        return {e.data["event"] for e in await recorded()} >= {"started", "stopped", "continued", "ended"}

    await eventually(has_all, timeout=10, what="debug events recorded")
    stopped = next(e for e in await recorded() if e.data["event"] == "stopped")
    assert stopped.data["where"] == "main.py:2" and stopped.data["reason"] == "breakpoint"
    timeline = await ks.http.get(f"/api/rooms/{name}/timeline", headers=auth(name))
    assert timeline.status_code == 200, timeline.text
    mark = next(m for m in timeline.json()["marks"] if m["kind"] == "debug" and m.get("event") == "stopped")
    assert mark["where"] == "main.py:2" and datetime.fromisoformat(mark["at"]) > datetime(2020, 1, 1, tzinfo=UTC)

    async def replay_shows_the_stop() -> bool:
        await ks.hub.registry.rooms[name].flush()
        state = await history.state_at(name, stopped.at)
        debug = state.doc.get("debug", type=Map)
        scopes = debug.get("scopes") or []
        names = {v["name"]: v["value"] for s in scopes for v in (s.get("variables") or [])}
        return debug.get("state") == "stopped" and names.get("secret") == "41"

    await eventually(replay_shows_the_stop, timeout=10, what="the stored document at the stop shows it")
    await ada.close()


async def test_the_adapter_request_metric_counts_by_command(ks: KernelServer) -> None:
    text = (await ks.http.get("/metrics")).text
    counts = dict(re.findall(r'pairroom_debug_adapter_requests_total\{command="(\w+)"\} (\d+)', text))
    assert int(float(counts["stackTrace"])) >= 1 and int(float(counts["initialize"])) >= 1


async def test_a_conditional_breakpoint_a_queued_run_waits_and_the_owners_policy_applies_to_evaluate(
    ks: KernelServer,
) -> None:
    name = new_room()
    ada = await member(ks, name, Role.OWNER, "Ada")
    await write_files(ks, ada, name, {"main.py": "seen = []\nfor i in range(5):\n    seen.append(i)\nprint(seen)\n"})
    set_breakpoint(ada, "main.py", 3, condition="i == 3")
    await server_breakpoints(ks, name, {"main.py": {"3"}})
    assert (await start(ks, name, headers=auth(name, Role.OWNER, "Ada"))).status_code == 201
    stop = await wait_state(ada, "stopped", line=3)
    assert locals_of(stop)["i"] == "3" and locals_of(stop)["seen"] == "[0, 1, 2]"

    # a plain run asked for now waits behind the debug session
    queued = await ks.http.post(
        f"/api/rooms/{name}/runs", json={"code": "print('after')"}, headers=auth(name, Role.OWNER, "Ada")
    )
    run_id = queued.json()["id"]
    state = (await ks.http.get(f"/api/rooms/{name}/runs/{run_id}", headers=auth(name))).json()
    assert state["status"] == "queued"

    # with run policy "owners", an editor may not evaluate (it is running code) nor step
    room = ks.hub.registry.rooms[name]
    from pairroom.protocol.origins import LocalOrigin

    with room.local_change(LocalOrigin("test")) as doc:
        doc.get("meta", type=Map)["policy"] = Map({"run": "owners"})
    evaluated = await ks.http.post(
        f"/api/rooms/{name}/debug/evaluate", json={"expression": "i"}, headers=auth(name, Role.EDITOR, "Bob")
    )
    assert evaluated.status_code == 403 and "owners" in evaluated.json()["error"]
    assert (
        await command(ks, name, "continue", stop["session"]["stopId"], auth(name, Role.EDITOR, "Bob"))
    ).status_code == 403
    evaluated = await ks.http.post(
        f"/api/rooms/{name}/debug/evaluate", json={"expression": "i * 2"}, headers=auth(name, Role.OWNER, "Ada")
    )
    assert evaluated.status_code == 200 and evaluated.json()["result"] == "6"

    assert (
        await command(ks, name, "continue", stop["session"]["stopId"], auth(name, Role.OWNER, "Ada"))
    ).status_code == 202
    await wait_state(ada, "ended")
    after = await run_and_wait(ks, name, run_id, headers=auth(name))
    assert after["status"] == "ok" and "after" in "".join(o.get("text", "") for o in after["outputs"])
    await ada.close()


async def test_pause_stops_an_endless_loop_and_a_kernel_death_while_paused_ends_the_session_keeping_breakpoints(
    ks: KernelServer,
) -> None:
    name = new_room()
    ada = await member(ks, name)
    await write_files(ks, ada, name, {"main.py": "n = 0\nwhile True:\n    n += 1\n", "other.py": "z = 1\n"})
    set_breakpoint(ada, "other.py", 1)
    await server_breakpoints(ks, name, {"other.py": {"1"}})
    assert (await start(ks, name)).status_code == 201
    await wait_state(ada, "running")
    paused = await ks.http.post(f"/api/rooms/{name}/debug/pause", json={}, headers=auth(name))
    assert paused.status_code == 202, paused.text
    stop = await wait_state(ada, "stopped")
    assert stop["stopped"]["reason"] == "pause" and stop["frames"]
    # continue: the loop runs on (a step for the old stop is refused), and pausing again stops it again
    assert (await command(ks, name, "continue", stop["session"]["stopId"])).status_code == 202
    await wait_state(ada, "running")
    assert (await command(ks, name, "next", stop["session"]["stopId"])).status_code == 409
    assert (await ks.http.post(f"/api/rooms/{name}/debug/pause", json={}, headers=auth(name))).status_code == 202
    stop = await wait_state(ada, "stopped", after=stop)

    # the program kills its kernel while paused (evaluate runs code): the session ends and says why
    killed = await ks.http.post(
        f"/api/rooms/{name}/debug/evaluate", json={"expression": "__import__('os')._exit(3)"}, headers=auth(name)
    )
    assert killed.status_code in (200, 502, 503), killed.text
    ended = await wait_state(ada, "ended")
    assert "the run failed" in ended["session"]["notice"] and "breakpoints stay" in ended["session"]["notice"]
    assert set(breakpoints_of(ada)) == {"other.py"}
    # the next debug session works on the fresh kernel
    await write_files(ks, ada, name, {"main.py": "import other\nprint(other.z)\n"})
    assert (await start(ks, name)).status_code == 201
    stop = await wait_state(ada, "stopped", line=1)
    assert stop["stopped"]["path"] == "other.py"
    assert (await command(ks, name, "continue", stop["session"]["stopId"])).status_code == 202
    await wait_state(ada, "ended")
    await ada.close()


async def test_a_flood_of_breakpoints_is_trimmed_to_the_cap(ks: KernelServer) -> None:
    from pairroom.debugger.breakpoints import MAX_BREAKPOINTS

    name = new_room()
    ada = await member(ks, name)
    await write_files(ks, ada, name, {"main.py": "x = 1\n"})
    debug = ada.doc.get("debug", type=Map)
    with ada.doc.transaction():  # an older page's shape (debug.breakpoints, a map per file)
        debug["breakpoints"] = Map({"main.py": Map({str(line): {"author": "a"} for line in range(1, 1001)})})

    def count() -> int:
        room = ks.hub.registry.rooms[name]
        if room.doc.get("debug", type=Map).get("breakpoints") is not None:
            return -1  # not migrated yet
        return len(room.doc.get("breakpoints", type=Map))

    await eventually(lambda: count() == MAX_BREAKPOINTS, what="trimmed to the cap")
    await eventually(
        lambda: sum(len(v) for v in breakpoints_of(ada).values()) == MAX_BREAKPOINTS, what="the client trimmed too"
    )
    await ada.close()


async def test_a_session_left_alive_by_a_node_that_died_is_ended_when_the_room_loads_again(tmp_path: Path) -> None:
    from pairroom.protocol.origins import LocalOrigin

    name = new_room()
    first = await start_kernel_server(tmp_path, secret=SECRET, pool_size=0)
    try:
        async with first.hub.registry.hold(name) as room:
            # What a node that died while paused leaves in storage (its shutdown would have ended it).
            with room.local_change(LocalOrigin("debugger")) as doc:
                debug = doc.get("debug", type=Map)
                debug["state"] = "stopped"
                debug["session"] = {"id": "s1", "state": "stopped", "path": "main.py", "by": "u-ada", "stopId": "x"}
                debug["stopped"] = {"path": "main.py", "line": 2}
                # and breakpoints stored in the earlier shape, a map per file
                debug["breakpoints"] = Map({"main.py": Map({"2": {"author": "u-ada", "authorName": "Ada"}})})
            await room.flush()
    finally:
        await first.stop()
    second = await start_kernel_server(tmp_path, secret=SECRET, pool_size=0)
    try:
        got = await second.http.get(f"/api/rooms/{name}/debug", headers=auth(name))
        assert got.status_code == 200
        state = got.json()
        assert state["state"] == "ended" and state["stopped"] is None
        assert state["session"]["notice"] == "the server running this session stopped"
        assert state["breakpoints"] == {"main.py:2": {"author": "u-ada", "authorName": "Ada"}}  # migrated
        assert (await command(second, name, "continue", "x")).status_code == 409
    finally:
        await second.stop()


async def test_a_hit_condition_stops_on_the_nth_pass(ks: KernelServer) -> None:
    name = new_room()
    ada = await member(ks, name)
    await write_files(ks, ada, name, {"main.py": "for i in range(10):\n    j = i * 2\n"})
    set_breakpoint(ada, "main.py", 2, hitCondition="4")
    await server_breakpoints(ks, name, {"main.py": {"2"}})
    await eventually(lambda: breakpoints_of(ada)["main.py"]["2"].get("hitCondition") == "4", what="kept")
    assert (await start(ks, name)).status_code == 201
    stop = await wait_state(ada, "stopped", line=2)
    assert locals_of(stop)["i"] == "3"  # the fourth pass
    assert (await command(ks, name, "continue", stop["session"]["stopId"])).status_code == 202
    await wait_state(ada, "ended")
    await ada.close()


async def test_two_people_creating_the_first_breakpoints_of_a_file_at_once_both_hold(ks: KernelServer) -> None:
    name = new_room()
    ada = await member(ks, name, who="Ada")
    bob = await member(ks, name, who="Bob")
    await write_files(ks, ada, name, {"main.py": MAIN, "helper.py": HELPER})
    await eventually(lambda: "main.py" in bob.doc.get("files", type=Map), what="bob has the files")
    # Both write in one tick: neither update has seen the other's (the first breakpoints of each file).
    set_breakpoint(ada, "main.py", 3)
    set_breakpoint(bob, "main.py", 5)
    set_breakpoint(ada, "helper.py", 2)
    set_breakpoint(bob, "helper.py", 3)
    both = {"main.py": {"3", "5"}, "helper.py": {"2", "3"}}
    await server_breakpoints(ks, name, both)
    for client in (ada, bob):
        await eventually(
            lambda c=client: {p: set(lines) for p, lines in breakpoints_of(c).items()} == both,
            what="both people's breakpoints on both clients",
        )
    held = breakpoints_of(bob)
    assert held["main.py"]["3"]["authorName"] == "Ada" and held["main.py"]["5"]["authorName"] == "Bob"
    await ada.close()
    await bob.close()


LOGGED = """\
total = 0
for i in range(3):
    total += i
print("done", total)
"""


async def test_a_logpoint_prints_its_interpolated_message_into_the_run_output_without_stopping(
    ks: KernelServer,
) -> None:
    name = new_room()
    ada = await member(ks, name)
    viewer = await member(ks, name, Role.VIEWER, "Vic")
    await write_files(ks, ada, name, {"main.py": LOGGED})
    set_breakpoint(ada, "main.py", 3, logMessage="i={i} total={total * 10}")
    await server_breakpoints(ks, name, {"main.py": {"3"}})
    response = await start(ks, name)
    assert response.status_code == 201, response.text
    ended = await wait_state(ada, "ended")  # never stopped on the way
    assert ended["session"].get("notice") is None, ended
    run_id = ended["session"]["run"]
    run = await run_and_wait(ks, name, run_id, headers=auth(name))
    logged = ["i=0 total=0", "i=1 total=0", "i=2 total=10"]  # before line 3 runs, each pass once
    # debugpy's events and the program's prints travel apart: the program's line may come first
    lines = "".join(o.get("text", "") for o in run["outputs"] if o.get("output_type") == "stream").splitlines()
    assert [line for line in lines if line.startswith("i=")] == logged, run["outputs"]
    assert lines.count("done 3") == 1, run["outputs"]
    # what everyone sees: the viewer's copy of the run holds the logged lines too
    runs = viewer.doc.get("runs", type=Map)
    await eventually(
        lambda: "i=2 total=10" in str(runs.get(run_id).to_py() if isinstance(runs.get(run_id), Map) else ""),
        what="the viewer sees the logpoint output",
    )
    await ada.close()
    await viewer.close()
