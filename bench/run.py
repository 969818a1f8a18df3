#!/usr/bin/env python3
"""Benchmark orchestrator: start a server, drive it with the Node load generator, record the figures.

    python bench/run.py [--quick] [--scenario s1] [--server pairroom] [--runs N]

For every (scenario, server) pair it runs the scenario ``runs`` times (3 by default), each time
against a fresh server process with a fresh temporary SQLite database, and reports the median of
every figure (the raw runs are kept in the JSON). The server is pinned to CPU 0 and the generator to
CPU 1 with ``taskset`` when that is possible, so they do not compete for one core.

Server CPU time (utime + stime from /proc/PID/stat) and RSS (VmRSS/VmHWM from /proc/PID/status) are
sampled when the generator announces the start and the end of its measured window, so setup,
warmup and teardown are not counted.

Writes ``bench/results/latest.json`` (everything) and ``bench/results/latest.md`` (tables).

Adding things later:
  * a server: an entry in ``SERVERS`` (command with placeholders, URL template, how the port is
    found). ``port="assign"`` picks a free port and passes it as ``{port}``; ``port="announce"``
    parses the port out of the server's log with ``announce``.
  * a scenario: an entry in ``SCENARIOS``; its fields map one to one onto the loadgen's scenario JSON
    (see ``Scenario.loadgen_config``).

Standard library only; all traffic goes to 127.0.0.1 and every wait is bounded.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
LOADGEN = BENCH / "loadgen"
RESULTS = BENCH / "results"
VENV = ROOT / ".venv"
HOST = "127.0.0.1"

SERVER_CPU = 0
GENERATOR_CPU = 1


# ---------------------------------------------------------------------------------------------
# registries


def _json_log_port(line: str) -> int | None:
    """pairroom logs one JSON line ``{"msg": "listening", "port": N, ...}`` once it is bound."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if isinstance(record, dict) and record.get("msg") == "listening" and record.get("port"):
        return int(record["port"])
    return None


@dataclass(frozen=True)
class ServerSpec:
    """How to start one server under test.

    ``command`` and ``env`` values are formatted with: ``{python}`` (the venv's interpreter),
    ``{venv}``, ``{root}`` (repository), ``{bench}``, ``{tmp}`` (a fresh directory per run),
    ``{db}`` (a SQLite path inside it), ``{host}`` and, with ``port="assign"``, ``{port}``.
    """

    name: str
    description: str
    command: tuple[str, ...]
    url: str  # the y-websocket URL base; a client connects to f"{url}/{room}"
    port: str = "announce"  # "announce": read from the log; "assign": chosen here, passed as {port}
    announce: Callable[[str], int | None] | None = None
    env: tuple[tuple[str, str], ...] = ()
    start_timeout: float = 30.0
    stop_timeout: float = 15.0
    # log levels (a JSON "level" field) counted as trouble
    trouble_levels: tuple[str, ...] = ("warning", "error", "critical")


SERVERS: dict[str, ServerSpec] = {
    "pairroom": ServerSpec(
        name="pairroom",
        description="pairroom serve (Starlette + pycrdt + uvicorn), SQLite storage",
        command=(
            "{venv}/bin/pairroom",
            "serve",
            "--host",
            "{host}",
            "--port",
            "0",
            "--db",
            "sqlite:///{db}",
            "--log-format",
            "json",
        ),
        url="ws://{host}:{port}/yjs",
        port="announce",
        announce=_json_log_port,
    ),
    # Peers to add here later, each with its own start command:
    #   "y-websocket-server" (@y/websocket-server, node), "hocuspocus" (@hocuspocus/server, node),
    #   "pycrdt-websocket" (python), "relay" (a bare broadcast relay, the floor of what is possible).
}


