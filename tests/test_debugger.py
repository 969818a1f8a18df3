"""Debugging together: one debug session per room on a real sandboxed kernel (ipykernel's debugpy),
breakpoints written by real Yjs clients, stops read from the document by every member.

One server with a secret (tokens and live roles) serves the module; every test uses its own room.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path
from typing import Any, AsyncIterator

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
    debug = client.doc.get("debug", type=Map)
    with client.doc.transaction():
        breakpoints = debug.get("breakpoints")
        if not isinstance(breakpoints, Map):
            breakpoints = debug["breakpoints"] = Map({})
        lines = breakpoints.get(path)
        if not isinstance(lines, Map):
            lines = breakpoints[path] = Map({})
        lines[str(line)] = {"author": "whoever-i-claim", **fields}


def breakpoints_of(client: YClient) -> dict[str, dict[str, Any]]:
    return debug_of(client).get("breakpoints") or {}


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
        bps = room.doc.get("debug", type=Map).get("breakpoints")
        got = {path: set(lines.keys()) for path, lines in bps.items()} if isinstance(bps, Map) else {}
        return got == expected

    await eventually(check, what=f"the server has breakpoints {expected}")


async def wait_state(client: YClient, state: str, *, line: int | None = None, timeout: float = STOP_TIMEOUT) -> dict[str, Any]:
    def check() -> bool:
        debug = debug_of(client)
        if debug.get("state") != state:
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


async def command(ks: KernelServer, name: str, what: str, stop_id: str | None, headers: dict[str, str] | None = None) -> Any:
    return await ks.http.post(f"/api/rooms/{name}/debug/{what}", json={"stopId": stop_id}, headers=headers or auth(name))


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
    scopes = await ks.http.post(f"/api/rooms/{name}/debug/scopes", json={"frameId": frame}, headers=auth(name, Role.VIEWER, "W"))
    assert scopes.status_code == 200, scopes.text
    main_locals = {v["name"]: v["value"] for v in scopes.json()["scopes"][0]["variables"]}
    assert main_locals["total"] == "0" and main_locals["x"] == "1"
    ref = scopes.json()["scopes"][0]["ref"]
    counted = adapter_requests(ks)
    for _ in range(5):
        again = await ks.http.post(f"/api/rooms/{name}/debug/variables", json={"ref": ref}, headers=auth(name, Role.VIEWER, "W"))
        assert again.status_code == 200 and {v["name"] for v in again.json()["variables"]} >= {"total", "x"}
    assert adapter_requests(ks) == counted

    # continue: the helper breakpoint again (x=2), then remove it and go on to main.py:5
    assert (await command(ks, name, "continue", first["session"]["stopId"])).status_code == 202
    second = await wait_state(ada, "stopped", line=2)
    assert locals_of(second) == {"a": "1", "b": "2"}
    with bob.doc.transaction():
        del bob.doc.get("debug", type=Map)["breakpoints"]["helper.py"]
    await server_breakpoints(ks, name, {"main.py": {"5"}})
    await eventually(lambda: ks.app.state.debugger.session_of(name)._sync_task is not None
                     and ks.app.state.debugger.session_of(name)._sync_task.done(), what="breakpoints re-sent")
    assert (await command(ks, name, "continue", second["session"]["stopId"])).status_code == 202
    third = await wait_state(ada, "stopped", line=5)
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
