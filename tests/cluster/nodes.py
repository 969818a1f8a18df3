"""Start ``tests.cluster.serve`` nodes as real processes (kill -9 is a real crash)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from tests.support.nodes import ServeProcess, _collect

REPO = Path(__file__).resolve().parents[2]


async def start_node(env: dict[str, str]) -> ServeProcess:
    """Start one node on a free port with ``PAIRROOM_*`` settings in ``env``; wait until it listens."""
    full_env = {**os.environ, "PAIRROOM_LOG_FORMAT": "json", "PAIRROOM_PORT": "0", **env}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.cluster.serve", cwd=REPO, env=full_env, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stderr is not None
    early: list[dict] = []
    async with asyncio.timeout(60):
        while True:
            line = await proc.stderr.readline()
            if not line:
                raise RuntimeError(f"node exited with {await proc.wait()}: {early[-5:]}")
            try:
                entry = json.loads(line)
            except ValueError:
                entry = {"msg": line.decode(errors="replace").rstrip()}
            early.append(entry)
            if entry.get("msg") == "listening":
                node = ServeProcess(proc, entry["port"], env)
                break
    node.log.extend(early)
    node.drain = asyncio.create_task(_collect(proc, node.log))
    return node


StartNodes = Callable[..., Awaitable[list[ServeProcess]]]


@pytest.fixture
async def cluster_nodes() -> AsyncIterator[StartNodes]:
    """``await cluster_nodes(env_a, env_b, ...)`` starts the nodes together; all are killed at teardown."""
    started: list[ServeProcess] = []

    async def start(*envs: dict[str, str]) -> list[ServeProcess]:
        nodes = list(await asyncio.gather(*(start_node(env) for env in envs)))
        started.extend(nodes)
        return nodes

    yield start
    for node in started:
        await node.kill()
        if node.drain is not None:
            node.drain.cancel()
