"""What the server's own WebRTC peers (the audio relay, the recorder) share: aiortc set-up.

Importing aiortc and PyAV takes about a second, so only relay.py and recording.py import this
module, and api.py imports those on first use: a server that never relays or records never pays.

Host candidates. aioice gathers on every interface except 127.0.0.1, and has no option to choose
them. ``media_addresses`` (RtcSettings) replaces its address lookup for the whole process, so a
node offers only the addresses its clients can reach (a public address, not a container bridge;
127.0.0.1 in the loopback-only test namespace). This relies on ``aioice.ice.get_host_addresses``,
an aioice 0.13 internal: aioice is pinned for that reason.

Audio level. Every aiortc sender computes the RFC 6465 audio level of every frame it sends, in a
pure-Python loop over the samples (``aiortc.rtp.compute_audio_level_dbov``, about 1-3 ms a frame
here). The relay sends the same decoded frame to every listener, so that loop ran once per listener
per frame and was most of the relay's CPU. ``share_audio_level`` swaps in the same formula computed
once per frame object (and with a faster sum). Another aiortc 1.16 internal: aiortc is pinned.

aiortc does not trickle: the answer returned by ``answer`` already carries every candidate.
"""

from __future__ import annotations

import array
import asyncio
import collections
import logging
import math
import operator
import time
from collections.abc import Callable
from typing import Any

import aioice.ice
import aiortc.rtp
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


_LEVELS: collections.OrderedDict[int, tuple[Any, int]] = collections.OrderedDict()
_LEVELS_KEPT = 8  # frames remembered; the frame is held so its id cannot be reused meanwhile


def audio_level_dbov(frame: Any) -> int:
    """RFC 6465 level of ``frame``, as aiortc computes it, once per frame object."""
    key = id(frame)
    hit = _LEVELS.get(key)
    if hit is not None and hit[0] is frame:
        return hit[1]
    samples = array.array("h", bytes(frame.planes[0]))
    energy = sum(map(operator.mul, samples, samples))
    rms = math.sqrt(energy / (frame.samples * 32767 * 32767))
    level = round(min(max(20 * math.log10(rms), -127), 0)) if rms > 0 else -127
    _LEVELS[key] = (frame, level)
    if len(_LEVELS) > _LEVELS_KEPT:
        _LEVELS.popitem(last=False)
    return level


def share_audio_level() -> None:
    aiortc.rtp.compute_audio_level_dbov = audio_level_dbov


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
