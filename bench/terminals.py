#!/usr/bin/env python3
"""Terminal benchmark: keystroke-to-echo for the typist and 100 watchers, fan-out, memory per terminal.

    .venv/bin/python bench/terminals.py

One in-process server with the sandbox on (it needs bubblewrap, as the kernels do). For 0 and then
100 read-only watchers of one terminal, the typist sends 200 single keystrokes (``x``, then
backspace, alternately, 20 ms apart) and the time until bash's echo arrives as a ``stdout`` frame
is measured at the typist and at the last watcher (p50 and p99, ms). Then ``head -c 2000000``
of output is fanned out to the 100 watchers (MB/s per watcher and in total; the per-terminal rate
cap, 1 MiB/s by default, bounds it). Memory: the resident size of the sandboxed process tree per
terminal (setpriv, bwrap, bash) and the server's growth for 10 idle terminals. Last, another room's
edit round trip (a y-websocket client's insert seen by a second client), quiet and while a terminal
runs ``yes``. Prints JSON.
"""

from __future__ import annotations

import asyncio, dataclasses, json, os, statistics, sys, tempfile, time
from pathlib import Path

import httpx
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pairroom.app import create_app
from pairroom.config import Settings
from pairroom.kernels import KernelSettings
from pairroom.terminal.extension import Terminals
from pairroom.terminal.settings import TerminalSettings
from pairroom.web.auth import Role, mint
from pairroom.web.runner import Server, start_serving, uvicorn_config

SECRET = "bench-secret-0123456789abcdef0123456789"

def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1])
    return 0

def tree_rss(pid):
    total = 0
    kids = [pid]
    seen = set()
    while kids:
        p = kids.pop()
        if p in seen: continue
        seen.add(p)
        try:
            total += rss_kib(p)
            for t in os.listdir(f"/proc/{p}/task"):
                kids += [int(c) for c in open(f"/proc/{p}/task/{t}/children").read().split()]
        except OSError:
            pass
    return total

def token_for(room):
    return room, mint(SECRET, room, Role.EDITOR, "Ed", user_id="ed")


async def edit_round_trips(port, room_token, flood=None, samples=100):
    """p50 and p99 of: one y-websocket client inserts a character, another sees it (ms)."""
    from pycrdt import Text
    from tests.yclient import YClient

    room, token = room_token
    url = f"ws://127.0.0.1:{port}/yjs/{room}?token={token}"
    a, b = await YClient.connect(url), await YClient.connect(url)
    await a.synced.wait()
    await b.synced.wait()
    flooding = None
    if flood is not None:
        http, term_room, term_token = flood
        t = (await http.post(f"/api/rooms/{term_room}/terminals", json={})).json()
        flooding = await websockets.connect(f"ws://127.0.0.1:{port}/terminal/{term_room}/{t['id']}?token={term_token}", max_size=None)
        drain = asyncio.create_task(_drain(flooding))
        await flooding.send(json.dumps(["stdin", "yes\r"]))
        await asyncio.sleep(1.0)  # the flood is running before the first sample
    times = []
    for i in range(samples):
        want = i + 1
        start = time.perf_counter()
        a.text.insert(len(a.text), "x")
        while len(str(b.text)) < want:  # polled finely: the delay itself is what is measured
            if time.perf_counter() - start > 10:
                raise TimeoutError("an edit did not arrive within 10 s")
            await asyncio.sleep(0.0002)
        times.append((time.perf_counter() - start) * 1000)
        await asyncio.sleep(0.01)
    if flooding is not None:
        await flooding.send(json.dumps(["stdin", "\x03"]))
        drain.cancel()
        await flooding.close()
    await a.close()
    await b.close()
    ordered = sorted(times)
    return {"p50": statistics.median(times), "p99": ordered[int(len(ordered) * 0.99) - 1]}


async def _drain(ws):
    async for _ in ws:
        pass


