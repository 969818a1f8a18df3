"""Version control across the nodes of a cluster: two real ``pairroom serve`` processes sharing a real
PostgreSQL and a real redis-server, a real remote served by ``git daemon``.

The repository lives on the node that opened the room; the other node forwards its git requests there
(``pairroom/vcs/cluster.py``). Checked: status, diff, commit, log, pull and push asked on the other
node, the remote's branch as ``git`` sees it, a stopped holder answered at once with 409, and after
the holder restarts on the same git root every commit is still there.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from pycrdt import Map, Text

from tests.support.nodes import serve_processes  # noqa: F401
from tests.support.redis_server import redis_servers  # noqa: F401
from tests.test_git import ENV, SECRET, files_of, free_port, git, remote, token  # noqa: F401
from tests.yclient import YClient, eventually


@pytest.fixture
async def daemon(remote: Path) -> AsyncIterator[str]:
    """``git daemon`` serving the test's bare remote (push allowed) on a free loopback port."""
    port = free_port()
    git("config", "daemon.receivepack", "true", cwd=remote)
    proc = subprocess.Popen(
        ["git", "daemon", "--reuseaddr", "--listen=127.0.0.1", f"--port={port}", "--export-all",
         "--enable=receive-pack", f"--base-path={remote.parent}", str(remote.parent)],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip

    async def listening() -> bool:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return True
        except OSError:
            return False

    try:
        await eventually(listening, what="git daemon listening")
        yield f"git://127.0.0.1:{port}/{remote.name}"
    finally:
        proc.terminate()
        proc.wait()


async def test_git_routes_answer_on_every_node_and_nothing_is_lost(
    serve_processes,
    redis_servers,
    daemon: str,
    remote: Path,
    tmp_path: Path,
) -> None:  # type: ignore[no-untyped-def]
    from tests.support.postgres import create_database, drop_database

    (redis,) = await redis_servers(1)
    pg = await create_database()
    env = {
        "PAIRROOM_DB": pg,
        "PAIRROOM_REDIS": redis.url,
        "PAIRROOM_SECRET": SECRET,
        "PAIRROOM_GIT_ALLOW_LOCAL": "true",
        "PAIRROOM_FLUSH_INTERVAL_MS": "50",
        "PAIRROOM_OPEN_LOBBY": "true",
        "PAIRROOM_LOBBY_ROOMS_PER_MINUTE": "1000",
    }
    env_a = {**env, "PAIRROOM_NODE_ID": "a", "PAIRROOM_GIT_ROOT": str(tmp_path / "git-a")}
    try:
        a, b = await asyncio.gather(
            serve_processes(env_a),
            serve_processes({**env, "PAIRROOM_NODE_ID": "b", "PAIRROOM_GIT_ROOT": str(tmp_path / "git-b")}),
        )
        async with httpx.AsyncClient(base_url=a.http, timeout=60) as http:
            opened = await http.post("/api/rooms", json={"room": "shared", "git": {"url": daemon}})
            assert opened.status_code == 201, opened.text
        ada_token = token("shared", "ada", "Ada", email="ada@example.org")
        bob_token = token("shared", "bob", "Bob", email="bob@example.org")
        ada = await YClient.connect(f"{a.ws_base}/shared?token={ada_token}")
        bob = await YClient.connect(f"{b.ws_base}/shared?token={bob_token}")
        await asyncio.wait_for(asyncio.gather(ada.synced.wait(), bob.synced.wait()), 10)
        await eventually(lambda: isinstance(files_of(bob).get("main.py"), Text), timeout=10)
        files_of(ada)["README.md"].insert(0, "ada on a\n")
        files_of(bob)["main.py"].insert(0, "# bob on b\n")
        await eventually(lambda: str(files_of(ada)["main.py"]).startswith("# bob on b"), timeout=10)
        await eventually(lambda: str(files_of(bob)["README.md"]).startswith("ada on a"), timeout=10)

        on_b = httpx.AsyncClient(base_url=b.http, timeout=60, headers={"authorization": f"Bearer {bob_token}"})
        on_a = httpx.AsyncClient(base_url=a.http, timeout=60, headers={"authorization": f"Bearer {ada_token}"})
        async with on_a, on_b:

            async def both_changed() -> bool:
                status = await on_b.get("/api/rooms/shared/git/status")
                assert status.status_code == 200, status.text  # asked on b, answered by a's repository
                return [c["path"] for c in status.json()["changes"]] == ["README.md", "main.py"]

            await eventually(both_changed, timeout=10, what="node b's status shows both changes")
            diff = await on_b.get("/api/rooms/shared/git/diff", params={"path": "main.py"})
            assert diff.status_code == 200 and "+# bob on b" in diff.text
            assert diff.headers["content-type"].startswith("text/x-diff")
            assert (await on_b.get("/api/rooms/shared/git/diff", params={"path": "../x"})).status_code == 400

            # Bob commits on b: the commit is made in a's repository, Bob its author, Ada credited
            committed = await on_b.post("/api/rooms/shared/git/commit", json={"message": "from node b"})
            assert committed.status_code == 201, committed.text
            log_b = (await on_b.get("/api/rooms/shared/git/log")).json()["commits"]
            log_a = (await on_a.get("/api/rooms/shared/git/log")).json()["commits"]
            assert log_b == log_a and log_b[0]["sha"] == committed.json()["head"]
            assert log_b[0]["author"] == {"name": "Bob", "email": "bob@example.org"}
            assert log_b[0]["coauthors"] == ["Ada <ada@example.org>"]
            nothing = await on_b.post("/api/rooms/shared/git/commit", json={"message": "again"})
            assert nothing.status_code == 409, nothing.text  # errors cross the cluster with their status

            # a forwarded status costs a round trip through Redis, not a copy of the repository
            started = time.perf_counter()
            for _ in range(5):
                assert (await on_b.get("/api/rooms/shared/git/status")).status_code == 200
            forwarded_ms = (time.perf_counter() - started) / 5 * 1000
            assert forwarded_ms < 1000, forwarded_ms

            # an owner on b gives the remote's credential: it goes to a's memory and nowhere else
            secret = "ghp_" + uuid.uuid4().hex
            owner = token("shared", "own", "Owner", role="owner")
            put = await on_b.put(
                "/api/rooms/shared/git/remote",
                json={"credential": secret},
                headers={"authorization": f"Bearer {owner}"},
            )
            assert put.status_code == 200 and put.json()["credential"] is True, put.text
            assert secret not in put.text

            # push from b lands on the remote, as git sees it
            pushed = await on_b.post("/api/rooms/shared/git/push")
            assert pushed.status_code == 200, pushed.text
            landed = git("log", "-1", "--format=%an|%s|%(trailers:key=Co-authored-by,valueonly)", "pairroom/shared",
                         cwd=remote)  # fmt: skip
            assert landed.strip() == "Bob|from node b|Ada <ada@example.org>"

            # someone pushes upstream; Bob pulls from b and the change reaches both nodes' documents
            work = tmp_path / "upstream"
            git("clone", "-b", "pairroom/shared", f"file://{remote}", str(work))
            (work / "README.md").write_text((work / "README.md").read_text() + "upstream line\n")
            git("commit", "-am", "upstream", cwd=work)
            git("push", "origin", "HEAD:pairroom/shared", cwd=work)
            pulled = await on_b.post("/api/rooms/shared/git/pull")
            assert pulled.status_code == 200, pulled.text
            assert pulled.json()["changed"] == ["README.md"]
            await eventually(lambda: str(files_of(ada)["README.md"]).endswith("upstream line\n"), timeout=10)
            await eventually(lambda: str(files_of(bob)["README.md"]).endswith("upstream line\n"), timeout=10)

            # Bob forks the room on b: the fork's repository is made on a, beside the source's, at the
            # pulled commit, and its git routes answer from b too
            forked = await on_b.post("/api/rooms/shared/fork", json={"room": "shared-fork"})
            assert forked.status_code == 201, forked.text
            assert forked.json()["git"]["head"] == pulled.json()["head"], forked.text
            fork_token = token("shared-fork", "bob", "Bob", email="bob@example.org")
            fork_status = await on_b.get(
                "/api/rooms/shared-fork/git/status", headers={"authorization": f"Bearer {fork_token}"}
            )
            assert fork_status.status_code == 200, fork_status.text
            assert fork_status.json()["head"] == pulled.json()["head"]
            assert fork_status.json()["branch"] == "pairroom/shared-fork"

            # one more commit from b, not pushed, then a stops: b says at once that nobody holds it
            files_of(bob)["notes.md"] = Text("kept\n")
            await eventually(lambda: isinstance(files_of(ada).get("notes.md"), Text), timeout=10)

            async def notes_changed() -> bool:
                status = (await on_b.get("/api/rooms/shared/git/status")).json()
                return [c["path"] for c in status["changes"]] == ["notes.md"]

            await eventually(notes_changed, timeout=10, what="b's status sees notes.md")
            second = await on_b.post("/api/rooms/shared/git/commit", json={"message": "notes"})
            assert second.status_code == 201, second.text
            await ada.ws.close()
            first_logs = a.log + b.log
            await a.terminate()  # SIGTERM: a gives its leases back as it stops
            started = time.perf_counter()
            gone = await on_b.get("/api/rooms/shared/git/log")
            assert gone.status_code == 409 and "no repository on any node" in gone.json()["error"], gone.text
            assert time.perf_counter() - started < 5

            # a comes back on the same git root: it takes the lease again and every commit is there
            a = await serve_processes(env_a)

            async def served_again() -> bool:
                return (await on_b.get("/api/rooms/shared/git/log")).status_code == 200

            await eventually(served_again, timeout=15, what="a holds the repository again")
            log = (await on_b.get("/api/rooms/shared/git/log")).json()["commits"]
            assert [c["subject"] for c in log[:4]] == ["notes", "upstream", "from node b", "seed"]
            pushed = await on_b.post("/api/rooms/shared/git/push")
            assert pushed.status_code == 200, pushed.text
            assert git("show", "pairroom/shared:notes.md", cwd=remote) == "kept\n"
        await bob.ws.close()
        meta = bob.doc.get("meta", type=Map)["git"]
        assert meta["head"] == log[0]["sha"]
        assert secret not in json.dumps(first_logs + a.log + b.log) and secret not in str(meta.to_py())
    finally:
        await drop_database(pg)


# -- the lease and the forwarding, over in-process brokers ------------------------------------------


async def test_a_lease_lost_for_a_moment_is_taken_back_and_requests_reach_its_holder() -> None:
    """Two nodes on one in-process hub: b forwards to a, errors come back with their status, a lease
    that expired while nobody renewed it is taken back by the node with the repository, and a room
    nobody holds is answered 409 at once."""
    from pairroom.cluster.broker import MemoryBroker, MemoryHub
    from pairroom.rooms.identity import Principal, Role
    from pairroom.vcs.cluster import GitLeases
    from pairroom.vcs.gitcli import GitError

    hub = MemoryHub()
    a = GitLeases(MemoryBroker("a", hub), ttl=0.3, renew_seconds=0.05, answer_seconds=0.2, forward_timeout=5)
    b = GitLeases(MemoryBroker("b", hub), ttl=0.3, renew_seconds=0.05, answer_seconds=0.2, forward_timeout=5)
    served: list[tuple[str, str, str]] = []

    async def serve(room: str, op: str, principal: Principal, args: dict) -> dict:
        served.append((room, op, principal.user_id))
        if op == "commit":
            return {"status": 409, "error": "nothing to commit"}
        return {"status": 200, "json": {"on": "a", "args": args, "role": principal.role.value}}

    async def unreachable(room: str, op: str, principal: Principal, args: dict) -> dict:
        raise AssertionError("b holds nothing")

    await a.start(serve)
    await b.start(unreachable)
    renewal = asyncio.create_task(a.renew_forever())
    try:
        bob = Principal("bob", "Bob", "#000", Role.EDITOR, "r")
        assert await a.hold("r") and not await b.hold("r")
        b._wanted.discard("r")  # b has no repository: it only asked
        answer = await b.forward("r", "log", bob, {"limit": 5})
        assert answer["status"] == 200 and answer["json"] == {"on": "a", "args": {"limit": 5}, "role": "editor"}
        assert (await b.forward("r", "commit", bob, {}))["error"] == "nothing to commit"
        assert served == [("r", "log", "bob"), ("r", "commit", "bob")]  # each ran once

        # the lease lapses (Redis slow, say) and a probe from b takes and frees it: a takes it back
        hub.leases.pop("pairroom:lease:git:{r}")
        assert await b.nobody_holds("r")
        await eventually(lambda: a.holds("r"), what="a holds the lease again")
        assert (await b.forward("r", "status", bob, {}))["status"] == 200

        # a room nobody holds: 409 after one unanswered attempt, not after the forward timeout
        started = time.perf_counter()
        try:
            await b.forward("other", "status", bob, {})
            raise AssertionError("no 409")
        except GitError as exc:
            assert exc.status == 409 and "no repository on any node" in exc.reason
        assert time.perf_counter() - started < 1.5  # one unanswered attempt (0.2 s), then the probe
    finally:
        renewal.cancel()
        await a.stop()
        await b.stop()
