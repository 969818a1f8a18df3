"""The server-side audio relay for large sessions: one speaker in, many listeners out.

A browser mesh sends every stream to every peer, which stops working past a handful of people. In a
mentor session the mentor's browser instead sends its audio once to the server, and the server
forwards it to each learner (aiortc ``MediaRelay``: one decoder for the source, one proxy track per
listener). aiortc re-encodes Opus for every listener, so the cost is about one encoder per
listener; docs/rtc.md has the measured number of listeners one node serves, and
``relay_max_listeners`` refuses listeners past it (503) instead of degrading everyone.

HTTP, in the shape of WHIP/WHEP (one request with the complete offer, the answer in the response,
because aiortc gathers every candidate before answering):

- ``POST /rtc/{room}/speak``  body: SDP offer with one audio track -> 201, SDP answer;
- ``POST /rtc/{room}/listen`` body: SDP offer with a recvonly audio section -> 201, SDP answer;
- ``DELETE /rtc/{room}/sessions/{id}`` (the ``Location`` of either) ends it.

One speaker per room at a time (409 for a second one, 409 for a listener before anyone speaks).
Under ``speak: owners`` only owners may speak. When the speaker leaves, its listeners are closed:
they listen again when a speaker comes back. With ``record`` on, the speaker's audio is recorded
like a call participant's (recording.py).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaBlackhole, MediaRelay

from pairroom.rtc.media import answer, new_peer
from pairroom.rtc.recording import TrackRecording, new_session_id
from pairroom.web.auth import Principal

log = logging.getLogger("pairroom.rtc.relay")


class RelayError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(slots=True)
class RoomRelay:
    room: str
    speaker_id: str | None = None
    speaker_pc: RTCPeerConnection | None = None
    track: MediaStreamTrack | None = None
    media: MediaRelay = field(default_factory=MediaRelay)
    listeners: dict[str, RTCPeerConnection] = field(default_factory=dict)
    recording: TrackRecording | None = None
    drain: MediaBlackhole | None = None


class AudioRelay:
    """Every room's relay on this node."""

    def __init__(self, max_listeners: int, recording_dir: Path | None) -> None:
        self.max_listeners = max_listeners
        self.recording_dir = recording_dir
        self.rooms: dict[str, RoomRelay] = {}

    def listener_count(self) -> int:
        return sum(len(r.listeners) for r in self.rooms.values())

    async def speak(self, room: str, principal: Principal, offer_sdp: str, record: bool) -> tuple[str, str]:
        relay = self.rooms.setdefault(room, RoomRelay(room))
        if relay.speaker_pc is not None:
            raise RelayError(409, "someone is already speaking in this room")
        session_id = "s-" + secrets.token_hex(6)
        pc = new_peer(on_gone=lambda: self.end(room, session_id))
        relay.speaker_id, relay.speaker_pc = session_id, pc
        tracks: list[MediaStreamTrack] = []
        pc.on("track", lambda track: tracks.append(track) if track.kind == "audio" else None)
        try:
            answer_sdp = await answer(pc, offer_sdp)
        except ValueError as exc:
            await self.end(room, session_id)
            raise RelayError(400, f"bad offer: {exc}") from exc
        if not tracks:
            await self.end(room, session_id)
            raise RelayError(400, "the offer has no audio track")
        relay.track = tracks[0]
        # Keep reading the source while nobody listens, or its frames queue up in memory.
        relay.drain = MediaBlackhole()
        relay.drain.addTrack(relay.media.subscribe(relay.track, buffered=False))
        await relay.drain.start()
        if record and self.recording_dir is not None:
            relay.recording = TrackRecording(
                self.recording_dir, room, new_session_id(), session_id, principal.identity(), "relay"
            )
            await relay.recording.start(relay.media.subscribe(relay.track))
        log.info("relay speaker", extra={"room": room, "session": session_id, "user": principal.user_id})
        return session_id, answer_sdp

    async def listen(self, room: str, principal: Principal, offer_sdp: str) -> tuple[str, str]:
        relay = self.rooms.get(room)
        if relay is None or relay.track is None:
            raise RelayError(409, "no one is speaking in this room yet")
        if self.listener_count() >= self.max_listeners:
            raise RelayError(503, f"this node relays to at most {self.max_listeners} listeners")
        session_id = "l-" + secrets.token_hex(6)
        pc = new_peer(on_gone=lambda: self.end(room, session_id))
        relay.listeners[session_id] = pc
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            # Added after the offer so the track takes the listener's recvonly audio section.
            # Unbuffered: a listener whose encoder falls behind skips frames instead of lagging more.
            pc.addTrack(relay.media.subscribe(relay.track, buffered=False))
            await pc.setLocalDescription(await pc.createAnswer())
        except ValueError as exc:
            await self.end(room, session_id)
            raise RelayError(400, f"bad offer: {exc}") from exc
        return session_id, pc.localDescription.sdp

    async def end(self, room: str, session_id: str) -> bool:
        """End a speaker (and with it its listeners) or a listener. False if there was none."""
        relay = self.rooms.get(room)
        if relay is None:
            return False
        if session_id == relay.speaker_id:
            pc, relay.speaker_pc, relay.speaker_id, relay.track = relay.speaker_pc, None, None, None
            recording, relay.recording = relay.recording, None
            drain, relay.drain = relay.drain, None
            if drain is not None:
                await drain.stop()
            if recording is not None:
                await recording.stop()
            listeners, relay.listeners = relay.listeners, {}
            await asyncio.gather(*(p.close() for p in listeners.values()))
            if pc is not None:
                await pc.close()
        else:
            pc = relay.listeners.pop(session_id, None)
            if pc is None:
                return False
            await pc.close()
        if relay.speaker_pc is None and not relay.listeners:
            self.rooms.pop(room, None)
        return True

    async def aclose(self) -> None:
        for room, relay in list(self.rooms.items()):
            for session_id in list(relay.listeners):
                await self.end(room, session_id)
            if relay.speaker_id is not None:
                await self.end(room, relay.speaker_id)


def sessions_path(room: str, session_id: str) -> str:
    return f"/rtc/{room}/sessions/{session_id}"


__all__ = ["AudioRelay", "RelayError", "sessions_path"]