@dataclass(frozen=True)
class Scenario:
    """One load shape. Durations in seconds; ``quick_*`` replace them under ``--quick``."""

    name: str
    title: str
    rooms: int
    clients_per_room: int
    writers: Any  # "all" | int (first N clients of each room) | list of client indexes
    edits_per_sec: float  # per writer
    duration: float
    warmup: float
    quick_duration: float
    quick_warmup: float
    presence: bool = False  # an awareness cursor update with every edit
    edit_padding: int = 0  # extra characters per edit
    settle: float = 5.0  # upper bound of the quiet period waiting for convergence
    runs: int = 3
    idle_baseline: float = 2.0  # seconds of server CPU sampled with no client, before the load
    workers: int = 0  # loadgen processes; 0 lets the loadgen choose
    servers: tuple[str, ...] = ("pairroom",)
    limits: str = ""  # what bounds the figures of this scenario (for the report)

    def writer_count(self) -> int:
        w = self.writers
        if w == "all":
            return self.clients_per_room
        if isinstance(w, int):
            return min(w, self.clients_per_room)
        return len(w)

    def loadgen_config(self, url: str, quick: bool, run_id: str, workers: int | None) -> dict[str, Any]:
        return {
            "url": url,
            "roomPrefix": f"{self.name}-{run_id}",
            "rooms": self.rooms,
            "clientsPerRoom": self.clients_per_room,
            "writers": self.writers,
            "editsPerSec": self.edits_per_sec,
            "editPadding": self.edit_padding,
            "warmup": self.quick_warmup if quick else self.warmup,
            "duration": self.quick_duration if quick else self.duration,
            "settle": self.settle,
            "presence": self.presence,
            "workers": workers if workers is not None else self.workers,
        }


SCENARIOS: dict[str, Scenario] = {
    "s1": Scenario(
        name="s1",
        title="pair room: 1 room, 2 clients, both writing 10 edits/s",
        rooms=1,
        clients_per_room=2,
        writers="all",
        edits_per_sec=10,
        duration=30,
        warmup=3,
        quick_duration=8,
        quick_warmup=1,
        limits=(
            "Light load: 20 edits/s in, 20 deliveries/s out. Latency is the loopback round trip "
            "through the server's event loop plus timer and scheduling noise of a shared 2-core "
            "machine; the server is nowhere near saturation."
        ),
    ),
    # Later: mentor (1 writer, 100-200 watchers), busy room, many rooms, idle connections,
    # large document, each as one more entry here.
}


# ---------------------------------------------------------------------------------------------
# /proc sampling


CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_sample(pid: int) -> dict[str, Any] | None:
    """CPU seconds (user + system, all threads) and memory of a live process, or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15
    utime, stime = int(fields[11]), int(fields[12])
    mem = {}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            mem[key] = int(value.split()[0])
    return {
        "t": time.monotonic(),
        "cpu_s": (utime + stime) / CLK_TCK,
        "user_s": utime / CLK_TCK,
        "sys_s": stime / CLK_TCK,
        "rss_mib": mem.get("VmRSS", 0) / 1024,
        "hwm_mib": mem.get("VmHWM", 0) / 1024,
        "threads": mem.get("Threads"),
    }


# ---------------------------------------------------------------------------------------------
# environment


def pinning() -> tuple[list[str], list[str], str]:
    """taskset prefixes for the server and the generator, and a note on what was done."""
    taskset = shutil.which("taskset")
    if taskset is None:
        return [], [], "none (taskset not found)"
    try:
        allowed = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        allowed = set(range(os.cpu_count() or 1))
    if not {SERVER_CPU, GENERATOR_CPU} <= allowed:
        return [], [], f"none (CPUs {SERVER_CPU} and {GENERATOR_CPU} not both available: {sorted(allowed)})"
    probe = subprocess.run([taskset, "-c", str(GENERATOR_CPU), "true"], capture_output=True)
    if probe.returncode != 0:
        return [], [], f"none (taskset failed: {probe.stderr.decode(errors='replace').strip()})"
    return (
        [taskset, "-c", str(SERVER_CPU)],
        [taskset, "-c", str(GENERATOR_CPU)],
        f"server on CPU {SERVER_CPU}, generator on CPU {GENERATOR_CPU} (taskset)",
    )


def ensure_loadgen() -> None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        sys.exit("bench: node and npm are needed for the load generator")
    modules = LOADGEN / "node_modules"
    stamp = modules / ".pairroom-bench-npm-ci.stamp"
    lock = LOADGEN / "package-lock.json"
    if stamp.exists() and stamp.stat().st_mtime >= max(lock.stat().st_mtime, (LOADGEN / "package.json").stat().st_mtime):
        return
    print("bench: installing the load generator's packages (npm ci)", file=sys.stderr)
    proc = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=LOADGEN, timeout=300
    )
    if proc.returncode != 0:
        sys.exit("bench: npm ci failed in bench/loadgen")
    stamp.touch()


def tool_version(cmd: list[str]) -> str | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def locked_version(package: str) -> str | None:
    try:
        lock = json.loads((LOADGEN / "package-lock.json").read_text())
        return lock["packages"][f"node_modules/{package}"]["version"]
    except (OSError, KeyError, ValueError):
        return None


def machine_info(pin_note: str) -> dict[str, Any]:
    cpu_model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    pairroom_version = tool_version(
        [str(VENV / "bin" / "python"), "-c", "import importlib.metadata as m; print(m.version('pairroom'))"]
    )
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model,
        "kernel": platform.release(),
        "python": tool_version([str(VENV / "bin" / "python"), "--version"]),
        "node": tool_version(["node", "--version"]),
        "pairroom": pairroom_version,
        "yjs": locked_version("yjs"),
        "y-protocols": locked_version("y-protocols"),
        "ws": locked_version("ws"),
        "pinning": pin_note,
        "git_commit": tool_version(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]),
    }


# ---------------------------------------------------------------------------------------------
# one run


class LineReader(threading.Thread):
    """Drains a pipe line by line (so the child never blocks on a full pipe) into a callback."""

    def __init__(self, stream, on_line: Callable[[str], None]) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.on_line = on_line

    def run(self) -> None:
        for raw in iter(self.stream.readline, b""):
            self.on_line(raw.decode("utf-8", "replace").rstrip("\n"))
        self.stream.close()


class RunningServer:
    def __init__(self, spec: ServerSpec, prefix: list[str], tmp: Path) -> None:
        self.spec = spec
        self.tmp = tmp
        self.port: int | None = None
        self.port_seen = threading.Event()
        self.tail: deque[str] = deque(maxlen=60)
        self.trouble: list[str] = []
        self.trouble_count = 0
        self.lock = threading.Lock()
        values = {
            "python": str(VENV / "bin" / "python"),
            "venv": str(VENV),
            "root": str(ROOT),
            "bench": str(BENCH),
            "tmp": str(tmp),
            "db": str(tmp / "bench.db"),
            "host": HOST,
        }
        if spec.port == "assign":
            self.port = free_port()
            values["port"] = str(self.port)
        self.values = values
        argv = prefix + [part.format(**values) for part in spec.command]
        env = dict(os.environ)
        env.update({k: v.format(**values) for k, v in spec.env})
        self.argv = argv
        self.proc = subprocess.Popen(
            argv, cwd=tmp, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.readers = [LineReader(self.proc.stdout, self._line), LineReader(self.proc.stderr, self._line)]
        for r in self.readers:
            r.start()

    def _line(self, line: str) -> None:
        with self.lock:
            self.tail.append(line)
            if self.port is None and self.spec.announce is not None:
                port = self.spec.announce(line)
                if port:
                    self.port = port
                    self.port_seen.set()
            level = None
            if line.startswith("{"):
                try:
                    level = str(json.loads(line).get("level", "")).lower()
                except (ValueError, AttributeError):
                    level = None
            elif re.search(r"\b(Traceback|ERROR|CRITICAL|WARNING)\b", line):
                level = "error"
            if level in self.spec.trouble_levels:
                self.trouble_count += 1
                if len(self.trouble) < 50:
                    self.trouble.append(line)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.spec.start_timeout
        if self.spec.port == "announce":
            while not self.port_seen.wait(0.1):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(self._failure("did not announce its port"))
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(self._failure("exited during startup"))
            try:
                with socket.create_connection((HOST, self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(self._failure("did not accept connections"))

    def _failure(self, what: str) -> str:
        tail = "\n".join(list(self.tail)[-20:])
        return f"server {self.spec.name} {what} (exit code {self.proc.poll()}); log tail:\n{tail}"

    def url(self) -> str:
        return self.spec.url.format(**{**self.values, "port": self.port})

    def stop(self) -> dict[str, Any]:
        """SIGTERM, then SIGKILL after stop_timeout. Returns how it went."""
        if self.proc.poll() is not None:
            return {"exit_code": self.proc.returncode, "alive_at_end": False, "killed": False}
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        killed = False
        try:
            self.proc.wait(self.spec.stop_timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            killed = True
        for r in self.readers:
            r.join(2)
        return {
            # uvicorn re-raises SIGTERM after its graceful shutdown, so -15 is a clean stop
            "exit_code": self.proc.returncode,
            "graceful": not killed and self.proc.returncode in (0, -signal.SIGTERM),
            "alive_at_end": True,
            "killed": killed,
            "stop_s": round(time.monotonic() - started, 3),
        }


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def run_once(
    scenario: Scenario,
    spec: ServerSpec,
    quick: bool,
    index: int,
    server_prefix: list[str],
    gen_prefix: list[str],
    workers: int | None,
) -> dict[str, Any]:
    record: dict[str, Any] = {"run": index + 1, "ok": False}
    with tempfile.TemporaryDirectory(prefix=f"bench-{spec.name}-") as tmpdir:
        server = RunningServer(spec, server_prefix, Path(tmpdir))
        record["server_command"] = server.argv
        try:
            server.wait_ready()
            record["url"] = server.url()
            # a short idle window first: the server's background cost (timers, keepalives) with
            # nobody connected, to tell fixed costs from per-edit costs
            samples: dict[str, Any] = {"ready": proc_sample(server.proc.pid)}
            time.sleep(scenario.idle_baseline)
            samples["idle_end"] = proc_sample(server.proc.pid)
            config = scenario.loadgen_config(server.url(), quick, f"{int(time.time())}-{index + 1}", workers)
            gen_tail: deque[str] = deque(maxlen=40)
            events: list[dict[str, Any]] = []

            def gen_line(line: str) -> None:
                try:
                    event = json.loads(line)
                except ValueError:
                    gen_tail.append(line)
                    return
                if not isinstance(event, dict) or "event" not in event:
                    gen_tail.append(line)
                    return
                name = event["event"]
                if name in ("measure_start", "measure_end"):
                    samples[name] = proc_sample(server.proc.pid)
                events.append(event)

            budget = config["warmup"] + config["duration"] + config["settle"] + 90
            gen = subprocess.Popen(
                gen_prefix + ["node", str(LOADGEN / "loadgen.mjs"), "-"],
                cwd=LOADGEN,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            stdout_lines: list[str] = []
            readers = [LineReader(gen.stderr, gen_line), LineReader(gen.stdout, stdout_lines.append)]
            for r in readers:
                r.start()
            assert gen.stdin is not None
            gen.stdin.write(json.dumps(config).encode())
            gen.stdin.close()
            try:
                gen.wait(timeout=budget)
            except subprocess.TimeoutExpired:
                gen.kill()
                gen.wait(5)
                record["error"] = f"load generator did not finish within {budget} s"
            for r in readers:
                r.join(5)
            out = "\n".join(stdout_lines)
            samples["after"] = proc_sample(server.proc.pid)
            record["server_alive_after_load"] = server.proc.poll() is None
            try:
                result = json.loads(out.strip().splitlines()[-1])
            except (ValueError, IndexError):
                result = {"ok": False, "error": "no JSON result", "stdout": out[-2000:]}
            record["loadgen"] = result
            record["loadgen_exit_code"] = gen.returncode
            record["loadgen_stderr_tail"] = list(gen_tail)
            record["server_samples"] = samples
            record["figures"] = figures(result, samples)
            record["ok"] = bool(result.get("ok")) and record["server_alive_after_load"] and "error" not in record
            if not result.get("ok") and result.get("error"):
                record["error"] = result["error"]
        except RuntimeError as exc:
            record["error"] = str(exc)
        finally:
            record["server_stop"] = server.stop()
            record["server_trouble_count"] = server.trouble_count
            record["server_trouble"] = server.trouble
            record["server_log_tail"] = list(server.tail)[-15:]
        if server.trouble_count:
            record["ok"] = False
    return record


def figures(result: dict[str, Any], samples: dict[str, Any]) -> dict[str, Any]:
    """The flat per-run numbers the report is built from."""
    lat = result.get("latencyMs") or {}
    edits = result.get("edits") or {}
    gen = result.get("generator") or {}
    start, end = samples.get("measure_start"), samples.get("measure_end")
    cpu_s = end["cpu_s"] - start["cpu_s"] if start and end else None
    ready, idle_end = samples.get("ready"), samples.get("idle_end")
    idle_pct = (
        100 * (idle_end["cpu_s"] - ready["cpu_s"]) / (idle_end["t"] - ready["t"])
        if ready and idle_end and idle_end["t"] > ready["t"]
        else None
    )
    delivered = edits.get("delivered") or 0
    sent = edits.get("sentMeasured") or 0
    window = (result.get("window") or {}).get("durationS")
    ratio = edits.get("deliveryRatio")
    conv = result.get("convergence") or {}
    return {
        "clients": result.get("clients"),
        "edits_per_s": edits.get("offeredPerSec"),
        "deliveries": delivered,
        "p50_ms": lat.get("p50"),
        "p90_ms": lat.get("p90"),
        "p99_ms": lat.get("p99"),
        "max_ms": lat.get("max"),
        "mean_ms": lat.get("mean"),
        "presence_p99_ms": (result.get("presenceLatencyMs") or {}).get("p99"),
        "delivery_pct": 100 * ratio if ratio is not None else None,
        "converged": bool(conv.get("converged")),
        "server_cpu_s": cpu_s,
        "server_cpu_pct": 100 * cpu_s / window if cpu_s is not None and window else None,
        "server_idle_cpu_pct": idle_pct,
        "cpu_ms_per_delivered_edit": 1000 * cpu_s / delivered if cpu_s is not None and delivered else None,
        "cpu_ms_per_sent_edit": 1000 * cpu_s / sent if cpu_s is not None and sent else None,
        "rss_mib": end["rss_mib"] if end else None,
        "rss_peak_mib": (samples.get("after") or end or {}).get("hwm_mib"),
        "gen_cpu_pct": gen.get("cpuPctOfOneCore"),
        "gen_loop_delay_p99_ms": gen.get("eventLoopDelayMsP99Max"),
        "gen_loop_delay_max_ms": gen.get("eventLoopDelayMsMax"),
        "gen_send_lag_p99_ms": (gen.get("sendLagMs") or {}).get("p99"),
        "unexpected_closes": (result.get("connections") or {}).get("unexpectedCloseCount"),
    }


def median_figures(runs: list[dict[str, Any]]) -> dict[str, Any]:
    figs = [r["figures"] for r in runs if r.get("figures")]
    if not figs:
        return {}
    out: dict[str, Any] = {}
    for key in figs[0]:
        values = [f[key] for f in figs if f.get(key) is not None]
        if key == "converged":
            out[key] = all(f[key] for f in figs)
            out["converged_runs"] = sum(1 for f in figs if f[key])
        elif key == "unexpected_closes":
            out[key] = sum(values)
        elif values:
            out[key] = statistics.median(values)
        else:
            out[key] = None
    out["runs"] = len(figs)
    return out


# ---------------------------------------------------------------------------------------------
# report


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"# Benchmark results ({'quick' if report['quick'] else 'full'} run)",
        "",
        f"Generated {report['generated_at']} by `bench/run.py{' --quick' if report['quick'] else ''}`. "
        f"Median of {report['runs_per_case']} runs per row; raw runs in `latest.json`.",
        "",
        f"Machine: {m['cpus']} CPUs ({m['cpu_model']}), Linux {m['kernel']}; {m['python']}, node {m['node']}, "
        f"pairroom {m['pairroom']}, yjs {m['yjs']}; pinning: {m['pinning']}.",
        "",
        "| scenario | server | clients | edits/s | p50 ms | p99 ms | max ms | delivery % | converged "
        "| server CPU s | CPU ms / delivered edit | RSS MiB |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for case in report["cases"]:
        f = case["median"]
        if not f:
            lines.append(f"| {case['scenario']} | {case['server']} | FAILED: {case['runs'][0].get('error', '?')[:80]} |")
            continue
        conv = f"{fmt(f['converged'])} ({f['converged_runs']}/{f['runs']})"
        lines.append(
            f"| {case['scenario']} | {case['server']} | {fmt(f['clients'])} | {fmt(f['edits_per_s'])} "
            f"| {fmt(f['p50_ms'], 2)} | {fmt(f['p99_ms'], 2)} | {fmt(f['max_ms'], 2)} "
            f"| {fmt(f['delivery_pct'], 2)} | {conv} | {fmt(f['server_cpu_s'], 2)} "
            f"| {fmt(f['cpu_ms_per_delivered_edit'], 3)} | {fmt(f['rss_mib'], 1)} |"
        )
    lines += [
        "",
        "Per run (to judge the noise), with the generator's own health: its CPU use, the p99 of its "
        "event-loop delay and how late its edits left compared with their schedule.",
        "",
        "| scenario | server | run | ok | p50 ms | p90 ms | p99 ms | max ms | delivery % | server CPU % "
        "| idle CPU % | CPU ms / edit | RSS MiB | gen CPU % | gen loop p99 ms | gen send lag p99 ms |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for case in report["cases"]:
        for run in case["runs"]:
            f = run.get("figures") or {}
            lines.append(
                f"| {case['scenario']} | {case['server']} | {run['run']} | {fmt(run['ok'])} "
                f"| {fmt(f.get('p50_ms'), 2)} | {fmt(f.get('p90_ms'), 2)} | {fmt(f.get('p99_ms'), 2)} "
                f"| {fmt(f.get('max_ms'), 2)} | {fmt(f.get('delivery_pct'), 2)} | {fmt(f.get('server_cpu_pct'), 1)} "
                f"| {fmt(f.get('server_idle_cpu_pct'), 1)} "
                f"| {fmt(f.get('cpu_ms_per_delivered_edit'), 3)} | {fmt(f.get('rss_mib'), 1)} "
                f"| {fmt(f.get('gen_cpu_pct'), 1)} | {fmt(f.get('gen_loop_delay_p99_ms'), 2)} "
                f"| {fmt(f.get('gen_send_lag_p99_ms'), 2)} |"
            )
    problems = [
        (case, run)
        for case in report["cases"]
        for run in case["runs"]
        if not run["ok"]
    ]
    if problems:
        lines += ["", "## Problems", ""]
        for case, run in problems:
            what = run.get("error") or ""
            if run.get("server_trouble_count"):
                what += f" server logged {run['server_trouble_count']} warning/error lines, first: {run['server_trouble'][0][:200]}"
            closes = (run.get("loadgen") or {}).get("connections", {}).get("unexpectedCloses") or []
            if closes:
                what += f" unexpected closes: {json.dumps(closes[:3])}"
            lines.append(f"- {case['scenario']} / {case['server']} run {run['run']}: {what.strip() or 'see latest.json'}")
    lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short measured windows (a smoke run)")
    parser.add_argument(
        "--scenario", action="append", choices=sorted(SCENARIOS), help="scenario to run (repeatable; default: all)"
    )
    parser.add_argument("--server", action="append", choices=sorted(SERVERS), help="server (repeatable)")
    parser.add_argument("--runs", type=int, help="runs per case (default: the scenario's, 3)")
    parser.add_argument("--workers", type=int, help="load generator processes (default: the scenario's)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin server and generator to CPUs")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    args = parser.parse_args(argv)

    if not (VENV / "bin" / "python").exists():
        sys.exit(f"bench: no virtualenv at {VENV}")
    ensure_loadgen()
    if args.no_pin:
        server_prefix, gen_prefix, pin_note = [], [], "none (--no-pin)"
    else:
        server_prefix, gen_prefix, pin_note = pinning()

    started = time.monotonic()
    report: dict[str, Any] = {
        "generated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": machine_info(pin_note),
        "runs_per_case": None,
        "cases": [],
    }
    ok = True
    for name in args.scenario or list(SCENARIOS):
        scenario = SCENARIOS[name]
        runs = args.runs or scenario.runs
        report["runs_per_case"] = runs
        for server_name in args.server or list(scenario.servers):
            spec = SERVERS[server_name]
            case: dict[str, Any] = {
                "scenario": scenario.name,
                "title": scenario.title,
                "server": spec.name,
                "server_description": spec.description,
                "definition": {k: v for k, v in dataclasses.asdict(scenario).items()},
                "runs": [],
            }
            for i in range(runs):
                print(f"bench: {scenario.name} on {spec.name}, run {i + 1}/{runs}", file=sys.stderr, flush=True)
                run = run_once(scenario, spec, args.quick, i, server_prefix, gen_prefix, args.workers)
                f = run.get("figures") or {}
                print(
                    f"bench:   ok={run['ok']} p50={fmt(f.get('p50_ms'), 2)} p99={fmt(f.get('p99_ms'), 2)} "
                    f"max={fmt(f.get('max_ms'), 2)} ms delivery={fmt(f.get('delivery_pct'), 2)}% "
                    f"cpu={fmt(f.get('server_cpu_s'), 2)} s"
                    + (f" error={run['error'][:300]}" if run.get("error") else ""),
                    file=sys.stderr,
                    flush=True,
                )
                ok = ok and run["ok"]
                case["runs"].append(run)
            case["median"] = median_figures(case["runs"])
            report["cases"].append(case)
    report["elapsed_s"] = round(time.monotonic() - started, 1)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "latest.md").write_text(markdown(report))
    print(markdown(report))
    print(f"bench: wrote {args.out / 'latest.json'} and {args.out / 'latest.md'} in {report['elapsed_s']} s", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
