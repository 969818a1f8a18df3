"""The voice in the recording: the server joins a room's call as a peer and records what it hears.

When a room's ``CallPolicy.record`` is on, the call hub adds a recorder peer (``recorder: true`` in
``joined``/``peer-joined``) before the first member joins; clients offer to it like to any peer,
with audio only. Each participant's audio goes to its own file (aiortc MediaRecorder, Ogg/Opus):

    RECORDING_DIR/<room, percent-encoded>/<session>/<peer>.ogg
    RECORDING_DIR/<room, percent-encoded>/<session>/<peer>.json   (the sidecar)

One session is one stretch of call (recorder joins .. last member leaves). The sidecar links the
file to the room and carries ``started_at``, the wall-clock time (unix seconds, server clock) of
the first audio frame: the edit log's updates carry the same server clock, so a replay starts the
audio at ``started_at`` on the edit timeline. The audio relay (relay.py) records a mentor's audio
the same way. Per-file sidecars keep recording independent of the storage port; moving them into
the database is one ``recordings`` table with these fields, written where ``write_sidecar`` is.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import av
from aiortc import MediaStreamTrack, RTCIceCandidate, RTCPeerConnection
from aiortc.contrib.media import MediaRecorder
from aiortc.sdp import candidate_from_sdp

from pairroom.rtc.media import StampedTrack, answer, new_peer

log = logging.getLogger("pairroom.rtc.recording")


@dataclass(frozen=True, slots=True)
class RecordingInfo:
    room: str
    session: str
    peer: str
    user: dict[str, Any]
    file: str  # relative to the sidecar's directory
    source: str  # "call" or "relay"
    started_at: float | None  # unix seconds of the first frame; None if no audio ever came
    ended_at: float
    duration_seconds: float
    frames: int
    format: str = "ogg/opus"


def room_dir(directory: Path, room: str) -> Path:
    return directory / urllib.parse.quote(room, safe="")


def new_session_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


def list_recordings(directory: Path, room: str) -> list[dict[str, Any]]:
    """Every recording of ``room`` (its sidecars), oldest first."""
    found = [json.loads(p.read_text()) for p in room_dir(directory, room).glob("*/*.json")]
    return sorted(found, key=lambda r: (r["started_at"] or r["ended_at"], r["peer"]))


def write_sidecar(path: Path, info: RecordingInfo) -> None:
    """Written to a temporary name and renamed, so a reader never sees half a sidecar."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(asdict(info), indent=2))
    os.replace(tmp, path)


def media_duration(path: Path) -> float:
    with av.open(str(path)) as container:
        return (container.duration or 0) / 1_000_000


class TrackRecording:
    """One audio track into one file, finished with a sidecar."""

    def __init__(self, directory: Path, room: str, session: str, peer: str, user: dict[str, Any], source: str) -> None:
        self.folder = room_dir(directory, room) / session
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / f"{peer}.ogg"
        self.meta = dict(room=room, session=session, peer=peer, user=user, source=source)
        self.track: StampedTrack | None = None
        self.recorder: MediaRecorder | None = None

    async def start(self, track: MediaStreamTrack) -> None:
        self.track = StampedTrack(track)
        self.recorder = MediaRecorder(str(self.path))
        self.recorder.addTrack(self.track)
        await self.recorder.start()

    async def stop(self) -> RecordingInfo | None:
        recorder, self.recorder = self.recorder, None
        if recorder is None or self.track is None:
            return None
        await recorder.stop()
        self.track.stop()
        info = RecordingInfo(
            **self.meta,  # type: ignore[arg-type]
            file=self.path.name,
            started_at=self.track.first_frame_at,
            ended_at=time.time(),
            duration_seconds=media_duration(self.path) if self.track.frames else 0.0,
            frames=self.track.frames,
        )
        write_sidecar(self.path.with_suffix(".json"), info)
        log.info("recording saved", extra={"room": info.room, "file": str(self.path), "seconds": info.duration_seconds})
        return info