async def main():
    tmp = Path(tempfile.mkdtemp())
    settings = dataclasses.replace(Settings(), port=0, db=f"sqlite:///{tmp/'db'}", log_format="text", secret=SECRET, kernels=False)
    app = create_app(settings, extensions=[Terminals(KernelSettings(), enabled=True, settings=TerminalSettings(max_per_room=20))])
    server = Server(uvicorn_config(app, settings, signals=False))
    task = await start_serving(server)
    port = server.port
    room = "bench"
    token = mint(SECRET, room, Role.OWNER, "Ada", user_id="ada")
    vtoken = mint(SECRET, room, Role.VIEWER, "V", user_id="v")
    http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers={"authorization": f"Bearer {token}"}, timeout=30)
    results = {}
    for watchers in (0, 100):
        t = (await http.post(f"/api/rooms/{room}/terminals", json={})).json()
        url = f"ws://127.0.0.1:{port}/terminal/{room}/{t['id']}"
        typist = await websockets.connect(url + f"?token={token}", max_size=None)
        views = [await websockets.connect(url + f"?token={vtoken}", max_size=None) for _ in range(watchers)]
        got = asyncio.Queue()
        async def read(ws, q):
            async for m in ws:
                f = json.loads(m)
                if f[0] == "stdout" and q is not None:
                    q.put_nowait((time.perf_counter(), f[1]))
        last = asyncio.Queue()
        readers = [asyncio.create_task(read(typist, got))] + [asyncio.create_task(read(v, last if i == watchers - 1 else None)) for i, v in enumerate(views)]
        await asyncio.sleep(1.5)  # the prompt and the watchers' snapshots go by before measuring
        while not got.empty(): got.get_nowait()
        while not last.empty(): last.get_nowait()
        own, far = [], []
        for i in range(200):
            key = "x" if i % 2 == 0 else "\x7f"
            start = time.perf_counter()
            await typist.send(json.dumps(["stdin", key]))
            at, _ = await got.get()
            own.append((at - start) * 1000)
            if watchers:
                at2, _ = await last.get()
                far.append((at2 - start) * 1000)
            await asyncio.sleep(0.02)
        q = lambda xs, p: sorted(xs)[int(len(xs) * p) - 1]
        results[watchers] = {"typist_p50": statistics.median(own), "typist_p99": q(own, 0.99)}
        if far:
            results[watchers].update({"watcher_p50": statistics.median(far), "watcher_p99": q(far, 0.99)})
        # fan-out throughput: 2 MB of output to every watcher
        if watchers:
            done = asyncio.Event()
            counts = [0] * watchers
            for r in readers: r.cancel()
            async def count(ws, i):
                async for m in ws:
                    f = json.loads(m)
                    if f[0] == "stdout":
                        counts[i] += len(f[1])
                        if "bench-end" in f[1] and i == watchers - 1: done.set()
            cs = [asyncio.create_task(count(v, i)) for i, v in enumerate(views)]
            start = time.perf_counter()
            await typist.send(json.dumps(["stdin", "head -c 2000000 /dev/zero | tr '\\0' 'y'; echo; echo bench-'end'\r"]))
            await asyncio.wait_for(done.wait(), 120)
            el = time.perf_counter() - start
            results[watchers]["fanout_MBps_per_watcher"] = 2.0 / el
            results[watchers]["fanout_MBps_total"] = 2.0 * watchers / el
            for c in cs: c.cancel()
        for r in readers: r.cancel()
        for v in views: await v.close()
        await typist.close()
    # memory per terminal
    base = rss_kib(os.getpid())
    ids = []
    for _ in range(10):
        ids.append((await http.post(f"/api/rooms/{room}/terminals", json={})).json()["id"])
    await asyncio.sleep(2)  # let the shells settle before reading their memory
    svc = app.state.terminals
    procs = sum(tree_rss(t.shell.process.pid) for t in svc.rooms[room].values() if t.shell and t.shell.process)
    server_delta = rss_kib(os.getpid()) - base
    n = len(svc.rooms[room])
    results["memory"] = {"terminals": n, "sandbox_processes_kib_per_terminal": procs // n, "server_kib_delta_for_10": server_delta}
    # another room's edit round trip (one client's keystroke seen by another), quiet and beside a flood
    for ident in ids:
        await http.delete(f"/api/rooms/{room}/terminals/{ident}")
    results["edit_round_trip_ms"] = {
        "quiet": await edit_round_trips(port, token_for("edits-quiet")),
        "beside_a_flood": await edit_round_trips(port, token_for("edits-flood"), flood=(http, room, token)),
    }
    print(json.dumps(results, indent=1))
    await http.aclose()
    server.should_exit = True
    await task

if __name__ == "__main__":
    asyncio.run(main())
