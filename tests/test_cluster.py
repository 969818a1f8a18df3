"""Rooms shared across real `pairroom serve` nodes through a real Redis, healing after faults."""

from __future__ import annotations

import asyncio
import random
import time

import httpx
import pytest
from pycrdt import Array

from pairroom.web.auth import Role, mint

from .support.nodes import ServeProcess, serve_processes  # noqa: F401
from .support.redis_server import RedisProcess, redis_servers  # noqa: F401
from .support.storage import stored_text
from .support.tcpproxy import TcpProxy
from .support.yjs_node import node_clients, wait_for  # noqa: F401
from .yclient import YClient, eventually

pytestmark = pytest.mark.slow

FAST_HEALING = {
    "PAIRROOM_HEARTBEAT_SECONDS": "0.5",
    "PAIRROOM_NODE_DEAD_AFTER_SECONDS": "2",
    "PAIRROOM_ANTI_ENTROPY_SECONDS": "2",
    "PAIRROOM_FLUSH_INTERVAL_MS": "50",
    "PAIRROOM_ROOM_IDLE_SECONDS": "60",
    "PAIRROOM_KERNELS": "false",
}


@pytest.fixture
async def redis(redis_servers) -> RedisProcess:
    (server,) = await redis_servers(1)
    return server


async def start_nodes(serve_processes, pg: str, redis_url: str | list[str], n: int) -> list[ServeProcess]:
    urls = redis_url if isinstance(redis_url, list) else [redis_url] * n
    return list(
        await asyncio.gather(
            *(
                serve_processes(
                    {"PAIRROOM_DB": pg, "PAIRROOM_REDIS": urls[i], "PAIRROOM_NODE_ID": f"node{i + 1}", **FAST_HEALING}
                )
                for i in range(n)
            )
        )
    )


def text(client: YClient) -> str:
    return str(client.text)


async def converged(clients: list[YClient], tokens: list[str], timeout: float = 20) -> str:
    def ok() -> bool:
        texts = {text(c) for c in clients}
        return len(texts) == 1 and all(t in next(iter(texts)) for t in tokens)

    await eventually(ok, timeout=timeout, what=f"converged with every edit: {[len(text(c)) for c in clients]}")
    return text(clients[0])


class Typist:
    """A client that appends unique tokens and remembers every one it typed."""

    def __init__(self, client: YClient, name: str) -> None:
        self.client, self.name, self.typed = client, name, []

    def type_one(self) -> None:
        token = f"<{self.name}{len(self.typed)}>"
        self.client.insert(len(text(self.client)), token)
        self.typed.append(token)


async def test_clients_on_three_nodes_share_edits_presence_and_chat(serve_processes, pg, redis):
    nodes = await start_nodes(serve_processes, pg, redis.url, 3)
    clients = [await YClient.connect(node.ws("shared")) for node in nodes]
    await asyncio.wait_for(asyncio.gather(*(c.synced.wait() for c in clients)), 10)
    typists = [Typist(c, f"n{i}") for i, c in enumerate(clients)]
    for _ in range(10):
        for t in typists:
            t.type_one()
        await asyncio.sleep(0.01)
    tokens = [tok for t in typists for tok in t.typed]
    final = await converged(clients, tokens)

    await clients[0].set_awareness({"user": {"name": "Ada"}, "cursor": None})
    await eventually(
        lambda: any((s or {}).get("user", {}).get("name") == "Ada" for s in clients[2].awareness.states.values()),
        what="presence crosses nodes",
    )
    clients[1].doc.get("chat", type=Array).append({"id": "x1", "text": "hello from node 2"})
    await eventually(
        lambda: [e.get("text") for e in clients[0].doc.get("chat", type=Array)] == ["hello from node 2"],
        what="chat crosses nodes",
    )
    async with httpx.AsyncClient() as http:
        listing = (await http.get(f"{nodes[2].http}/api/rooms/shared/presence")).json()
    assert any(m.get("name") == "Ada" and m.get("node") == "node1" for m in listing["members"])

    await clients[0].close()
    await eventually(
        lambda: not any((s or {}).get("user", {}).get("name") == "Ada" for s in clients[2].awareness.states.values()),
        what="a closed client leaves presence on other nodes",
    )
    for c in clients[1:]:
        await c.close()
    for node in nodes:
        await node.terminate()
    assert await stored_text(pg, "shared") == final


