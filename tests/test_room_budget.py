"""One resource budget per room: the kernel and the terminals of a room run in one cgroup, so a
memory hog in a terminal and the kernel's data cannot together pass the room's limit, while
another room has its own (real kernel from the warm pool, real bash on a PTY, real cgroups)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import websockets

from pairroom.app import create_app
from pairroom.config import Settings
from pairroom.sandbox.budget import room_dir_name
from pairroom.sandbox.limits import CgroupMode
from pairroom.web.runner import Server, start_serving, uvicorn_config

from .test_kernels import requires_sandbox, stdout
from .yclient import eventually

MiB = 2**20
BUDGET = 320 * MiB
pytestmark = [requires_sandbox, pytest.mark.asyncio(loop_scope="module")]

# Raises its own OOM score, so that when the room's budget runs out the kernel kills the hog and
# not the kernel that holds its data; alone (another room) 250 MiB fits in 320.
HOG = (
    "python3 -c \"open('/proc/self/oom_score_adj', 'w').write('1000'); a = b'x' * (250 << 20); "
    "print('GOT', len(a) >> 20)\"; echo status=$?\r"
)


@dataclasses.dataclass
class Node:
    server: Server
    task: asyncio.Task[None]
    http: httpx.AsyncClient

    @property
    def state(self) -> Any:
        return self.server.config.app.state


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def node(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Node]:
    tmp: Path = tmp_path_factory.mktemp("budget")
    settings = dataclasses.replace(
        Settings(),
        port=0,
        db=f"sqlite:///{tmp / 'pairroom.db'}",
        log_format="text",
        kernel_pool_size=1,
        kernel_memory_bytes=BUDGET,
        kernel_run_timeout=60.0,
    )
    server = Server(uvicorn_config(create_app(settings), settings, signals=False))
    task = await start_serving(server)
    http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=30)
    yield Node(server, task, http)
    await http.aclose()
    server.should_exit = True
    await task


async def run(node: Node, room: str, code: str) -> dict[str, Any]:
    response = await node.http.post(f"/api/rooms/{room}/runs", json={"code": code})
    assert response.status_code == 201, response.text
    deadline = time.monotonic() + 60
    while True:
        result = (await node.http.get(f"/api/rooms/{room}/runs/{response.json()['id']}")).json()
        if result["status"] not in ("queued", "running"):
            return result  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, result
        await asyncio.sleep(0.05)


async def in_terminal(node: Node, room: str, line: str) -> str:
    """Start a terminal in ``room``, type ``line``, and return the output up to ``status=N``."""
    created = await node.http.post(f"/api/rooms/{room}/terminals", json={})
    assert created.status_code == 201, created.text
    url = f"ws://127.0.0.1:{node.server.port}/terminal/{room}/{created.json()['id']}"
    output = ""
    async with websockets.connect(url, max_size=None) as ws:

        async def read() -> None:
            nonlocal output
            async for message in ws:
                frame = json.loads(message)
                if frame[0] in ("stdout", "snapshot"):
                    output += frame[1]

        reader = asyncio.create_task(read())
        try:
            await eventually(lambda: "$" in output, timeout=30, what="the prompt")
            await ws.send(json.dumps(["stdin", line]))
            await eventually(lambda: "status=" in output.split(line.strip()[-12:])[-1], timeout=60, what="the hog")
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
    return output


async def test_a_terminal_hog_and_the_kernel_share_the_room_budget_and_another_room_has_its_own(node: Node) -> None:
    budgets = node.state.kernels.budgets
    if budgets.cgroups.mode is CgroupMode.NONE or "memory" not in budgets.cgroups.parents:
        pytest.skip(f"no writable memory cgroup here ({budgets.describe()})")
    assert node.state.terminals.budgets is budgets  # kernels and terminals found the same budgets

    # The room's kernel comes from the warm pool (started before it had a room) and holds 150 MiB.
    held = await run(node, "budget-a", "hold = b'x' * (150 << 20)\nprint('held', len(hold) >> 20)")
    assert stdout(held) == "held 150\n", held

    output = await in_terminal(node, "budget-a", HOG)
    room_cgroup = budgets.cgroups.parents["memory"] / room_dir_name("budget-a")
    launches = [p for p in room_cgroup.iterdir() if p.is_dir()]
    assert len(launches) == 2, launches  # the kernel (moved in from the pool) and the shell
    assert "GOT 250" not in output and "status=137" in output, output[-400:]  # killed: over the room's budget
    usage = int((room_cgroup / "memory.max_usage_in_bytes").read_text())
    assert usage <= BUDGET

    kept = await run(node, "budget-a", "print(len(hold) >> 20)")
    assert stdout(kept) == "150\n", kept  # the kernel and its data live on

    other = await in_terminal(node, "budget-b", HOG)
    assert "GOT 250" in other and "status=0" in other, other[-400:]  # another room has a budget of its own
