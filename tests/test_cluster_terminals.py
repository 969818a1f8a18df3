"""A room's terminal across two real nodes sharing a real Redis: a kernel follows a room's terminal
to its node, and a terminal asked for on node B starts on node A, which runs the room's kernel; a member on B types into it, a viewer on B stays
read-only, and when A dies B reports the terminal ended and restarts it.

The nodes are ``tests.cluster.serve`` processes with a short lease (3 s, renewed every second) and
quick heartbeats, so the failover is quick; Ada (owner) and Bob (viewer) have tokens for the room.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from typing import Any

import httpx
import pytest
import websockets

from pairroom.cluster.broker import MemoryBroker, MemoryHub
from pairroom.cluster.lease import HolderLease, LeaseKind
from pairroom.terminal.relay import Relayed
from pairroom.web.auth import Role, mint

from .cluster.nodes import cluster_nodes  # noqa: F401
from .support.nodes import ServeProcess
from .support.redis_server import redis_servers  # noqa: F401
from .test_kernels import requires_sandbox
from .yclient import eventually

SECRET = "cluster-terminal-tests-secret-of-32-bytes-at-least"
NODE_ENV = {
    "PAIRROOM_SECRET": SECRET,
    "PAIRROOM_OPEN_LOBBY": "true",
    "PAIRROOM_HEARTBEAT_SECONDS": "0.5",
    "PAIRROOM_NODE_DEAD_AFTER_SECONDS": "2",
    "PAIRROOM_FLUSH_INTERVAL_MS": "50",
    "PAIRROOM_ROOM_IDLE_SECONDS": "60",
    "PAIRROOM_KERNEL_POOL_SIZE": "1",
    "PAIRROOM_TEST_LEASE_TTL": "3",
    "PAIRROOM_TEST_LEASE_RENEW": "1",
}


class Client:
    """A terminal websocket: the frames it got, the stdout seen, and how it closed."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.frames: list[list[Any]] = []
        self.output = ""
        self.close_code: int | None = None
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, node: ServeProcess, room: str, terminal_id: str, token: str) -> Client:
        url = f"ws://127.0.0.1:{node.port}/terminal/{room}/{terminal_id}?token={token}"
        return cls(await websockets.connect(url, max_size=None))

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for message in self.ws:
                frame = json.loads(message)
                self.frames.append(frame)
                if frame[0] == "stdout":
                    self.output += frame[1]
                elif frame[0] == "snapshot":
                    self.output += frame[1]
        self.close_code = self.ws.close_code

    def of(self, kind: str) -> list[Any]:
        return [frame[1] if len(frame) == 2 else frame[1:] for frame in self.frames if frame[0] == kind]

    async def type(self, text: str) -> None:
        await self.ws.send(json.dumps(["stdin", text]))

    async def close(self) -> None:
        await self.ws.close()
        with contextlib.suppress(Exception):
            await self._reader


def auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def listing(node: ServeProcess, room: str, token: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=node.http, timeout=30) as http:
        response = await http.get(f"/api/rooms/{room}/terminals", headers=auth(token))
    assert response.status_code == 200, response.text
    return response.json()["terminals"]  # type: ignore[no-any-return]