async def test_a_joiner_on_a_new_node_gets_what_was_not_stored_yet(serve_processes, pg, redis):
    env_slow_flush = {"PAIRROOM_FLUSH_INTERVAL_MS": "60000", "PAIRROOM_FLUSH_MAX_UPDATES": "100000"}
    first = await serve_processes({"PAIRROOM_DB": pg, "PAIRROOM_REDIS": redis.url, **FAST_HEALING, **env_slow_flush})
    writer = await YClient.connect(first.ws("fresh"))
    await asyncio.wait_for(writer.synced.wait(), 10)
    writer.insert(0, "only in node one's memory")
    witness = await YClient.connect(first.ws("fresh"))
    await eventually(lambda: text(witness) == "only in node one's memory", what="node one has it")
    await witness.close()
    second = await serve_processes({"PAIRROOM_DB": pg, "PAIRROOM_REDIS": redis.url, **FAST_HEALING})
    assert await stored_text(pg, "fresh") == ""
    joiner = await YClient.connect(second.ws("fresh"))
    await asyncio.wait_for(joiner.synced.wait(), 10)
    assert text(joiner) == "only in node one's memory", "the join waited for the holder's answer"
    for c in (writer, joiner):
        await c.close()


@pytest.mark.parametrize("fault", ["restart", "pause", "cut-one-node"])
async def test_copies_converge_and_storage_has_every_edit_after_a_redis_fault(serve_processes, pg, redis, fault):
    proxy = TcpProxy(targets=[("127.0.0.1", redis.port)])
    await proxy.start()
    try:
        urls = [redis.url, f"redis://127.0.0.1:{proxy.port}/0", redis.url]
        nodes = await start_nodes(serve_processes, pg, urls, 3)
        clients = [await YClient.connect(node.ws("faulty")) for node in nodes]
        await asyncio.wait_for(asyncio.gather(*(c.synced.wait() for c in clients)), 10)
        typists = [Typist(c, f"c{i}") for i, c in enumerate(clients)]

        async def type_for(seconds: float) -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                for t in typists:
                    t.type_one()
                await asyncio.sleep(0.05)

        await type_for(0.5)
        if fault == "restart":
            await redis.restart()
            await type_for(1.5)
        elif fault == "pause":
            redis.pause()
            await type_for(2.5)
            redis.resume()
        else:
            await proxy.cut()
            await type_for(2.5)
            await proxy.restore()
        await type_for(0.5)
        tokens = [tok for t in typists for tok in t.typed]
        final = await converged(clients, tokens, timeout=30)
        async with httpx.AsyncClient() as http:
            for node in nodes:

                async def ready(node: ServeProcess = node) -> bool:
                    return (await http.get(f"{node.http}/readyz")).status_code == 200

                await wait_for(ready, timeout=15)
        for c in clients:
            await c.close()
        for node in nodes:
            await node.terminate()
        assert await stored_text(pg, "faulty") == final
    finally:
        await proxy.stop()


