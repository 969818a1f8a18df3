"""One media scenario: a pairroom server and aiortc peer processes, all in one network namespace.

    unshare -n sh -c 'ip link set lo up && exec python -m tests.rtc.scenario NAME WORKDIR'

Why a namespace: ICE would otherwise send checks to every address of this machine's network card,
which must never be a traffic target, and a server on the host's loopback is unreachable from a
peer inside its own namespace. So this process, started by the test inside a fresh namespace
whose only interface is ``lo``, runs the server (host candidates ``127.0.0.1`` through
``media_addresses``) and starts the peers as its own children, which inherit the namespace.
It refuses to run if any other interface exists, and prints one ``RESULT {json}`` line.

Scenarios: ``call`` (two peers through /call: data channel and audio both ways), ``call-nodes``
(the same call with each peer on its own node: a redis-server and two ``pairroom serve --redis``
processes, started here instead of the in-process server), ``relay`` (a
speaker and several listeners through the server-side relay), ``record`` (a peer's audio recorded
by the server's recorder peer), ``bench N`` (relay listeners for the per-node figure).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from pairroom.rtc.api import RtcSettings
from tests.rtc.serve import RtcServer, start
from tests.support.nodes import PAIRROOM, ServeProcess, _collect
from tests.support.redis_server import RedisProcess, _die_with_parent

DEADLINE = 40.0


async def peer(*args: str) -> dict[str, Any]:
    """Run ``tests.rtc.peer`` with ``args`` and return its RESULT."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.rtc.peer", *args, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    for line in out.decode().splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])  # type: ignore[no-any-return]
    return {"ok": False, "reason": f"no result, exit {proc.returncode}"}


async def call(server: RtcServer, workdir: Path) -> dict[str, Any]:
    answer, offer = await asyncio.gather(
        peer("call-answer", server.http, "pair"), peer("call-offer", server.http, "pair")
    )
    return {"answer": answer, "offer": offer}


async def serve_node(name: str, redis: str, workdir: Path) -> ServeProcess:
    """``pairroom serve --redis REDIS`` as this process's child (killed if this process dies)."""
    env = {
        **os.environ,
        "PAIRROOM_LOG_FORMAT": "json",
        "PAIRROOM_RTC_MEDIA_ADDRESSES": "127.0.0.1",
    }
    proc = await asyncio.create_subprocess_exec(
        PAIRROOM,
        "serve",
        "--port",
        "0",
        "--redis",
        redis,
        "--node-id",
        name,
        "--no-kernels",
        "--db",
        f"sqlite:///{workdir / name}.db",  # signaling never touches storage
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=_die_with_parent,
    )
    assert proc.stderr is not None
    early: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(20):
            async for line in proc.stderr:
                try:
                    early.append(json.loads(line))
                except ValueError:
                    early.append({"msg": line.decode(errors="replace").rstrip()})
                if early[-1].get("msg") == "listening":
                    break
            else:
                raise RuntimeError(f"{name} exited with {await proc.wait()}: {early[-5:]}")
    except BaseException:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        raise
    node = ServeProcess(proc, early[-1]["port"], {"PAIRROOM_NODE_ID": name})
    node.log.extend(early)
    node.drain = asyncio.create_task(_collect(proc, node.log))
    return node


async def call_nodes(workdir: Path) -> dict[str, Any]:
    """``call`` across two nodes: the answerer signals through node 1, the offerer through node 2.

    The nodes are ``pairroom serve --redis`` processes sharing one redis-server, so every offer,
    answer and call event between the two peers crosses Redis.
    """
    async with RedisProcess() as redis:
        nodes: list[ServeProcess] = []
        try:
            for name in ("node-1", "node-2"):
                nodes.append(await serve_node(name, redis.url, workdir))
            one, two = nodes
            answer, offer = await asyncio.gather(
                peer("call-answer", one.http, "pair"), peer("call-offer", two.http, "pair")
            )
        finally:
            codes = [await node.terminate() for node in nodes]
        logged = [
            {"node": node.env["PAIRROOM_NODE_ID"], **entry}
            for node in nodes
            for entry in node.log
            if entry.get("level") in ("warning", "error", "critical")
        ]
        stopped = [any(entry.get("msg") == "stopped" for entry in node.log) for node in nodes]
        return {
            "answer": answer,
            "offer": offer,
            "node_exit_codes": codes,
            "node_stopped": stopped,
            "node_warnings": logged,
        }


