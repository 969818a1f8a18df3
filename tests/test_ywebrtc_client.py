"""The real npm ``y-webrtc`` client's signaling against pairroom's ``/signal``.

Each client is a ``node tests/node-webrtc/client.mjs`` process holding one ``WebrtcProvider`` whose
only signaling URL is the server's (y-webrtc keeps one room per name per process, so two peers of a
room are two processes). The provider subscribes its room's topic and publishes an ``announce`` on
every new signaling connection; the script prints every frame its ``SignalingConn`` receives, so the
test sees what y-webrtc itself parsed. Node has no WebRTC, so the providers are told to open no peer
connections (``maxConns: 0``): only the signaling is exercised, which is what pairroom serves.

y-webrtc is pinned in tests/node-webrtc/package.json and installed with ``npm ci`` on first use.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from pairroom.rtc.api import RtcSettings
from pairroom.web.auth import mint
from tests.rtc.serve import RtcServer, start

NODE_DIR = Path(__file__).resolve().parent / "node-webrtc"
STAMP = NODE_DIR / "node_modules" / ".pairroom-npm-ci"
SECRET = "ywebrtc-client-secret-of-32-bytes-or-more"
TIMEOUT = 10.0


def ensure_node_modules() -> None:
    """``npm ci`` in tests/node-webrtc unless a stamp newer than package.json and the lock exists."""

    def fresh() -> bool:
        try:
            stamp = STAMP.stat().st_mtime
        except FileNotFoundError:
            return False
        return all((NODE_DIR / name).stat().st_mtime <= stamp for name in ("package.json", "package-lock.json"))

    if fresh():
        return
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not on PATH; the y-webrtc client test needs Node.js")
    key = hashlib.sha256(str(NODE_DIR).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"pairroom-npm-ci-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent test processes install once
        if fresh():
            return
        result = subprocess.run(
            ["npm", "ci", "--omit=optional", "--ignore-scripts", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if result.returncode != 0:
            pytest.fail(f"npm ci in {NODE_DIR} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        STAMP.touch()


class YWebrtcClient:
    """One client.mjs process; ``events`` holds its output lines in order."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: list[dict[str, Any]] = []
        self.peer_id: str | None = None
        self._changed = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            event = json.loads(line)
            async with self._changed:
                self.events.append(event)
                self._changed.notify_all()
        async with self._changed:
            self.events.append({"event": "exit"})
            self._changed.notify_all()

    async def wait(self, predicate: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        """The first event (seen already or coming) that ``predicate`` accepts, within ``TIMEOUT``."""
        try:
            async with asyncio.timeout(TIMEOUT), self._changed:
                while True:
                    for event in self.events:
                        if predicate(event):
                            return event
                    if self.events and self.events[-1]["event"] == "exit":
                        raise AssertionError(f"client exited waiting for {what}: {self.events[-5:]}")
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"no {what} within {TIMEOUT} s: {self.events[-5:]}") from None

    def published(self) -> list[dict[str, Any]]:
        return [e["message"] for e in self.events if e["event"] == "message" and e["message"].get("type") == "publish"]

    async def announce_from(self, peer_id: str | None, what: str) -> dict[str, Any]:
        def match(e: dict[str, Any]) -> bool:
            m = e.get("message") or {}
            return (
                m.get("type") == "publish"
                and m.get("data", {}).get("type") == "announce"
                and m["data"].get("from") == peer_id
            )

        return (await self.wait(match, what))["message"]  # type: ignore[no-any-return]

    async def command(self, cmd: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd}).encode() + b"\n")
        await self.proc.stdin.drain()

    async def close(self) -> int:
        if self.proc.returncode is None:
            with contextlib.suppress(ConnectionError):
                await self.command("close")
        try:
            async with asyncio.timeout(TIMEOUT):
                code = await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            code = await self.proc.wait()
        await self._reader
        return code


Open = Callable[[str, str], Awaitable[YWebrtcClient]]


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RtcServer]:
    it = await start(f"sqlite:///{tmp_path / 'p.db'}", RtcSettings(), SECRET)
    yield it
    await it.stop()


@pytest.fixture
async def ywebrtc(server: RtcServer) -> AsyncIterator[Open]:
    await asyncio.to_thread(ensure_node_modules)
    clients: list[YWebrtcClient] = []

    async def open_(token_room: str, provider_room: str) -> YWebrtcClient:
        url = f"{server.ws}/signal?token={mint(SECRET, token_room, 'editor', f'user-{len(clients)}')}"
        proc = await asyncio.create_subprocess_exec(
            "node",
            str(NODE_DIR / "client.mjs"),
            url,
            provider_room,
            cwd=NODE_DIR,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        client = YWebrtcClient(proc)
        clients.append(client)
        client.peer_id = (await client.wait(lambda e: e["event"] == "ready", "ready"))["peerId"]
        assert client.peer_id
        return client

    yield open_
    codes = [await c.close() for c in clients]
    uncaught = [e for c in clients for e in c.events if e["event"] == "uncaught"]
    assert not uncaught, uncaught
    assert codes == [0] * len(codes), codes


async def test_ywebrtc_providers_announce_to_each_other_through_the_server(ywebrtc: Open) -> None:
    ann = await ywebrtc("lesson", "lesson")
    # Subscribed, published, received: the server sends a publish back to its sender too.
    own = await ann.announce_from(ann.peer_id, "ann's own announce")
    assert own == {
        "type": "publish",
        "topic": "lesson",
        "data": {"type": "announce", "from": ann.peer_id},
        "clients": 1,
    }

    bob = await ywebrtc("lesson", "lesson")
    heard = await ann.announce_from(bob.peer_id, "bob's announce at ann")
    assert heard["topic"] == "lesson" and heard["clients"] == 2
    assert (await bob.announce_from(bob.peer_id, "bob's own announce"))["clients"] == 2

    # ann announced before bob subscribed; a fresh signaling connection announces again.
    await ann.command("reconnect")
    assert (await bob.announce_from(ann.peer_id, "ann's announce at bob"))["clients"] == 2
    assert [e for e in ann.events + bob.events if e.get("message", {}).get("type") == "error"] == []


async def test_ywebrtc_provider_of_another_rooms_token_is_refused_and_hears_nothing(ywebrtc: Open) -> None:
    ann = await ywebrtc("lesson", "lesson")
    await ann.announce_from(ann.peer_id, "ann's own announce")
    eve = await ywebrtc("other", "lesson")  # her token is for room "other"

    def errors() -> list[dict[str, Any]]:
        return [e["message"] for e in eve.events if e["event"] == "message" and e["message"].get("type") == "error"]

    # y-webrtc subscribes, then announces: both are refused (4403), and the connection stays open.
    await eve.wait(lambda _: len(errors()) >= 2, "two error frames")
    subscribe, publish = errors()
    assert subscribe["code"] == publish["code"] == 4403, errors()
    assert "lesson" in subscribe["reason"] and "lesson" in publish["reason"], errors()

    await ann.command("reconnect")  # ann announces again while eve's connection is open
    await ann.wait(
        lambda _: sum(m["data"].get("from") == ann.peer_id for m in ann.published()) >= 2, "ann's second announce"
    )
    assert [m for m in ann.published() if m["data"].get("from") != ann.peer_id] == []  # eve's announce reached nobody
    assert eve.published() == []  # nothing of room "lesson" reached her
    assert not any(e["event"] == "disconnect" for e in eve.events)
