"""Real aiortc peers through pairroom: a call, the server-side audio relay, and call recording.

Each test runs tests/rtc/scenario.py inside a fresh loopback-only network namespace (``unshare -n``,
then ``ip link set lo up``): the server and every peer process live there, and the peers offer
only 127.0.0.1 host candidates. See the scenario's docstring for why. Needs root (CI has it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import av
import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="a network namespace needs root (CI runs as root)"),
]


def scenario(name: str, workdir: Path, *extra: str) -> dict[str, Any]:
    for tool in ("unshare", "ip"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: scripts/apt-install util-linux iproute2")
    proc = subprocess.run(
        [
            "unshare",
            "-n",
            "sh",
            "-c",
            'ip link set lo up && exec "$0" -m tests.rtc.scenario "$@"',
            sys.executable,
            name,
            str(workdir),
            *extra,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])  # type: ignore[no-any-return]
    raise AssertionError(f"scenario {name} gave no result (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def test_two_peers_connect_through_the_call_signaling(tmp_path: Path) -> None:
    result = scenario("call", tmp_path)
    offer, answer = result["offer"], result["answer"]
    assert offer["ok"] and answer["ok"], result
    assert offer["echo"] == "echo:hello"  # the data channel, both ways
    for side in (offer, answer):
        assert side["frames"] >= 50 and side["loud"] >= 45, side  # the tone, not silence
        assert "errors" not in side


def test_relay_delivers_the_speakers_audio_to_every_listener(tmp_path: Path) -> None:
    result = scenario("relay", tmp_path)
    assert result["ok"], result
    assert len(result["frames"]) == 3
    assert all(frames >= 50 for frames in result["frames"]), result
    assert all(loud >= 45 for loud in result["loud"]), result


def test_recorded_call_is_a_file_of_the_expected_length_linked_to_the_room(tmp_path: Path) -> None:
    result = scenario("record", tmp_path)
    assert result["peer"]["ok"], result
    [recording] = result["recordings"]
    assert recording["room"] == "rec" and recording["source"] == "call"
    assert recording["user"]["role"] == "editor"
    path = Path(result["dir"]) / "rec" / recording["session"] / recording["file"]
    with av.open(str(path)) as container:
        [stream] = container.streams.audio
        seconds = container.duration / 1_000_000
        assert stream.codec_context.name == "opus"
    assert 1.5 <= seconds <= 2.6, seconds  # the peer sent 2 s of tone once connected
    assert abs(seconds - recording["duration_seconds"]) < 0.01
    assert recording["started_at"] <= recording["ended_at"] - seconds + 0.5
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar == recording
