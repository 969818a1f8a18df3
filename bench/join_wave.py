"""A wave of new clients joining a large room at once: the server's CPU and RSS for the wave.

Replays the automerge-paper trace into ``--texts`` texts (the updates are cached under the system's
temp dir), sends them into one room of a fresh ``pairroom serve`` (merged 10 at a time, paced), waits
for the flushes and compactions, then opens ``--joiners`` raw y-websocket clients with an empty state
vector at once and waits until each has applied its sync step 2.

    .venv/bin/python bench/join_wave.py [--texts 34] [--joiners 8]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import websockets
from pycrdt import Doc, Text, merge_updates

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pairroom.protocol import sync as protocol  # noqa: E402

# beside the repository (a worktree sits one level deeper)
TRACE = next(
    (
        p
        for p in (d / "shared" / "data" / "automerge-paper.json.gz" for d in (ROOT.parent, ROOT.parent.parent))
        if p.exists()
    ),
    ROOT.parent / "shared" / "data" / "automerge-paper.json.gz",
)


def updates(texts: int) -> list[bytes]:
    cache = Path(tempfile.gettempdir()) / f"pairroom-join-wave-{texts}.pickle"
    if cache.exists():
        return list(pickle.loads(cache.read_bytes()))
    trace = json.loads(gzip.open(TRACE).read())
    patches = [p for txn in trace["txns"] for p in txn["patches"]]
    out: list[bytes] = []
    for k in range(texts):
        doc: Doc = Doc()
        text = doc.get("text" if k == 0 else f"file-{k}", type=Text)
        sub = doc.observe(lambda event: out.append(event.update))
        for i in range(0, len(patches), 1000):
            with doc.transaction():
                for pos, deleted, inserted in patches[i : i + 1000]:
                    if deleted:
                        del text[pos : pos + deleted]
                    if inserted:
                        text.insert(pos, inserted)
        doc.unobserve(sub)
    cache.write_bytes(pickle.dumps(out))
    return out


def status(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    out["cpu"] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


async def joiner(url: str) -> int:
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(protocol.sync_step1(protocol.EMPTY_STATE_VECTOR))
        while True:
            frame = await ws.recv()
            assert isinstance(frame, bytes)
            message = protocol.decode_message(frame)
            if message.type is protocol.MessageType.SYNC and message.step is protocol.SyncStep.STEP2:
                Doc().apply_update(message.payload)
                return len(message.payload)


async def measure(args: argparse.Namespace) -> dict[str, float]:
    log = updates(args.texts)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp = Path(tempfile.mkdtemp(prefix="pairroom-join-wave-"))
    argv = [str(Path(sys.executable).with_name("pairroom")), "serve", "--port", str(port)]
    argv += ["--db", f"sqlite:///{tmp}/bench.db"]
    env = {**os.environ, "PAIRROOM_KERNELS": "false", "PAIRROOM_LOG_LEVEL": "warning"}
    server = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"ws://127.0.0.1:{port}/yjs/large"
        for _ in range(200):
            try:
                async with websockets.connect(url):
                    break
            except OSError:
                await asyncio.sleep(0.1)
        async with websockets.connect(url, max_size=None) as seeder:
            await seeder.send(protocol.sync_step1(protocol.EMPTY_STATE_VECTOR))
            for i in range(0, len(log), 10):
                await seeder.send(protocol.sync_update(merge_updates(*log[i : i + 10])))
                await asyncio.sleep(0.008)  # under the per-connection rate limit
            await asyncio.sleep(3)  # flushed and compacted
            before = status(server.pid)
            started = time.monotonic()
            sizes = await asyncio.gather(*(joiner(url) for _ in range(args.joiners)))
            wall = time.monotonic() - started
            after = status(server.pid)
        return {
            "document_mib": round(sizes[0] / 2**20, 2),
            "joiners": args.joiners,
            "wave_ms": round(wall * 1000),
            "server_cpu_ms": round((after["cpu"] - before["cpu"]) * 1000),
            "rss_before_mib": round(before["VmRSS"], 1),
            "rss_added_mib": round(after["VmRSS"] - before["VmRSS"], 1),
            "rss_peak_mib": round(after["VmHWM"], 1),
        }
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=34)
    parser.add_argument("--joiners", type=int, default=8)
    print(json.dumps(asyncio.run(measure(parser.parse_args())), indent=2))


if __name__ == "__main__":
    main()
