"""What admitting idle y-websocket connections costs the server: CPU seconds and RSS, read from /proc.

S7's connect-all time is the generator's wall clock on a shared machine; this counts the server's own
CPU time (user + system) from before the first connection until every client has its sync step 2,
and its RSS once they all sit idle, for ``pairroom serve`` with the /yjs front door on and off
(``--yjs-door`` / ``--no-yjs-door``), alternating, so both are measured under the same load.

    .venv/bin/python bench/connect_cost.py --clients 2000 --runs 3
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
import threading
import time
from pathlib import Path
from typing import Any

import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # bench/run.py: its /proc sampling and open-files limit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pairroom.protocol.sync import MessageType, SyncStep, decode_message, sync_step1

VENV = Path(__file__).resolve().parent.parent / ".venv"


def sample(pid: int) -> dict[str, Any]:
    found = run.proc_sample(pid)
    if found is None:
        raise RuntimeError(f"the server (pid {pid}) is gone")
    return found


def start_server(door: bool, db: Path) -> tuple[subprocess.Popen[str], int]:
    argv = [str(VENV / "bin" / "pairroom"), "serve", "--port", "0", "--db", f"sqlite:///{db}"]
    argv += ["--log-format", "json", "--no-kernels", "--rate-limit", "100000"]
    argv += ["--yjs-door" if door else "--no-yjs-door"]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    if os.cpu_count() and os.cpu_count() > 1:  # the server on CPU 0, the clients (this process) on CPU 1
        os.sched_setaffinity(proc.pid, {0})
        os.sched_setaffinity(0, {1})
    assert proc.stderr is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        try:
            record = json.loads(line)
        except ValueError:
            continue
        port = record.get("port")
        if isinstance(port, int) and port:
            # the log goes on (a line per join and leave): read it, or the server blocks on the pipe
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return proc, port
    proc.kill()
    raise RuntimeError("the server did not announce its port")


async def one_client(url: str, synced: asyncio.Event, done: list[int], total: int) -> websockets.ClientConnection:
    ws = await websockets.connect(url, max_size=None, open_timeout=120)
    await ws.send(sync_step1(b"\x00"))
    while True:
        message = decode_message(await ws.recv())  # type: ignore[arg-type]
        if message.type is MessageType.SYNC and message.step is SyncStep.STEP2:
            break
    done.append(1)
    if len(done) == total:
        synced.set()
    return ws


async def measure(door: bool, clients: int, concurrency: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_server(door, Path(tmp) / "bench.db")
        try:
            await asyncio.sleep(1.0)
            idle = sample(proc.pid)
            started = time.monotonic()
            synced = asyncio.Event()
            done: list[int] = []
            gate = asyncio.Semaphore(concurrency)

            async def bounded(i: int) -> websockets.ClientConnection:
                async with gate:
                    return await one_client(f"ws://127.0.0.1:{port}/yjs/room-{i % 10}", synced, done, clients)

            sockets = await asyncio.gather(*(bounded(i) for i in range(clients)))
            await synced.wait()
            wall = time.monotonic() - started
            cpu = sample(proc.pid)["cpu_s"] - idle["cpu_s"]
            await asyncio.sleep(2.0)
            rss = sample(proc.pid)["rss_mib"]
            for ws in sockets:
                await ws.close()
            return {"cpu_s": cpu, "wall_s": wall, "idle_rss": idle["rss_mib"], "rss": rss}
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=100, help="connections opening at once")
    args = parser.parse_args()
    run.raise_nofile()
    results: dict[bool, list[dict[str, float]]] = {True: [], False: []}
    for attempt in range(args.runs):
        for door in (False, True):
            result = asyncio.run(measure(door, args.clients, args.concurrency))
            results[door].append(result)
            name = "door" if door else "starlette"
            print(
                f"run {attempt + 1} {name:<9} server CPU {result['cpu_s']:.2f} s for {args.clients} connections "
                f"({result['cpu_s'] / args.clients * 1e3:.3f} ms each), wall {result['wall_s']:.2f} s, "
                f"RSS {result['idle_rss']:.1f} -> {result['rss']:.1f} MiB "
                f"({(result['rss'] - result['idle_rss']) * 1024 / args.clients:.1f} KiB per connection)",
                flush=True,
            )
    for door in (False, True):
        rows = results[door]
        print(
            f"median {'door' if door else 'starlette':<9} CPU {statistics.median(r['cpu_s'] for r in rows):.2f} s, "
            f"KiB per connection {statistics.median((r['rss'] - r['idle_rss']) * 1024 / args.clients for r in rows):.1f}"
        )


if __name__ == "__main__":
    main()
