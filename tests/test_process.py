"""The `pairroom serve` process: settings from the environment, SIGTERM, and kill -9 recovery."""

from __future__ import annotations

import asyncio
import signal

import httpx
import pytest

from .support.nodes import free_port, serve_processes  # noqa: F401
from .support.storage import stored_text
from .support.yjs_node import node_clients, wait_for  # noqa: F401
from .yclient import YClient


async def test_settings_come_from_pairroom_environment_variables(tmp_path, serve_processes):
    db = f"sqlite:///{tmp_path / 'env.db'}"
    serve = await serve_processes({"PAIRROOM_DB": db, "PAIRROOM_MAX_MESSAGE_BYTES": "1000"})
    async with httpx.AsyncClient() as http:
        ready = await http.get(f"http://127.0.0.1:{serve.port}/readyz")
    assert ready.status_code == 200
    assert (tmp_path / "env.db").exists()
    client = await YClient.connect(f"{serve.ws_base}/limits")
    await asyncio.wait_for(client.synced.wait(), 5)
    client.insert(0, "z" * 2000)
    assert await client.closed() == 1009


async def test_sigterm_closes_clients_with_1012_flushes_and_exits(tmp_path, serve_processes):
    db = f"sqlite:///{tmp_path / 'term.db'}"
    serve = await serve_processes({"PAIRROOM_DB": db, "PAIRROOM_FLUSH_INTERVAL_MS": "60000"})
    client = await YClient.connect(f"{serve.ws_base}/term")
    await asyncio.wait_for(client.synced.wait(), 5)
    client.insert(0, "flushed on SIGTERM")
    other = await YClient.connect(f"{serve.ws_base}/term")
    await wait_for(lambda: asyncio.sleep(0, str(other.text) == "flushed on SIGTERM"), timeout=5)
    serve.proc.send_signal(signal.SIGTERM)
    assert await client.closed(10) == 1012
    # uvicorn re-raises the signal once shutdown is complete, so the exit status says "SIGTERM"
    assert await asyncio.wait_for(serve.proc.wait(), 15) in (0, -signal.SIGTERM)
    assert serve.drain is not None
    await serve.drain
    assert any(entry["msg"] == "stopped" for entry in serve.log), "shutdown ran to the end"
    assert await stored_text(db, "term") == "flushed on SIGTERM"


@pytest.mark.slow
async def test_kill_9_loses_only_the_unflushed_window_which_clients_resend(tmp_path, serve_processes, node_clients):
    db = f"sqlite:///{tmp_path / 'kill.db'}"
    env = {"PAIRROOM_DB": db, "PAIRROOM_FLUSH_INTERVAL_MS": "60000", "PAIRROOM_FLUSH_MAX_UPDATES": "100000"}
    port = free_port()
    serve = await serve_processes(env, port)
    writer = await node_clients.start(serve.ws_base, "crash", "v1", max_backoff_ms=200)
    await writer.wait_synced()
    for i in range(30):
        await writer.insert(i * 3, f"{i:02d};")
    expected = await writer.text()
    serve.proc.kill()
    await serve.proc.wait()
    assert await stored_text(db, "crash") == "", "nothing was flushed before the kill"

    restarted = await serve_processes(env, port)

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
