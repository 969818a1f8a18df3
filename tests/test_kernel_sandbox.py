"""Escape and abuse attempts from room code, each against a real kernel in the real sandbox.

Every test asserts two things: the attempt is contained, and the server and another room's kernel
carry on (``assert_unaffected``: the server answers and a neighbour room still runs code at once).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from tests.test_kernels import KernelServer, requires_sandbox, room, run_and_wait, run_code, start_kernel_server, stdout
from tests.yclient import eventually

pytestmark = [requires_sandbox, pytest.mark.asyncio(loop_scope="module")]

NEIGHBOUR = "neighbour-room"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def ks(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[KernelServer]:
    server = await start_kernel_server(tmp_path_factory.mktemp("sandbox"))
    # the neighbour keeps state across the module: it must survive everything the others do
    assert (await run_code(server, NEIGHBOUR, "survivor = 'still here'"))["status"] == "ok"
    yield server
    await server.stop()


async def assert_unaffected(ks: KernelServer) -> None:
    assert (await ks.http.get("/healthz")).status_code == 200
    started = time.monotonic()
    run = await run_code(ks, NEIGHBOUR, "print(survivor)")
    assert run["status"] == "ok" and stdout(run) == "still here\n"
    assert time.monotonic() - started < 5, "the neighbour room's kernel was slowed down"
    # the host can still start processes
    subprocess.run(["true"], check=True, timeout=5)


def last_error(run: dict[str, Any]) -> dict[str, Any]:
    errors = [o for o in run["outputs"] if o["output_type"] == "error"]
    assert errors, run
    return errors[-1]


async def test_tcp_to_a_host_port_fails(ks: KernelServer) -> None:
    connections = 0

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        writer.close()

    listener = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        code = (
            "import socket\n"
            f"try:\n    socket.create_connection(('127.0.0.1', {port}), timeout=3)\n    print('CONNECTED')\n"
            "except OSError as exc:\n    print(type(exc).__name__)\n"
            "print(socket.if_nameindex())"
        )
        run = await run_code(ks, room(), code)
        assert run["status"] == "ok", run
        assert stdout(run) == "ConnectionRefusedError\n[(1, 'lo')]\n"
        assert connections == 0
    finally:
        listener.close()
        await listener.wait_closed()
    await assert_unaffected(ks)


async def test_dns_fails(ks: KernelServer) -> None:
    code = (
        "import socket\n"
        "try:\n    socket.getaddrinfo('pypi.org', 443)\n    print('RESOLVED')\n"
        "except socket.gaierror as exc:\n    print('gaierror', exc.errno)\n"
    )
    run = await run_code(ks, room(), code)
    assert run["status"] == "ok" and stdout(run).startswith("gaierror"), run
    await assert_unaffected(ks)


async def test_writing_outside_the_working_dir_fails(ks: KernelServer) -> None:
    venv = str(ks.service.settings.kernel_venv)
    state_root = str(ks.service.pool.root)
    targets = ["/usr/escape", "/etc/escape", "/escape", "../escape", f"{venv}/escape"]
    # /tmp inside is a private tmpfs: writing there works but never reaches the host's /tmp
    private = [f"{state_root}/escape", "/tmp/escape-" + room()]
    code = (
        "import os\n"
        f"for path in {targets!r}:\n"
        "    try:\n        open(path, 'w').write('x')\n        print(path, 'WRITTEN')\n"
        "    except OSError as exc:\n        print(path, type(exc).__name__)\n"
        f"for path in {private!r}:\n    open(path, 'w').write('x')\n"
        "open('inside.txt', 'w').write('ok')\nprint(os.getcwd(), os.listdir('.'))"
    )
    name = room()
    run = await run_code(ks, name, code)
    assert run["status"] == "ok", run
    assert "WRITTEN" not in stdout(run), stdout(run)
    assert stdout(run).count("OSError") == len(targets)  # EROFS for each
    assert stdout(run).endswith("/home/room ['inside.txt']\n")
    for target in [*targets[:3], targets[4], *private]:
        assert not os.path.exists(target), target
    work = ks.service.rooms[name].kernel.dirs.work  # type: ignore[union-attr]
    assert (work / "inside.txt").read_text() == "ok"  # the one place it may write
    await assert_unaffected(ks)


async def test_secrets_and_the_database_are_not_readable(ks: KernelServer) -> None:
    assert ks.db_path.exists()
    targets = ["/etc/shadow", "/etc/passwd", str(ks.db_path), "/root", f"/proc/{os.getpid()}/environ"]
    code = (
        f"for path in {targets!r}:\n"
        "    try:\n        open(path, 'rb').read(1)\n        print(path, 'READ')\n"
        "    except OSError as exc:\n        print(path, type(exc).__name__)\n"
        "import os\nprint(sorted(int(p) for p in os.listdir('/proc') if p.isdigit())[:3], os.getuid())"
    )
    run = await run_code(ks, room(), code)
    assert run["status"] == "ok", run
    assert "READ" not in stdout(run), stdout(run)
    assert "FileNotFoundError" in stdout(run)
    assert stdout(run).rstrip().endswith("1000")  # an unprivileged uid in its own pid namespace
    await assert_unaffected(ks)


async def test_a_fork_bomb_is_contained(ks: KernelServer) -> None:
    name = room()
    # Forks until refused for two seconds; the children stay alive holding their slots.
    code = (
        "import os, time\n"
        "made = refused = 0\nend = time.time() + 2\n"
        "while time.time() < end:\n"
        "    try:\n        pid = os.fork()\n"
        "    except OSError:\n        refused += 1\n        time.sleep(0.005)\n        continue\n"
        "    if pid == 0:\n        time.sleep(600)\n        os._exit(0)\n"
        "    made += 1\n"
        "print(made, refused > 0)"
    )
    run = await run_code(ks, name, code)
    assert run["status"] == "ok", run
    made, refused = stdout(run).split()
    assert int(made) < ks.service.settings.pids and refused == "True"
    await assert_unaffected(ks)
    # a restart takes the whole tree down with it
    assert (await ks.http.post(f"/api/rooms/{name}/kernel/restart")).status_code == 200
    run = await run_code(ks, name, "import os\nprint(len([p for p in os.listdir('/proc') if p.isdigit()]) < 5)")
    assert stdout(run) == "True\n", run


async def test_allocating_4gb_is_killed_reported_and_the_next_run_gets_a_fresh_kernel(ks: KernelServer) -> None:
    name = room()
    assert (await run_code(ks, name, "state = 1"))["status"] == "ok"
    run = await run_code(ks, name, "hog = b'x' * (4 * 1024**3)\nprint('ALLOCATED')")
    assert run["status"] in ("failed", "error"), run
    assert "ALLOCATED" not in stdout(run)
    error = last_error(run)
    if ks.service.cgroups is not None and ks.service.cgroups.limits_memory:
        assert run["status"] == "failed"
        assert "out of memory" in error["evalue"] and "fresh state" in error["evalue"]
        state = (await ks.http.get(f"/api/rooms/{name}/kernel")).json()
        assert state["status"] == "dead" and "out of memory" in state["death"]
    else:  # rlimits only: RLIMIT_AS turns it into a MemoryError and the kernel lives on
        assert error["ename"] == "MemoryError"
    await assert_unaffected(ks)
    run = await run_code(ks, name, "print('fresh', 'state' in globals())")
    assert run["status"] == "ok" and stdout(run) in ("fresh False\n", "fresh True\n")
    if ks.service.cgroups is not None and ks.service.cgroups.limits_memory:
        assert stdout(run) == "fresh False\n"
        assert (await ks.http.get(f"/api/rooms/{name}/kernel")).json()["restartedAt"] > 0


async def _start_and_wait_running(ks: KernelServer, name: str, code: str) -> str:
    """Start ``code`` (which prints "looping" first) and wait until that output is in the document,
    so the interrupt cannot land before the loop has begun."""
    run_id = (await ks.http.post(f"/api/rooms/{name}/runs", json={"code": code})).json()["id"]

    async def looping() -> bool:
        run = (await ks.http.get(f"/api/rooms/{name}/runs/{run_id}")).json()
        return run["status"] == "running" and "looping" in stdout(run)

    await eventually(looping, timeout=30, what="the loop started")
    return run_id


async def test_an_infinite_loop_is_interrupted_and_the_kernel_keeps_its_state(ks: KernelServer) -> None:
    name = room()
    assert (await run_code(ks, name, "kept = 'yes'"))["status"] == "ok"
    run_id = await _start_and_wait_running(ks, name, "print('looping', flush=True)\nwhile True:\n    pass")
    response = await ks.http.post(f"/api/rooms/{name}/kernel/interrupt")
    assert response.status_code == 202 and response.json() == {"interrupted": True}
    run = await run_and_wait(ks, name, run_id, timeout=10)
    assert run["status"] == "interrupted" and last_error(run)["ename"] == "KeyboardInterrupt"
    assert stdout(await run_code(ks, name, "print(kept)")) == "yes\n"
    await assert_unaffected(ks)


async def test_a_loop_that_ignores_interrupts_is_killed(ks: KernelServer) -> None:
    name = room()
    run_id = await _start_and_wait_running(
        ks,
        name,
        # SIGINT ignored, and the loop sleeps so the kernel's output thread can still send "looping"
        "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "print('looping', flush=True)\nwhile True:\n    time.sleep(0.05)",
    )
    assert (await ks.http.post(f"/api/rooms/{name}/kernel/interrupt")).json() == {"interrupted": True}
    run = await run_and_wait(ks, name, run_id, timeout=15)
    assert run["status"] == "interrupted", run
    assert "killed" in last_error(run)["evalue"]
    assert stdout(await run_code(ks, name, "print('back')")) == "back\n"
    await assert_unaffected(ks)


async def test_the_wall_clock_limit_stops_a_run(ks: KernelServer, tmp_path_factory: pytest.TempPathFactory) -> None:
    limit = 3.0  # its own server: the module's limit is generous so a loaded machine cannot trip it
    strict = await start_kernel_server(tmp_path_factory.mktemp("wallclock"), pool_size=1, run_timeout=limit)
    try:
        name = room()
        started = time.monotonic()
        run = await run_code(strict, name, "import time\ntime.sleep(3600)", timeout=limit + 30)
        assert limit <= time.monotonic() - started < limit + 20
        assert run["status"] == "failed"
        assert "time limit of 3 s" in last_error(run)["evalue"]
        assert stdout(await run_code(strict, name, "print('after')")) == "after\n"
    finally:
        await strict.stop()
    await assert_unaffected(ks)


async def test_a_50mb_print_is_truncated_at_the_cap(ks: KernelServer) -> None:
    name = room()
    cap = ks.service.settings.output_cap_bytes
    run = await run_code(ks, name, "print('x' * 50_000_000)\nprint('never shown')", timeout=60)
    assert run["status"] == "ok", {k: v for k, v in run.items() if k != "outputs"}
    outputs = run["outputs"]
    assert outputs[-1] == {"output_type": "truncated", "limit": cap}
    text = stdout(run)
    assert 0.9 * cap < len(text) <= cap and set(text) == {"x"}
    # and the room's stored log did not take 50 MB
    assert ks.db_path.stat().st_size < 20 * cap
    await assert_unaffected(ks)
