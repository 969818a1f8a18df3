"""Instructions the server executes per delivered edit, over a fixed workload: a load-independent cost.

CPU seconds mean little on a shared, busy machine, and this one's virtual CPU offers no hardware
counters (``perf stat -e instructions`` says "not supported"). So the server runs under valgrind's
callgrind, which counts every instruction it executes (user space: Python, uvloop, pycrdt's Rust,
libc; not the kernel's share of a syscall), with counting switched on only for the generator's
measured window (``callgrind_control -i on/off`` on its ``measure_start``/``measure_end``).

The load is the real generator (``bench/loadgen``) with the scenario shapes of ``bench/run.py`` at
lower rates, so that the server, about 50 times slower under callgrind, still keeps up and sends
what it would send at full speed (the broadcast window and the presence tick merge more when a
server falls behind, which would hide per-message costs). The figure to read is the ratio between
two commits on the same workload; the report also gives the server's CPU share under callgrind, to
show it kept up (well under 100 %).

    .venv/bin/python bench/instructions.py --workload s2-100p --workload s2-200p --workload s3
    .venv/bin/python bench/instructions.py --label after --out bench/results/instructions-after.json

Workloads: ``s2-100p``/``s2-200p`` (1 writer at 2 edits/s with a cursor update per edit, 100 or
200 watchers, awareness renewals every 15 s), ``s3`` (50 clients, 10 writers at 2 edits/s each,
no presence) and ``s3-20`` (the same at 20 edits/s per writer: more than callgrind keeps up with,
so the room merges; read it only next to a run of the same workload), ``s4`` (200 rooms x 2 clients
at 0.1 edits/s each: the per-edit cost of a room's own work, with no fan-out to share it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run


@dataclasses.dataclass(frozen=True)
class Workload:
    scenario: str
    edits_per_sec: float
    duration: float = 20.0
    warmup: float = 2.0


WORKLOADS = {
    "s2-100p": Workload("s2-100p", 2),
    "s2-200p": Workload("s2-200p", 2),
    "s3": Workload("s3", 2),
    "s3-20": Workload("s3", 20, duration=6.0),
    "s4": Workload("s4", 0.1),
}


def callgrind_total(path: Path) -> int:
    """The instruction count (``Ir``) of a callgrind output file: its ``totals:`` line (``summary:``
    holds only what was counted since counting was last switched off, so 0 here)."""
    for line in path.read_text(errors="replace").splitlines():
        match = re.match(r"totals:\s+(\d+)", line)
        if match:
            return int(match.group(1))
    raise RuntimeError(f"{path}: no totals line")


def write_syscalls(pid: int) -> int:
    """Write syscalls the process has made (``syscw`` of ``/proc/PID/io``: uvloop writes to a
    socket with write/writev, so this counts the socket writes; callgrind does not see the kernel)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("syscw:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/io has no syscw")


def control(pid: int, switch: str) -> None:
    """Switch callgrind's counting on or off in the server (through vgdb)."""
    done = subprocess.run(["callgrind_control", "-i", switch, str(pid)], capture_output=True, text=True)
    if done.returncode != 0 or "OK" not in done.stdout:
        raise RuntimeError(f"callgrind_control -i {switch} {pid}: {done.stdout} {done.stderr}")


