#!/usr/bin/env python3
"""Debugger benchmark: a stop seen by 1 and by 100 watchers, and what it costs the kernel.

    .venv/bin/python bench/debugger.py [--stops 10] [--json bench/results/debugger.json]

A real server (create_app, sandboxed kernels, SQLite) on a free port; a room with a loop whose body
has a breakpoint; N watchers connected as real y-websocket clients (``tests/yclient.py``). For each
of ``--stops`` stops it measures:

- **stop to visible**: from the server receiving the kernel's DAP ``stopped`` event (IOPub) to the
  moment every watcher's document shows that stop (its ``stopId``): the fetch of the stack, scopes
  and variables, the one transaction, and the broadcast to N members;
- **adapter requests per stop**: what the server sent to the debugger between the stop and the next
  ``continue`` (``pairroom_debug_adapter_requests_total``), while every watcher also reads the state
  over HTTP once per stop.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from pycrdt import Map, Text

from pairroom.app import create_app
from pairroom.config import Settings
from pairroom.debugger.session import DebugSession
from pairroom.web.runner import Server, start_serving, uvicorn_config
from tests.yclient import YClient, eventually

PROGRAM = "total = 0\nfor i in range({stops}):\n    total += i\nprint(total)\n"
STEP_COMMANDS = ("stackTrace", "scopes", "variables", "threads")


async def scenario(base: str, ws: str, app: Any, watchers: int, stops: int) -> dict[str, Any]:
    name = "bench-" + uuid.uuid4().hex[:8]
    stamps: list[float] = []
    original = DebugSession._on_event

    def stamped(self: DebugSession, message: dict[str, Any]) -> None:
        if message.get("event") == "stopped":
            stamps.append(time.perf_counter())
        original(self, message)

    DebugSession._on_event = stamped  # type: ignore[method-assign]
    clients = [await YClient.connect(f"{ws}/yjs/{name}") for _ in range(watchers)]
    await asyncio.gather(*(c.synced.wait() for c in clients))
    writer = clients[0]
    with writer.doc.transaction():
        writer.doc.get("files", type=Map)["main.py"] = Text(PROGRAM.format(stops=stops))
        writer.doc.get("breakpoints", type=Map)["main.py:3"] = {"author": "bench"}
    room = None
    await eventually(lambda: name in app.state.hub.registry.rooms, timeout=10)
    room = app.state.hub.registry.rooms[name]
    await eventually(
        lambda: "main.py" in room.doc.get("files", type=Map) and "main.py:3" in room.doc.get("breakpoints", type=Map),
        timeout=10,
    )
    counter = app.state.debugger.counter
    visible: list[float] = []
    per_stop: list[int] = []
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        started = await http.post(f"/api/rooms/{name}/debug/start", json={"path": "main.py"})
        assert started.status_code == 201, started.text
        for n in range(stops):

            def stopped_everywhere() -> bool:
                for client in clients:
                    debug = client.doc.get("debug", type=Map)
                    session = debug.get("session") or {}
                    if debug.get("state") != "stopped" or not session.get("stopId"):
                        return False
                return len({c.doc.get("debug", type=Map).get("session", {}).get("stopId") for c in clients}) == 1

            await eventually(stopped_everywhere, timeout=60, what=f"stop {n} seen by all")
            seen = time.perf_counter()
            visible.append((seen - stamps[-1]) * 1000)
            before = sum(counter.sent.get(c, 0) for c in STEP_COMMANDS)
            reads = await asyncio.gather(*(http.get(f"/api/rooms/{name}/debug") for _ in range(watchers)))
            assert all(r.status_code == 200 for r in reads)
            stop_id = clients[0].doc.get("debug", type=Map)["session"]["stopId"]
            per_stop.append(sum(counter.sent.get(c, 0) for c in STEP_COMMANDS) - before)
            went = await http.post(f"/api/rooms/{name}/debug/continue", json={"stopId": stop_id})
            assert went.status_code == 202, went.text

            def moved_on(left: str = stop_id) -> bool:
                debug = clients[0].doc.get("debug", type=Map)
                return debug.get("state") != "stopped" or debug["session"]["stopId"] != left

            await eventually(moved_on, timeout=30)
        await eventually(lambda: clients[0].doc.get("debug", type=Map).get("state") == "ended", timeout=60)
    fetched = [c for c in STEP_COMMANDS if counter.sent.get(c)]
    for client in clients:
        await client.close()
    DebugSession._on_event = original  # type: ignore[method-assign]
    total_fetch = sum(counter.sent.get(c, 0) for c in STEP_COMMANDS)
    return {
        "watchers": watchers,
        "stops": stops,
        "stop_to_visible_ms": {
            "median": round(statistics.median(visible), 1),
            "min": round(min(visible), 1),
            "max": round(max(visible), 1),
        },
        "adapter_requests_during_reads": per_stop,
        "fetch_commands": fetched,
        "node_total_fetch_requests": total_fetch,
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stops", type=int, default=10)
    parser.add_argument("--watchers", type=int, nargs="*", default=[1, 100])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = dataclasses.replace(
            Settings(),
            port=0,
            db=f"sqlite:///{tmp}/bench.db",
            log_format="text",
            kernels=True,
            kernel_pool_size=1,
            max_members=1000,
        )
        app = create_app(settings)
        server = Server(uvicorn_config(app, settings, signals=False))
        task = await start_serving(server)
        try:
            results = []
            for watchers in args.watchers:
                before = dict(app.state.debugger.counter.sent)
                result = await scenario(
                    f"http://127.0.0.1:{server.port}", f"ws://127.0.0.1:{server.port}", app, watchers, args.stops
                )
                after = app.state.debugger.counter.sent
                per = {
                    c: after.get(c, 0) - before.get(c, 0) for c in STEP_COMMANDS if after.get(c, 0) - before.get(c, 0)
                }
                result["fetch_requests_per_stop"] = round(sum(per.values()) / args.stops, 2)
                result["fetch_requests_by_command"] = per
                results.append(result)
                print(json.dumps(result))
        finally:
            server.should_exit = True
            await task
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
