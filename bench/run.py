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
import resource
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
LOADGEN = BENCH / "loadgen"
PEERS_DIR = BENCH / "peers"
RESULTS = BENCH / "results"
VENV = ROOT / ".venv"
PEERS_VENV = BENCH / ".venv-peers"
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

    ``command`` and ``env`` values are formatted with: ``{python}`` (the main venv's interpreter),
    ``{venv}``, ``{peers_python}`` (the peers' venv interpreter), ``{root}`` (repository),
    ``{bench}``, ``{tmp}`` (a fresh directory per run), ``{db}`` (a SQLite path inside it),
    ``{host}`` and, with ``port="assign"``, ``{port}``.
    """

    name: str
    description: str
    command: tuple[str, ...]
    url: str  # the websocket URL base; a client connects to f"{url}/{room}"
    port: str = "announce"  # "announce": read from the log; "assign": chosen here, passed as {port}
    announce: Callable[[str], int | None] | None = None
    env: tuple[tuple[str, str], ...] = ()
    unset_env: tuple[str, ...] = ()  # variables removed from the inherited environment
    start_timeout: float = 30.0
    stop_timeout: float = 15.0
    # log levels (a JSON "level" field) counted as trouble
    trouble_levels: tuple[str, ...] = ("warning", "error", "critical")
    protocol: str = "y-websocket"  # what the load generator speaks: "y-websocket" | "hocuspocus"
    needs: tuple[str, ...] = ()  # what must be installed first: "node-peers", "python-peers"
    python: bool = False  # a Python process (py-spy can profile it)
    available: str = ""  # non-empty: why this slot cannot run yet (the report says so)
    postgres: bool = False  # a fresh PostgreSQL database per run, passed as {pg}
    tree: bool = False  # CPU and memory summed over the process and its children (worker processes)


PAIRROOM_COMMAND = (
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
    # S3's top steps send up to 640 messages a second per writer, above the per-connection limit
    # that protects a room from a runaway client (200/s); the benchmark measures capacity
    "--rate-limit",
    "100000",
)


def _pairroom(name: str, description: str, *extra: str, available: str = "") -> ServerSpec:
    return ServerSpec(
        name=name,
        description=description,
        command=PAIRROOM_COMMAND + extra,
        url="ws://{host}:{port}/yjs",
        port="announce",
        announce=_json_log_port,
        python=True,
        available=available,
    )


SERVERS: dict[str, ServerSpec] = {
    "pairroom": _pairroom(
        "pairroom", "pairroom serve (Starlette + pycrdt + uvicorn, websockets-sansio), SQLite storage"
    ),
    # the same server on uvicorn's other websocket stacks (S3 compares them; not in the default set)
    "pairroom-websockets": _pairroom(
        "pairroom-websockets", "pairroom serve --ws-impl websockets", "--ws-impl", "websockets"
    ),
    "pairroom-wsproto": _pairroom("pairroom-wsproto", "pairroom serve --ws-impl wsproto", "--ws-impl", "wsproto"),
    # Slots for the cluster and PostgreSQL variants: they run once those land, not before.
    "pairroom-2nodes-redis": _pairroom(
        "pairroom-2nodes-redis",
        "two pairroom nodes sharing rooms through Redis (clients of a room split over both nodes)",
        available="measured by bench/cluster_presence.py (bench/results/cluster_presence.md)",
    ),
    "pairroom-postgres": dataclasses.replace(
        _pairroom("pairroom-postgres", "pairroom serve with storage on PostgreSQL (a fresh database per run)"),
        command=tuple("{pg}" if part == "sqlite:///{db}" else part for part in PAIRROOM_COMMAND),
        postgres=True,
    ),
    # pairroom's app under Granian's ASGI server (Rust, one worker, uvloop), from its own virtualenv
    # (bench/.venv-granian: Granian, seeing pairroom's .venv); not in the default set
    "pairroom-granian": ServerSpec(
        name="pairroom-granian",
        description="pairroom's app under Granian 2.8.7 (ASGI, 1 worker, 1 runtime thread, uvloop), SQLite storage",
        command=(
            "{bench}/.venv-granian/bin/granian",
            "--interface",
            "asgi",
            "--host",
            "{host}",
            "--port",
            "{port}",
            "--workers",
            "1",
            "--runtime-threads",
            "1",
            "--loop",
            "uvloop",
            "--ws",
            "--log-level",
            "warning",
            "--working-dir",
            "{bench}/peers",
            "pairroom_granian:app",
        ),
        env=(("PAIRROOM_DB", "sqlite:///{db}"), ("PAIRROOM_RATE_LIMIT", "100000"), ("PAIRROOM_LOG_LEVEL", "warning")),
        url="ws://{host}:{port}/yjs",
        port="assign",
        needs=("granian",),
        python=True,
        tree=True,
        start_timeout=60.0,
    ),
    "y-websocket-server": ServerSpec(
        name="y-websocket-server",
        description="@y/websocket-server 0.1.1 (the reference Node server), in memory",
        command=("node", "{bench}/peers/node_modules/@y/websocket-server/src/server.js"),
        env=(("HOST", "{host}"), ("PORT", "{port}")),
        unset_env=("YPERSISTENCE",),  # in memory
        url="ws://{host}:{port}",
        port="assign",
        needs=("node-peers",),
    ),
    "hocuspocus": ServerSpec(
        name="hocuspocus",
        description="@hocuspocus/server 4.7.0, in memory, no extensions",
        command=("node", "{bench}/peers/hocuspocus.mjs", "0", "{host}"),
        url="ws://{host}:{port}",
        port="announce",
        announce=_json_log_port,
        protocol="hocuspocus",
        needs=("node-peers",),
    ),
    "pycrdt-websocket": ServerSpec(
        name="pycrdt-websocket",
        description="pycrdt-websocket 0.16.5 (ASGIServer) under uvicorn (websockets-sansio), in memory",
        command=("{peers_python}", "{bench}/peers/pycrdt_websocket_server.py", "0", "{host}"),
        url="ws://{host}:{port}",
        port="announce",
        announce=_json_log_port,
        needs=("python-peers",),
        python=True,
    ),
    "relay": ServerSpec(
        name="relay",
        description="bench/peers/relay.py: a bare byte relay (no CRDT) under uvicorn (websockets-sansio)",
        command=("{python}", "{bench}/peers/relay.py", "0", "{host}"),
        url="ws://{host}:{port}",
        port="announce",
        announce=_json_log_port,
        python=True,
    ),
}

PEERS = ("pairroom", "y-websocket-server", "hocuspocus", "pycrdt-websocket", "relay")
# --quick runs against pairroom, the targets' reference (Hocuspocus) and the ceiling (the relay)
# only, to stay under 3 minutes; `--quick --server NAME` runs any other
QUICK_SERVERS = ("pairroom", "hocuspocus", "relay")
# beside the repository (../shared), or beside the directory holding a worktree of it
TRACE = next(
    (
        path
        for path in (d / "shared" / "data" / "automerge-paper.json.gz" for d in (ROOT.parent, ROOT.parent.parent))
        if path.exists()
    ),
    ROOT.parent / "shared" / "data" / "automerge-paper.json.gz",
)


@dataclass(frozen=True)
class Scenario:
    """One load shape. Durations in seconds; ``quick_*`` replace them under ``--quick``.

    ``kind``: "load" (rooms of clients editing, the latency table), "steps" (the same, repeated at
    rising per-writer rates from ``steps`` until one fails its criteria), "idle" (connect everyone,
    then nothing: connect time and memory) or "joiner" (a large document, then new clients).
    """

    name: str
    title: str
    rooms: int
    clients_per_room: int
    writers: Any  # "all" | int (first N clients of each room) | list of client indexes | "none"
    edits_per_sec: float  # per writer
    duration: float
    warmup: float
    quick_duration: float
    quick_warmup: float
    kind: str = "load"
    presence: bool = False  # an awareness cursor update with every edit
    awareness_renew_s: float = 15.0  # every client re-publishes its awareness state this often; 0: never
    edit_padding: int = 0  # extra characters per edit
    settle: float = 5.0  # upper bound of the quiet period waiting for convergence
    runs: int = 1
    idle_baseline: float = 1.0  # seconds of server CPU sampled with no client, before the load
    quick_idle_baseline: float = 0.3
    quick_rooms: int = 0  # rooms under --quick (0: the same as rooms)
    workers: int = 0  # loadgen processes; 0 lets the loadgen choose
    connect_concurrency: int = 32  # per loadgen process
    connect_timeout: float = 20.0
    servers: tuple[str, ...] = PEERS
    in_quick: bool = True  # part of the default --quick set
    # kind "steps": per-writer rates, tried in order until one fails
    steps: tuple[float, ...] = ()
    quick_steps: tuple[float, ...] = ()
    step_p99_limit_ms: float = 250.0
    # kind "joiner"
    joiners: int = 5
    quick_joiners: int = 2
    trace_chunk_txns: int = 1000
    trace_copies: int = 1  # the trace replayed into this many texts of the document (many files)
    quick_trace_copies: int = 0  # under --quick (0: the same)
    join_timeout: float = 60.0  # s, per joiner
    limits: str = ""  # what bounds the figures of this scenario (for the report)

    def writer_count(self) -> int:
        w = self.writers
        if w == "all":
            return self.clients_per_room
        if w == "none":
            return 0
        if isinstance(w, int):
            return min(w, self.clients_per_room)
        return len(w)

    def loadgen_config(
        self,
        url: str,
        quick: bool,
        run_id: str,
        workers: int | None,
        protocol: str = "y-websocket",
        edits_per_sec: float | None = None,
    ) -> dict[str, Any]:
        config = {
            "url": url,
            "protocol": protocol,
            "roomPrefix": f"{self.name}-{run_id}",
            "rooms": self.quick_rooms if quick and self.quick_rooms else self.rooms,
            "clientsPerRoom": self.clients_per_room,
            "writers": self.writers,
            "editsPerSec": self.edits_per_sec if edits_per_sec is None else edits_per_sec,
            "editPadding": self.edit_padding,
            "warmup": self.quick_warmup if quick else self.warmup,
            "duration": self.quick_duration if quick else self.duration,
            "settle": self.settle,
            "presence": self.presence,
            "awarenessRenewS": self.awareness_renew_s,
            "workers": workers if workers is not None else self.workers,
            "connectConcurrency": self.connect_concurrency,
            "connectTimeout": self.connect_timeout,
        }
        if self.kind == "joiner":
            config.update(
                mode="joiner",
                tracePath=str(TRACE),
                traceChunkTxns=self.trace_chunk_txns,
                traceCopies=self.quick_trace_copies if quick and self.quick_trace_copies else self.trace_copies,
                joinTimeout=self.join_timeout,
                joiners=self.quick_joiners if quick else self.joiners,
            )
        return config


def _s2(watchers: int, presence: bool) -> Scenario:
    name = f"s2-{watchers}{'p' if presence else ''}"
    return Scenario(
        name=name,
        title=(
            f"mentor room: 1 writer at 20 edits/s, {watchers} watchers, "
            + (
                "presence on (a cursor update with every edit, 15 s awareness renewals)"
                if presence
                else "no presence traffic"
            )
        ),
        rooms=1,
        clients_per_room=watchers + 1,
        writers=1,
        edits_per_sec=20,
        presence=presence,
        awareness_renew_s=15.0 if presence else 0.0,
        duration=12 if presence else 10,
        warmup=2,
        quick_duration=4,
        quick_warmup=1,
        workers=4,
        # --quick runs only the one that carries a target (200 watchers, presence on)
        in_quick=watchers == 200 and presence,
        limits=(
            f"Fan-out: every edit is written to {watchers} sockets"
            + (
                ", and so is every cursor update; renewals add watchers x watchers / 15 messages/s. "
                if presence
                else ". "
            )
            + "The generator decodes every delivery (one Y.applyUpdate per watcher per edit) on one core; "
            "its loop delay is in the per-run table."
        ),
    )


SCENARIOS: dict[str, Scenario] = {
    "s1": Scenario(
        name="s1",
        servers=PEERS + ("pairroom-postgres",),
        title="pair room: 1 room, 2 clients, both writing 10 edits/s",
        rooms=1,
        clients_per_room=2,
        writers="all",
        edits_per_sec=10,
        duration=12,
        warmup=2,
        quick_duration=4,
        quick_warmup=1,
        limits=(
            "Light load: 20 edits/s in, 20 deliveries/s out. Latency is the loopback round trip "
            "through the server's event loop plus timer and scheduling noise of a shared 2-core "
            "machine; the server is nowhere near saturation."
        ),
    ),
    "s2-100": _s2(100, False),
    "s2-100p": _s2(100, True),
    "s2-200": _s2(200, False),
    "s2-200p": _s2(200, True),
    "s3": Scenario(
        name="s3",
        servers=PEERS + ("pairroom-postgres",),
        title="busy room: 50 clients, 10 writers, per-writer rate stepped up until delivery < 100 % or p99 >= 250 ms",
        kind="steps",
        rooms=1,
        clients_per_room=50,
        writers=10,
        edits_per_sec=0,  # set per step
        steps=(10, 20, 40, 80, 160, 320, 640),
        quick_steps=(10,),
        duration=6,
        warmup=1,
        quick_duration=3,
        quick_warmup=1,
        workers=4,
        limits=(
            "Each step is a fresh server. At r edits/s per writer the server takes 10r edits/s and "
            "writes 490r messages/s; the generator applies the same 490r updates/s on its one core, "
            "so beyond a few thousand deliveries/s the generator's loop delay climbs too (see "
            "'limited by')."
        ),
    ),
    "s4": Scenario(
        name="s4",
        servers=PEERS + ("pairroom-postgres",),
        title="many rooms: 200 rooms x 2 clients, each writing 2 edits/s",
        rooms=200,
        clients_per_room=2,
        writers="all",
        edits_per_sec=2,
        duration=10,
        warmup=2,
        quick_duration=4,
        quick_warmup=1,
        workers=4,
        limits=(
            "800 edits/s in and 800 deliveries/s out over 400 sockets: per-message overhead (frame "
            "parsing, one task wake-up per message, the storage path for pairroom) rather than fan-out."
        ),
    ),
    "s5": Scenario(
        name="s5",
        title="idle connections: 2,000 clients (200 rooms x 10), connected and synced, then silent",
        kind="idle",
        rooms=200,
        clients_per_room=10,
        writers="none",
        edits_per_sec=0,
        awareness_renew_s=0.0,
        duration=5,
        warmup=1,
        quick_duration=3,
        quick_warmup=0.5,
        workers=4,
        connect_concurrency=32,
        connect_timeout=90,
        quick_rooms=50,  # 500 connections under --quick
        limits=(
            "Connect time is the handshake, sync and awareness exchange of 2,000 clients, 128 at a "
            "time from 4 generator processes on one core, so it bounds the generator as much as the "
            "server. RSS is the server's whole process at the end of the silent window."
        ),
    ),
    "s6": Scenario(
        name="s6",
        title="large document: the automerge-paper trace (259,778 edits, 104,852 chars) in one room, then new clients join",
        kind="joiner",
        rooms=1,
        clients_per_room=1,
        writers="none",
        edits_per_sec=0,
        duration=0,
        warmup=0,
        quick_duration=0,
        quick_warmup=0,
        servers=tuple(s for s in PEERS if s != "relay"),  # the relay holds no document to give
        connect_timeout=30,
        limits=(
            "The seeder replays the trace locally and sends it as 260 updates of 1,000 edits; each "
            "joiner then asks for everything (sync step 1 with an empty state vector). Join time is "
            "the server encoding the whole document plus the joiner decoding it (the same Yjs code for "
            "every server); the relay holds no document and is left out."
        ),
    ),
}


def _fixed_s3(rate: float) -> Scenario:
    """S3's busy room at one fixed ordinary rate (the CPU-per-edit targets compare at these)."""
    return Scenario(
        name=f"s3-{rate:g}",
        title=f"busy room at a fixed rate: 50 clients, 10 writers at {rate:g} edits/s each",
        rooms=1,
        clients_per_room=50,
        writers=10,
        edits_per_sec=rate,
        duration=6,
        warmup=1,
        quick_duration=3,
        quick_warmup=1,
        workers=4,
        servers=TARGET_SERVERS,
        in_quick=False,
        limits="S3 at one rate (no ladder): the per-delivery cost at the rate people type at, or a fast typist's.",
    )


# The servers of the targets' table: pairroom, its reference (Hocuspocus) and y-websocket (RSS target).
TARGET_SERVERS = ("pairroom", "hocuspocus", "y-websocket-server")

SCENARIOS.update(
    {
        "s2-150l": dataclasses.replace(
            _s2(149, True),
            name="s2-150l",
            title="a 150-person session: the mentor at 5 edits/s with a cursor, 149 watchers, 15 s renewals",
            edits_per_sec=5,
            servers=TARGET_SERVERS,
            in_quick=False,
        ),
        "s3-20": _fixed_s3(20),
        "s3-160": _fixed_s3(160),
        "s6-10m": dataclasses.replace(
            SCENARIOS["s6"],
            name="s6-10m",
            title="large document: the automerge-paper trace replayed into 34 files of one room (about 10 MiB), then new clients join",
            trace_copies=34,
            quick_trace_copies=7,
            joiners=3,
            quick_joiners=1,
            join_timeout=120.0,
            connect_timeout=60,
            servers=TARGET_SERVERS,
            in_quick=False,
        ),
        "s7": dataclasses.replace(
            SCENARIOS["s5"],
            name="s7",
            title="C10k: 10,000 clients (1,000 rooms x 10), connected and synced, then silent",
            rooms=1000,
            quick_rooms=200,  # 2,000 under --quick
            workers=8,
            connect_concurrency=64,
            connect_timeout=300,
            servers=TARGET_SERVERS,
            in_quick=False,
            limits=(
                "10,000 websocket handshakes, syncs and awareness entries from 8 generator processes on one "
                "core; the open-files limit is raised for every process the harness starts."
            ),
        ),
        "s8": Scenario(
            name="s8",
            # 1,000 members: the writer and 999 watchers (a room holds at most 1,000 members by default)
            title="lecture: 1 writer at 20 edits/s with a cursor, 999 watchers with presence (15 s renewals), one node",
            rooms=1,
            clients_per_room=1000,
            writers=1,
            edits_per_sec=20,
            presence=True,
            awareness_renew_s=15.0,
            duration=12,
            warmup=2,
            quick_duration=4,
            quick_warmup=1,
            workers=8,
            connect_concurrency=32,
            connect_timeout=120,
            servers=TARGET_SERVERS,
            in_quick=False,
            limits=(
                "Fan-out to 1,000 sockets per edit and per cursor move, and 1,000 x 1,000 / 15 renewals a "
                "second without coalescing; the generator's 8 processes share one core."
            ),
        ),
    }
)

# What `--targets` runs: every scenario a row of the targets' table reads.
TARGET_SCENARIOS = ("s2-100p", "s2-200p", "s2-150l", "s3-20", "s3-160", "s4", "s5", "s7", "s8", "s6-10m")

# The targets, checked in the report (ratios within one run of the suite).
TARGETS = (
    "S3 sustainable rate >= 1.5x Hocuspocus'",
    "S3 CPU per delivered edit <= 0.67x Hocuspocus' (at the highest rate both sustain)",
    "S2 200 watchers + presence: p99 < 50 ms",
    "S5 RSS <= Hocuspocus'",
    "S1 p99 < 10 ms",
    "cross-node p99 adds < 5 ms (2 nodes + Redis)",
)


# ---------------------------------------------------------------------------------------------
# /proc sampling


CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def descendants(pid: int) -> list[int]:
    """The process's children, their children, ... (from /proc/PID/task/*/children)."""
    out: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            out.extend(children)
            todo.extend(children)
    return out


def proc_sample(pid: int, tree: bool = False) -> dict[str, Any] | None:
    """CPU seconds (user + system, all threads) and memory of a live process, or None. With
    ``tree``, summed over the process and its descendants (a server that runs in worker processes)."""
    if tree:
        parts = [sample for sample in (proc_sample(p) for p in [pid, *descendants(pid)]) if sample is not None]
        if not parts:
            return None
        total = dict(parts[0])
        for part in parts[1:]:
            for key in ("cpu_s", "user_s", "sys_s", "rss_mib", "hwm_mib"):
                total[key] += part[key]
            total["threads"] = (total["threads"] or 0) + (part["threads"] or 0)
        return total
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
    if stamp.exists() and stamp.stat().st_mtime >= max(
        lock.stat().st_mtime, (LOADGEN / "package.json").stat().st_mtime
    ):
        return
    print("bench: installing the load generator's packages (npm ci)", file=sys.stderr)
    proc = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=LOADGEN, timeout=300)
    if proc.returncode != 0:
        sys.exit("bench: npm ci failed in bench/loadgen")
    stamp.touch()


def ensure_peers(needs: set[str]) -> None:
    """Install the peers the selected servers need, into bench/ only (exact pins)."""
    if "node-peers" in needs:
        modules = PEERS_DIR / "node_modules"
        stamp = modules / ".pairroom-bench-npm-ci.stamp"
        lock = PEERS_DIR / "package-lock.json"
        newest = max(lock.stat().st_mtime, (PEERS_DIR / "package.json").stat().st_mtime)
        if not (stamp.exists() and stamp.stat().st_mtime >= newest):
            print("bench: installing the Node peers (npm ci in bench/peers)", file=sys.stderr)
            proc = subprocess.run(
                ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=PEERS_DIR, timeout=600
            )
            if proc.returncode != 0:
                sys.exit("bench: npm ci failed in bench/peers")
            stamp.touch()
    if "granian" in needs:
        granian_venv = BENCH / ".venv-granian"
        stamp = granian_venv / ".pairroom-bench-installed"
        if not stamp.exists():
            print("bench: installing Granian into bench/.venv-granian", file=sys.stderr)
            subprocess.run([str(VENV / "bin" / "python"), "-m", "venv", str(granian_venv)], check=True, timeout=300)
            site = subprocess.run(
                [str(granian_venv / "bin" / "python"), "-c", "import site; print(site.getsitepackages()[0])"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            ours = subprocess.run(
                [str(VENV / "bin" / "python"), "-c", "import site; print(site.getsitepackages()[0])"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            # pairroom (an editable install: its own .pth, processed by addsitedir) and its pins, from .venv
            Path(site, "pairroom-venv.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
            proc = subprocess.run(
                [str(granian_venv / "bin" / "python"), "-m", "pip", "install", "--quiet", GRANIAN_PIN], timeout=900
            )
            if proc.returncode != 0:
                sys.exit("bench: pip install failed in bench/.venv-granian")
            stamp.touch()
    if "python-peers" in needs:
        requirements = PEERS_DIR / "requirements.txt"
        stamp = PEERS_VENV / ".pairroom-bench-installed"
        if not (stamp.exists() and stamp.stat().st_mtime >= requirements.stat().st_mtime):
            print("bench: installing the Python peers into bench/.venv-peers", file=sys.stderr)
            if not (PEERS_VENV / "bin" / "python").exists():
                subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True, timeout=300)
            proc = subprocess.run(
                [str(PEERS_VENV / "bin" / "pip"), "install", "--quiet", "-r", str(requirements)], timeout=900
            )
            if proc.returncode != 0:
                sys.exit("bench: pip install failed in bench/.venv-peers")
            stamp.touch()


NOFILE_WANTED = 65536
GRANIAN_PIN = "granian==2.8.7"


def raise_nofile() -> None:
    """Lift the open-files soft limit (2,000 connections need more than the usual 1,024); run in
    each child before exec, and in the orchestrator itself so the note in the report is true."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = NOFILE_WANTED if hard == resource.RLIM_INFINITY else min(NOFILE_WANTED, hard)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def tool_version(cmd: list[str]) -> str | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def pinned_requirement(package: str) -> str | None:
    try:
        for line in (PEERS_DIR / "requirements.txt").read_text().splitlines():
            name, _, version = line.partition("==")
            if name.strip().lower() == package:
                return version.strip()
    except OSError:
        pass
    return None


def locked_version(package: str, where: Path = LOADGEN) -> str | None:
    try:
        lock = json.loads((where / "package-lock.json").read_text())
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
        "peers": {
            "@y/websocket-server": locked_version("@y/websocket-server", PEERS_DIR),
            "@hocuspocus/server": locked_version("@hocuspocus/server", PEERS_DIR),
            "yjs (peers)": locked_version("yjs", PEERS_DIR),
            "pycrdt-websocket": pinned_requirement("pycrdt-websocket"),
            "pycrdt (peers)": pinned_requirement("pycrdt"),
        },
        "nofile_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
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
            "peers_python": str(PEERS_VENV / "bin" / "python"),
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
        self.database: tuple[str, str] | None = None  # (admin URL, name) of a database to drop
        if spec.postgres:
            admin = postgres_admin_url()
            name = f"pairroom_bench_{os.getpid()}_{int(time.time() * 1000)}"
            pg_execute(admin, f'CREATE DATABASE "{name}"')
            self.database = (admin, name)
            values["pg"] = admin.rsplit("/", 1)[0] + "/" + name
        self.values = values
        argv = prefix + [part.format(**values) for part in spec.command]
        env = dict(os.environ)
        env.update({k: v.format(**values) for k, v in spec.env})
        for k in spec.unset_env:
            env.pop(k, None)
        self.argv = argv
        self.proc = subprocess.Popen(
            argv,
            cwd=tmp,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=raise_nofile,
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
        """SIGTERM, then SIGKILL after stop_timeout, then drop its database. Returns how it went."""
        try:
            return self._stop()
        finally:
            if self.database is not None:
                admin, name = self.database
                pg_execute(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _stop(self) -> dict[str, Any]:
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


_PG_EXECUTE = """
import asyncio, sys
import asyncpg
async def main(url, sql):
    connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"), timeout=10)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()
asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def postgres_admin_url() -> str:
    """The URL of a PostgreSQL server to create databases on (the tests' helper finds or starts one)."""
    out = subprocess.run(
        [str(ROOT / "scripts" / "ensure-postgres")], capture_output=True, text=True, timeout=600, check=True
    )
    return out.stdout.strip().splitlines()[-1]


def pg_execute(admin_url: str, sql: str) -> None:
    """Run one statement outside a transaction (CREATE/DROP DATABASE) with the main venv's asyncpg."""
    subprocess.run(
        [str(VENV / "bin" / "python"), "-c", _PG_EXECUTE, admin_url, sql],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


SAMPLED_EVENTS = ("connected", "measure_start", "measure_end", "seed_start", "seed_sent", "seeded")


def run_once(
    scenario: Scenario,
    spec: ServerSpec,
    quick: bool,
    index: int,
    server_prefix: list[str],
    gen_prefix: list[str],
    workers: int | None,
    edits_per_sec: float | None = None,
    profile: Path | None = None,
) -> dict[str, Any]:
    """One run: a fresh server, the generator against it, the server's /proc samples.

    ``edits_per_sec`` overrides the scenario's per-writer rate (the steps of S3). With ``profile``,
    py-spy records the server (a Python one) over the measured window into that file (collapsed
    stacks, one line per stack: the format ``summarize_profile`` reads)."""
    record: dict[str, Any] = {"run": index + 1, "ok": False}
    began = time.monotonic()
    if edits_per_sec is not None:
        record["edits_per_writer"] = edits_per_sec
    with tempfile.TemporaryDirectory(prefix=f"bench-{spec.name}-") as tmpdir:
        server = RunningServer(spec, server_prefix, Path(tmpdir))
        record["server_command"] = server.argv
        profiler: subprocess.Popen[bytes] | None = None
        try:
            server.wait_ready()
            record["url"] = server.url()
            # a short idle window first: the server's background cost (timers, keepalives) with
            # nobody connected, to tell fixed costs from per-edit costs
            samples: dict[str, Any] = {"ready": proc_sample(server.proc.pid, spec.tree)}
            time.sleep(scenario.quick_idle_baseline if quick else scenario.idle_baseline)
            samples["idle_end"] = proc_sample(server.proc.pid, spec.tree)
            config = scenario.loadgen_config(
                server.url(), quick, f"{int(time.time())}-{index + 1}", workers, spec.protocol, edits_per_sec
            )
            gen_tail: deque[str] = deque(maxlen=40)
            events: list[dict[str, Any]] = []

            def gen_line(line: str) -> None:
                nonlocal profiler
                try:
                    event = json.loads(line)
                except ValueError:
                    gen_tail.append(line)
                    return
                if not isinstance(event, dict) or "event" not in event:
                    gen_tail.append(line)
                    return
                name = event["event"]
                if name in SAMPLED_EVENTS:
                    samples[name] = proc_sample(server.proc.pid, spec.tree)
                if name == "measure_start" and profile is not None and spec.python:
                    profiler = start_profiler(server.proc.pid, config["duration"], profile)
                events.append(event)

            budget = config["connectTimeout"] + config["warmup"] + config["duration"] + config["settle"] + 150
            if scenario.kind == "joiner":
                budget += 60 * (config["joiners"] + 2)
            gen = subprocess.Popen(
                gen_prefix + ["node", str(LOADGEN / "loadgen.mjs"), "-"],
                cwd=LOADGEN,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                preexec_fn=raise_nofile,
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
            samples["after"] = proc_sample(server.proc.pid, spec.tree)
            record["server_alive_after_load"] = server.proc.poll() is None
            try:
                result = json.loads(out.strip().splitlines()[-1])
            except (ValueError, IndexError):
                result = {"ok": False, "error": "no JSON result", "stdout": out[-2000:]}
            record["loadgen"] = result
            record["loadgen_exit_code"] = gen.returncode
            record["loadgen_stderr_tail"] = list(gen_tail)
            record["loadgen_events"] = [e for e in events if e.get("event") not in ("measure_start", "measure_end")][
                :50
            ]
            record["server_samples"] = samples
            record["figures"] = figures(result, samples)
            record["ok"] = bool(result.get("ok")) and record["server_alive_after_load"] and "error" not in record
            if not result.get("ok") and result.get("error"):
                record["error"] = result["error"]
        except RuntimeError as exc:
            record["error"] = str(exc)
        finally:
            if profiler is not None:
                try:
                    profiler.wait(30)
                except subprocess.TimeoutExpired:
                    profiler.kill()
                    profiler.wait(5)
                record["profile"] = str(profile)
            record["server_stop"] = server.stop()
            record["server_trouble_count"] = server.trouble_count
            record["server_trouble"] = server.trouble
            record["server_log_tail"] = list(server.tail)[-15:]
        if server.trouble_count:
            record["ok"] = False
    record["wall_s"] = round(time.monotonic() - began, 2)
    return record


def py_spy() -> str | None:
    for candidate in (PEERS_VENV / "bin" / "py-spy", VENV / "bin" / "py-spy"):
        if candidate.exists():
            return str(candidate)
    return shutil.which("py-spy")


def start_profiler(pid: int, duration: float, out: Path) -> subprocess.Popen[bytes] | None:
    tool = py_spy()
    if tool is None:
        print("bench: py-spy not found (it comes with bench/.venv-peers); no profile", file=sys.stderr)
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    fmt_ = "flamegraph" if out.suffix == ".svg" else "raw"
    return subprocess.Popen(
        [
            tool,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, int(duration))),
            "--rate",
            "200",
            "--format",
            fmt_,
            "--output",
            str(out),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def summarize_profile(path: Path, top: int = 25) -> str:
    """Self and inclusive shares per function from py-spy's collapsed stacks (``--format raw``)."""
    self_count: dict[str, int] = {}
    incl_count: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        n = int(count_s)
        total += n
        frames = [f.strip() for f in stack.split(";") if f.strip()]
        if not frames:
            continue
        # a frame reads "function (file.py:line)"; drop the line so one function is one row
        names = [re.sub(r":\d+\)$", ")", f) for f in frames]
        self_count[names[-1]] = self_count.get(names[-1], 0) + n
        for name in set(names):
            incl_count[name] = incl_count.get(name, 0) + n
    if not total:
        return "(empty profile)\n"
    lines = [f"{total} samples", "", "| self % | function |", "| ---: | --- |"]
    for name, n in sorted(self_count.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"| {100 * n / total:.1f} | `{name}` |")
    lines += ["", "| inclusive % | function |", "| ---: | --- |"]
    for name, n in sorted(incl_count.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"| {100 * n / total:.1f} | `{name}` |")
    return "\n".join(lines) + "\n"


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
        "window_s": window,
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
        # connecting (S5)
        "connect_all_s": result["connectAllMs"] / 1000 if result.get("connectAllMs") is not None else None,
        "connect_p99_ms": ((result.get("connections") or {}).get("connectMs") or {}).get("p99"),
        "rss_ready_mib": (ready or {}).get("rss_mib"),
        "rss_connected_mib": (samples.get("connected") or {}).get("rss_mib"),
        "server_threads": (end or {}).get("threads"),
        # the large document (S6)
        "doc_bytes": (result.get("trace") or {}).get("docBytes"),
        "seed_s": ((result.get("trace") or {}).get("seedMs") or 0) / 1000 if result.get("trace") else None,
        "first_join_ms": (result.get("firstJoin") or {}).get("completeMs"),
        "join_p50_ms": (result.get("joinMs") or {}).get("p50"),
        "join_max_ms": (result.get("joinMs") or {}).get("max"),
        "rss_seed_start_mib": (samples.get("seed_start") or {}).get("rss_mib"),
        "rss_seeded_mib": (samples.get("seeded") or {}).get("rss_mib"),
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


def step_verdict(scenario: Scenario, f: dict[str, Any], runs: list[dict[str, Any]]) -> tuple[bool, str]:
    """Whether one step of a "steps" scenario is sustained, and if not, why."""
    why = []
    if not all(r["ok"] for r in runs):
        bad = next(r for r in runs if not r["ok"])
        conns = (bad.get("loadgen") or {}).get("connections") or {}
        if bad.get("error"):
            why.append(bad["error"].splitlines()[0][:100])
        if bad.get("server_trouble_count"):
            why.append(f"server logged {bad['server_trouble_count']} warnings/errors")
        if conns.get("unexpectedCloseCount"):
            first = (conns.get("unexpectedCloses") or [{}])[0]
            why.append(
                f"{conns['unexpectedCloseCount']} unexpected closes (first: {first.get('code')} {first.get('reason', '')[:60]})"
            )
        if conns.get("errorCount"):
            why.append(f"{conns['errorCount']} client errors (first: {(conns.get('errors') or ['?'])[0][:80]})")
        if not why:
            why.append("run failed")
    if f.get("delivery_pct") is None or f["delivery_pct"] < 100 - 1e-9:
        why.append(f"delivery {fmt(f.get('delivery_pct'), 3)} %")
    if not f.get("converged"):
        why.append("not converged")
    if f.get("p99_ms") is None or f["p99_ms"] >= scenario.step_p99_limit_ms:
        why.append(f"p99 {fmt(f.get('p99_ms'), 1)} ms")
    return (not why, "; ".join(dict.fromkeys(why)))


def limited_by(f: dict[str, Any]) -> str:
    """A rough label for what bounded a run: the server's core, the generator, or neither."""
    labels = []
    if (f.get("server_cpu_pct") or 0) >= 85:
        labels.append(f"server CPU {f['server_cpu_pct']:.0f} %")
    if (f.get("gen_loop_delay_p99_ms") or 0) >= 50 or (f.get("gen_send_lag_p99_ms") or 0) >= 50:
        labels.append("generator")
    return ", ".join(labels) or "-"


def run_case(
    scenario: Scenario,
    spec: ServerSpec,
    args: argparse.Namespace,
    server_prefix: list[str],
    gen_prefix: list[str],
) -> dict[str, Any]:
    runs = args.runs or scenario.runs
    case: dict[str, Any] = {
        "scenario": scenario.name,
        "title": scenario.title,
        "kind": scenario.kind,
        "server": spec.name,
        "server_description": spec.description,
        "definition": {k: v for k, v in dataclasses.asdict(scenario).items()},
        "clients_expected": (scenario.quick_rooms if args.quick and scenario.quick_rooms else scenario.rooms)
        * scenario.clients_per_room,
        "runs": [],
    }

    def profile_path(rate: float | None = None) -> Path | None:
        if not args.profile or not spec.python:
            return None
        tag = f"-{rate:g}" if rate is not None else ""
        return args.out / f"profile-{scenario.name}{tag}-{spec.name}.{'svg' if args.profile == 'svg' else 'txt'}"

    def one(i: int, rate: float | None) -> dict[str, Any]:
        label = f" at {rate:g} edits/s per writer" if rate is not None else ""
        print(f"bench: {scenario.name} on {spec.name}{label}, run {i + 1}/{runs}", file=sys.stderr, flush=True)
        run = run_once(scenario, spec, args.quick, i, server_prefix, gen_prefix, args.workers, rate, profile_path(rate))
        f = run.get("figures") or {}
        print(
            f"bench:   ok={run['ok']} p50={fmt(f.get('p50_ms'), 2)} p99={fmt(f.get('p99_ms'), 2)} "
            f"max={fmt(f.get('max_ms'), 2)} ms delivery={fmt(f.get('delivery_pct'), 2)}% "
            f"cpu={fmt(f.get('server_cpu_s'), 2)} s rss={fmt(f.get('rss_mib'), 1)} MiB"
            + (f" connect_all={fmt(f.get('connect_all_s'), 2)} s" if f.get("connect_all_s") is not None else "")
            + (f" join_p50={fmt(f.get('join_p50_ms'), 1)} ms" if f.get("join_p50_ms") is not None else "")
            + (f" error={run['error'][:300]}" if run.get("error") else ""),
            file=sys.stderr,
            flush=True,
        )
        return run

    if scenario.kind != "steps":
        for i in range(runs):
            case["runs"].append(one(i, None))
        case["median"] = median_figures(case["runs"])
        case["ok"] = all(r["ok"] for r in case["runs"])
        return case

    # steps: rising per-writer rates until one is not sustained; in a full run, one more step
    # halfway (geometrically) between the last sustained rate and the first failed one
    ladder = list(args.steps or (scenario.quick_steps if args.quick else scenario.steps))
    steps: list[dict[str, Any]] = []

    def step(rate: float) -> dict[str, Any]:
        step_runs = [one(i, rate) for i in range(runs)]
        case["runs"].extend(step_runs)
        f = median_figures(step_runs)
        ok, why = step_verdict(scenario, f, step_runs)
        entry = {"rate": rate, "median": f, "sustained": ok, "why": why, "limited_by": limited_by(f)}
        steps.append(entry)
        print(
            f"bench:   step {rate:g}/s: {'sustained' if ok else 'NOT sustained: ' + why}", file=sys.stderr, flush=True
        )
        return entry

    for rate in ladder:
        if not step(rate)["sustained"]:
            break
    passed = [e["rate"] for e in steps if e["sustained"]]
    failed = [e["rate"] for e in steps if not e["sustained"]]
    if not args.quick and not args.steps and passed and failed and failed[0] / max(passed) > 1.3:
        mid = round((max(passed) * failed[0]) ** 0.5)
        if max(passed) < mid < failed[0]:
            step(float(mid))
    steps.sort(key=lambda e: e["rate"])
    sustained = [e for e in steps if e["sustained"]]
    # the highest sustained rate below the first failure (a pass above a failure does not count)
    best = None
    for e in steps:
        if not e["sustained"]:
            break
        best = e
    case["steps"] = steps
    case["sustained_rate"] = best["rate"] if best else None
    case["median"] = best["median"] if best else (steps[0]["median"] if steps else {})
    case["ok"] = bool(sustained) and all(r.get("server_alive_after_load", False) for r in case["runs"])
    return case


# ---------------------------------------------------------------------------------------------
# report


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    peers = ", ".join(f"{k} {v}" for k, v in (m.get("peers") or {}).items() if v)
    lines = [
        f"# Benchmark results ({'quick' if report['quick'] else 'full'} run)",
        "",
        f"Generated {report['generated_at']} by `bench/run.py{' --quick' if report['quick'] else ''}` "
        f"in {report.get('elapsed_s', '?')} s. "
        f"{report['runs_per_case']} run(s) per row (median when more than one); raw runs in `latest.json`.",
        "",
        f"Machine: {m['cpus']} CPUs ({m['cpu_model']}), Linux {m['kernel']}; {m['python']}, node {m['node']}, "
        f"pairroom {m['pairroom']} (commit {m.get('git_commit')}), generator yjs {m['yjs']}; peers: {peers}; "
        f"pinning: {m['pinning']}; open files limit {m.get('nofile_limit')}.",
        "",
    ]
    if report.get("note"):
        lines += [report["note"], ""]
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for case in report["cases"]:
        by_kind.setdefault(case["kind"], []).append(case)

    def failed_row(case: dict[str, Any], width: int) -> str:
        err = next((r.get("error") for r in case["runs"] if r.get("error")), None) or "see Problems"
        return f"| {case['scenario']} | {case['server']} | FAILED: {err.splitlines()[0][:90]} |" + " |" * (width - 3)

    if "load" in by_kind:
        lines += [
            "## Latency scenarios (S1, S2, S3 at fixed rates, S4, S8)",
            "",
            "| scenario | server | clients | edits/s in | p50 ms | p99 ms | max ms | presence p99 ms | delivery % "
            "| converged | server CPU % | CPU ms / delivered edit | RSS MiB | limited by |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- |",
        ]
        for case in by_kind["load"]:
            f = case["median"]
            if not f or f.get("p50_ms") is None:
                lines.append(failed_row(case, 14))
                continue
            conv = f"{fmt(f['converged'])} ({f['converged_runs']}/{f['runs']})"
            lines.append(
                f"| {case['scenario']} | {case['server']} | {fmt(f['clients'])} | {fmt(f['edits_per_s'])} "
                f"| {fmt(f['p50_ms'], 2)} | {fmt(f['p99_ms'], 2)} | {fmt(f['max_ms'], 2)} "
                f"| {fmt(f.get('presence_p99_ms'), 2)} | {fmt(f['delivery_pct'], 2)} | {conv} "
                f"| {fmt(f['server_cpu_pct'], 1)} | {fmt(f['cpu_ms_per_delivered_edit'], 3)} | {fmt(f['rss_mib'], 1)} "
                f"| {limited_by(f)} |"
            )
        lines.append("")
    if "steps" in by_kind:
        lines += [
            "## S3 busy room: highest sustained rate",
            "",
            "Sustained: delivery 100 %, converged, p99 < 250 ms, no error. Rates are per writer (10 writers, 50 clients).",
            "",
            "| server | sustained edits/s per writer | edits/s in | deliveries/s | p50 ms | p99 ms | server CPU % "
            "| CPU ms / delivered edit | RSS MiB | first step not sustained |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for case in by_kind["steps"]:
            best = next((e for e in case["steps"] if e["rate"] == case["sustained_rate"]), None)
            first_fail = next((e for e in case["steps"] if not e["sustained"]), None)
            fail_note = f"{first_fail['rate']:g}/s: {first_fail['why']}" if first_fail else "none (ladder exhausted)"
            if best is None:
                lines.append(f"| {case['server']} | none | - | - | - | - | - | - | - | {fail_note} |")
                continue
            f = best["median"]
            deliveries = f["deliveries"] / (f.get("window_s") or 1) if f.get("window_s") else None
            lines.append(
                f"| {case['server']} | {best['rate']:g} | {fmt(f['edits_per_s'])} | {fmt(deliveries, 0)} "
                f"| {fmt(f['p50_ms'], 2)} | {fmt(f['p99_ms'], 2)} | {fmt(f['server_cpu_pct'], 1)} "
                f"| {fmt(f['cpu_ms_per_delivered_edit'], 3)} | {fmt(f['rss_mib'], 1)} | {fail_note} |"
            )
        lines += [
            "",
            "Every step:",
            "",
            "| server | edits/s per writer | sustained | p50 ms | p99 ms | max ms | delivery % | server CPU % "
            "| CPU ms / delivered edit | gen loop p99 ms | limited by | why not |",
            "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
        ]
        for case in by_kind["steps"]:
            for e in case["steps"]:
                f = e["median"]
                lines.append(
                    f"| {case['server']} | {e['rate']:g} | {fmt(e['sustained'])} | {fmt(f.get('p50_ms'), 2)} "
                    f"| {fmt(f.get('p99_ms'), 2)} | {fmt(f.get('max_ms'), 1)} | {fmt(f.get('delivery_pct'), 3)} "
                    f"| {fmt(f.get('server_cpu_pct'), 1)} | {fmt(f.get('cpu_ms_per_delivered_edit'), 3)} "
                    f"| {fmt(f.get('gen_loop_delay_p99_ms'), 1)} | {e['limited_by']} | {e['why'] or '-'} |"
                )
        lines.append("")
    if "idle" in by_kind:
        lines += [
            "## Idle connections (S5, S7)",
            "",
            "| scenario | server | connections | time to connect all s | connect p99 ms | RSS idle server MiB | RSS connected MiB "
            "| KiB per connection | CPU % while silent |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for case in by_kind["idle"]:
            f = case["median"]
            if not f or f.get("connect_all_s") is None:
                lines.append(failed_row(case, 9))
                continue
            per = (
                1024 * (f["rss_mib"] - f["rss_ready_mib"]) / f["clients"]
                if f.get("rss_mib") and f.get("rss_ready_mib") and f.get("clients")
                else None
            )
            lines.append(
                f"| {case['scenario']} | {case['server']} | {fmt(f['clients'])} | {fmt(f['connect_all_s'], 2)} | {fmt(f['connect_p99_ms'], 1)} "
                f"| {fmt(f['rss_ready_mib'], 1)} | {fmt(f['rss_mib'], 1)} | {fmt(per, 1)} | {fmt(f['server_cpu_pct'], 1)} |"
            )
        lines.append("")
    if "joiner" in by_kind:
        lines += [
            "## S6 a joiner on a large document",
            "",
            "| scenario | server | document (Yjs update) KiB | seed sent s | first join ms | join p50 ms | join max ms "
            "| RSS before seed MiB | RSS with document MiB | document MiB in server |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for case in by_kind["joiner"]:
            f = case["median"]
            if not f or f.get("join_p50_ms") is None:
                lines.append(failed_row(case, 10))
                continue
            delta = (
                f["rss_seeded_mib"] - f["rss_seed_start_mib"]
                if f.get("rss_seeded_mib") is not None and f.get("rss_seed_start_mib") is not None
                else None
            )
            lines.append(
                f"| {case['scenario']} | {case['server']} | {fmt((f.get('doc_bytes') or 0) / 1024, 0)} | {fmt(f.get('seed_s'), 2)} "
                f"| {fmt(f.get('first_join_ms'), 1)} | {fmt(f['join_p50_ms'], 1)} | {fmt(f['join_max_ms'], 1)} "
                f"| {fmt(f.get('rss_seed_start_mib'), 1)} | {fmt(f.get('rss_seeded_mib'), 1)} | {fmt(delta, 1)} |"
            )
        lines.append("")
    unavailable = report.get("unavailable") or []
    if unavailable:
        lines += ["Not run: " + "; ".join(f"{n} ({why})" for n, why in unavailable) + ".", ""]

    lines += [
        "## Targets",
        "",
        "| target | pairroom | reference | ratio | verdict |",
        "| --- | --- | --- | --- | --- |",
    ]
    for t in report.get("targets") or []:
        lines.append(f"| {t['target']} | {t['pairroom']} | {t['reference']} | {t['ratio']} | {t['verdict']} |")
    lines.append("")

    lines += [
        "## Per run",
        "",
        "The generator's own health: its CPU use, the p99 of its event-loop delay and how late its edits "
        "left compared with their schedule.",
        "",
        "| scenario | server | run | rate/writer | ok | p50 ms | p90 ms | p99 ms | max ms | delivery % | server CPU % "
        "| idle CPU % | CPU ms / edit | RSS MiB | gen CPU % | gen loop p99 ms | gen send lag p99 ms |",
        "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for case in report["cases"]:
        for run in case["runs"]:
            f = run.get("figures") or {}
            lines.append(
                f"| {case['scenario']} | {case['server']} | {run['run']} | {fmt(run.get('edits_per_writer'))} | {fmt(run['ok'])} "
                f"| {fmt(f.get('p50_ms'), 2)} | {fmt(f.get('p90_ms'), 2)} | {fmt(f.get('p99_ms'), 2)} "
                f"| {fmt(f.get('max_ms'), 2)} | {fmt(f.get('delivery_pct'), 2)} | {fmt(f.get('server_cpu_pct'), 1)} "
                f"| {fmt(f.get('server_idle_cpu_pct'), 1)} "
                f"| {fmt(f.get('cpu_ms_per_delivered_edit'), 3)} | {fmt(f.get('rss_mib'), 1)} "
                f"| {fmt(f.get('gen_cpu_pct'), 1)} | {fmt(f.get('gen_loop_delay_p99_ms'), 2)} "
                f"| {fmt(f.get('gen_send_lag_p99_ms'), 2)} |"
            )
    problems = [
        (case, run) for case in report["cases"] for run in case["runs"] if not run["ok"] and case["kind"] != "steps"
    ]
    step_failures = [
        (case, run) for case in report["cases"] for run in case["runs"] if not run["ok"] and case["kind"] == "steps"
    ]
    for title, items in (
        ("Problems", problems),
        ("Steps that failed (expected at the top of each ladder)", step_failures),
    ):
        if not items:
            continue
        lines += ["", f"## {title}", ""]
        for case, run in items:
            what = run.get("error") or ""
            if run.get("server_trouble_count"):
                what += f" server logged {run['server_trouble_count']} warning/error lines, first: {run['server_trouble'][0][:200]}"
            closes = ((run.get("loadgen") or {}).get("connections") or {}).get("unexpectedCloses") or []
            if closes:
                what += f" unexpected closes ({len(closes)}+): {json.dumps(closes[:2])}"
            rate = f" at {run['edits_per_writer']:g}/s" if run.get("edits_per_writer") is not None else ""
            lines.append(
                f"- {case['scenario']} / {case['server']}{rate} run {run['run']}: {what.strip()[:600] or 'see latest.json'}"
            )
    lines.append("")
    return "\n".join(lines)


# Round two's targets: (row, scenario, goal). CPU rows compare CPU per delivered edit with
# Hocuspocus' in the same run (medians of the runs of each case).
CPU_TARGETS = (
    ("S2 100 watchers + presence, CPU per delivered edit vs Hocuspocus", "s2-100p", 0.67),
    ("S2 200 watchers + presence, CPU per delivered edit vs Hocuspocus", "s2-200p", 0.67),
    ("a 150-person session (mentor at 5 edits/s, presence), CPU per delivered edit vs Hocuspocus", "s2-150l", 0.67),
    ("S3 at 20 edits/s per writer, CPU per delivered edit vs Hocuspocus", "s3-20", 0.67),
    ("S3 at 160 edits/s per writer, CPU per delivered edit vs Hocuspocus", "s3-160", 0.67),
    ("S4 200 rooms x 2, CPU per delivered edit vs Hocuspocus", "s4", 0.8),
)


def round_two_targets(cases: dict[tuple[str, str], dict[str, Any]]) -> list[dict[str, str]]:
    """The targets' table of the second round, each verdict computed here from the medians."""
    out: list[dict[str, str]] = []

    def add(target: str, pairroom: str, reference: str, ratio: str, met: bool | None) -> None:
        verdict = "not measured" if met is None else ("met" if met else "NOT met")
        out.append({"target": target, "pairroom": pairroom, "reference": reference, "ratio": ratio, "verdict": verdict})

    def median(scenario: str, server: str) -> dict[str, Any] | None:
        case = cases.get((scenario, server))
        return case.get("median") if case else None

    def runs_note(scenario: str) -> str:
        case = cases.get((scenario, "pairroom"))
        return f", median of {len(case['runs'])}" if case and len(case["runs"]) > 1 else ""

    for row, scenario, goal in CPU_TARGETS:
        a, b, c = median(scenario, "pairroom"), median(scenario, "hocuspocus"), median(scenario, "y-websocket-server")
        x = a and a.get("cpu_ms_per_delivered_edit")
        y = b and b.get("cpu_ms_per_delivered_edit")
        z = c and c.get("cpu_ms_per_delivered_edit")
        if not (x and y):
            add(f"{row} <= {goal}x", "-", "-", "-", None)
            continue
        ywsr = f"; {x / z:.2f}x y-websocket's" if z else ""
        add(
            f"{row} <= {goal}x",
            f"{x:.4f} ms{runs_note(scenario)}",
            f"{y:.4f} ms",
            f"{x / y:.2f}x{ywsr}",
            x / y <= goal,
        )
    a, b = median("s3-20", "pairroom"), median("s3-20", "hocuspocus")
    if a and b and a.get("p50_ms") is not None and b.get("p50_ms") is not None:
        x, y = a["p50_ms"], b["p50_ms"]
        add("S3 p50 at 20 edits/s <= Hocuspocus'", f"{x:.2f} ms", f"{y:.2f} ms", f"{x / y:.2f}x", x <= y)
    else:
        add("S3 p50 at 20 edits/s <= Hocuspocus'", "-", "-", "-", None)
    a, b, c = median("s5", "pairroom"), median("s5", "y-websocket-server"), median("s5", "hocuspocus")
    if a and b and a.get("rss_mib") and b.get("rss_mib"):
        x, y = a["rss_mib"], b["rss_mib"]
        hp = f" (Hocuspocus {c['rss_mib']:.1f})" if c and c.get("rss_mib") else ""
        add(
            "S5 idle connections (2,000; 500 under --quick), RSS <= y-websocket's",
            f"{x:.1f} MiB",
            f"{y:.1f} MiB{hp}",
            f"{x / y:.2f}x",
            x <= y,
        )
    else:
        add("S5 idle connections (2,000; 500 under --quick), RSS <= y-websocket's", "-", "-", "-", None)
    if a and a.get("rss_ready_mib"):
        x = a["rss_ready_mib"]
        add("S5 idle process (no connections), RSS <= 40 MiB", f"{x:.1f} MiB", "40 MiB", "-", x <= 40)
    else:
        add("S5 idle process (no connections), RSS <= 40 MiB", "-", "-", "-", None)
    s7 = cases.get(("s7", "pairroom"))
    a, b = median("s7", "pairroom"), median("s7", "hocuspocus")
    row = "S7 C10k: all connected and synced; RSS and connect-all time <= Hocuspocus'"
    if s7 and a and b and a.get("rss_mib") and b.get("rss_mib") and a.get("connect_all_s") and b.get("connect_all_s"):
        everyone = s7["ok"] and a.get("clients") == s7.get("clients_expected")
        add(
            row,
            f"{a['clients']} clients, {a['rss_mib']:.1f} MiB, {a['connect_all_s']:.1f} s",
            f"{b['rss_mib']:.1f} MiB, {b['connect_all_s']:.1f} s",
            f"RSS {a['rss_mib'] / b['rss_mib']:.2f}x, connect {a['connect_all_s'] / b['connect_all_s']:.2f}x",
            bool(everyone and a["rss_mib"] <= b["rss_mib"] and a["connect_all_s"] <= b["connect_all_s"]),
        )
    else:
        add(row, "-", "-", "-", None)
    s8, a = cases.get(("s8", "pairroom")), median("s8", "pairroom")
    row = "S8 lecture, 1 writer + 999 watchers with presence: p99 < 100 ms, delivery 100 %, converged"
    if s8 and a and a.get("p99_ms") is not None:
        p = f"p99 {a['p99_ms']:.1f} ms (presence p99 {fmt(a.get('presence_p99_ms'), 1)}), delivery {fmt(a.get('delivery_pct'), 2)} %, converged {fmt(a.get('converged'))}"
        add(
            row,
            p,
            "-",
            "-",
            bool(s8["ok"] and a["p99_ms"] < 100 and (a.get("delivery_pct") or 0) >= 100 - 1e-9 and a.get("converged")),
        )
    else:
        add(row, "-", "-", "-", None)
    a = median("s6-10m", "pairroom")
    row = "S6 large document (about 10 MiB): first join < 1 s, RSS per document <= 3x its encoded size"
    if a and a.get("first_join_ms") is not None and a.get("doc_bytes"):
        mib = a["doc_bytes"] / 2**20
        held = (a.get("rss_seeded_mib") or 0) - (a.get("rss_seed_start_mib") or 0)
        add(
            row,
            f"{mib:.1f} MiB document: first join {a['first_join_ms']:.0f} ms, {held:.1f} MiB in the server",
            "1 s; 3x the document",
            f"{held / mib:.2f}x its size",
            a["first_join_ms"] < 1000 and held <= 3 * mib,
        )
    else:
        add(row, "-", "-", "-", None)
    return out


def targets(report: dict[str, Any]) -> list[dict[str, str]]:
    """The issue's targets as ratios against the peers measured in the same run."""
    cases = {(c["scenario"], c["server"]): c for c in report["cases"]}
    out: list[dict[str, str]] = [row for row in round_two_targets(cases) if row["verdict"] != "not measured"]

    def add(target: str, pairroom: str, reference: str, ratio: str, met: bool | None) -> None:
        verdict = "not measured" if met is None else ("met" if met else "NOT met")
        out.append({"target": target, "pairroom": pairroom, "reference": reference, "ratio": ratio, "verdict": verdict})

    pr, hp = cases.get(("s3", "pairroom")), cases.get(("s3", "hocuspocus"))
    if pr and hp and pr.get("sustained_rate") and hp.get("sustained_rate"):
        ratio = pr["sustained_rate"] / hp["sustained_rate"]
        hp_top = hp["steps"] and all(e["sustained"] for e in hp["steps"])
        note = " (Hocuspocus sustained every step: its ceiling is above the ladder)" if hp_top else ""
        pr_top = pr["steps"] and all(e["sustained"] for e in pr["steps"])
        met = None if (hp_top and pr_top) else ratio >= 1.5  # both above the ladder: no ceiling seen
        add(
            TARGETS[0],
            f"{pr['sustained_rate']:g}/s",
            f"{hp['sustained_rate']:g}/s{note}",
            f"{ratio:.2f}x (need >= 1.5x)",
            met,
        )
        common = [
            (a, b)
            for a in pr["steps"]
            for b in hp["steps"]
            if a["rate"] == b["rate"] and a["sustained"] and b["sustained"]
        ]
        if common:
            a, b = max(common, key=lambda ab: ab[0]["rate"])
            x, y = a["median"].get("cpu_ms_per_delivered_edit"), b["median"].get("cpu_ms_per_delivered_edit")
            if x and y:
                add(
                    TARGETS[1],
                    f"{x:.4f} ms at {a['rate']:g}/s",
                    f"{y:.4f} ms",
                    f"{x / y:.2f}x (need <= 0.67x)",
                    x / y <= 0.67,
                )
            else:
                add(TARGETS[1], "-", "-", "-", None)
        else:
            add(TARGETS[1], "-", "-", "no rate sustained by both", None)
    elif pr or hp:
        add(TARGETS[0], fmt(pr and pr.get("sustained_rate")), fmt(hp and hp.get("sustained_rate")), "-", None)
        add(TARGETS[1], "-", "-", "-", None)
    c = cases.get(("s2-200p", "pairroom"))
    if c and c.get("median"):
        p99 = c["median"].get("p99_ms")
        add(
            TARGETS[2],
            f"p99 {fmt(p99, 2)} ms (presence p99 {fmt(c['median'].get('presence_p99_ms'), 2)} ms)",
            "50 ms",
            "-",
            None if p99 is None else p99 < 50,
        )
    a, b = cases.get(("s5", "pairroom")), cases.get(("s5", "hocuspocus"))
    if a and b and a.get("median") and b.get("median") and a["median"].get("rss_mib") and b["median"].get("rss_mib"):
        x, y = a["median"]["rss_mib"], b["median"]["rss_mib"]
        add(TARGETS[3], f"{x:.1f} MiB", f"{y:.1f} MiB", f"{x / y:.2f}x (need <= 1x)", x <= y)
    c = cases.get(("s1", "pairroom"))
    if c and c.get("median"):
        p99 = c["median"].get("p99_ms")
        add(TARGETS[4], f"p99 {fmt(p99, 2)} ms", "10 ms", "-", None if p99 is None else p99 < 10)
    add(*cross_node_target())
    return out


def cross_node_target() -> tuple[str, str, str, str, bool | None]:
    """The cross-node row, from ``bench/cluster_presence.py``'s last run (two nodes need their own
    harness: a Redis and a client of the pair on each node)."""
    path = RESULTS / "cluster_presence.json"
    try:
        cluster = json.loads(path.read_text())["cluster"]
        same, cross = cluster["pair, same node"], cluster["pair, cross node"]
        added_p50, added_p99 = cross["p50"] - same["p50"], cross["p99"] - same["p99"]
    except (OSError, ValueError, KeyError, TypeError):
        return (TARGETS[5], "-", "-", "run bench/cluster_presence.py", None)
    stamp = json.loads(path.read_text()).get("generated_at", "?")[:10]
    return (
        TARGETS[5],
        f"p50 {added_p50:+.2f} ms, p99 {added_p99:+.2f} ms",
        f"same-node pair (bench/cluster_presence.py, {stamp})",
        "-",
        added_p99 < 5,
    )


# ---------------------------------------------------------------------------------------------
# main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short windows and fewer S2/S3 cases (a smoke run)")
    parser.add_argument(
        "--scenario", action="append", choices=sorted(SCENARIOS), help="scenario to run (repeatable; default: all)"
    )
    parser.add_argument("--server", action="append", choices=sorted(SERVERS), help="server (repeatable)")
    parser.add_argument("--runs", type=int, help="runs per case (default: the scenario's, 1)")
    parser.add_argument("--workers", type=int, help="load generator processes (default: the scenario's)")
    parser.add_argument(
        "--steps", type=lambda v: tuple(float(x) for x in v.split(",")), help="S3 rates per writer, e.g. 5,10,20"
    )
    parser.add_argument(
        "--profile",
        choices=["raw", "svg"],
        help="record the Python servers with py-spy over each measured window (raw: collapsed stacks + a summary)",
    )
    parser.add_argument(
        "--targets",
        action="store_true",
        help="run what the targets' table reads (its scenarios against pairroom, Hocuspocus and y-websocket, "
        "median of 3 runs unless --runs or --quick)",
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin server and generator to CPUs")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    parser.add_argument("--render", type=Path, help="only rewrite latest.md (in --out) from this JSON report")
    args = parser.parse_args(argv)

    if args.render:
        report = json.loads(args.render.read_text())
        for case in report["cases"]:
            if case["kind"] == "steps" and case["scenario"] in SCENARIOS:
                for e in case["steps"]:
                    runs = [r for r in case["runs"] if r.get("edits_per_writer") == e["rate"]]
                    e["sustained"], e["why"] = step_verdict(SCENARIOS[case["scenario"]], e["median"], runs)
                best = None
                for e in sorted(case["steps"], key=lambda e: e["rate"]):
                    if not e["sustained"]:
                        break
                    best = e
                case["sustained_rate"] = best["rate"] if best else None
        report["targets"] = targets(report)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "latest.md").write_text(markdown(report))
        return 0

    if not (VENV / "bin" / "python").exists():
        sys.exit(f"bench: no virtualenv at {VENV}")
    raise_nofile()
    ensure_loadgen()
    if args.targets:
        args.scenario = args.scenario or list(TARGET_SCENARIOS)
        args.server = args.server or list(TARGET_SERVERS)
        args.runs = args.runs or (1 if args.quick else 3)
    names = args.scenario or [n for n, sc in SCENARIOS.items() if sc.in_quick or not args.quick]
    plan: list[tuple[Scenario, ServerSpec]] = []
    unavailable: list[tuple[str, str]] = []
    for name in names:
        scenario = SCENARIOS[name]
        default = [n for n in scenario.servers if n in QUICK_SERVERS] if args.quick else list(scenario.servers)
        for server_name in args.server or default:
            spec = SERVERS[server_name]
            if spec.available:
                if (server_name, spec.available) not in unavailable:
                    unavailable.append((server_name, spec.available))
                continue
            if scenario.kind == "joiner" and server_name == "relay":
                continue  # the relay holds no document to give a joiner
            plan.append((scenario, spec))
    ensure_peers({need for _, spec in plan for need in spec.needs} | ({"python-peers"} if args.profile else set()))
    if args.no_pin:
        server_prefix, gen_prefix, pin_note = [], [], "none (--no-pin)"
    else:
        server_prefix, gen_prefix, pin_note = pinning()

    started = time.monotonic()
    report: dict[str, Any] = {
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": machine_info(pin_note),
        "runs_per_case": args.runs or 1,
        "cases": [],
        "unavailable": unavailable,
    }
    ok = True
    for scenario, spec in plan:
        case = run_case(scenario, spec, args, server_prefix, gen_prefix)
        ok = ok and case["ok"]
        report["cases"].append(case)
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    report["targets"] = targets(report)

    args.out.mkdir(parents=True, exist_ok=True)
    if args.profile == "raw":
        summaries = []
        for case in report["cases"]:
            for run in case["runs"]:
                path = Path(run["profile"]) if run.get("profile") else None
                if path and path.exists():
                    rate = f" at {run['edits_per_writer']:g}/s per writer" if run.get("edits_per_writer") else ""
                    summaries.append(f"## {case['scenario']} / {case['server']}{rate}\n\n{summarize_profile(path)}")
        if summaries:
            (args.out / "profile-summary.md").write_text(
                "# py-spy profiles (busy samples only)\n\n" + "\n".join(summaries)
            )
    (args.out / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "latest.md").write_text(markdown(report))
    print(markdown(report))
    print(
        f"bench: wrote {args.out / 'latest.json'} and {args.out / 'latest.md'} in {report['elapsed_s']} s",
        file=sys.stderr,
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