async def test_deleting_a_room_closes_it_on_every_node_and_nothing_writes_it_again(serve_processes, pg, redis):
    secret = "cluster-delete-secret-of-32-bytes-or-more"
    nodes = list(
        await asyncio.gather(
            *(
                serve_processes(
                    {
                        "PAIRROOM_DB": pg,
                        "PAIRROOM_REDIS": redis.url,
                        "PAIRROOM_NODE_ID": f"node{i + 1}",
                        "PAIRROOM_SECRET": secret,
                        **FAST_HEALING,
                    }
                )
                for i in range(2)
            )
        )
    )
    owner = mint(secret, "doomed", Role.OWNER, "Owner", user_id="owner-1")
    editor = mint(secret, "doomed", Role.EDITOR, "Editor", user_id="editor-1")
    here = await YClient.connect(f"{nodes[0].ws('doomed')}?token={editor}")
    there = await YClient.connect(f"{nodes[1].ws('doomed')}?token={editor}")
    await asyncio.wait_for(asyncio.gather(here.synced.wait(), there.synced.wait()), 10)
    here.insert(0, "about to go")
    await eventually(lambda: text(there) == "about to go", what="both nodes hold the room")
    await eventually(lambda: stored_text(pg, "doomed"), what="stored")

    async with httpx.AsyncClient() as http:
        response = await http.delete(f"{nodes[0].http}/api/rooms/doomed", headers={"Authorization": f"Bearer {owner}"})
    assert response.status_code == 200, response.text
    assert await here.closed() == 4404
    assert await there.closed() == 4404  # the other node closed its copy too

    # The other node neither flushed its copy nor kept it: storage stays empty, a new join is fresh.
    await asyncio.sleep(0.3)  # several flush windows (50 ms here)
    assert await stored_text(pg, "doomed") == ""
    again = await YClient.connect(f"{nodes[1].ws('doomed')}?token={editor}")
    await asyncio.wait_for(again.synced.wait(), 10)
    assert text(again) == ""
    await again.close()


async def test_readyz_reports_degraded_while_redis_is_away(serve_processes, pg, redis):
    (node,) = await start_nodes(serve_processes, pg, redis.url, 1)
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{node.http}/readyz")).status_code == 200
        await redis.kill()

        async def degraded() -> bool:
            r = await http.get(f"{node.http}/readyz")
            return r.status_code == 503 and r.json().get("status") == "degraded"

        await wait_for(degraded, timeout=10)
        client = await YClient.connect(node.ws("local"))
        await asyncio.wait_for(client.synced.wait(), 10)
        other = await YClient.connect(node.ws("local"))
        client.insert(0, "served locally while redis is down")
        await eventually(lambda: text(other) == "served locally while redis is down", what="degraded, not dead")
        await redis.restart()

        async def ready() -> bool:
            return (await http.get(f"{node.http}/readyz")).status_code == 200

        await wait_for(ready, timeout=20)
        for c in (client, other):
            await c.close()


async def test_a_killed_nodes_clients_reconnect_elsewhere_and_its_members_leave_presence(
    serve_processes, pg, redis, node_clients
):
    nodes = await start_nodes(serve_processes, pg, redis.url, 2)
    balancer = TcpProxy(targets=[("127.0.0.1", nodes[0].port), ("127.0.0.1", nodes[1].port)])
    await balancer.start()
    try:
        lb = f"ws://127.0.0.1:{balancer.port}/yjs"
        typist = await node_clients.start(lb, "survive", "v1", max_backoff_ms=200)
        await typist.wait_synced()
        stranded = await YClient.connect(nodes[0].ws("survive"))
        await stranded.set_awareness({"user": {"name": "Stranded"}})
        witness = await YClient.connect(nodes[1].ws("survive"))
        await asyncio.wait_for(witness.synced.wait(), 10)

        def sees_stranded() -> bool:
            return any((s or {}).get("user", {}).get("name") == "Stranded" for s in witness.awareness.states.values())

        await eventually(sees_stranded, what="witness sees the member on node 1")
        for i in range(20):
            await typist.insert(i * 4, f"{i:03d};")
        expected = await typist.text()
        await nodes[0].kill()
        killed_at = time.monotonic()
        await eventually(lambda: not sees_stranded(), timeout=6, what="the dead node's member leaves presence")
        assert time.monotonic() - killed_at < 5.5

        async def typist_back() -> bool:
            status = await typist.status()
            return status["connected"] and status["synced"]

        await wait_for(typist_back, timeout=20)
        assert balancer.connections_to(("127.0.0.1", nodes[1].port)) >= 1
        await eventually(lambda: text(witness) == expected, timeout=10, what="nothing lost")
        await typist.insert(0, "after;")
        await eventually(lambda: text(witness).startswith("after;"), what="typing goes on via node 2")
        await stranded.close()
        await witness.close()
    finally:
        await balancer.stop()


