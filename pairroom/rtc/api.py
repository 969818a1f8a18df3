"""The talk-while-you-code routes, their settings, and the service object the handlers share.

The ``Calls`` extension (``extension.py``) puts an ``RtcService`` on ``app.state.rtc``, mounts
``routes`` and closes the service (relay peers, recordings) when the node stops, before storage
closes. Signaling needs nothing but this module; aiortc is imported the first
time the relay or a recording needs it.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Callable

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route, WebSocketRoute

from pairroom.protocol.sync import ProtocolError
from pairroom.rooms.registry import RoomLoadError
from pairroom.web.api import live_role
from pairroom.web.auth import AuthError, Role, authenticate
from pairroom.web.websocket import room_name_from_path
from pairroom.rtc.bus import MemoryBus, SignalBus
from pairroom.rtc.calls import CallHub, call_endpoint
from pairroom.rtc.ice import rtc_config
from pairroom.rtc.settings import RtcSettings, Speak
from pairroom.rtc.signaling import TopicHub, signal_endpoint

log = logging.getLogger("pairroom.rtc")


class RtcService:
    """What the rtc handlers of one server share."""

    def __init__(self, settings: RtcSettings, bus: SignalBus | None = None) -> None:
        Speak(settings.speak)  # fail at start-up, not at the first call
        self.settings = settings
        self.bus = bus if bus is not None else MemoryBus()
        self.topics = TopicHub(self.bus)
        self.calls = CallHub(self.bus, settings.policy_for, self._new_recorder)
        watch_nodes = getattr(self.bus, "on_node_gone", None)  # a cluster bus reports dead nodes
        if watch_nodes is not None:
            watch_nodes(self.calls.node_gone)
        self._relay: Any = None
        # Told of every saved call recording (the session recorder links it into the timeline).
        self.on_recording_saved: Callable[[Any], None] | None = None

    @property
    def recording_dir(self) -> Path:
        return Path(self.settings.recording_dir)

    def media_ready(self) -> None:
        from pairroom.rtc.media import restrict_host_addresses, share_audio_level

        restrict_host_addresses(self.settings.media_addresses)
        share_audio_level()

    def relay(self) -> Any:
        if self._relay is None:
            self.media_ready()
            from pairroom.rtc.relay import AudioRelay

            self._relay = AudioRelay(self.settings.relay_max_listeners, self.recording_dir)
        return self._relay

    async def _new_recorder(self, room: str, peer_id: str) -> Any:
        self.media_ready()
        from pairroom.rtc.recording import CallRecorder

        return CallRecorder(self.recording_dir, room, peer_id, self.calls.signal, on_saved=self.on_recording_saved)

    async def aclose(self) -> None:
        await self.calls.aclose()
        if self._relay is not None:
            await self._relay.aclose()


# -- the audio relay and recordings over HTTP ---------------------------------------------------------


async def _sdp_request(request: Request) -> tuple[Any, Any, str, str] | Response:
    try:
        room = room_name_from_path(request.path_params["room"], request.app.state.hub.settings.max_room_name)
        principal = authenticate(request, room)
    except ProtocolError as exc:
        return JSONResponse({"error": exc.reason}, 400)
    except AuthError as exc:
        return JSONResponse({"error": exc.reason}, exc.status)
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/sdp":
        return JSONResponse({"error": "send the offer as application/sdp"}, 415)
    body = await request.body()
    if len(body) > request.app.state.rtc.settings.limits.max_message_bytes:
        return JSONResponse({"error": "offer too large"}, 413)
    return request.app.state.rtc, principal, room, body.decode("utf-8", "replace")


def _created(room: str, session_id: str, sdp: str) -> Response:
    location = f"/rtc/{room}/sessions/{session_id}"
    return Response(sdp, 201, media_type="application/sdp", headers={"Location": location})


async def relay_speak(request: Request) -> Response:
    parsed = await _sdp_request(request)
    if isinstance(parsed, Response):
        return parsed
    rtc, principal, room, offer = parsed
    from pairroom.rtc.relay import RelayError

    policy = rtc.settings.policy_for(room)
    call = rtc.calls.rooms.get(room)
    speak = call.speak if call is not None else policy.speak
    if speak is Speak.OWNERS:
        try:
            role = await live_role(request.app.state.hub, room, principal)
        except RoomLoadError as exc:
            return JSONResponse({"error": str(exc)}, 503)
        if role is not Role.OWNER:
            return JSONResponse({"error": "only owners speak in this room"}, 403)
    try:
        session_id, answer = await rtc.relay().speak(room, principal, offer, policy.record)
    except RelayError as exc:
        return JSONResponse({"error": exc.reason}, exc.status)
    return _created(room, session_id, answer)


async def relay_listen(request: Request) -> Response:
    parsed = await _sdp_request(request)
    if isinstance(parsed, Response):
        return parsed
    rtc, principal, room, offer = parsed
    from pairroom.rtc.relay import RelayError

    try:
        session_id, answer = await rtc.relay().listen(room, principal, offer)
    except RelayError as exc:
        return JSONResponse({"error": exc.reason}, exc.status)
    return _created(room, session_id, answer)


async def relay_end(request: Request) -> Response:
    room = request.path_params["room"]
    try:
        authenticate(request, room)
    except AuthError as exc:
        return JSONResponse({"error": exc.reason}, exc.status)
    rtc: RtcService = request.app.state.rtc
    ended = rtc._relay is not None and await rtc.relay().end(room, request.path_params["session"])
    return Response(status_code=204 if ended else 404)


async def recordings_list(request: Request) -> Response:
    room = request.path_params["room"]
    try:
        authenticate(request, room)
    except AuthError as exc:
        return JSONResponse({"error": exc.reason}, exc.status)
    rtc: RtcService = request.app.state.rtc
    from pairroom.rtc.recording import list_recordings

    return JSONResponse({"room": room, "recordings": list_recordings(rtc.recording_dir, room)})


_SESSION = re.compile(r"[0-9]{8}T[0-9]{6}Z-[0-9a-f]{1,16}")  # recording.new_session_id
_AUDIO_FILE = re.compile(r"[A-Za-z0-9_-]{1,64}\.ogg")  # <peer>.ogg, <peer>-<n>.ogg


async def recording_file(request: Request) -> Response:
    """One recorded voice file (Ogg/Opus), for the replay page's ``<audio>``: ``?token=`` works, as
    a media element cannot send headers. Names are checked against what the recorder writes, so no
    path leaves the room's folder."""
    room = request.path_params["room"]
    try:
        authenticate(request, room)
    except AuthError as exc:
        return JSONResponse({"error": exc.reason}, exc.status)
    session, name = request.path_params["session"], request.path_params["file"]
    if not _SESSION.fullmatch(session) or not _AUDIO_FILE.fullmatch(name):
        return JSONResponse({"error": "no such recording"}, 404)
    rtc: RtcService = request.app.state.rtc
    from pairroom.rtc.recording import room_dir

    path = room_dir(rtc.recording_dir, room) / session / name
    if not path.is_file():
        return JSONResponse({"error": "no such recording"}, 404)
    return FileResponse(path, media_type="audio/ogg", headers={"Cache-Control": "private, max-age=3600"})


__all__ = ["RtcService", "RtcSettings", "routes"]

routes = [
    WebSocketRoute("/signal", signal_endpoint),
    WebSocketRoute("/call/{room}", call_endpoint),
    Route("/api/rtc-config", rtc_config),
    Route("/api/rooms/{room}/recordings", recordings_list),
    Route("/api/rooms/{room}/recordings/{session}/{file}", recording_file),
    Route("/rtc/{room}/speak", relay_speak, methods=["POST"]),
    Route("/rtc/{room}/listen", relay_listen, methods=["POST"]),
    Route("/rtc/{room}/sessions/{session}", relay_end, methods=["DELETE"]),
]
