"""Real ``pairroom serve`` processes for process-level and cluster tests."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

PAIRROOM = str(Path(sys.executable).with_name("pairroom"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServeProcess:
    """One ``pairroom serve`` process; its JSON log lines are collected in ``log``."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int, env: dict[str, str]) -> None:
        self.proc = proc
        self.port = port
        self.env = env
        self.log: list[dict] = []
        self.drain: asyncio.Task[None] | None = None

    @property
    def ws_base(self) -> str:
        return f"ws://127.0.0.1:{self.port}/yjs"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws(self, room: str) -> str:
        return f"{self.ws_base}/{room}"

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    async def terminate(self, timeout: float = 15) -> int:
        """SIGTERM and wait for the exit; a node that does not exit in time is asked for its task
        stacks (SIGUSR1), and the failure shows the end of its log."""
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            if self.alive:
                self.proc.send_signal(signal.SIGUSR1)
                await asyncio.sleep(1.0)
            tail = "\n".join(str(entry.get("msg")) + " " + json.dumps(entry)[:300] for entry in self.log[-60:])
            raise AssertionError(f"node on port {self.port} did not exit {timeout} s after SIGTERM:\n{tail}") from None
        if self.drain is not None:
            await self.drain
        return code

    async def kill(self) -> None:
        if self.alive:
            self.proc.kill()
        await self.proc.wait()


async def start_serve(env: dict[str, str], port: int = 0) -> ServeProcess:
    """Start ``pairroom serve`` with ``PAIRROOM_*`` settings in ``env``; wait until it listens."""
    full_env = {**os.environ, "PAIRROOM_LOG_FORMAT": "json", "PAIRROOM_KERNELS": "false", **env}
    proc = await asyncio.create_subprocess_exec(
        PAIRROOM, "serve", "--port", str(port), env=full_env, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stderr is not None
    early: list[dict] = []
    async with asyncio.timeout(30):
        while True:
            line = await proc.stderr.readline()
            if not line:
                raise RuntimeError(f"pairroom serve exited with {await proc.wait()}: {early[-5:]}")
            entry = json.loads(line)
            early.append(entry)
            if entry.get("msg") == "listening":
                serve = ServeProcess(proc, entry["port"], env)
                break
    serve.log.extend(early)
    serve.drain = asyncio.create_task(_collect(proc, serve.log))
    return serve


async def _collect(proc: asyncio.subprocess.Process, into: list[dict]) -> None:
    assert proc.stderr is not None
    async for line in proc.stderr:
        try:
            into.append(json.loads(line))
        except ValueError:
            into.append({"msg": line.decode(errors="replace").rstrip()})


StartServe = Callable[..., Awaitable[ServeProcess]]


@pytest.fixture
async def serve_processes() -> AsyncIterator[StartServe]:
    """``await serve_processes(env, port=0)`` starts a node; every node is killed at teardown."""
    started: list[ServeProcess] = []

    async def start(env: dict[str, str], port: int = 0) -> ServeProcess:
        serve = await start_serve(env, port)
        started.append(serve)
        return serve

    yield start
    for serve in started:
        await serve.kill()
        if serve.drain is not None:
            serve.drain.cancel()
