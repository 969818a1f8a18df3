#!/usr/bin/env python3
"""The idle process and a room's first run, on a real ``pairroom serve`` (default settings).

    .venv/bin/python bench/idle.py [--starts 3] [--runs 3] [--source DIR] [--floor] [--json FILE]

- **idle RSS**: ``VmRSS`` of the server process (kernels are other processes) ``--settle`` seconds
  after it logs "listening", with nobody connected; median of ``--starts`` starts, with its thread
  count and child processes (started kernels).
- **first run**: a member joins a fresh room (a websocket to ``/yjs/ROOM``), waits ``--after``
  seconds (0 and 3 by default: running at once, and after a few seconds as people do), posts
  ``print(1)`` and polls the run until its output is there; seconds from the POST to the output,
  each case in a fresh server (``--runs`` times, median). The server's RSS after the run is
  reported too.
- **the stack's floor** (``--floor``): the same reading for processes that are not pairroom, in the
  same sitting: the interpreter alone; the server stack alone (uvicorn with uvloop, httptools and
  websockets-sansio, as ``pairroom serve`` configures it, serving one Starlette route); and that
  stack with the libraries every node imports (pycrdt, prometheus-client, sqlite3,
  ``importlib.metadata`` for the extensions' entry points, argparse). What pairroom's own code
  costs is the difference to the idle server.

``--source DIR`` runs the server from another copy of the package (e.g. ``git archive`` of an older
commit) with this checkout's virtualenv and kernel environment, for a before/after in one sitting.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # bench/run.py: its /proc sampling

ROOT = Path(__file__).resolve().parents[1]


def status(pid: int) -> dict[str, Any]:
    found = run.proc_sample(pid)
    if found is None:
        raise RuntimeError(f"the server (pid {pid}) is gone")
    return found


def children(pid: int) -> int:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return len(found)


# One process of the floor: imports what it is given, serves /readyz on the given port as
# `pairroom serve` runs uvicorn (web/runner.py), says "listening" on stdout as it does, and waits.
FLOOR_SERVER = """
import importlib, json, sys
port, names = int(sys.argv[1]), [n for n in sys.argv[2].split(",") if n]
for name in names:
    importlib.import_module(name)
if sys.argv[3] == "interpreter":
    print(json.dumps({"msg": "listening", "port": port}), flush=True)
    sys.stdin.read()
    sys.exit(0)
import uvicorn, uvloop
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

app = Starlette(routes=[Route("/readyz", lambda request: PlainTextResponse("ok"))])
config = uvicorn.Config(app, port=port, loop="none", http="httptools", ws="websockets-sansio",
                        lifespan="on", log_config=None)
server = uvicorn.Server(config)

async def serve():
    task = __import__("asyncio").create_task(server.serve())
    while not server.started:
        await __import__("asyncio").sleep(0.01)
    print(json.dumps({"msg": "listening", "port": port}), flush=True)
    await task

