"""What ``make run`` starts, as real processes: a secret made once in a local file and kept, an owner
link of a first room that gets in as its owner, logs as text on a terminal and JSON (without terminal
codes) otherwise, and the kernels' environment prepared by the package (``pairroom kernels setup``)."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import websockets
import websockets.sync.client

PAIRROOM = str(Path(sys.executable).with_name("pairroom"))
LINK = re.compile(r"Your room, as its owner:  (http://127\.0\.0\.1:(\d+)/r/first-room\?token=(\S+))")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAIRROOM_")}
    return {**env, **extra}


def serve(tmp_path: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [PAIRROOM, "serve", "--port", "0", "--db", f"sqlite:///{tmp_path / 'p.db'}", "--no-kernels", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(**env),
    )


def read_until(proc: subprocess.Popen[str], pattern: re.Pattern[str], timeout: float = 30) -> re.Match[str]:
    """Read the server's stdout (raw, so select sees all of it) until ``pattern`` shows."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            chunk = os.read(fd, 65536).decode()
            seen += chunk
            match = pattern.search(seen)
            if match:
                return match
            if not chunk:
                break
    raise AssertionError(f"no {pattern.pattern!r} in the output:\n{seen}")


def stop(proc: subprocess.Popen[str]) -> str:
    proc.terminate()
    _, err = proc.communicate(timeout=30)
    return err


def test_make_run_keeps_a_secret_prints_an_owner_link_and_logs_json_off_a_terminal(tmp_path: Path) -> None:
    secret_file = tmp_path / ".pairroom" / "secret"
    proc = serve(tmp_path, "--secret-file", str(secret_file), "--welcome", "first-room")
    try:
        link, port, token = read_until(proc, LINK).groups()
        assert secret_file.stat().st_mode & 0o777 == 0o600
        # The link gets in as the room's owner: only an owner may mint invites.
        invites = httpx.post(
            f"http://127.0.0.1:{port}/api/rooms/first-room/invites", headers={"authorization": f"Bearer {token}"}
        )
        assert invites.status_code == 201, invites.text
        assert httpx.get(link).status_code == 200
        # websockets with the token in the query: uvicorn logs each one's request target
        for path in ("/yjs/first-room", "/replay/first-room", "/rtc/first-room"):
            with contextlib.suppress(websockets.exceptions.WebSocketException, OSError):
                with websockets.sync.client.connect(f"ws://127.0.0.1:{port}{path}?token={token}", open_timeout=5):
                    pass
    finally:
        err = stop(proc)
    # Off a terminal the logs are JSON lines, without a terminal code anywhere, and without a token.
    lines = [line for line in err.splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]
    assert any(e["msg"] == "listening" for e in entries)
    assert "\x1b" not in err
    assert any("token=[redacted]" in e["msg"] for e in entries), err  # the accept lines were logged
    assert token not in err

    # A second start keeps the secret: the first link still gets in.
    secret = secret_file.read_text()
    proc = serve(tmp_path, "--secret-file", str(secret_file), "--welcome", "first-room")
    try:
        port = read_until(proc, LINK).group(2)
        again = httpx.post(
            f"http://127.0.0.1:{port}/api/rooms/first-room/invites", headers={"authorization": f"Bearer {token}"}
        )
        assert again.status_code == 201, again.text
    finally:
        stop(proc)
    assert secret_file.read_text() == secret


def test_logs_are_text_on_a_terminal(tmp_path: Path) -> None:
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [PAIRROOM, "serve", "--port", "0", "--db", "memory://", "--no-kernels"],
        stdout=subprocess.DEVNULL,
        stderr=follower,
        env=clean_env(),
    )
    os.close(follower)
    seen = b""
    try:
        deadline = time.monotonic() + 30
        while b"listening" not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.5)
            if ready:
                seen += os.read(leader, 4096)
    finally:
        proc.terminate()
        proc.wait(30)
        os.close(leader)
    line = next(line for line in seen.decode().splitlines() if "listening" in line)
    assert line.startswith("info    pairroom.cli: listening"), line
    assert not line.lstrip().startswith("{")


def test_kernels_setup_says_when_ready_and_why_it_cannot(tmp_path: Path) -> None:
    from pairroom.sandbox.settings import KernelSettings

    venv = KernelSettings().kernel_venv
    if not (venv / ".pairroom-installed").exists():
        pytest.skip("no kernel environment here (scripts/ensure-kernel-env)")
    done = subprocess.run(
        [PAIRROOM, "kernels", "setup", "--venv", str(venv)], capture_output=True, text=True, env=clean_env(), timeout=60
    )
    assert done.returncode == 0 and done.stdout.strip() == f"the kernels' environment is ready: {venv}"

    missing = tmp_path / "kernel-venv"
    done = subprocess.run(
        [PAIRROOM, "kernels", "setup", "--venv", str(missing), "--python", "/nonexistent/python3"],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("pairroom kernels setup: no /nonexistent/python3 to build the kernels' environment")


def test_a_first_start_that_needs_kernels_prepares_their_environment(tmp_path: Path) -> None:
    """The server tries to make a missing environment at start, step by step in its logs (here it cannot:
    the Python to build from is missing, and kernels are refused saying what to run)."""
    proc = subprocess.Popen(
        [PAIRROOM, "serve", "--port", "0", "--db", "memory://", "--kernels", "--kernel-pool-size", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(PAIRROOM_KERNEL_VENV=str(tmp_path / "kv"), PAIRROOM_KERNEL_PYTHON="/nonexistent/python3"),
    )
    assert proc.stderr is not None
    entries = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        entries.append(json.loads(line))
        if entries[-1]["msg"] == "listening":
            break
    proc.terminate()
    proc.communicate(timeout=30)
    messages = [e["msg"] for e in entries]
    assert "the kernels' Python environment is missing: preparing it" in messages
    refused = next(e for e in entries if e["msg"] == "kernels refused: their environment could not be prepared")
    assert "no /nonexistent/python3" in refused["error"]


def test_json_logs_carry_no_terminal_codes_even_when_a_library_colours_its_message() -> None:
    import logging

    from pairroom.web.logs import JsonFormatter, resolve_format

    record = logging.makeLogRecord(
        {
            "msg": "\x1b[32mINFO\x1b[0m: Uvicorn running on \x1b[1mhttp://x\x1b[0m",
            "levelname": "INFO",
            "name": "uvicorn",
        }
    )
    record.__dict__["color_message"] = "\x1b[36m%s\x1b[0m"
    entry = json.loads(JsonFormatter().format(record))
    assert entry["msg"] == "INFO: Uvicorn running on http://x" and entry["color_message"] == "%s"
    with open(os.devnull) as not_a_terminal:
        assert resolve_format("auto", not_a_terminal) == "json" and resolve_format("text") == "text"