def measure(name: str, workload: Workload, keep: Path | None = None) -> dict[str, Any]:
    scenario = run.SCENARIOS[workload.scenario]
    # No kernel pool: its sandboxed kernels are other processes, off the measured path, and starting
    # them under valgrind fails (pidfd_open is not emulated) and retries.
    spec = dataclasses.replace(
        run.SERVERS["pairroom"],
        command=run.SERVERS["pairroom"].command + ("--no-kernels",),
        start_timeout=180.0,
        stop_timeout=120.0,
    )
    with tempfile.TemporaryDirectory(prefix="bench-instructions-") as tmpdir:
        tmp = Path(tmpdir)
        # %p: a forked child (before its exec) must not write over the server's counts
        prefix = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={tmp}/callgrind.out.%p"]
        server = run.RunningServer(spec, prefix, tmp)
        try:
            server.wait_ready()
            config = scenario.loadgen_config(
                server.url(), False, f"i{int(time.time())}", None, "y-websocket", workload.edits_per_sec
            )
            config.update(duration=workload.duration, warmup=workload.warmup, connectTimeout=120.0, settle=30.0)
            samples: dict[str, Any] = {}
            tail: deque[str] = deque(maxlen=30)

            def on_line(line: str) -> None:
                try:
                    event = json.loads(line)
                except ValueError:
                    tail.append(line)
                    return
                if not isinstance(event, dict):
                    return
                kind = event.get("event")
                if kind == "measure_start":
                    control(server.proc.pid, "on")
                    samples[kind] = run.proc_sample(server.proc.pid)
                    samples["syscw_start"] = write_syscalls(server.proc.pid)
                elif kind == "measure_end":
                    samples[kind] = run.proc_sample(server.proc.pid)
                    samples["syscw_end"] = write_syscalls(server.proc.pid)
                    control(server.proc.pid, "off")

            gen = subprocess.Popen(
                ["node", str(run.LOADGEN / "loadgen.mjs"), "-"],
                cwd=run.LOADGEN,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                preexec_fn=run.raise_nofile,
            )
            lines: list[str] = []
            readers = [run.LineReader(gen.stderr, on_line), run.LineReader(gen.stdout, lines.append)]
            for reader in readers:
                reader.start()
            assert gen.stdin is not None
            gen.stdin.write(json.dumps(config).encode())
            gen.stdin.close()
            gen.wait(timeout=config["connectTimeout"] + workload.warmup + workload.duration + 300)
            for reader in readers:
                reader.join(5)
            result = json.loads(lines[-1])
        finally:
            stopped = server.stop()
        counts = tmp / f"callgrind.out.{server.proc.pid}"
        instructions = callgrind_total(counts)
        if keep is not None:  # for callgrind_annotate
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(counts, keep / f"callgrind.{name}.out")
    figures = run.figures(result, samples)
    deliveries = figures["deliveries"]
    return {
        "workload": name,
        "scenario": workload.scenario,
        "edits_per_writer_per_s": workload.edits_per_sec,
        "ok": bool(result.get("ok")) and not server.trouble_count,
        "error": result.get("error"),
        "trouble": server.trouble[:5],
        "deliveries": deliveries,
        "delivery_pct": figures["delivery_pct"],
        "converged": figures["converged"],
        "instructions": instructions,
        "instructions_per_delivered_edit": instructions / deliveries if deliveries else None,
        "write_syscalls": samples["syscw_end"] - samples["syscw_start"],
        "write_syscalls_per_delivered_edit": (samples["syscw_end"] - samples["syscw_start"]) / deliveries
        if deliveries
        else None,
        "server_cpu_pct_under_callgrind": figures["server_cpu_pct"],
        "p50_ms_under_callgrind": figures["p50_ms"],
        "server_stop": stopped,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workload", action="append", choices=sorted(WORKLOADS))
    parser.add_argument("--label", default="", help="a name for this measurement (e.g. the commit)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--keep", type=Path, help="keep each workload's callgrind output in this directory")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        sys.exit("bench/instructions.py needs valgrind (callgrind and callgrind_control)")
    run.ensure_loadgen()
    results = []
    for name in args.workload or ["s2-100p", "s2-200p", "s3"]:
        record = measure(name, WORKLOADS[name], args.keep)
        results.append(record)
        per = record["instructions_per_delivered_edit"]
        print(
            f"{name}: {record['instructions']:,} instructions, {record['deliveries']} deliveries, "
            f"{per:,.0f} per delivered edit, {record['write_syscalls_per_delivered_edit']:.2f} socket writes per "
            f"delivered edit, delivery {record['delivery_pct']} %, converged {record['converged']}, "
            f"server {record['server_cpu_pct_under_callgrind']:.0f} % of a core under callgrind"
            + ("" if record["ok"] else f"  NOT OK: {record['error']} {record['trouble']}"),
            flush=True,
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"label": args.label, "results": results}, indent=2))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
