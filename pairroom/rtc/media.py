"""What the server's own WebRTC peers (the audio relay, the recorder) share: aiortc set-up.

Importing aiortc and PyAV takes about a second, so only relay.py and recording.py import this
module, and api.py imports those on first use: a server that never relays or records never pays.

Host candidates. aioice gathers on every interface except 127.0.0.1, and has no option to choose
them. ``media_addresses`` (RtcSettings) replaces its address lookup for the whole process, so a
node offers only the addresses its clients can reach (a public address, not a container bridge;
127.0.0.1 in the loopback-only test namespace). This relies on ``aioice.ice.get_host_addresses``,
an aioice 0.13 internal: aioice is pinned for that reason.

aiortc does not trickle: the answer returned by ``answer`` already carries every candidate.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

import aioice.ice
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription

log = logging.getLogger("pairroom.rtc.media")

_restricted: tuple[str, ...] | None = None


def restrict_host_addresses(addresses: tuple[str, ...]) -> None:
    """Gather host candidates only on ``addresses`` (empty: aioice's own choice)."""
    global _restricted
    if not addresses or addresses == _restricted:
        return
    wanted = list(addresses)

    def chosen(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in wanted if (use_ipv6 if ":" in a else use_ipv4)]

    aioice.ice.get_host_addresses = chosen
    _restricted = addresses


def new_peer(on_gone: Callable[[], Any] | None = None) -> RTCPeerConnection:
    """A server-side peer connection; ``on_gone`` runs once when it fails or closes."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    fired = False

    @pc.on("connectionstatechange")
    async def changed() -> None:
        nonlocal fired
        if pc.connectionState in ("failed", "closed") and not fired and on_gone is not None:
            fired = True
            result = on_gone()
            if asyncio.iscoroutine(result):
                await result

    return pc


async def answer(pc: RTCPeerConnection, offer_sdp: str) -> str:
    """Apply an offer and return the complete answer SDP (all candidates gathered)."""
    await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
    await pc.setLocalDescription(await pc.createAnswer())
    return pc.localDescription.sdp


class StampedTrack(MediaStreamTrack):
    """Passes frames through and notes the wall-clock time of the first one and how many came.

    The recording's ``started_at`` is the first frame's arrival, which is what lines the voice
    up with the edit log's server timestamps on replay.
    """

    def __init__(self, source: MediaStreamTrack) -> None:
        super().__init__()
        self.kind = source.kind
        self.source = source
        self.first_frame_at: float | None = None
        self.frames = 0

    async def recv(self) -> Any:
        frame = await self.source.recv()
        if self.first_frame_at is None:
            self.first_frame_at = time.time()
        self.frames += 1
        return frame

    def stop(self) -> None:
        super().stop()
        self.source.stop()
