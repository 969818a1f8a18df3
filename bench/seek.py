"""Recording benchmarks: seek time in a 100,000-update session, replay start time, storage per hour.

    .venv/bin/python bench/seek.py [--updates 100000] [--busy-seconds 20] [--db sqlite:///...]

1. **Seek.** A one-hour session of ``--updates`` small edits (two people typing into two files, the
   odd backspace, 36 ms apart) is written through the store in the registry's batches (200 updates a
   transaction), compacted every 500 updates as the registry does. Then 50 random points (half seqs,
   half ISO times) are read with ``History.state_at`` + ``files()``: that is ``GET /files?at=``
   without HTTP.
2. **Replay start.** A server with the recorder is started on that database; the time from opening
   ``/replay/{room}?from=<seq>`` to holding the state (sync step 2) is measured for 10 random seqs.
3. **Storage per hour.** Two real clients type 5 keystrokes a second each and move their cursor
   with every keystroke for ``--busy-seconds`` on a fresh SQLite database; the growth of the
   database (log, snapshots, events) is extrapolated to an hour.

Prints one JSON object (the figures in docs/recording.md come from it).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import websockets
from pycrdt import Doc, Map, Text, merge_updates

from pairroom.app import create_app
from pairroom.config import Settings
from pairroom.protocol import sync as protocol
from pairroom.recording.api import attach
from pairroom.recording.history import History, iso
from pairroom.storage.sql import SqlStore
from pairroom.storage.store import NewUpdate
from pairroom.web.runner import Server, uvicorn_config

ROOM = "bench-session"


def session_updates(count: int, start: datetime) -> list[NewUpdate]:
    """Two typists in two files: one character per update, a backspace now and then."""
    doc = Doc()
    out: list[NewUpdate] = []
    step = timedelta(hours=1) / count
    doc.observe(
        lambda e: out.append(
            NewUpdate(f"b:{len(out) + 1}", start + step * len(out), f"client:c{len(out) % 2}:u{len(out) % 2}", e.update)
        )
    )
    files = doc.get("files", type=Map)
    files["main.py"], files["util.py"] = Text(""), Text("")
    rng = random.Random(7)
    words = "def return import for while class self print value index".split()
    buffers = {"main.py": [], "util.py": []}
    while len(out) < count:
        path = "main.py" if len(out) % 2 else "util.py"
        text = files[path]
        if rng.random() < 0.06 and len(text) > 1:
            del text[len(text) - 1 : len(text)]
            continue
        if not buffers[path]:
            buffers[path] = list(rng.choice(words) + (" " if rng.random() < 0.8 else "\n"))
        text.insert(len(text), buffers[path].pop(0))
    return out[:count]


async def build(db: str, count: int, encoding: str) -> tuple[History, SqlStore, list[NewUpdate]]:
    """``encoding="merged"``: snapshots as ``storage/compaction.py`` writes them today
    (``merge_updates``); ``"doc"``: the same state encoded by a Doc (``doc.get_update()``)."""
    store = SqlStore(db)
    await store.open()
    updates = session_updates(count, datetime.now(UTC) - timedelta(hours=1, minutes=1))
    snapshot: bytes | None = None
    folded = Doc()
    last_snap = 0
    for i in range(0, len(updates), 200):
        last = await store.append(ROOM, updates[i : i + 200])
        if last - last_snap >= 500:  # the registry's compaction, folded incrementally here
            if encoding == "doc":
                for u in updates[last_snap:last]:
                    folded.apply_update(u.data)
                snapshot = folded.get_update()
            else:
                parts = ([snapshot] if snapshot else []) + [u.data for u in updates[last_snap:last]]
                snapshot = merge_updates(*parts)
            await store.write_snapshot(ROOM, last, snapshot)
            last_snap = last
    return History(store), store, updates


async def seek_times(history: History, updates: list[NewUpdate], samples: int) -> dict[str, float]:
    rng = random.Random(11)
    times = []
    for i in range(samples):
        seq = rng.randint(1, len(updates))
        point: str = str(seq) if i % 2 else (iso(updates[seq - 1].at) or "")
        started = time.perf_counter()
        state = await history.state_at(ROOM, point)
        state.files()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {
        "median_ms": round(statistics.median(times), 1),
        "p95_ms": round(times[int(len(times) * 0.95) - 1], 1),
        "max_ms": round(times[-1], 1),
    }


async def start_server(db: str) -> tuple[Server, asyncio.Task[None]]:
    settings = dataclasses.replace(Settings(), port=0, db=db, log_format="text", kernels=False, log_level="warning")
    app = create_app(settings)
    attach(app, settings)
    server = Server(uvicorn_config(app, settings, signals=False))
    task = asyncio.create_task(server.serve())
    while not server.ready.is_set():
        await asyncio.sleep(0.01)
    return server, task


async def replay_start_times(db: str, last: int, samples: int) -> dict[str, float]:
    server, task = await start_server(db)
    rng = random.Random(5)
    times = []
    try:
        for _ in range(samples):
            seq = rng.randint(1, last)
            started = time.perf_counter()
            async with websockets.connect(
                f"ws://127.0.0.1:{server.port}/replay/{ROOM}?from={seq}", max_size=None
            ) as ws:
                await ws.send(protocol.sync_step1(Doc().get_state()))
                while True:
                    message = protocol.decode_message(await ws.recv())
                    if message.type is protocol.MessageType.SYNC and message.step is protocol.SyncStep.STEP2:
                        break
            times.append((time.perf_counter() - started) * 1000)
    finally:
        server.should_exit = True
        await task
    times.sort()
    return {"median_ms": round(statistics.median(times), 1), "max_ms": round(times[-1], 1)}


def db_bytes(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        pages, size = conn.execute("PRAGMA page_count").fetchone()[0], conn.execute("PRAGMA page_size").fetchone()[0]
    return int(pages * size)


async def busy_pair(directory: Path, seconds: float) -> dict[str, float]:
    from tests.yclient import YClient

    path = directory / "busy.db"
    db = f"sqlite:///{path}"
    server, task = await start_server(db)
    try:
        clients = [await YClient.connect(f"ws://127.0.0.1:{server.port}/yjs/pair") for _ in range(2)]
        for client in clients:
            await asyncio.wait_for(client.synced.wait(), 5)
        clients[0].doc.get("files", type=Map)["main.py"] = Text("")
        await asyncio.sleep(0.5)
        baseline = db_bytes(path)
        rng = random.Random(3)

        async def typist(client: YClient, offset: float) -> None:
            await asyncio.sleep(offset)
            started = time.monotonic()
            n = 0
            while time.monotonic() - started < seconds:
                text = client.doc.get("files", type=Map)["main.py"]
                if rng.random() < 0.06 and len(text) > 1:
                    del text[len(text) - 1 : len(text)]
                else:
                    text.insert(rng.randint(0, len(text)), rng.choice("abcdefghij \n"))
                await client.set_awareness({"file": "main.py", "cursor": {"anchor": len(text), "head": len(text)}})
                n += 1
                await asyncio.sleep(max(0.0, started + n * 0.2 - time.monotonic()))

        await asyncio.gather(typist(clients[0], 0.0), typist(clients[1], 0.1))
        for client in clients:
            await client.close()
        await asyncio.sleep(1.0)  # the final flushes
    finally:
        server.should_exit = True
        await task
    grown = db_bytes(path) - baseline
    return {
        "measured_seconds": seconds,
        "bytes_measured": grown,
        "bytes_per_hour": int(grown * 3600 / seconds),
        "mib_per_hour": round(grown * 3600 / seconds / 2**20, 1),
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--updates", type=int, default=100_000)
    parser.add_argument("--busy-seconds", type=float, default=20.0)
    parser.add_argument("--snapshot-encoding", choices=["merged", "doc"], default="merged")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        db = f"sqlite:///{directory / 'seek.db'}"
        started = time.perf_counter()
        history, store, updates = await build(db, args.updates, args.snapshot_encoding)
        built = time.perf_counter() - started
        seek = await seek_times(history, updates, 50)
        snapshots = len(await history.db.snapshots(ROOM))
        await store.close()
        replay = await replay_start_times(db, len(updates), 10)
        busy = await busy_pair(directory, args.busy_seconds)
    print(
        json.dumps(
            {
                "updates": len(updates),
                "snapshots": snapshots,
                "snapshot_encoding": args.snapshot_encoding,
                "build_seconds": round(built, 1),
                "seek": seek,
                "replay_start": replay,
                "busy_pair_storage": busy,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
