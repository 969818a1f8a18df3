"""A room's kernel across two real nodes sharing a real Redis: runs forwarded to the holder, and a
fresh kernel elsewhere when the holder dies.

The nodes are ``tests.cluster.serve`` processes (the app plus the cluster kernel lease), with a
short lease (3 s, renewed every second) so the takeover after a kill -9 is quick.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from pycrdt import Map

from .cluster.nodes import cluster_nodes  # noqa: F401
from .support.nodes import ServeProcess
from .support.redis_server import RedisProcess, redis_servers  # noqa: F401
from .test_kernels import requires_sandbox
from .yclient import YClient, eventually

pytestmark = [pytest.mark.slow, requires_sandbox]

NODE_ENV = {
    "PAIRROOM_HEARTBEAT_SECONDS": "0.5",
    "PAIRROOM_NODE_DEAD_AFTER_SECONDS": "2",
    "PAIRROOM_FLUSH_INTERVAL_MS": "50",
    "PAIRROOM_ROOM_IDLE_SECONDS": "60",
    "PAIRROOM_KERNEL_POOL_SIZE": "1",
    "PAIRROOM_KERNEL_RUN_TIMEOUT": "60",
    "PAIRROOM_TEST_LEASE_TTL": "3",
    "PAIRROOM_TEST_LEASE_RENEW": "1",
}


async def two_nodes(cluster_nodes, pg: str, redis: RedisProcess) -> list[ServeProcess]:
    env = {"PAIRROOM_DB": pg, "PAIRROOM_REDIS": redis.url, **NODE_ENV}
    return await cluster_nodes({**env, "PAIRROOM_NODE_ID": "node-a"}, {**env, "PAIRROOM_NODE_ID": "node-b"})


def run_of(client: YClient, run_id: str) -> dict[str, Any]:
    run = client.doc.get("runs", type=Map).get(run_id)
    return run.to_py() if isinstance(run, Map) else {}


def stdout(client: YClient, run_id: str) -> str:
    outputs = run_of(client, run_id).get("outputs") or []
    return "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")


def kernel_state(client: YClient) -> dict[str, Any]:
    state = client.doc.get("meta", type=Map).get("kernel")
    return state.to_py() if isinstance(state, Map) else {}


async def post_run(node: ServeProcess, room: str, code: str, timeout: float = 30) -> str:
    async with httpx.AsyncClient(base_url=node.http, timeout=timeout) as http:
        response = await http.post(f"/api/rooms/{room}/runs", json={"code": code})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def test_a_run_asked_on_b_runs_in_the_kernel_on_a_and_both_sides_see_it(cluster_nodes, pg, redis_servers):
    (redis,) = await redis_servers(1)
    a, b = await two_nodes(cluster_nodes, pg, redis)
    on_a = await YClient.connect(a.ws("shared-kernel"))
    on_b = await YClient.connect(b.ws("shared-kernel"))

    first = await post_run(a, "shared-kernel", "answer = 41\nprint('set on a')")
    await eventually(lambda: stdout(on_b, first) == "set on a\n", timeout=30, what="the first run's output on b")
    assert kernel_state(on_b)["node"] == "node-a"

    # Asked on b: forwarded to a, whose kernel still has ``answer``; both clients see the output.
    second = await post_run(b, "shared-kernel", "print(answer + 1)")
    async with httpx.AsyncClient(base_url=b.http) as http:
        response = await http.get(f"/api/rooms/shared-kernel/runs/{second}")
    assert response.status_code == 200, response.text  # the record reached b before the POST answered
    for client in (on_a, on_b):
        await eventually(lambda c=client: stdout(c, second) == "42\n", timeout=15, what="the forwarded run's output")
    assert run_of(on_b, second)["status"] == "ok"
    assert kernel_state(on_a)["node"] == "node-a"
    assert any(e.get("msg") == "forwarded kernel request" for e in a.log)

    # input() of a run asked on b: the prompt reaches b's copy, the answer given on b goes to a's kernel;
    # another page's answer is refused across the nodes too.
    async with httpx.AsyncClient(base_url=b.http, timeout=30) as http:
        response = await http.post(
            "/api/rooms/shared-kernel/runs", json={"code": "print('hi', input('Name? '))", "client": "tab-b"}
        )
        asking = response.json()["id"]
        await eventually(lambda: run_of(on_b, asking).get("input") is not None, timeout=15, what="the prompt on b")
        assert run_of(on_b, asking)["input"] == {"prompt": "Name? ", "password": False}
        url = f"/api/rooms/shared-kernel/runs/{asking}/input"
        refused = await http.post(url, json={"value": "Eve", "client": "tab-other"})
        assert refused.status_code == 403, refused.text
        answered = await http.post(url, json={"value": "Ada", "client": "tab-b"})
        assert answered.status_code == 202, answered.text
    await eventually(lambda: stdout(on_b, asking) == "Name? Ada\nhi Ada\n", timeout=15, what="the answer's output")
    assert run_of(on_b, asking).get("input") is None

    # With Redis away nobody can tell which node runs the kernel: a clear 503, not a second kernel.
    redis.pause()
    try:
        async with httpx.AsyncClient(base_url=b.http, timeout=30) as http:
            response = await http.post("/api/rooms/shared-kernel/runs", json={"code": "print(0)"})
    finally:
        redis.resume()
    assert response.status_code == 503, response.text
    assert "which node runs the kernel" in response.json()["error"]
    await on_a.close()
    await on_b.close()


async def test_when_the_holder_dies_a_run_on_b_starts_a_fresh_kernel_there(cluster_nodes, pg, redis_servers):
    (redis,) = await redis_servers(1)
    a, b = await two_nodes(cluster_nodes, pg, redis)
    on_b = await YClient.connect(b.ws("failover"))
    first = await post_run(a, "failover", "state = 'kept'\nprint(state)")
    await eventually(lambda: stdout(on_b, first) == "kept\n", timeout=30, what="the run on a")
    assert "restartedAt" not in kernel_state(on_b)

    await a.kill()  # kill -9: no goodbye, no lease release; the kernel dies with its node
    killed_at = time.monotonic()
    code = "try:\n    print(state)\nexcept NameError:\n    print('fresh kernel')"
    second = await post_run(b, "failover", code)  # waits for the lease to expire, then runs on b
    assert time.monotonic() - killed_at < 15
    await eventually(lambda: stdout(on_b, second) == "fresh kernel\n", timeout=30, what="the run on b's new kernel")
    # the run's output and the kernel going idle are two writes: wait for the second too
    await eventually(lambda: kernel_state(on_b).get("status") == "idle", timeout=10, what="b's kernel idle")
    state = kernel_state(on_b)
    assert state["node"] == "node-b"
    assert state["restartedAt"] > 0
    assert any(e.get("msg") == "taking over a lost room kernel" for e in b.log)
    await on_b.close()
