"""Presence renewals in one room spread over two nodes sharing a Redis: what they cost each node.

Every client announces a state once, takes the server's stamped state (its colour) as its own, then
renews it every 15 s at a random phase, as y-protocols does; nobody edits. Over the measured window the
script reads, per node, the frames it sent to its clients and the messages it published to the other
node (``/metrics``: load-independent counts) and its CPU seconds (``/proc``: noisy on a shared machine).

    .venv/bin/python bench/cluster_renewals.py [--clients 200] [--seconds 30] [--source DIR]

``--source DIR`` runs the nodes from another checkout's ``pairroom`` package (e.g. ``git archive``
of an older commit) with this project's virtualenv, for a before/after comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import websockets

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pairroom.protocol import sync as protocol  # noqa: E402

RENEW_SECONDS = 15.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metric(text: str, name: str, label: str = "") -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and label in line and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


class Client:
    """A raw y-websocket client that shows one awareness state and renews it."""

    def __init__(self, url: str, cid: int, name: str) -> None:
        self.url, self.cid, self.name = url, cid, name
        self.clock = 0
        self.state = json.dumps({"user": {"name": name}, "file": f"{name}.py"}, separators=(",", ":"))
        self.received = 0
        self.ws: websockets.ClientConnection | None = None

    async def run(self, ready: asyncio.Event) -> None:
        async with websockets.connect(self.url, max_size=None) as ws:
            self.ws = ws
            await ws.send(protocol.sync_step1(b"\x00"))
            await self.announce()
            async for frame in ws:
                assert isinstance(frame, bytes)
                self.received += 1
                message = protocol.decode_message(frame)
                if message.type is protocol.MessageType.AWARENESS:
                    for entry in protocol.decode_awareness(message.payload):
                        if entry.client_id == self.cid and entry.clock > self.clock:
                            self.clock, self.state = entry.clock, entry.state  # the stamped state
                            ready.set()

    async def announce(self) -> None:
        assert self.ws is not None
        self.clock += 1
        payload = protocol.encode_awareness([protocol.AwarenessEntry(self.cid, self.clock, self.state)])
        await self.ws.send(protocol.awareness_message(payload))


async def renewing(client: Client, until: float) -> None:
    await asyncio.sleep(random.uniform(0, RENEW_SECONDS))
    while time.monotonic() < until:
        await client.announce()
        await asyncio.sleep(RENEW_SECONDS)


async def measure(args: argparse.Namespace) -> dict[str, object]:
    tmp = Path(tempfile.mkdtemp(prefix="pairroom-renewals-"))
    redis_port = free_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(redis_port), "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL
    )
    env = {**os.environ, "PAIRROOM_KERNELS": "false", "PAIRROOM_LOG_LEVEL": "warning"}
    if args.source:
        env["PYTHONPATH"] = str(Path(args.source).resolve())
    nodes = []
    try:
        for n in range(2):
            port = free_port()
            node_env = {**env, "PAIRROOM_REDIS": f"redis://127.0.0.1:{redis_port}/0", "PAIRROOM_NODE_ID": f"n{n}"}
            argv = [sys.executable, "-c", "from pairroom.cli import main; main()", "serve", "--port", str(port)]
            argv += ["--db", f"sqlite:///{tmp}/bench.db"]
            log = open(tmp / f"node{n}.log", "w")
            nodes.append((port, subprocess.Popen(argv, env=node_env, stdout=log, stderr=log, cwd=tmp)))
        async with httpx.AsyncClient() as http:
            for port, _ in nodes:
                for _ in range(200):
                    try:
                        if (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    await asyncio.sleep(0.1)
            clients = [
                Client(f"ws://127.0.0.1:{nodes[i % 2][0]}/yjs/renewals", 1_000_000 + i, f"u{i}")
                for i in range(args.clients)
            ]
            readies = [asyncio.Event() for _ in clients]
            tasks = []
            for client, ready in zip(clients, readies, strict=True):
                tasks.append(asyncio.create_task(client.run(ready)))
                await asyncio.sleep(0.005)
            await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 60)
            await asyncio.sleep(2)  # the joins' relays settle

            async def snapshot() -> list[tuple[float, float, float]]:
                out = []
                for port, proc in nodes:
                    text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
                    sent = metric(text, "pairroom_messages_sent_total")
                    published = metric(text, "pairroom_bus_published_total", 'kind="awareness"')
                    out.append((sent, published, cpu_seconds(proc.pid)))
                return out

            before = await snapshot()
            received_before = sum(c.received for c in clients)
            until = time.monotonic() + args.seconds
            await asyncio.gather(*(renewing(c, until) for c in clients))
            await asyncio.sleep(max(0.0, until - time.monotonic()))
            after = await snapshot()
            received = sum(c.received for c in clients) - received_before
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        per_node = [
            {
                "frames_sent_per_s": round((a[0] - b[0]) / args.seconds, 1),
                "awareness_published_per_s": round((a[1] - b[1]) / args.seconds, 2),
                "cpu_pct": round(100 * (a[2] - b[2]) / args.seconds, 2),
            }
            for a, b in zip(after, before, strict=True)
        ]
        return {
            "clients": args.clients,
            "seconds": args.seconds,
            "frames_received_per_client_per_s": round(received / args.seconds / args.clients, 3),
            "nodes": per_node,
        }
    finally:
        for _, proc in nodes:
            proc.terminate()
        for _, proc in nodes:
            proc.wait(10)
        redis.terminate()
        redis.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--source", help="run the nodes from this directory's pairroom package")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args)), indent=2))


if __name__ == "__main__":
    main()
