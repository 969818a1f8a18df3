"""The `pairroom serve` process: settings from the environment, SIGTERM, and kill -9 recovery."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import AsyncIterator

import httpx
import pytest

from pairroom.recorder.sql import SqlStore

from .support.yjs_node import node_clients, wait_for  # noqa: F401
from .yclient import YClient

PAIRROOM = str(Path(sys.executable).with_name("pairroom"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.port = port
        self.log: list[dict] = []

    @property
    def ws_base(self) -> str:
        return f"ws://127.0.0.1:{self.port}/yjs"


async def start_serve(env: dict[str, str], port: int = 0) -> ServeProcess:
    proc = await asyncio.create_subprocess_exec(
        PAIRROOM, "serve", "--port", str(port),
        env={**os.environ, **env}, stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    async with asyncio.timeout(20):
        while True:
            line = await proc.stderr.readline()
            if not line:
                raise RuntimeError(f"pairroom serve exited with {await proc.wait()}")
            entry = json.loads(line)
            if entry.get("msg") == "listening":
                serve = ServeProcess(proc, entry["port"])
                break
    serve.drain = asyncio.create_task(collect(proc, serve.log))  # type: ignore[attr-defined]
    return serve


async def collect(proc: asyncio.subprocess.Process, into: list[dict]) -> None:
    assert proc.stderr is not None
    async for line in proc.stderr:
        into.append(json.loads(line))


@pytest.fixture
async def processes() -> AsyncIterator[list[ServeProcess]]:
    started: list[ServeProcess] = []
    yield started
    for serve in started:
        if serve.proc.returncode is None:
            serve.proc.kill()
            await serve.proc.wait()


async def stored_text(db: str, room: str) -> str:
    from pycrdt import Doc, Text

    store = SqlStore(db)
    await store.open()
    loaded = await store.load(room)
    await store.close()
    doc = Doc()
    if loaded.snapshot:
        doc.apply_update(loaded.snapshot.data)
    for update in loaded.updates:
        doc.apply_update(update.data)
    return str(doc.get("text", type=Text))


async def test_settings_come_from_pairroom_environment_variables(tmp_path, processes):
    db = f"sqlite:///{tmp_path / 'env.db'}"
    serve = await start_serve({"PAIRROOM_DB": db, "PAIRROOM_MAX_MESSAGE_BYTES": "1000"})
    processes.append(serve)
    async with httpx.AsyncClient() as http:
        ready = await http.get(f"http://127.0.0.1:{serve.port}/readyz")
    assert ready.status_code == 200
    assert (tmp_path / "env.db").exists()
    client = await YClient.connect(f"{serve.ws_base}/limits")
    await asyncio.wait_for(client.synced.wait(), 5)
    client.insert(0, "z" * 2000)
    assert await client.closed() == 1009


async def test_sigterm_closes_clients_with_1012_flushes_and_exits(tmp_path, processes):
    db = f"sqlite:///{tmp_path / 'term.db'}"
    serve = await start_serve({"PAIRROOM_DB": db, "PAIRROOM_FLUSH_INTERVAL_MS": "60000"})
    processes.append(serve)
    client = await YClient.connect(f"{serve.ws_base}/term")
    await asyncio.wait_for(client.synced.wait(), 5)
    client.insert(0, "flushed on SIGTERM")
    other = await YClient.connect(f"{serve.ws_base}/term")
    await wait_for(lambda: asyncio.sleep(0, str(other.text) == "flushed on SIGTERM"), timeout=5)
    serve.proc.send_signal(signal.SIGTERM)
    assert await client.closed(10) == 1012
    # uvicorn re-raises the signal once shutdown is complete, so the exit status says "SIGTERM"
    assert await asyncio.wait_for(serve.proc.wait(), 15) in (0, -signal.SIGTERM)
    await serve.drain  # type: ignore[attr-defined]
    assert any(entry["msg"] == "stopped" for entry in serve.log), "shutdown ran to the end"
    assert await stored_text(db, "term") == "flushed on SIGTERM"


@pytest.mark.slow
async def test_kill_9_loses_only_the_unflushed_window_which_clients_resend(tmp_path, processes, node_clients):
    db = f"sqlite:///{tmp_path / 'kill.db'}"
    env = {"PAIRROOM_DB": db, "PAIRROOM_FLUSH_INTERVAL_MS": "60000", "PAIRROOM_FLUSH_MAX_UPDATES": "100000"}
    port = free_port()
    serve = await start_serve(env, port)
    processes.append(serve)
    writer = await node_clients.start(serve.ws_base, "crash", "v1", max_backoff_ms=200)
    await writer.wait_synced()
    for i in range(30):
        await writer.insert(i * 3, f"{i:02d};")
    expected = await writer.text()
    serve.proc.kill()
    await serve.proc.wait()
    assert await stored_text(db, "crash") == "", "nothing was flushed before the kill"

    restarted = await start_serve(env, port)
    processes.append(restarted)

    async def resynced() -> bool:
        return (await writer.status())["synced"] and (await writer.status())["connected"]

    await wait_for(resynced, timeout=20)
    reader = await node_clients.start(restarted.ws_base, "crash", "v3")
    await reader.wait_synced()

    async def reader_has_all() -> bool:
        return await reader.text() == expected

    await wait_for(reader_has_all, timeout=10)
    restarted.proc.send_signal(signal.SIGTERM)
    await asyncio.wait_for(restarted.proc.wait(), 15)
    assert await stored_text(db, "crash") == expected
