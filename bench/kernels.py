#!/usr/bin/env python3
"""Kernel benchmark: run request to first output, kernel memory, idle kernels per node.

    .venv/bin/python bench/kernels.py [--runs 5] [--json bench/results/kernels.json]

Scenarios, each ``--runs`` times in a fresh room (median, min and max reported):

- ``warm``: sandboxed, a kernel waiting in the pool (the normal case for a room's first run);
- ``cold``: sandboxed, pool size 0, so the request boots a kernel;
- ``bare warm`` / ``bare cold``: the same without the sandbox (``unsafe``), as the baseline;
- ``next run``: a second ``print(1)`` in a room whose kernel is already running.

"First output" is the moment the ``stdout`` output of ``print(1)`` is in the room document, as a
member would see it, measured from the ``KernelService.submit`` call (HTTP parsing and the network
are left out; they add about a millisecond on loopback). Memory is the proportional set size (PSS)
of a kernel's whole process tree (setpriv, both bwrap processes, the kernel) from
``/proc/PID/smaps_rollup``, for idle kernels.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pairroom.kernels import KernelSettings, rundoc
from pairroom.kernels.service import KernelService
from pairroom.rooms.registry import RoomRegistry
from pairroom.storage.sql import SqlStore


async def first_output(service: KernelService, registry: RoomRegistry, name: str, deadline: float = 60) -> float:
    """Seconds from submit to the first output of ``print(1)`` being in the document."""
    async with registry.hold(name) as room:
        started = time.perf_counter()
        run_id = await service.submit(name, code="print(1)", path=None, by="bench")
        while True:
            run = rundoc.read_run(room, run_id)
            if run and run["outputs"]:
                elapsed = time.perf_counter() - started
                assert run["outputs"][0].get("text") == "1\n", run
                return elapsed
            if time.perf_counter() - started > deadline:
                raise TimeoutError(f"no output within {deadline}s: {run}")
            await asyncio.sleep(0.0005)


def tree_pss_kib(pid: int) -> int:
    """PSS of ``pid`` and all its descendants, in KiB."""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            for line in Path(f"/proc/{current}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
            for task in Path(f"/proc/{current}/task").iterdir():
                stack.extend(int(c) for c in (task / "children").read_text().split())
        except FileNotFoundError:
            continue
    return total


async def scenario(label: str, settings: KernelSettings, runs: int, db: str) -> dict[str, Any]:
    store = SqlStore(db)
    await store.open()
    registry = RoomRegistry(store)
    started = asyncio.Event()
    rooms_task = asyncio.create_task(registry.run(started))
    await started.wait()
    times: list[float] = []
    nexts: list[float] = []
    memory: list[int] = []
    try:
        async with KernelService(registry, settings) as service:
            for _ in range(runs):
                if settings.pool_size:
                    await service.pool.wait_filled()
                    # let the pool's start-up load settle, as on a server that has been up a while
                    await asyncio.sleep(1.0)
                name = "bench-" + uuid.uuid4().hex[:8]
                times.append(await first_output(service, registry, name))
                nexts.append(await first_output(service, registry, name))
                kernel = service.rooms[name].kernel
                assert kernel is not None and kernel.pid is not None
                memory.append(tree_pss_kib(kernel.pid))
    finally:
        rooms_task.cancel()
        await asyncio.gather(rooms_task, return_exceptions=True)
        await store.close()
    return {
        "scenario": label,
        "first_output_ms": summary(times),
        "next_run_ms": summary(nexts),
        "kernel_pss_mib": round(statistics.median(memory) / 1024, 1),
    }


def summary(values: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values]
    return {"median": round(statistics.median(ms), 1), "min": round(min(ms), 1), "max": round(max(ms), 1)}


def mem_total_mib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "kernels.json")
    args = parser.parse_args()
    base = KernelSettings(pool_size=1, idle_shutdown_seconds=3600)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, settings in [
            ("warm (sandboxed, pooled)", base),
            ("cold (sandboxed, no pool)", dataclasses.replace(base, pool_size=0)),
            ("bare warm (no sandbox, pooled)", dataclasses.replace(base, unsafe=True)),
            ("bare cold (no sandbox, no pool)", dataclasses.replace(base, unsafe=True, pool_size=0)),
        ]:
            result = await scenario(label, settings, args.runs, f"sqlite:///{tmp}/{uuid.uuid4().hex}.db")
            results.append(result)
            print(json.dumps(result), flush=True)
    pss = results[0]["kernel_pss_mib"]
    total = mem_total_mib()
    reserve = 2048  # the server itself, rooms, the OS
    report = {
        "runs": args.runs,
        "results": results,
        "mem_total_mib": total,
        "idle_kernels_per_node_estimate": int((total - reserve) // pss),
        "idle_kernels_per_gib": round(1024 / pss, 1),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "results"}))


if __name__ == "__main__":
    asyncio.run(main())