async def test_chaos_six_clients_three_nodes_random_faults(serve_processes, pg, redis):
    rng = random.Random(20261122)
    proxies = [TcpProxy(targets=[("127.0.0.1", redis.port)]) for _ in range(3)]
    for proxy in proxies:
        await proxy.start()
    try:
        urls = [f"redis://127.0.0.1:{p.port}/0" for p in proxies]
        nodes = await start_nodes(serve_processes, pg, urls, 3)
        clients = [await YClient.connect(nodes[i % 3].ws("chaos")) for i in range(6)]
        await asyncio.wait_for(asyncio.gather(*(c.synced.wait() for c in clients)), 10)
        typists = [Typist(c, f"t{i}") for i, c in enumerate(clients)]
        stop = asyncio.Event()

        async def typing() -> None:
            while not stop.is_set():
                rng.choice(typists).type_one()
                await asyncio.sleep(0.02)

        typer = asyncio.create_task(typing())
        faults = []
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            fault = rng.choice(["restart", "pause", "cut", "calm"])
            faults.append(fault)
            if fault == "restart":
                await redis.restart()
            elif fault == "pause":
                redis.pause()
                await asyncio.sleep(rng.uniform(0.5, 2.0))
                redis.resume()
            elif fault == "cut":
                proxy = rng.choice(proxies)
                await proxy.cut()
                await asyncio.sleep(rng.uniform(0.5, 2.0))
                await proxy.restore()
            await asyncio.sleep(rng.uniform(1.0, 3.0))
        stop.set()
        await typer
        tokens = [tok for t in typists for tok in t.typed]
        final = await converged(clients, tokens, timeout=40)
        for c in clients:
            await c.close()
        for node in nodes:
            await node.terminate()
        assert await stored_text(pg, "chaos") == final, f"faults: {faults}"
        assert len(tokens) > 300
    finally:
        for proxy in proxies:
            await proxy.stop()


async def test_a_role_changed_on_one_node_holds_on_every_node(serve_processes, pg, redis):
    """An owner on node 1 demotes an editor connected to node 2: node 2 follows ``meta.roles`` at
    once (the editor's presence says viewer, its writes are dropped there), with no reconnect."""
    secret = "cluster-roles-secret-0123456789abcdef"
    env = {"PAIRROOM_SECRET": secret}
    one, two = await asyncio.gather(
        *(
            serve_processes(
                {"PAIRROOM_DB": pg, "PAIRROOM_REDIS": redis.url, "PAIRROOM_NODE_ID": f"n{i}", **FAST_HEALING, **env}
            )
            for i in (1, 2)
        )
    )
    owner = mint(secret, "roles", Role.OWNER, "Olga", user_id="olga")
    editor = mint(secret, "roles", Role.EDITOR, "Ed", user_id="ed")
    olga = await YClient.connect(f"{one.ws_base}/roles?token={owner}")
    ed = await YClient.connect(f"{two.ws_base}/roles?token={editor}")
    await asyncio.wait_for(asyncio.gather(olga.synced.wait(), ed.synced.wait()), 10)
    ed.insert(0, "before ")
    await eventually(lambda: text(olga) == "before ", what="the editor writes while an editor")
    async with httpx.AsyncClient() as http:
        demoted = await http.put(
            f"{one.http}/api/rooms/roles/roles/ed",
            json={"role": "viewer"},
            headers={"authorization": f"Bearer {owner}"},
        )
        assert demoted.status_code == 200, demoted.text

        async def ed_is_viewer_on_node_two() -> bool:
            members = (
                await http.get(f"{two.http}/api/rooms/roles/presence", headers={"authorization": f"Bearer {owner}"})
            ).json()["members"]
            return any(m.get("id") == "ed" and m.get("role") == "viewer" for m in members)

        await eventually(ed_is_viewer_on_node_two, timeout=10, what="node 2 restamps the demoted editor")
    ed.insert(len(text(ed)), "after")  # dropped by node 2 now
    olga.insert(len(text(olga)), "| owner")
    await eventually(lambda: "| owner" in text(ed), what="the owner's edit still reaches the viewer")
    late = await YClient.connect(f"{two.ws_base}/roles?token={owner}")
    await eventually(lambda: "| owner" in text(late), what="node 2's copy")
    assert "after" not in text(late) and "after" not in text(olga)
    for client in (olga, ed, late):
        await client.close()
