#!/usr/bin/env python3
"""Three pairroom nodes on a real Redis Cluster (3 masters, 3 replicas): what it delivers, and what
it costs Redis.

Rooms are spread over the nodes and over the masters (their channels hash to slots); every room has
one client on each node and every client types, so every delivery crosses the cluster (a node's
``SPUBLISH`` on the room's master, read by the two other nodes). For each load step it reports:

* delivered edits/s (an edit seen by a client of another node), cross-node p50/p99 (typed on one
  node, seen on another: websocket in, integrate, ``SPUBLISH``, ``smessage``, integrate, websocket out);
* Redis CPU per delivered edit: ``used_cpu_sys + used_cpu_user`` from ``INFO cpu`` of every
  redis-server, summed over the six, across the measured window (cluster bus and cron included);
* ``SPUBLISH`` per second on the busiest master (``INFO commandstats``), and pairroom CPU;

then memory per room: node RSS and Redis ``used_memory`` before and after opening a batch of rooms
that stay loaded (one client per node each, a few hundred bytes of text).

The load generator is ``bench/loadgen`` (Node.js, the one ``bench/run.py`` uses). Nothing is pinned:
on a 2-core machine nodes, Redis and the generator share both cores, so figures are for comparing
steps and sizing, not absolute. PostgreSQL holds the rooms (a fresh database per run, on the server
``scripts/ensure-postgres`` finds or starts, as the tests and ``bench/run.py`` use).

    .venv/bin/python bench/cluster.py [--quick] [--single]

Results: ``bench/results/cluster.md`` and ``cluster.json``; ``--single`` runs the same steps on one
plain Redis (``cluster-single-redis.md``), to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import redis
from redis.crc import key_slot

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pairroom.protocol import keys  # noqa: E402

BENCH = ROOT / "bench"
LOADGEN = BENCH / "loadgen"
RESULTS = BENCH / "results"
PAIRROOM = str(Path(sys.executable).with_name("pairroom"))
HOST = "127.0.0.1"


def free_port(limit: int = 65535) -> int:
    while True:
        with socket.socket() as s:
            s.bind((HOST, 0))
            port = int(s.getsockname()[1])
        if port <= limit:
            return port


def postgres_admin_url() -> str:
    out = subprocess.run(
        [str(ROOT / "scripts" / "ensure-postgres")], capture_output=True, text=True, timeout=600, check=True
    )
    return out.stdout.strip().splitlines()[-1]


def pg_execute(admin_url: str, sql: str) -> None:
    """One statement outside a transaction (CREATE/DROP DATABASE)."""
    import asyncpg

    async def run() -> None:
        connection = await asyncpg.connect(admin_url.replace("postgresql+asyncpg://", "postgresql://"), timeout=10)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(run())


def wait_port(port: int, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} on {port} did not start")


class Cluster:
    """Six ``redis-server --cluster-enabled yes`` joined by ``redis-cli --cluster create``."""

    def __init__(self, tmp: Path) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
        self.ports: list[int] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        for i in range(6):
            port, bus = free_port(55535), free_port()
            work = tmp / f"redis-{i}"
            work.mkdir()
            self.procs.append(
                subprocess.Popen(
                    [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no",
                     "--dir", str(work), "--cluster-enabled", "yes", "--cluster-port", str(bus),
                     "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "5000"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )
            )  # fmt: skip
            self.ports.append(port)
        for port in self.ports:
            wait_port(port, "redis-server")
        subprocess.run(
            [cli, "--cluster", "create", *(f"{HOST}:{p}" for p in self.ports), "--cluster-replicas", "1",
             "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while not all(b"cluster_state:ok" in self.client(p).execute_command("CLUSTER", "INFO") for p in self.ports):
            if time.monotonic() > deadline:
                raise RuntimeError("redis cluster not ok in 30 s")
            time.sleep(0.1)

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"{HOST}:{p}" for p in self.ports)

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(host=HOST, port=port, socket_timeout=5)

    def slot_owners(self) -> dict[int, int]:
        owners: dict[int, int] = {}
        for start, end, master, *_ in self.client(self.ports[0]).execute_command("CLUSTER", "SLOTS"):
            for slot in range(int(start), int(end) + 1):
                owners[slot] = int(master[1])
        return owners

    def sample(self) -> dict[int, dict[str, float]]:
        """Per server: CPU seconds, SPUBLISH calls, used memory."""
        out = {}
        for port in self.ports:
            c = self.client(port)
            cpu = c.info("cpu")
            stats = c.info("commandstats")
            memory = c.info("memory")
            out[port] = {
                "cpu": float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]),
                "spublish": float(stats.get("cmdstat_spublish", {}).get("calls", 0)),
                "memory": float(memory["used_memory"]),
            }
        return out

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()


class SingleRedis(Cluster):
    """One plain ``redis-server`` in the cluster's place (``--single``): the same steps for comparison."""

    def __init__(self, tmp: Path) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        port = free_port()
        self.ports = [port]
        self.procs = [
            subprocess.Popen(
                [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no", "--dir", str(tmp)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        ]
        wait_port(port, "redis-server")

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.ports[0]}/0"

    def slot_owners(self) -> dict[int, int]:
        return dict.fromkeys(range(16384), self.ports[0])


class Node:
    def __init__(self, tmp: Path, i: int, db: str, env: dict[str, str]) -> None:
        self.port = free_port()
        self.log_path = tmp / f"node-{i}.log"
        self.log = open(self.log_path, "w")
        full = {
            **os.environ,
            "PAIRROOM_KERNELS": "false",
            "PAIRROOM_LOG_LEVEL": "warning",
            "PAIRROOM_LOG_FORMAT": "json",
            "PAIRROOM_NODE_ID": f"node{i}",
            "PAIRROOM_ROOM_IDLE_SECONDS": "600",  # rooms stay loaded: the memory step counts them
            **env,
        }
        self.proc = subprocess.Popen(
            [PAIRROOM, "serve", "--port", str(self.port), "--db", db],
            env=full,
            stdout=self.log,
            stderr=self.log,
        )
        wait_port(self.port, "pairroom node")

    @property
    def url(self) -> str:
        return f"ws://{HOST}:{self.port}/yjs"

    def warnings(self) -> dict[str, int]:
        """What the node logged (warnings and worse), by message: held messages, lost masters..."""
        counts: dict[str, int] = {}
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                msg = str(json.loads(line).get("msg", ""))[:80]
            except ValueError:
                msg = line[:80]
            counts[msg] = counts.get(msg, 0) + 1
        return counts

    def cpu(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return float(line.split()[1]) * 1024
        return 0.0

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def ensure_loadgen() -> None:
    if not (LOADGEN / "node_modules").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=LOADGEN, check=True)


def loadgen(scenario: dict[str, Any], on_event: dict[str, Any]) -> dict[str, Any]:
    """Run the generator; ``on_event[name]()`` is called when it announces ``name`` (its measured
    window's start and end), so samples cover exactly that window."""
    proc = subprocess.Popen(
        ["node", str(LOADGEN / "loadgen.mjs"), json.dumps(scenario)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    tail: list[str] = []

    def read_events() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            tail.append(line)
            try:
                event = json.loads(line).get("event")
            except ValueError:
                continue
            if event in on_event:
                on_event[event]()

    reader = threading.Thread(target=read_events, daemon=True)
    reader.start()
    assert proc.stdout is not None
    out = proc.stdout.read()  # stderr is the reader thread's alone
    proc.wait(60)
    reader.join(10)
    if proc.returncode != 0:
        raise RuntimeError(f"loadgen failed: {''.join(tail[-20:])}")
    return json.loads(out)


def idle_redis_cpu(cluster: Cluster, seconds: float = 5.0) -> float:
    """Redis CPU seconds per second with nodes connected and no room open: the cluster bus, cron,
    the nodes' heartbeats and pings; what every step pays whatever its load."""
    before, t0 = cluster.sample(), time.monotonic()
    time.sleep(seconds)
    after, t1 = cluster.sample(), time.monotonic()
    return sum(after[p]["cpu"] - before[p]["cpu"] for p in cluster.ports) / (t1 - t0)


def load_step(
    cluster: Cluster, nodes: list[Node], rooms: int, rate: float, duration: float, tag: str, idle: float
) -> dict:
    prefix = f"c{tag}-{time.time_ns()}"
    owners = cluster.slot_owners()
    per_master: dict[int, int] = {}
    for r in range(rooms):
        port = owners[key_slot(keys.room_channel(f"{prefix}-{r}").encode())]
        per_master[port] = per_master.get(port, 0) + 1
    samples: dict[str, Any] = {}

    def take(name: str) -> None:
        samples[name] = {"redis": cluster.sample(), "nodes": [n.cpu() for n in nodes], "t": time.monotonic()}

    result = loadgen(
        {
            "url": nodes[0].url,
            "urls": [n.url for n in nodes],
            "roomPrefix": prefix,
            "rooms": rooms,
            "clientsPerRoom": len(nodes),
            "writers": "all",
            "editsPerSec": rate,
            "warmup": 2,
            "duration": duration,
            "settle": 10,
            "awarenessRenewS": 0,
        },
        {"measure_start": lambda: take("start"), "measure_end": lambda: take("end")},
    )
    start, end = samples["start"], samples["end"]
    window = end["t"] - start["t"]
    delivered = result["edits"]["delivered"]
    redis_cpu = {p: end["redis"][p]["cpu"] - start["redis"][p]["cpu"] for p in cluster.ports}
    spublish = {p: end["redis"][p]["spublish"] - start["redis"][p]["spublish"] for p in cluster.ports}
    lat = result["latencyMs"] or {}
    return {
        "rooms": rooms,
        "rooms_per_master": sorted(per_master.values()),
        "clients": rooms * len(nodes),
        "edits_per_client_per_s": rate,
        "window_s": round(window, 1),
        "offered_edits_per_s": round(result["edits"]["offeredPerSec"], 1),
        "delivered_edits_per_s": round(delivered / duration, 1),  # edits sent in the generator's window
        "delivery_ratio": result["edits"]["deliveryRatio"],
        "converged": result["convergence"]["converged"],
        "p50_ms": lat.get("p50"),
        "p99_ms": lat.get("p99"),
        "redis_cpu_s": round(sum(redis_cpu.values()), 3),
        "redis_cpu_us_per_delivered_edit": round(sum(redis_cpu.values()) / max(delivered, 1) * 1e6, 1),
        "redis_cpu_us_per_delivered_edit_net_of_idle": round(
            max(0.0, sum(redis_cpu.values()) - idle * window) / max(delivered, 1) * 1e6, 1
        ),
        "busiest_master_spublish_per_s": round(max(spublish.values()) / window, 1),
        "busiest_master_cpu_percent": round(max(redis_cpu.values()) / window * 100, 1),
        "pairroom_cpu_s": round(sum(e - s for s, e in zip(start["nodes"], end["nodes"], strict=True)), 2),
        "node_log": [n.warnings() for n in nodes],  # cumulative since the node started
    }


def memory_step(cluster: Cluster, nodes: list[Node], rooms: int, batch: int = 150) -> dict:
    """Open ``rooms`` rooms with one client per node and a few edits each, ``batch`` at a time (so
    joins do not pile up on a busy machine), and leave them loaded."""
    time.sleep(2)
    before_rss = [n.rss() for n in nodes]
    before_redis = sum(s["memory"] for s in cluster.sample().values())
    text = 0
    for first in range(0, rooms, batch):
        result = loadgen(
            {
                "url": nodes[0].url,
                "urls": [n.url for n in nodes],
                "roomPrefix": f"m{first}-{time.time_ns()}",
                "rooms": min(batch, rooms - first),
                "clientsPerRoom": len(nodes),
                "writers": 1,
                "editsPerSec": 2,
                "editPadding": 40,
                "warmup": 1,
                "duration": 4,
                "settle": 10,
                "awarenessRenewS": 0,
                "connectConcurrency": 8,
                "connectTimeout": 120,  # 450 joins on a busy 2-core machine
            },
            {},
        )
        text += result["edits"]["sentTotal"]
    time.sleep(2)  # the clients are gone; the rooms stay loaded (idle timeout 600 s)
    after_rss = [n.rss() for n in nodes]
    after_redis = sum(s["memory"] for s in cluster.sample().values())
    per_node = [(a - b) / rooms for a, b in zip(after_rss, before_rss, strict=True)]
    return {
        "rooms": rooms,
        "text_bytes_per_room": round(text / rooms * 60),
        "node_rss_bytes_per_room": [round(x) for x in per_node],
        "node_rss_kib_per_room_median": round(statistics.median(per_node) / 1024, 1),
        "redis_bytes_per_room": round((after_redis - before_redis) / rooms),
    }


def markdown(report: dict) -> str:
    lines = [
        f"# Three pairroom nodes on {report['redis']} ({report['when']}, {'quick' if report['quick'] else 'full'})",
        "",
        f"{report['redis']} (Redis {report['redis_version']}), 3 nodes, one client per node in every room, every client typing; "
        "every delivery crosses nodes. Nothing pinned, 2 cores shared "
        f"(load average {report['load_average_at_start']:.1f} at the start). Redis idle (every server, "
        f"nodes connected, no room): {report['redis_idle_cpu_percent']} % of a core.",
        "",
        "| rooms (per master) | clients | edits/s/client | delivered edits/s | cross-node p50 | p99 | "
        "Redis CPU per delivered edit (net of idle) | busiest master SPUBLISH/s (CPU) | pairroom CPU | converged |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in report["steps"]:
        lines.append(
            f"| {s['rooms']} ({'/'.join(map(str, s['rooms_per_master']))}) | {s['clients']} | "
            f"{s['edits_per_client_per_s']} | {s['delivered_edits_per_s']} | {s['p50_ms']} ms | {s['p99_ms']} ms | "
            f"{s['redis_cpu_us_per_delivered_edit']} us ({s['redis_cpu_us_per_delivered_edit_net_of_idle']} us) | "
            f"{s['busiest_master_spublish_per_s']} "
            f"({s['busiest_master_cpu_percent']} %) | {s['pairroom_cpu_s']} s in {s['window_s']} s | "
            f"{s['converged']} |"
        )
    m = report["memory"]
    if "error" in m:
        return "\n".join([*lines, "", f"Memory step failed: {m['error']}", ""])
    lines += [
        "",
        f"Memory per room ({m['rooms']} rooms left loaded, ~{m['text_bytes_per_room']} bytes of text each): "
        f"node RSS {m['node_rss_kib_per_room_median']} KiB per room per node (median of the three; "
        f"{m['node_rss_bytes_per_room']} bytes), Redis {m['redis_bytes_per_room']} bytes per room "
        "(every server: the holders sets, on a cluster also on the replicas, and the subscriptions).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one short step and a small memory batch")
    parser.add_argument("--single", action="store_true", help="one plain Redis instead of the cluster, to compare")
    args = parser.parse_args()
    ensure_loadgen()
    steps = [(9, 3.0, 8.0)] if args.quick else [(9, 3.0, 15.0), (18, 5.0, 15.0), (30, 5.0, 15.0)]
    memory_rooms = 150 if args.quick else 450
    report: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "quick": args.quick,
        "redis": "one Redis" if args.single else "3 masters + 3 replicas",
    }
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as d:
        tmp = Path(d)
        admin = postgres_admin_url()
        database = f"pairroom_bench_cluster_{os.getpid()}_{int(time.time())}"
        pg_execute(admin, f'CREATE DATABASE "{database}"')
        db = admin.rsplit("/", 1)[0] + "/" + database
        cluster = SingleRedis(tmp) if args.single else Cluster(tmp)
        nodes: list[Node] = []
        try:
            report["redis_version"] = cluster.client(cluster.ports[0]).info("server")["redis_version"]
            nodes = [
                Node(tmp, i, db, {"PAIRROOM_REDIS": cluster.url, "PAIRROOM_HEARTBEAT_SECONDS": "1"}) for i in (1, 2, 3)
            ]
            time.sleep(2)  # heartbeats: each node knows the others before rooms open
            report["redis_idle_cpu_percent"] = round(idle_redis_cpu(cluster) * 100, 2)
            report["load_average_at_start"] = os.getloadavg()[0]
            report["steps"] = []
            for i, (rooms, rate, duration) in enumerate(steps):
                step = load_step(cluster, nodes, rooms, rate, duration, str(i), report["redis_idle_cpu_percent"] / 100)
                report["steps"].append(step)
                print(json.dumps(step), file=sys.stderr)
            try:
                report["memory"] = memory_step(cluster, nodes, memory_rooms)
            except RuntimeError as exc:  # the load steps stand on their own
                report["memory"] = {"error": str(exc)[-500:]}
            print(json.dumps(report["memory"]), file=sys.stderr)
        finally:
            for node in nodes:
                node.stop()
            cluster.stop()
            pg_execute(admin, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    RESULTS.mkdir(exist_ok=True)
    name = "cluster-single-redis" if args.single else "cluster"
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
