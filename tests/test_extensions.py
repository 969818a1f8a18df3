"""Third-party extensions: discovery by entry point, enabling by name, settings, /api/extensions,
isolation of a raising hook, and the pairroom-webhook package against a real HTTP receiver.

The webhook tests run real ``pairroom serve`` processes (``--extension webhook``) with real
y-websocket clients, and a real Starlette receiver on port 0 in the test's loop that records every
request (and can answer 503 to the first ones, or not be listening at all)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import json
import os
import re
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pairroom import extension_loader
from pairroom.app import create_app
from pairroom.config import Settings
from pairroom.extensions import Change, Extension
from pairroom.sandbox.bubblewrap import SandboxUnavailable, probe
from pairroom.sandbox.settings import KernelSettings
from pairroom.web.runner import Server, start_serving, uvicorn_config
from pairroom_webhook import verify

from .support.nodes import PAIRROOM, ServeProcess, _collect, free_port
from .support.yjs_node import node_clients, wait_for  # noqa: F401

SECRET = "webhook-test-secret"


# -- a real receiver ----------------------------------------------------------------------------


@dataclasses.dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)  # type: ignore[no-any-return]

    @property
    def signed(self) -> bool:
        """Checked here with hmac itself, not with the package's own helper."""
        expected = "sha256=" + hmac.new(SECRET.encode(), self.body, hashlib.sha256).hexdigest()
        return self.headers.get("x-pairroom-signature") == expected


