"""Two pairroom-only measurements the peer suite cannot make:

* ``cluster``: two nodes sharing rooms through a real Redis. The added latency of a cross-node edit over a
  same-node edit (S1 shape: 2 writers at 10 edits/s, their clients on one node, then one client on each
  node), and the throughput of one busy room (10 writers, 40 readers) spread over both nodes, stepped up.
* ``presence``: S2 with presence (1 writer at 20 edits/s with a cursor on every edit, 200 watchers, 15 s
  awareness renewals), once with every watcher a participant (open mode: the naive N x N relay of
  renewals) and once with the watchers as viewers (a server secret and viewer tokens: their presence
  goes to participants only, viewers get a summary).

Servers run on CPU 0, the generator on CPU 1 (taskset). Median of ``--runs`` runs per row. Results go to
``bench/results/cluster_presence.md`` and ``.json``.

    .venv/bin/python bench/cluster_presence.py [--quick] [--runs 3] [--only cluster|presence]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
LOADGEN = BENCH / "loadgen" / "loadgen.mjs"
PAIRROOM = str(Path(sys.executable).with_name("pairroom"))
SECRET = "bench-secret-0123456789abcdef0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(cpu: int, argv: list[str]) -> list[str]:
    return (
        ["taskset", "-c", str(cpu)] if shutil.which("taskset") and os.cpu_count() and os.cpu_count() > 1 else []
    ) + argv


class Node:
    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        log = open(tmp / f"node-{self.port}.log", "w")
        full = {**os.environ, "PAIRROOM_KERNELS": "false", "PAIRROOM_LOG_LEVEL": "warning", **env}
        self.proc = subprocess.Popen(
            pinned(0, [PAIRROOM, "serve", "--port", str(self.port), "--db", f"sqlite:///{tmp}/bench.db"]),
            env=full,
            stdout=log,
            stderr=log,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"node on {self.port} did not start")

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/yjs"

    def cpu_seconds(self) -> float:
        """utime + stime of the node process (pinned: the taskset wrapper execs into it)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def bytes_sent(self) -> float:
        import urllib.request

        text = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5).read().decode()
        for line in text.splitlines():
            if line.startswith("pairroom_bytes_sent_total "):
                return float(line.split()[1])
        return 0.0

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Redis:
    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.proc = subprocess.Popen(
            pinned(
                0,
                [
                    binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(tmp),
                ],
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis did not start")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def loadgen(scenario: dict) -> dict:
    done = subprocess.run(
        pinned(1, ["node", str(LOADGEN), json.dumps(scenario)]), capture_output=True, text=True, timeout=600
    )
    if done.returncode != 0:
        raise RuntimeError(f"loadgen failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout)


def figures(result: dict) -> dict:
    lat = result["latencyMs"] or {}
    presence = result.get("presenceLatencyMs") or {}
    return {
        "p50": lat.get("p50"),
        "p99": lat.get("p99"),
        "max": lat.get("max"),
        "delivery": result["edits"]["deliveryRatio"],
        "converged": result["convergence"]["converged"],
        "presence_p99": presence.get("p99"),
    }


def median_row(runs: list[dict]) -> dict:
    row = {}
    for key in ("p50", "p99", "max", "delivery", "presence_p99", "server_cpu_s", "mib_sent"):
        values = [r[key] for r in runs if r.get(key) is not None]
        row[key] = round(statistics.median(values), 2) if values else None
    row["converged"] = all(r["converged"] for r in runs)
    return row


def measure_cluster(quick: bool, runs: int) -> dict:
    out: dict = {}
    duration = 6 if quick else 20
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        redis = Redis(tmp)
        nodes = [Node(tmp, {"PAIRROOM_REDIS": redis.url}) for _ in range(2)]
        try:
            time.sleep(1.5)  # heartbeats: each node learns the other before the first room opens
            for label, urls in (
                ("same node", [nodes[0].url, nodes[0].url]),
                ("cross node", [nodes[0].url, nodes[1].url]),
            ):
                results = []
                for run in range(runs):
                    sc = {
                        "url": urls[0],
                        "urls": urls,
                        "roomPrefix": f"pair-{label[0]}-{run}-{time.time_ns()}",
                        "rooms": 1,
                        "clientsPerRoom": 2,
                        "editsPerSec": 10,
                        "warmup": 2,
                        "duration": duration,
                    }
                    results.append(figures(loadgen(sc)))
                out[f"pair, {label}"] = {"runs": results, **median_row(results)}
            rates = [10, 20] if quick else [10, 20, 40]
            for label, urls in (("1 node", [nodes[0].url]), ("2 nodes", [nodes[0].url, nodes[1].url])):
                best = None
                steps = []
                for rate in rates:
                    sc = {
                        "url": urls[0],
                        "urls": urls,
                        "roomPrefix": f"busy-{rate}-{time.time_ns()}",
                        "rooms": 1,
                        "clientsPerRoom": 50,
                        "writers": 10,
                        "editsPerSec": rate,
                        "warmup": 1,
                        "duration": 4 if quick else 6,
                        "awarenessRenewS": 0,
                    }
                    f = figures(loadgen(sc))
                    steps.append({"rate": rate, **f})
                    if f["delivery"] == 1 and f["p99"] is not None and f["p99"] < 250 and f["converged"]:
                        best = rate
                    else:
                        break
                out[f"busy room, {label}"] = {"steps": steps, "highest_rate": best}
        finally:
            for node in nodes:
                node.stop()
            redis.stop()
    return out


def measure_presence(quick: bool, runs: int) -> dict:
    out: dict = {}
    watchers = 200
    duration = 16 if quick else 30  # long enough for every watcher's 15 s renewal
    from pairroom.web.auth import mint

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for label, env, reader_role in (
            (
                "before: watchers as editors, every state relayed at once to everyone",
                {"PAIRROOM_SECRET": SECRET, "PAIRROOM_AWARENESS_TICK_MS": "0"},
                "editor",
            ),
            (
                "after: watchers as viewers (scoped + summary), relay throttled per room tick",
                {"PAIRROOM_SECRET": SECRET},
                "viewer",
            ),
        ):
            node = Node(tmp, env)
            try:
                results = []
                for run in range(runs):
                    room = f"mentor-{run}-{time.time_ns()}"
                    sc = {
                        "url": node.url,
                        "roomPrefix": room,
                        "rooms": 1,
                        "clientsPerRoom": watchers + 1,
                        "writers": 1,
                        "editsPerSec": 20,
                        "presence": True,
                        "awarenessRenewS": 15,
                        "warmup": 2,
                        "duration": duration,
                    }
                    sc["writerToken"] = mint(SECRET, f"{room}-0", "owner", "Mentor")
                    sc["readerToken"] = mint(SECRET, f"{room}-0", reader_role, "Learner")
                    cpu0, bytes0 = node.cpu_seconds(), node.bytes_sent()
                    results.append(figures(loadgen(sc)))
                    results[-1]["server_cpu_s"] = round(node.cpu_seconds() - cpu0, 2)
                    results[-1]["mib_sent"] = round((node.bytes_sent() - bytes0) / 2**20, 1)
                out[label] = {"runs": results, **median_row(results)}
            finally:
                node.stop()
    return out


def render(report: dict) -> str:
    lines = [
        "# Cluster and presence benchmarks",
        "",
        f"Generated {report['generated_at']} by `bench/cluster_presence.py` "
        f"({'quick' if report['quick'] else 'full'}; median of {report['runs']} runs).",
        "",
    ]
    if "cluster" in report:
        lines += [
            "## Two nodes through Redis",
            "",
            "| case | p50 ms | p99 ms | max ms | delivery | converged |",
            "| --- | ---: | ---: | ---: | ---: | --- |",
        ]
        for case, row in report["cluster"].items():
            if "steps" in row:
                continue
            lines.append(
                f"| {case} | {row['p50']} | {row['p99']} | {row['max']} | {row['delivery']} | {row['converged']} |"
            )
        same, cross = report["cluster"].get("pair, same node"), report["cluster"].get("pair, cross node")
        if same and cross and same["p99"] is not None and cross["p99"] is not None:
            lines += [
                "",
                f"Added by a cross-node hop: p50 {cross['p50'] - same['p50']:+.2f} ms, "
                f"p99 {cross['p99'] - same['p99']:+.2f} ms.",
            ]
        lines += [
            "",
            "| busy room (10 writers, 50 clients) | highest rate per writer with 100% delivery, p99 < 250 ms | steps (rate: p99 ms) |",
            "| --- | ---: | --- |",
        ]
        for case, row in report["cluster"].items():
            if "steps" in row:
                steps = ", ".join(f"{s['rate']}: {s['p99']}" for s in row["steps"])
                lines.append(f"| {case} | {row['highest_rate']} | {steps} |")
    if "presence" in report:
        lines += [
            "",
            "## Presence in a mentor session (1 writer at 20 edits/s with cursor, 200 watchers, renewals every 15 s)",
            "",
            "| watchers | edit p50 ms | edit p99 ms | presence p99 ms | delivery | converged | server CPU s | MiB sent |",
            "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
        ]
        for case, row in report["presence"].items():
            lines.append(
                f"| {case} | {row['p50']} | {row['p99']} | {row['presence_p99']} | {row['delivery']} | "
                f"{row['converged']} | {row['server_cpu_s']} | {row['mib_sent']} |"
            )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--only", choices=["cluster", "presence"])
    args = parser.parse_args()
    runs = args.runs or (1 if args.quick else 3)
    if not (BENCH / "loadgen" / "node_modules").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=BENCH / "loadgen", check=True)
    report: dict = {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "quick": args.quick,
        "runs": runs,
    }
    if args.only in (None, "cluster"):
        report["cluster"] = measure_cluster(args.quick, runs)
    if args.only in (None, "presence"):
        report["presence"] = measure_presence(args.quick, runs)
    results = BENCH / "results"
    results.mkdir(exist_ok=True)
    (results / "cluster_presence.json").write_text(json.dumps(report, indent=1))
    (results / "cluster_presence.md").write_text(render(report))
    print(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