async def relay(
    server: RtcServer, workdir: Path, listeners: int = 3, frames: int = 50, processes: int = 1
) -> dict[str, Any]:
    speaker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.rtc.peer",
        "speak",
        server.http,
        "lesson",
        "--seconds",
        "120",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        share = [listeners // processes + (i < listeners % processes) for i in range(processes)]
        results = await asyncio.gather(
            *(peer("listen", server.http, "lesson", "--listeners", str(n), "--frames", str(frames)) for n in share)
        )
    finally:
        speaker.terminate()
        await speaker.wait()
    merged: dict[str, Any] = {
        "ok": all(r.get("ok") for r in results),
        "frames": [],
        "loud": [],
        "first_frame_ms": [],
        "fps": [],
    }
    for r in results:
        for key in ("frames", "loud", "first_frame_ms", "fps"):
            merged[key] += r.get(key, [])
    return merged


async def bench(server: RtcServer, listeners: int, processes: int = 2, frames: int = 500) -> dict[str, Any]:
    """Server CPU per listener while audio flows: CPU seconds over listener-seconds delivered.

    CPU time, not wall time, so other work on the machine changes the figure little; the window
    opens once every listener has its first frame (set-up excluded) and closes at the end.
    """
    speaker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.rtc.peer",
        "speak",
        server.http,
        "lesson",
        "--seconds",
        "300",
        stdout=asyncio.subprocess.PIPE,
    )
    share = [listeners // processes + (i < listeners % processes) for i in range(processes)]
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.rtc.peer",
            "listen",
            server.http,
            "lesson",
            "--listeners",
            str(n),
            "--frames",
            str(frames),
            stdout=asyncio.subprocess.PIPE,
        )
        for n in share
    ]
    window: dict[str, Any] = {}
    streaming = [0] * len(procs)
    results: list[dict[str, Any]] = [{}] * len(procs)

    async def follow(i: int, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode()
            if line.startswith("STREAMING "):
                streaming[i] = int(line.split()[1]) or 1
                if all(streaming):
                    window["cpu"] = _cpu()
                    window["at"] = time.monotonic()
            elif line.startswith("RESULT "):
                results[i] = json.loads(line[len("RESULT ") :])
        await proc.wait()

    try:
        await asyncio.gather(*(follow(i, p) for i, p in enumerate(procs)))
    finally:
        speaker.terminate()
        await speaker.wait()
    cpu = _cpu() - window.get("cpu", _cpu())
    wall = time.monotonic() - window.get("at", time.monotonic())
    delivered = sum(sum(r.get("frames", [])) for r in results) - sum(streaming)
    listener_seconds = delivered * 0.02
    fps = [f for r in results for f in r.get("fps", [])]
    return {
        "ok": all(r.get("ok") for r in results),
        "listeners": listeners,
        "server_cpu_seconds": round(cpu, 2),
        "window_seconds": round(wall, 2),
        "server_cores_busy": round(cpu / wall, 3) if wall else None,
        "cpu_per_listener": round(cpu / listener_seconds, 4) if listener_seconds else None,
        "listeners_per_core": round(listener_seconds / cpu) if cpu else None,
        "fps_min": min(fps) if fps else None,
        "fps_mean": round(sum(fps) / len(fps), 1) if fps else None,
    }


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def record(server: RtcServer, workdir: Path) -> dict[str, Any]:
    result = await peer("call-record", server.http, "rec", "--seconds", "2")
    async with httpx.AsyncClient(base_url=server.http) as http:
        deadline = time.monotonic() + 10
        while True:  # the recorder writes the sidecar once it has seen the peer leave
            recordings = (await http.get("/api/rooms/rec/recordings")).json()["recordings"]
            if recordings or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
    return {"peer": result, "recordings": recordings, "dir": str(workdir / "recordings")}


def namespace_interfaces() -> list[str]:
    """Interfaces of this process's network namespace (/sys/class/net shows the host's)."""
    lines = Path("/proc/self/net/dev").read_text().splitlines()[2:]
    return sorted(line.split(":", 1)[0].strip() for line in lines)


async def main(name: str, workdir: Path, extra: list[str]) -> dict[str, Any]:
    interfaces = namespace_interfaces()
    if interfaces != ["lo"]:
        raise SystemExit(f"refusing to run: interfaces {interfaces}; run inside `unshare -n`")
    if name == "call-nodes":
        async with asyncio.timeout(DEADLINE):
            return await call_nodes(workdir)
    settings = RtcSettings(
        media_addresses=("127.0.0.1",),
        record_rooms=frozenset({"rec"}),
        recording_dir=str(workdir / "recordings"),
        relay_max_listeners=500,
    )
    server = await start(f"sqlite:///{workdir / 'pairroom.db'}", settings)
    try:
        async with asyncio.timeout(DEADLINE if name != "bench" else 240):
            if name == "call":
                return await call(server, workdir)
            if name == "relay":
                return await relay(server, workdir)
            if name == "record":
                return await record(server, workdir)
            if name == "bench":
                return await bench(server, int(extra[0]))
            raise SystemExit(f"unknown scenario {name}")
    finally:
        await server.stop()


if __name__ == "__main__":
    out = asyncio.run(main(sys.argv[1], Path(sys.argv[2]), sys.argv[3:]))
    print("RESULT " + json.dumps(out), flush=True)