@pytest.mark.slow
@requires_sandbox
async def test_a_terminal_on_a_is_typed_into_from_b_and_restarted_on_b_when_a_dies(cluster_nodes, pg, redis_servers):
    (redis,) = await redis_servers(1)
    env = {"PAIRROOM_DB": pg, "PAIRROOM_REDIS": redis.url, **NODE_ENV}
    a, b = await cluster_nodes({**env, "PAIRROOM_NODE_ID": "node-a"}, {**env, "PAIRROOM_NODE_ID": "node-b"})
    room = "term-" + uuid.uuid4().hex[:8]
    ada = mint(SECRET, room, Role.OWNER, "Ada", user_id="ada")
    bob = mint(SECRET, room, Role.VIEWER, "Bob", user_id="bob")

    # A room whose terminal came first (made on b, where it was asked): its kernel, asked for on a,
    # starts on b beside the terminal.
    early = "term-" + uuid.uuid4().hex[:8]
    early_owner = mint(SECRET, early, Role.OWNER, "Ada", user_id="ada")
    async with httpx.AsyncClient(base_url=b.http, timeout=30) as http:
        made = await http.post(f"/api/rooms/{early}/terminals", json={}, headers=auth(early_owner))
    assert made.status_code == 201 and made.json()["node"] == "node-b", made.text
    async with httpx.AsyncClient(base_url=a.http, timeout=60) as http:
        run = await http.post(f"/api/rooms/{early}/runs", json={"code": "print(2)"}, headers=auth(early_owner))
        assert run.status_code == 201, run.text

        async def kernel_on_b() -> bool:
            state = (await http.get(f"/api/rooms/{early}/kernel", headers=auth(early_owner))).json()
            return state.get("node") == "node-b"

        await eventually(kernel_on_b, timeout=30, what="the kernel started on b")
    assert any(e.get("msg") == "forwarded kernel request" and e.get("placed") for e in b.log)

    # The room's kernel runs on a (a run asked there); the room's first terminal, asked on b, starts
    # on a beside it, so both share the room's one budget on a.
    async with httpx.AsyncClient(base_url=a.http, timeout=60) as http:
        run = await http.post(f"/api/rooms/{room}/runs", json={"code": "print(1)"}, headers=auth(ada))
    assert run.status_code == 201, run.text
    async with httpx.AsyncClient(base_url=b.http, timeout=30) as http:
        created = await http.post(f"/api/rooms/{room}/terminals", json={"name": "main"}, headers=auth(ada))
    assert created.status_code == 201, created.text
    terminal_id = created.json()["id"]
    assert created.json()["node"] == "node-a", created.json()
    assert any(e.get("msg") == "forwarded terminal request" and e.get("placed") for e in a.log)

    # Created on b again while a holds the room's terminals: made on a (one node per room), listed on b.
    async with httpx.AsyncClient(base_url=b.http, timeout=30) as http:
        second = await http.post(f"/api/rooms/{room}/terminals", json={"name": "second"}, headers=auth(ada))
    assert second.status_code == 201, second.text
    on_b = await listing(b, room, ada)
    assert {t["name"] for t in on_b} == {"main", "second"} and all(t["status"] == "running" for t in on_b)
    assert any(e.get("msg") == "forwarded terminal request" for e in a.log)

    typist_on_b = await Client.connect(b, room, terminal_id, ada)
    watcher_on_a = await Client.connect(a, room, terminal_id, ada)
    viewer_on_b = await Client.connect(b, room, terminal_id, bob)
    for client in (typist_on_b, watcher_on_a, viewer_on_b):
        await eventually(lambda c=client: c.of("snapshot"), timeout=20, what="a snapshot")
    assert typist_on_b.of("setup")[-1]["can_write"] is True
    assert viewer_on_b.of("setup")[-1]["can_write"] is False and viewer_on_b.of("setup")[-1]["role"] == "viewer"

    await typist_on_b.type("echo $((6*7))-from-b\r")
    for client in (typist_on_b, watcher_on_a, viewer_on_b):
        await eventually(lambda c=client: "42-from-b\r\n" in c.output, timeout=20, what="the output everywhere")

    # The viewer's keystrokes travel to a, which drops them there with a notice.
    await viewer_on_b.type("echo typed-by-bob\r")
    await eventually(lambda: any("read-only" in n for n in viewer_on_b.of("notice")), timeout=10, what="bob told")
    await typist_on_b.type("echo done\r")
    await eventually(lambda: "done\r\n" in watcher_on_a.output, timeout=10, what="the next command")
    assert "typed-by-bob\r\n" not in watcher_on_a.output

    # a dies: b's viewers are told the terminal ended, b lists it as ended, and a restart runs it on b.
    await a.kill()
    killed = time.monotonic()
    await eventually(lambda: typist_on_b.of("exit"), timeout=10, what="the exit on b")
    assert typist_on_b.of("exit")[-1] is None
    assert any("stopped" in n for n in typist_on_b.of("notice"))
    await eventually(lambda: typist_on_b.close_code is not None, timeout=5, what="the relay closed")
    ended = {t["id"]: t for t in await listing(b, room, ada)}
    assert ended[terminal_id]["status"] == "ended" and "node-a" in ended[terminal_id]["lost"]

    async with httpx.AsyncClient(base_url=b.http, timeout=30) as http:
        restarted = await http.post(f"/api/rooms/{room}/terminals/{terminal_id}/restart", headers=auth(ada))
    assert restarted.status_code == 200, restarted.text
    assert restarted.json()["status"] == "running" and restarted.json()["name"] == "main"
    assert time.monotonic() - killed < 20
    again = await Client.connect(b, room, terminal_id, ada)
    await eventually(lambda: again.of("snapshot"), timeout=20, what="the restarted terminal's snapshot")
    await again.type("echo back-on-b\r")
    await eventually(lambda: "back-on-b\r\n" in again.output, timeout=20, what="the restarted shell")
    listed = {t["id"]: t for t in await listing(b, room, ada)}
    assert listed[terminal_id]["status"] == "running"
    assert listed[second.json()["id"]]["status"] == "ended"  # still lost: only its restart brings it back
    for client in (again, viewer_on_b, watcher_on_a, typist_on_b):
        await client.close()