Signal = Callable[[str, str, dict[str, Any]], Awaitable[None]]  # (room, sender peer id, message)


class CallRecorder:
    """The recorder peer of one room's call: answers offers addressed to it, recvonly, and records.

    It is a call ``Member``: the hub hands it every message of the call through ``send``.
    """

    def __init__(
        self,
        directory: Path,
        room: str,
        peer_id: str,
        signal: Signal,
        on_saved: Callable[[RecordingInfo], None] | None = None,
    ) -> None:
        self.directory = directory
        self.room = room
        self.id = peer_id
        self.signal = signal
        self.on_saved = on_saved  # e.g. the session recorder, so a replay finds the audio
        self.session = new_session_id()
        self.users: dict[str, dict[str, Any]] = {}
        self.peers: dict[str, RTCPeerConnection] = {}
        self.recordings: dict[str, list[TrackRecording]] = {}
        self.saved: list[RecordingInfo] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def send(self, message: dict[str, Any] | str) -> None:
        data = json.loads(message) if isinstance(message, str) else message
        kind = data.get("type")
        if kind in ("joined",):
            self.users.update({p["peer"]: p["user"] for p in data["peers"]})
        elif kind == "peer-joined":
            self.users[data["peer"]] = data["user"]
        elif kind == "offer":
            self._spawn(self._answer(data["from"], data["sdp"]))
        elif kind == "candidate" and data.get("candidate"):
            self._spawn(self._candidate(data["from"], data["candidate"]))
        elif kind == "peer-left":
            self._spawn(self._finish(data["peer"]))

    async def _answer(self, peer: str, sdp: str) -> None:
        await self._finish(peer)  # a renegotiation from scratch replaces the previous connection
        pc = new_peer(on_gone=lambda: self._finish(peer, only=pc))
        self.peers[peer] = pc
        tracks: list[MediaStreamTrack] = []
        # "track" fires inside setRemoteDescription; with no local tracks aiortc answers recvonly.
        pc.on("track", lambda track: tracks.append(track) if track.kind == "audio" else None)
        answer_sdp = await answer(pc, sdp)
        self.recordings[peer] = []
        for track in tracks:
            recording = TrackRecording(
                self.directory,
                self.room,
                self.session,
                peer if len(tracks) == 1 else f"{peer}-{len(self.recordings[peer])}",
                self.users.get(peer, {"id": peer}),
                "call",
            )
            await recording.start(track)
            self.recordings[peer].append(recording)
        await self.signal(self.room, self.id, {"type": "answer", "to": peer, "sdp": answer_sdp})

    async def _candidate(self, peer: str, candidate: dict[str, Any]) -> None:
        pc = self.peers.get(peer)
        text = candidate.get("candidate") or ""
        if pc is None or not text:
            return
        parsed: RTCIceCandidate = candidate_from_sdp(text.split(":", 1)[1] if text.startswith("candidate:") else text)
        parsed.sdpMid = candidate.get("sdpMid")
        parsed.sdpMLineIndex = candidate.get("sdpMLineIndex")
        await pc.addIceCandidate(parsed)

    async def _finish(self, peer: str, only: RTCPeerConnection | None = None) -> None:
        """End ``peer``'s files and connection (``only``: unless it has been replaced since)."""
        if only is not None and self.peers.get(peer) is not only:
            return
        for recording in self.recordings.pop(peer, []):
            info = await recording.stop()
            if info is not None:
                self.saved.append(info)
                if self.on_saved is not None:
                    self.on_saved(info)
        pc = self.peers.pop(peer, None)
        if pc is not None:
            await pc.close()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("recorder task failed", extra={"room": self.room}, exc_info=task.exception())

    async def close(self) -> None:
        """Finish every file; called when the last member leaves the call or the server stops."""
        pending = list(self._tasks)
        if pending:
            await asyncio.wait(pending, timeout=5.0)
        for peer in list(self.peers) + list(self.recordings):
            await self._finish(peer)