class Receiver:
    """A webhook receiver on a real socket; ``fail_first`` requests get a 503."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.requests: list[Delivery] = []
        self.server: Server | None = None
        self.task: asyncio.Task[None] | None = None

    async def handle(self, request: Request) -> Response:
        status = 503 if len(self.requests) < self.fail_first else 204
        self.requests.append(Delivery(dict(request.headers), await request.body(), status))
        return Response(status_code=status)

    async def start(self, port: int = 0) -> int:
        app = Starlette(routes=[Route("/hook", self.handle, methods=["POST"])])
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off", loop="none")
        config.extra_signal_handlers = False  # type: ignore[attr-defined]
        self.server = Server(config)
        self.task = await start_serving(self.server)
        assert self.server.port is not None
        return self.server.port

    async def stop(self) -> None:
        if self.server is not None and self.task is not None:
            self.server.should_exit = True
            await self.task

    @property
    def accepted(self) -> list[dict[str, Any]]:
        return [d.event for d in self.requests if d.status == 204]

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [event for event in self.accepted if event["type"] == kind]


@pytest.fixture
async def receivers() -> AsyncIterator[Callable[..., Awaitable[tuple[Receiver, int]]]]:
    started: list[Receiver] = []

    async def start(fail_first: int = 0, port: int = 0) -> tuple[Receiver, int]:
        receiver = Receiver(fail_first)
        started.append(receiver)
        return receiver, await receiver.start(port)

    yield start
    for receiver in started:
        await receiver.stop()


# -- real pairroom processes, started with command-line flags ---------------------------------------


@pytest.fixture
async def pairroom() -> AsyncIterator[Callable[..., Awaitable[ServeProcess]]]:
    """``await pairroom(*args, env={...})`` runs ``pairroom serve --port 0 *args`` until it listens."""
    started: list[ServeProcess] = []

    async def start(*args: str, env: dict[str, str] | None = None) -> ServeProcess:
        full_env = {**os.environ, "PAIRROOM_LOG_FORMAT": "json", "PAIRROOM_KERNELS": "false", **(env or {})}
        proc = await asyncio.create_subprocess_exec(
            PAIRROOM, "serve", "--port", "0", *args, env=full_env, stderr=asyncio.subprocess.PIPE
        )
        assert proc.stderr is not None
        early: list[dict[str, Any]] = []
        async with asyncio.timeout(30):
            while True:
                line = await proc.stderr.readline()
                if not line:
                    raise RuntimeError(f"pairroom serve exited with {await proc.wait()}: {early[-5:]}")
                entry = json.loads(line)
                early.append(entry)
                if entry.get("msg") == "listening":
                    break
        serve = ServeProcess(proc, entry["port"], full_env)
        serve.log.extend(early)
        serve.drain = asyncio.create_task(_collect(proc, serve.log))
        started.append(serve)
        return serve

    yield start
    for serve in started:
        await serve.kill()
        if serve.drain is not None:
            serve.drain.cancel()


def webhook_env(tmp_path: Path, port: int, **settings: str) -> dict[str, str]:
    env = {
        "PAIRROOM_DB": f"sqlite:///{tmp_path / 'pairroom.db'}",
        "PAIRROOM_EXT_WEBHOOK_URL": f"http://127.0.0.1:{port}/hook",
        "PAIRROOM_EXT_WEBHOOK_SECRET": SECRET,
        "PAIRROOM_EXT_WEBHOOK_DEBOUNCE_MS": "100",
        "PAIRROOM_EXT_WEBHOOK_MAX_WAIT_MS": "1000",
    }
    env.update({f"PAIRROOM_EXT_WEBHOOK_{key.upper()}": value for key, value in settings.items()})
    return env


async def metric_values(base: str, name: str) -> dict[str, float]:
    """Every sample of one metric family from ``/metrics``: labels text -> value."""
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{base}/metrics")).text
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", line)
        if match:
            values[match.group(1) or ""] = float(match.group(2))
    return values


async def metric(base: str, name: str) -> float:
    return sum((await metric_values(base, name)).values())


# -- the webhook, end to end --------------------------------------------------------------------------


async def test_webhook_posts_signed_join_change_and_leave(tmp_path, receivers, pairroom, node_clients):
    receiver, port = await receivers()
    serve = await pairroom("--extension", "webhook", env=webhook_env(tmp_path, port))
    ada = await node_clients.start(serve.ws_base, "hooked", "v3")
    await ada.wait_synced()
    await ada.insert(0, "hello")
    await ada.insert(5, " world")

    async def joined_and_changed() -> bool:
        return bool(receiver.of_type("room.join")) and bool(receiver.of_type("room.change"))

    await wait_for(joined_and_changed, timeout=10)
    await ada.close()

    async def left() -> bool:
        return bool(receiver.of_type("room.leave"))

    await wait_for(left, timeout=10)
    assert all(d.signed for d in receiver.requests), "every delivery carries a valid signature"
    assert all(d.headers["x-pairroom-event"] == d.event["type"] for d in receiver.requests)
    assert all(d.headers["x-pairroom-delivery"] == d.event["id"] for d in receiver.requests)
    join = receiver.of_type("room.join")[0]
    assert join["room"] == "hooked" and join["data"]["user"]["role"] == "editor"
    assert receiver.of_type("room.leave")[0]["data"]["connection"] == join["data"]["connection"]
    changes = receiver.of_type("room.change")
    assert sum(change["data"]["updates"] for change in changes) >= 2
    assert all(change["room"] == "hooked" for change in changes)
    # the package's helper agrees, and refuses a tampered body or another secret
    first = receiver.requests[0]
    assert verify(SECRET, first.body, first.headers["x-pairroom-signature"])
    assert not verify(SECRET, first.body + b" ", first.headers["x-pairroom-signature"])
    assert not verify("another secret", first.body, first.headers["x-pairroom-signature"])

    async with httpx.AsyncClient() as http:
        listed = (await http.get(f"{serve.http}/api/extensions")).json()["extensions"]
    webhook = next(e for e in listed if e["name"] == "webhook")
    assert webhook["enabled"] is True and webhook["builtin"] is False
    assert webhook["version"] == "0.1.0" and webhook["distribution"] == "pairroom-webhook"
    assert {"lifespan", "on_change", "on_join", "on_leave", "on_unload"} <= set(webhook["hooks"])
    assert any(e["name"] == "persistence" and e["builtin"] for e in listed)


async def test_a_failing_receiver_gets_retries_of_the_same_delivery(tmp_path, receivers, pairroom, node_clients):
    receiver, port = await receivers(fail_first=2)
    env = webhook_env(tmp_path, port, backoff_ms="20", debounce_ms="60000", max_wait_ms="60000")
    serve = await pairroom(env=env | {"PAIRROOM_EXTENSIONS": "webhook"})
    client = await node_clients.start(serve.ws_base, "flaky", "v3")
    await client.wait_synced()

    async def join_accepted() -> bool:
        return bool(receiver.of_type("room.join"))

    await wait_for(join_accepted, timeout=10)
    first_three = receiver.requests[:3]
    assert [d.status for d in first_three] == [503, 503, 204]
    assert len({d.event["id"] for d in first_three}) == 1, "a retry resends the same event"
    assert all(d.signed for d in first_three)
    assert await metric(serve.http, "pairroom_webhook_retries_total") >= 2
    assert await metric(serve.http, "pairroom_webhook_delivered_total") >= 1


async def test_the_queue_bound_holds_while_the_receiver_is_down(tmp_path, receivers, pairroom, node_clients):
    port = free_port()  # nothing listens here until the receiver starts below
    env = webhook_env(
        tmp_path, port, queue="3", attempts="100000", backoff_ms="20", max_backoff_ms="50", debounce_ms="20"
    )
    serve = await pairroom("--extension", "webhook", env=env)
    a = await node_clients.start(serve.ws_base, "down", "v3")
    b = await node_clients.start(serve.ws_base, "down", "v2")
    await a.wait_synced()
    await b.wait_synced()
    for i in range(4):  # joins and leaves: far more events than the queue holds
        visitor = await node_clients.start(serve.ws_base, "down", "v3")
        await visitor.wait_synced()
        await visitor.close()
    await a.insert(0, "the room carries on")

    async def b_sees_it() -> bool:
        return await b.text() == "the room carries on"

    await wait_for(b_sees_it, timeout=10)
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{serve.http}/readyz")).status_code == 200

    async def dropped() -> float:
        return await metric(serve.http, "pairroom_webhook_dropped_total")

    await wait_for(dropped, timeout=10)
    accepted = await metric(serve.http, "pairroom_webhook_events_total")
    assert await metric(serve.http, "pairroom_webhook_queued") <= 3
    assert accepted <= 3 + 1, "nothing was delivered: what was taken is queued, or the one being tried"
    assert any(entry["msg"] == "webhook queue full, event dropped" for entry in serve.log)

    receiver, _ = await receivers(port=port)

    async def all_accepted_arrived() -> bool:
        taken = await metric(serve.http, "pairroom_webhook_events_total")
        return len({event["id"] for event in receiver.accepted}) == taken

    await wait_for(all_accepted_arrived, timeout=15)
    assert all(d.signed for d in receiver.requests)
    assert await metric(serve.http, "pairroom_webhook_delivered_total") == len(receiver.accepted)


def _sandbox_problem() -> str | None:
    try:
        probe(KernelSettings())
    except SandboxUnavailable as exc:
        return str(exc)
    return None


@pytest.mark.slow
@pytest.mark.skipif(_sandbox_problem() is not None, reason="kernel sandbox unavailable: run scripts/ensure-bwrap")
async def test_a_finished_run_is_posted_once(tmp_path, receivers, pairroom):
    receiver, port = await receivers()
    env = webhook_env(tmp_path, port) | {"PAIRROOM_KERNELS": "true", "PAIRROOM_KERNEL_POOL_SIZE": "1"}
    serve = await pairroom("--extension", "webhook", env=env)
    async with httpx.AsyncClient(base_url=serve.http, timeout=60) as http:
        created = await http.post("/api/rooms/runs/runs", json={"code": "print(6 * 7)"})
        assert created.status_code == 201, created.text
        run_id = created.json()["id"]

        async def finished() -> list[dict[str, Any]]:
            return receiver.of_type("run.finished")

        [event] = await wait_for(finished, timeout=60)
        stored = (await http.get(f"/api/rooms/runs/runs/{run_id}")).json()
    assert event["room"] == "runs" and event["data"]["run"] == run_id
    assert event["data"]["status"] == "ok" == stored["status"]
    assert event["data"]["endedAt"] == stored["endedAt"]
    assert all(d.signed for d in receiver.requests)
    # the run's later writes (if any) are not reported again
    assert len(receiver.of_type("run.finished")) == 1


# -- isolation: a hook that raises ------------------------------------------------------------------


class Boom(Extension):
    """Raises in every hook it has."""

    name = "boom"

    def on_join(self, room: Any, member: Any) -> None:
        raise RuntimeError("boom on join")

    def on_change(self, change: Change) -> None:
        raise RuntimeError("boom on change")


async def test_a_raising_hook_is_isolated_and_counted(tmp_path, receivers, node_clients):
    receiver, port = await receivers()
    settings = dataclasses.replace(
        Settings(), port=0, db=f"sqlite:///{tmp_path / 'boom.db'}", log_format="text", kernels=False
    )
    [webhook] = extension_loader.load(
        ["webhook"], lambda name: {"url": f"http://127.0.0.1:{port}/hook", "secret": SECRET, "debounce_ms": "50"}
    )
    server = Server(uvicorn_config(create_app(settings, extensions=[Boom(), webhook]), settings, signals=False))
    task = await start_serving(server)
    try:
        base = f"http://127.0.0.1:{server.port}"
        a = await node_clients.start(f"ws://127.0.0.1:{server.port}/yjs", "sturdy", "v3")
        b = await node_clients.start(f"ws://127.0.0.1:{server.port}/yjs", "sturdy", "v1")
        await a.wait_synced()
        await b.wait_synced()
        await a.insert(0, "still here")

        async def converged() -> bool:
            return await b.text() == "still here"

        await wait_for(converged, timeout=10)

        async def webhook_unaffected() -> bool:
            return len(receiver.of_type("room.join")) == 2 and bool(receiver.of_type("room.change"))

        await wait_for(webhook_unaffected, timeout=10)
        errors = await metric_values(base, "pairroom_extension_errors_total")
        assert errors.get('{extension="boom",hook="on_join"}') == 2
        assert errors.get('{extension="boom",hook="on_change"}', 0) >= 1
        assert not any("webhook" in labels for labels in errors)
    finally:
        server.should_exit = True
        await task


# -- discovery, enabling and settings ---------------------------------------------------------------


def install_probe(site: Path, marker: Path) -> None:
    """A distribution ``pairroom-probe`` (metadata on the path, no pip needed) whose module leaves
    ``marker`` behind when imported; its entry points cover the shapes the loader accepts or refuses."""
    dist = site / "pairroom_probe-1.2.3.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: pairroom-probe\nVersion: 1.2.3\n")
    (dist / "entry_points.txt").write_text(
        "[pairroom.extensions]\n"
        "probe = pairroom_probe:make\n"
        "probe-class = pairroom_probe:ProbeClass\n"
        "misnamed = pairroom_probe:make\n"
        "not-one = pairroom_probe:NotAnExtension\n"
        "broken = pairroom_probe_missing:Nothing\n"
    )
    (site / "pairroom_probe.py").write_text(
        textwrap.dedent(
            f"""
            from pathlib import Path
            from pairroom.extensions import Extension

            Path({str(marker)!r}).write_text("imported")

            class Probe(Extension):
                name = "probe"
                def on_join(self, room, member):
                    pass

            class ProbeClass(Extension):
                name = "probe-class"

            class NotAnExtension:
                pass

            def make():
                return Probe()
            """
        )
    )


async def test_installed_but_not_enabled_is_listed_and_not_imported(tmp_path, pairroom):
    site, marker = tmp_path / "site", tmp_path / "imported"
    install_probe(site, marker)
    env = {"PYTHONPATH": str(site), "PAIRROOM_DB": f"sqlite:///{tmp_path / 'p.db'}"}
    idle = await pairroom(env=env)
    async with httpx.AsyncClient() as http:
        listed = {e["name"]: e for e in (await http.get(f"{idle.http}/api/extensions")).json()["extensions"]}
    assert listed["probe"] == {
        "name": "probe", "version": "1.2.3", "distribution": "pairroom-probe", "builtin": False, "enabled": False
    }
    assert listed["webhook"]["enabled"] is False
    assert not marker.exists(), "an extension that is not enabled is not imported"

    enabled = await pairroom("--extension", "probe", env=env)
    assert marker.exists()
    async with httpx.AsyncClient() as http:
        listed = {e["name"]: e for e in (await http.get(f"{enabled.http}/api/extensions")).json()["extensions"]}
    assert listed["probe"]["enabled"] is True
    assert listed["probe"]["version"] == "1.2.3"
    assert listed["probe"]["hooks"] == ["on_join"]


async def test_an_enabled_extension_that_is_not_installed_stops_start_up(tmp_path):
    proc = await asyncio.create_subprocess_exec(
        PAIRROOM, "serve", "--port", "0", "--extension", "webhook", "--extension", "no-such-thing",
        env={**os.environ, "PAIRROOM_DB": f"sqlite:///{tmp_path / 'x.db'}"},
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    message = stderr.decode()
    assert proc.returncode == 2, message
    assert "'no-such-thing' is not installed" in message
    assert "webhook (pairroom-webhook 0.1.0)" in message, "the message lists what is installed"

    proc = await asyncio.create_subprocess_exec(
        PAIRROOM, "serve", "--port", "0",
        env={**os.environ, "PAIRROOM_EXTENSIONS": "webhook", "PAIRROOM_EXT_WEBHOOK_URL": "ftp://x"},
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert "PAIRROOM_EXT_WEBHOOK_SECRET" in stderr.decode(), "bad settings stop start-up with the reason"


def test_the_loader_builds_classes_and_factories_and_refuses_the_rest(tmp_path, monkeypatch):
    site, marker = tmp_path / "site", tmp_path / "imported"
    install_probe(site, marker)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setitem(sys.modules, "pairroom_probe", None)  # restored (removed) after the test
    del sys.modules["pairroom_probe"]
    [from_factory, from_class] = extension_loader.load(["probe", "probe-class"], lambda name: {"key": name})
    assert marker.exists()
    assert (from_factory.name, from_class.name) == ("probe", "probe-class")
    assert from_factory.settings == {"key": "probe"}
    refusals = {
        "misnamed": "is named 'probe'",
        "not-one": "gave NotAnExtension, not a pairroom.extensions.Extension",
        "broken": "could not be imported: ModuleNotFoundError",
    }
    for name, reason in refusals.items():
        with pytest.raises(extension_loader.ExtensionError, match=re.escape(reason)):
            extension_loader.load([name], lambda name: {})
    with pytest.raises(extension_loader.ExtensionError, match="'a', 'b' is not installed") as missing:
        extension_loader.load(["a", "probe", "b"], lambda name: {})
    assert "probe (pairroom-probe 1.2.3)" in str(missing.value)


def test_extension_settings_come_from_their_own_variables():
    environ = {
        "PAIRROOM_EXTENSIONS": "my, my-ext ,my",
        "PAIRROOM_EXT_MY_COLOR": "blue",
        "PAIRROOM_EXT_MY_EXT_URL": "http://x",
        "PAIRROOM_EXT_MY_EXT_MAX_WAIT_MS": "5",
        "PAIRROOM_EXT_OTHER_URL": "http://y",
    }
    settings = Settings.from_env(environ)
    assert settings.extensions == ("my", "my-ext")
    assert settings.extension_settings("my") == {"color": "blue"}
    assert settings.extension_settings("my-ext") == {"url": "http://x", "max_wait_ms": "5"}
    flags = Settings.from_env(environ, extensions=["webhook", "my-ext"])
    assert flags.extensions == ("webhook", "my-ext"), "--extension flags take the place of the variable"
    # without "my-ext" enabled, its variables read as keys of "my"
    assert Settings.from_env({"PAIRROOM_EXT_MY_EXT_URL": "u"}).extension_settings("my") == {"ext_url": "u"}


async def test_sigterm_posts_the_pending_change_and_the_leave_before_exit(tmp_path, receivers, pairroom, node_clients):
    receiver, port = await receivers()
    env = webhook_env(tmp_path, port, debounce_ms="600000", max_wait_ms="600000")
    serve = await pairroom("--extension", "webhook", env=env)
    client = await node_clients.start(serve.ws_base, "closing", "v3")
    await client.wait_synced()
    await client.insert(0, "last words")

    async def joined() -> bool:
        return bool(receiver.of_type("room.join"))

    await wait_for(joined, timeout=10)
    assert not receiver.of_type("room.change"), "the change waits for the (long) debounce"
    assert await serve.terminate() in (0, -15)
    assert [change["data"]["updates"] for change in receiver.of_type("room.change")] == [1]
    assert receiver.of_type("room.leave"), "the leave of the 1012 close is delivered too"