def test_a_remote_viewer_that_falls_behind_drops_its_backlog_and_waits_for_a_fresh_snapshot() -> None:
    """The watching node's queue per websocket (relay.Relayed), without servers: past its cap the
    queued output is dropped, one snapshot is asked of the holder, screen output is dropped until
    it arrives, and control frames (notices, proposals) are kept."""
    asked: list[int] = []
    relayed = Relayed("v1", 200, lambda: asked.append(1))
    relayed.push(json.dumps(["setup", {"rows": 24}]))
    for _ in range(3):
        relayed.push(json.dumps(["stdout", "x" * 40]))
    assert len(relayed.queue) == 4 and not asked
    relayed.push(json.dumps(["stdout", "y" * 40]))  # over 200 bytes: behind
    assert asked == [1] and relayed.awaiting_snapshot
    assert [json.loads(f)[0] for f in relayed.queue] == ["setup"]
    relayed.push(json.dumps(["stdout", "lost in the snapshot"]))
    relayed.push(json.dumps(["notice", "kept"]))
    assert [json.loads(f)[0] for f in relayed.queue] == ["setup", "notice"] and asked == [1]
    relayed.push(json.dumps(["snapshot", "\x1b[Hscreen"]))
    relayed.push(json.dumps(["stdout", "after"]))
    assert [json.loads(f)[0] for f in relayed.queue] == ["setup", "notice", "snapshot", "stdout"]
    assert not relayed.awaiting_snapshot and relayed.resyncs == 1
    relayed.push(json.dumps(["_close", 1000, "terminal ended"]))
    assert relayed.closed == (1000, "terminal ended") and len(relayed.queue) == 4  # never shown to the client


class _NotHere(Exception):
    pass


class _Unreachable(Exception):
    pass


async def test_a_lease_that_follows_another_is_taken_on_the_followed_node_or_here_when_that_is_silent() -> None:
    """``HolderLease(follows=...)`` with in-process brokers: the terminals' lease follows the
    kernel's, so a room's terminals start where its kernel runs; a silent node does not stop them."""
    hub = MemoryHub()
    kind = LeaseKind("thing", "the thing", lambda r: f"t:lease:{r}", lambda r: f"t:chan:{r}", ("make",), topic="t")
    tasks: set[asyncio.Task[Any]] = set()

    def spawn(coro: Any, name: str) -> object:
        task = asyncio.create_task(coro, name=name)
        tasks.add(task)
        return task

    async def node(name: str) -> Any:
        lease = HolderLease(
            MemoryBroker(name, hub),
            kind,
            not_here=(_NotHere,),
            failures=(),
            unreachable=_Unreachable,
            ttl=2.0,
            renew_seconds=0.5,
            answer_seconds=0.3,
            follows=lambda r: f"k:lease:{r}",
        )

        async def here(room: str, op: str, args: dict[str, Any]) -> str:
            if not await lease.acquire(room):
                raise _NotHere(room)
            return name

        async def call(room: str) -> str:
            try:
                return await here(room, "make", {})
            except _NotHere:
                return str(await lease.forward(room, "make", {}))

        await lease.start(here, spawn)
        return lease, call

    (a, _), (b, on_b) = await node("a"), await node("b")
    try:
        followed = MemoryBroker("x", hub)
        await followed.try_lease("k:lease:r1", "a", 30)  # a runs r1's kernel
        assert await on_b("r1") == "a" and "r1" in a.held and "r1" not in b.held
        assert await on_b("r1") == "a", "then through the holder's channel"
        assert await on_b("r2") == "b", "nobody runs r2's kernel: taken where asked"
        await followed.try_lease("k:lease:r3", "c", 30)  # c holds r3's kernel lease but is silent (dead)
        started = time.monotonic()
        assert await on_b("r3") == "b"
        assert time.monotonic() - started < 1.5
    finally:
        await a.stop()
        await b.stop()
        for task in tasks:
            task.cancel()
