"""Debugging from any node of a cluster: two real server processes sharing a real Redis, the room's
kernel (and so its debug session) on node A, a member on node B starting, stepping and evaluating
through B, where the requests are forwarded to A as runs are.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from pycrdt import Map, Text

from pairroom.web.auth import Role, mint

from .cluster.nodes import cluster_nodes  # noqa: F401
from .support.redis_server import redis_servers  # noqa: F401
from .test_cluster_kernels import NODE_ENV
from .test_kernels import requires_sandbox
from .yclient import YClient, eventually

pytestmark = [pytest.mark.slow, requires_sandbox]

SECRET = "a-cluster-test-secret-long-enough-for-hs256"
ROOM = "debug-across"
PROGRAM = """\
def square(n):
    doubled = n * n
    return doubled

a = 3
b = square(a)
print("b is", b)
"""


def auth(role: Role, who: str) -> dict[str, str]:
    return {"authorization": "Bearer " + mint(SECRET, ROOM, role, who, user_id="u-" + who.lower())}


def debug_of(client: YClient) -> dict[str, Any]:
    debug = client.doc.get("debug", type=Map)
    return {key: (value.to_py() if isinstance(value, Map) else value) for key, value in debug.items()}


def kernel_node(client: YClient) -> object:
    kernel = client.doc.get("meta", type=Map).get("kernel")
    return kernel.get("node") if isinstance(kernel, Map) else None


async def stopped_at(client: YClient, line: int, left: str | None = None) -> dict[str, Any]:
    def check() -> bool:
        debug = debug_of(client)
        return (
            debug.get("state") == "stopped"
            and (debug.get("stopped") or {}).get("line") == line
            and (debug.get("session") or {}).get("stopId") != left
        )

    await eventually(check, timeout=60, what=f"stopped at line {line}: {debug_of(client)}")
    return debug_of(client)


async def test_a_member_on_b_debugs_the_kernel_held_by_a_and_a_viewer_on_b_is_refused(
    cluster_nodes,
    pg,
    redis_servers,
) -> None:
    (redis,) = await redis_servers(1)
    env = {"PAIRROOM_DB": pg, "PAIRROOM_REDIS": redis.url, "PAIRROOM_SECRET": SECRET, **NODE_ENV}
    a, b = await cluster_nodes({**env, "PAIRROOM_NODE_ID": "node-a"}, {**env, "PAIRROOM_NODE_ID": "node-b"})
    editor = auth(Role.EDITOR, "Ada")
    ada = await YClient.connect(f"{b.ws(ROOM)}?token={editor['authorization'][7:]}")
    await ada.synced.wait()
    await ada.set_awareness({"user": {"name": "Ada"}})  # her presence, stamped on B, reaches A
    bob_token = auth(Role.EDITOR, "Bob")["authorization"][7:]
    bob = await YClient.connect(f"{a.ws(ROOM)}?token={bob_token}")  # an editor on A
    await bob.synced.wait()
    breakpoints = ada.doc.get("breakpoints", type=Map)
    with ada.doc.transaction():
        ada.doc.get("files", type=Map)["main.py"] = Text(PROGRAM)
        breakpoints["main.py:6"] = {"author": "Ada"}

    async with (
        httpx.AsyncClient(base_url=a.http, timeout=30) as on_a,
        httpx.AsyncClient(base_url=b.http, timeout=30) as on_b,
    ):
        # A takes the room's kernel with a plain run.
        run = await on_a.post(f"/api/rooms/{ROOM}/runs", json={"code": "print('warm')"}, headers=editor)
        assert run.status_code == 201, run.text
        await eventually(
            lambda: kernel_node(ada) == "node-a",
            timeout=30,
            what="node A runs the room's kernel",
        )

        started = await on_b.post(f"/api/rooms/{ROOM}/debug/start", json={"path": "main.py"}, headers=editor)
        assert started.status_code == 201, started.text
        assert started.json()["session"]["node"] == "node-a"
        first = await stopped_at(ada, 6)
        assert first["stopped"]["breakpointBy"] == "Ada"
        stop_id = first["session"]["stopId"]

        # Bob, the only member on A (where the session runs), leaves: Ada on B may still drive, so the
        # session goes on (the steps below need it)
        await bob.close()
        await eventually(lambda: any(e.get("msg") == "left" for e in a.log), timeout=10, what="bob left A")

        # a viewer on B inspects but may not drive: refused on B, never forwarded
        viewer = auth(Role.VIEWER, "Vic")
        for what, body in (("stepIn", {"stopId": stop_id}), ("evaluate", {"expression": "a"})):
            refused = await on_b.post(f"/api/rooms/{ROOM}/debug/{what}", json=body, headers=viewer)
            assert refused.status_code == 403, refused.text
        refused = await on_b.post(f"/api/rooms/{ROOM}/debug/start", json={"path": "main.py"}, headers=viewer)
        assert refused.status_code == 403, refused.text
        scope = next(s for s in first["scopes"] if s["name"] == "Locals")  # any role reads variables
        listed = await on_b.post(f"/api/rooms/{ROOM}/debug/variables", json={"ref": scope["ref"]}, headers=viewer)
        assert listed.status_code == 200, listed.text
        assert {v["name"]: v["value"] for v in listed.json()["variables"]}["a"] == "3"

        # evaluate in the frame, then step into square() and over its first line, all through B
        evaluated = await on_b.post(f"/api/rooms/{ROOM}/debug/evaluate", json={"expression": "a * 7"}, headers=editor)
        assert evaluated.status_code == 200, evaluated.text
        assert evaluated.json()["result"] == "21"
        stepped = await on_b.post(f"/api/rooms/{ROOM}/debug/stepIn", json={"stopId": stop_id}, headers=editor)
        assert stepped.status_code == 202, stepped.text
        again = await on_b.post(f"/api/rooms/{ROOM}/debug/next", json={"stopId": stop_id}, headers=editor)
        assert again.status_code == 409, again.text  # that stop was left: the holder's answer, forwarded
        inside = await stopped_at(ada, 2, left=stop_id)
        assert inside["frames"][0]["name"] == "square"
        nxt = await on_b.post(
            f"/api/rooms/{ROOM}/debug/next", json={"stopId": inside["session"]["stopId"]}, headers=editor
        )
        assert nxt.status_code == 202, nxt.text
        over = await stopped_at(ada, 3, left=inside["session"]["stopId"])
        local = {v["name"]: v["value"] for v in next(s for s in over["scopes"] if s["name"] == "Locals")["variables"]}
        assert local["doubled"] == "9"

        first_part = len(a.log)
        ended = await on_b.post(f"/api/rooms/{ROOM}/debug/stop", json={}, headers=editor)
        assert ended.status_code == 202, ended.text
        await eventually(lambda: debug_of(ada).get("state") == "ended", timeout=30, what="the session ended")
        after = await on_b.post(f"/api/rooms/{ROOM}/debug/next", json={"stopId": "x"}, headers=editor)
        assert after.status_code == 409, after.text
        # Ada, the last one who may drive, leaves B: B asks A, which ends the session
        again = await on_b.post(f"/api/rooms/{ROOM}/debug/start", json={"path": "main.py"}, headers=editor)
        assert again.status_code == 201, again.text
        await stopped_at(ada, 6)
        vic = await YClient.connect(f"{a.ws(ROOM)}?token={viewer['authorization'][7:]}")  # a viewer on A
        await vic.synced.wait()
        await ada.close()

        def abandoned() -> bool:
            session = debug_of(vic).get("session") or {}
            return session.get("state") == "ended" and "nobody who may drive" in str(session.get("notice"))

        await eventually(abandoned, timeout=30, what=f"the session ended on A: {debug_of(vic)}")
        await vic.close()
    forwarded = [e for e in a.log if e.get("msg") == "forwarded kernel request" and e.get("op") == "call"]
    assert len(forwarded) >= 6, forwarded  # start, variables, evaluate, stepIn, next, next, stop, next
    assert not any(e.get("msg") == "forwarded kernel request" for e in b.log)  # B held nothing
    assert not any("nobody who may drive" in str(e) for e in a.log[:first_part])
