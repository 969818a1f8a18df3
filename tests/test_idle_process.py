"""The idle process stays small: a started ``pairroom serve`` with nobody connected has not imported
what only a feature in use needs, and its warm kernel pool fills once a room is open.

Each test runs a real server in a fresh interpreter (``sys.modules`` of the test process says
nothing about a server's startup). See docs/performance.md, "The idle process".
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import websockets

from tests.test_kernels import requires_sandbox

# Each of these is several MiB resident, or pulls in something that is, and is needed only once
# the feature is used: none may be imported by a server nobody has used yet.
LOADED_ON_FIRST_USE = {
    "jupyter_client": "kernels: imported by the first kernel launch (kernels/launcher.py)",
    "zmq": "kernels: jupyter-client's transport",
    "tornado": "kernels: jupyter-client's event loop glue",
    "pairroom.kernels.launcher": "kernels: the jupyter-client kernel manager",
    "aiortc": "calls: the server-side media peer",
    "av": "calls: audio recording",
    "pyte": "terminals: the emulator, with the first terminal",
    "redis": "clustering: only with --redis",
    "jwt": "tokens: only with a secret",
    "alembic": "migrations: only for PostgreSQL, or a SQLite file an older release made",
    "sqlalchemy": "storage: only for PostgreSQL, or upgrading a SQLite file an older release made",
    "aiosqlite": "storage: SQLite runs on the standard library's sqlite3",
    "tuf": "marketplace: a TUF catalog, when one is configured and read",
    "pairroom.recording.replay": "recording: the replay player, with the first replay",
}

# Run in the child: serve, wait until ready (and a little more, for what starts in the background),
# write the imported modules and the RSS to a file, stop.
SERVE_AND_REPORT = textwrap.dedent(
    """
    import gc, json, os, signal, sys, threading, time, urllib.request
    port, report = int(sys.argv[1]), sys.argv[2]

    def report_when_ready():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
        time.sleep(2.0)
        status = open("/proc/self/status").read()
        rss_kib = int(status.split("VmRSS:")[1].split()[0])
        with open(report, "w") as out:
            json.dump(
                {
                    "modules": sorted(sys.modules),
                    "rss_kib": rss_kib,
                    "frozen": gc.get_freeze_count(),
                },
                out,
            )
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=report_when_ready, daemon=True).start()
    from pairroom.cli import main
    sys.exit(main(sys.argv[3:]))
    """
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def serve_and_report(tmp_path: Path) -> dict[str, Any]:
    """Start a real ``pairroom serve``, wait until it is ready and settled, and read its report."""
    port, report = free_port(), tmp_path / "report.json"
    serve = ["serve", "--port", str(port), "--db", f"sqlite:///{tmp_path}/pairroom.db", "--log-format", "json"]
    done = subprocess.run(
        [sys.executable, "-c", SERVE_AND_REPORT, str(port), str(report), *serve],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert report.exists(), f"the server did not become ready (exit {done.returncode}): {done.stdout[-2000:]}"
    found: dict[str, Any] = json.loads(report.read_text())
    return found


def test_an_idle_server_has_not_imported_what_only_a_feature_in_use_needs(tmp_path: Path) -> None:
    found = serve_and_report(tmp_path)
    modules = set(found["modules"])
    # it really was a started server, with its storage open and the kernels' service running
    assert {"pairroom.app", "pairroom.kernels.service", "pairroom.storage.sqlite", "sqlite3"} <= modules
    loaded = {
        name: why
        for name, why in LOADED_ON_FIRST_USE.items()
        if name in modules or any(m.startswith(name + ".") for m in modules)
    }
    assert not loaded, f"imported at startup (idle RSS {found['rss_kib'] // 1024} MiB): {loaded}"


def test_what_starting_built_is_out_of_the_collectors_reach_once_the_server_is_up(tmp_path: Path) -> None:
    """A full collection walks only what serving made: startup's objects are frozen (``gc.freeze``)."""
    found = serve_and_report(tmp_path)
    assert found["frozen"] > 30_000, f"only {found['frozen']} objects frozen after startup"


async def children_of(pid: int) -> list[str]:
    found = await asyncio.to_thread(
        subprocess.run, ["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False
    )
    return found.stdout.split()


@requires_sandbox
async def test_the_kernel_pool_fills_when_a_room_is_first_loaded_not_at_startup(tmp_path: Path) -> None:
    """Default settings (a pool of 2): no kernel while no room is open; a member joining a room
    starts the pool, and a run after that gets a warm kernel."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "pairroom.cli", "serve", "--port", str(port), "--db", f"sqlite:///{tmp_path}/p.db"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ, PAIRROOM_LOG_FORMAT="json"),
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if (await http.get("/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "the server did not become ready"
                await asyncio.sleep(0.1)
            await asyncio.sleep(2.0)
            assert await children_of(server.pid) == [], "kernels were started with no room open"

            async with websockets.connect(f"ws://127.0.0.1:{port}/yjs/pool-room"):
                deadline = time.monotonic() + 60
                while len(await children_of(server.pid)) < 2:
                    assert time.monotonic() < deadline, "the pool did not fill after a room was loaded"
                    await asyncio.sleep(0.1)
                response = await http.post("/api/rooms/pool-room/runs", json={"code": "print(6 * 7)"})
                assert response.status_code == 201, response.text
                run_id = response.json()["id"]
                while True:
                    run = (await http.get(f"/api/rooms/pool-room/runs/{run_id}")).json()
                    if run["status"] not in ("queued", "running"):
                        break
                    assert time.monotonic() < deadline, run
                    await asyncio.sleep(0.02)
                assert run["status"] == "ok", run
                assert [output.get("text") for output in run["outputs"]] == ["42\n"]
    finally:
        server.terminate()
        server.wait(30)