uvloop.run(serve())
"""
# What every node imports besides its server stack (pairroom's own code aside).
NODE_LIBRARIES = "pycrdt,prometheus_client,sqlite3,importlib.metadata,argparse"
FLOOR_LEVELS = (
    ("the interpreter alone", "interpreter", ""),
    ("the server stack alone (uvicorn, uvloop, httptools, websockets, Starlette)", "stack", ""),
    ("the stack and the libraries every node imports", "stack", NODE_LIBRARIES),
)


def started(command: list[str], cwd: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], Any]:
    """Start ``command`` and wait for its JSON "listening" line: the process and that line."""
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd
    )
    assert process.stdout is not None
    for line in process.stdout:
        if '"listening"' in line:
            return process, json.loads(line)
    raise RuntimeError(f"{command[:4]} exited before listening")


def stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    process.wait(30)


def floor(starts: int, settle: float) -> list[dict[str, Any]]:
    rows = []
    for label, kind, names in FLOOR_LEVELS:
        rss = []
        for _ in range(starts):
            command = [sys.executable, "-c", FLOOR_SERVER, str(run.free_port()), names, kind]
            process, _ = started(command, cwd=tempfile.gettempdir())
            time.sleep(settle)
            rss.append(status(process.pid)["rss_mib"])
            stop(process)
        rows.append({"process": label, "rss_mib": statistics.median(rss), "all_rss_mib": [round(r, 1) for r in rss]})
    return rows


class Server:
    """``pairroom serve`` on a free port with a fresh SQLite database."""

    def __init__(self, source: Path | None, extra: list[str]) -> None:
        self.dir = tempfile.mkdtemp(prefix="pairroom-idle-")
        env = dict(os.environ, PAIRROOM_KERNEL_VENV=str(ROOT / ".cache" / "kernel-venv"))
        if source is not None:
            env["PYTHONPATH"] = str(source)
        command = [sys.executable, "-m", "pairroom.cli", "serve", "--port", "0", "--db", f"sqlite:///{self.dir}/x.db"]
        begun = time.monotonic()
        self.process, listening = started([*command, "--log-format", "json", *extra], cwd=self.dir, env=env)
        self.port = int(listening["port"])
        self.ready_seconds = time.monotonic() - begun

    def stop(self) -> None:
        stop(self.process)


def idle(source: Path | None, starts: int, settle: float, extra: list[str]) -> dict[str, Any]:
    rows = []
    for _ in range(starts):
        server = Server(source, extra)
        time.sleep(settle)
        now = status(server.process.pid)
        rows.append({"rss_mib": now["rss_mib"], "threads": now["threads"], "children": children(server.process.pid)})
        server.stop()
    return {
        "rss_mib": statistics.median(r["rss_mib"] for r in rows),
        "threads": rows[0]["threads"],
        "children": rows[0]["children"],
        "all_rss_mib": [round(r["rss_mib"], 1) for r in rows],
    }


async def first_run(port: int, after: float) -> float:
    room = f"idle-{uuid.uuid4().hex[:8]}"
    async with (
        websockets.connect(f"ws://127.0.0.1:{port}/yjs/{room}"),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as http,
    ):
        await asyncio.sleep(after)
        started = time.perf_counter()
        response = await http.post(f"/api/rooms/{room}/runs", json={"code": "print(1)"})
        assert response.status_code == 201, response.text
        run_id = response.json()["id"]
        while True:
            run = (await http.get(f"/api/rooms/{room}/runs/{run_id}")).json()
            if run.get("outputs"):
                assert run["outputs"][0].get("text") == "1\n", run
                return time.perf_counter() - started
            if run["status"] not in ("queued", "running"):
                raise AssertionError(f"run ended without output: {run}")
            if time.perf_counter() - started > 60:
                raise TimeoutError(run)
            await asyncio.sleep(0.005)


def first_runs(source: Path | None, runs: int, settle: float, after: float, extra: list[str]) -> dict[str, Any]:
    seconds, rss = [], []
    for _ in range(runs):
        server = Server(source, extra)
        time.sleep(settle)
        seconds.append(asyncio.run(first_run(server.port, after)))
        rss.append(status(server.process.pid)["rss_mib"])
        server.stop()
    return {
        "after_join_s": after,
        "first_output_ms": round(statistics.median(seconds) * 1000, 1),
        "all_ms": [round(s * 1000, 1) for s in seconds],
        "rss_after_run_mib": round(statistics.median(rss), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--settle", type=float, default=8.0, help="seconds after listening before measuring")
    parser.add_argument("--after", type=float, action="append", help="seconds between join and run (0 and 3)")
    parser.add_argument("--source", type=Path, help="run the server from this copy of the package")
    parser.add_argument("--no-runs", action="store_true", help="idle RSS only")
    parser.add_argument("--floor", action="store_true", help="also the stack's floor (see above)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("extra", nargs="*", help="more `pairroom serve` arguments (after --)")
    args = parser.parse_args()
    load = os.getloadavg()
    result: dict[str, Any] = {"load_average": [round(x, 2) for x in load], "source": str(args.source or ROOT)}
    result["idle"] = idle(args.source, args.starts, args.settle, args.extra)
    print(f"idle: {json.dumps(result['idle'])}", flush=True)
    if args.floor:
        result["floor"] = floor(args.starts, args.settle)
        for row in result["floor"]:
            print(f"floor: {json.dumps(row)}", flush=True)
    if not args.no_runs:
        result["first_run"] = []
        for after in args.after or [0.0, 3.0]:
            row = first_runs(args.source, args.runs, args.settle, after, args.extra)
            result["first_run"].append(row)
            print(f"first run: {json.dumps(row)}", flush=True)
    result["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
