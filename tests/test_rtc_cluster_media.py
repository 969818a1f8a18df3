"""Two aiortc peers in a call that spans two pairroom nodes sharing one real redis-server.

The ``call-nodes`` scenario of tests/rtc/scenario.py starts, inside a fresh loopback-only network
namespace, a redis-server, two ``pairroom serve`` nodes on it, and two aiortc peer processes:
the answerer signals through node 1, the offerer through node 2, so the offer, the answer and the
call events reach the other peer only through Redis. The media flows peer to peer on 127.0.0.1
host candidates. Needs root, like tests/test_rtc_media.py.
"""

from __future__ import annotations

import signal
from pathlib import Path

from .test_rtc_media import pytestmark, scenario  # noqa: F401  (root, slow)


def test_two_peers_on_two_nodes_connect_through_the_call_signaling(tmp_path: Path) -> None:
    result = scenario("call-nodes", tmp_path)
    offer, answer = result["offer"], result["answer"]
    assert offer["ok"] and answer["ok"], result
    assert "connected_ms" in offer and "connected_ms" in answer, result
    assert answer["received"] == "hello"  # the data channel, offerer to answerer
    assert offer["echo"] == "echo:hello"  # and back
    for side in (offer, answer):
        assert side["frames"] >= 50 and side["loud"] >= 45, side  # the tone, not silence
        assert "errors" not in side, side
    # Both nodes shut down cleanly on SIGTERM (uvicorn re-raises it once shutdown is complete).
    assert all(code in (0, -signal.SIGTERM) for code in result["node_exit_codes"]), result
    assert result["node_stopped"] == [True, True], result
    assert [w for w in result["node_warnings"] if w.get("level") != "warning"] == [], result
