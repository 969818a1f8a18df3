"""The talk-while-you-code routes, their settings, and the service object the handlers share.

``attach(app, RtcSettings(...))`` puts an ``RtcService`` on ``app.state.rtc``, puts ``routes``
in front of the app's own, and closes the service (relay peers, recordings) when the app's lifespan
ends, before storage closes. Signaling needs nothing but this module; aiortc is imported the first
time the relay or a recording needs it.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, AsyncIterator, Mapping

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute

from ..server.auth import AuthError, Role
from .access import authenticate
from .bus import MemoryBus, SignalBus
from .calls import CallHub, CallPolicy, Speak, call_endpoint
from .ice import rtc_config
from .limits import Limits
from .signaling import TopicHub, signal_endpoint


@dataclass(frozen=True, slots=True)
class RtcSettings:
    stun_urls: tuple[str, ...] = ()
    turn_urls: tuple[str, ...] = ()
    turn_secret: str | None = None  # coturn's static-auth-secret
    turn_ttl_seconds: int = 3600
    limits: Limits = field(default_factory=Limits)
    speak: str = "everyone"  # default speaking policy of a room's call: everyone | owners
    owners_speak_rooms: frozenset[str] = frozenset()  # rooms whose calls use ``owners``
    record_rooms: frozenset[str] = frozenset()  # rooms whose call audio the server records
    record_all: bool = False
    recording_dir: str = "./recordings"
    relay_max_listeners: int = 60  # measured: docs/rtc.md
    media_addresses: tuple[str, ...] = ()  # host candidates of the server's own peers (empty: all)

    def policy_for(self, room: str) -> CallPolicy:
        speak = Speak.OWNERS if room in self.owners_speak_rooms else Speak(self.speak)
        return CallPolicy(speak=speak, record=self.record_all or room in self.record_rooms)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RtcSettings:
        """``PAIRROOM_RTC_<FIELD>``; lists and sets are comma-separated."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(f"PAIRROOM_RTC_{f.name.upper()}")
            if raw is None or f.name == "limits":
                continue
            default = getattr(cls(), f.name)
            if isinstance(default, (tuple, frozenset)):
                values[f.name] = type(default)(x.strip() for x in raw.split(",") if x.strip())
            elif isinstance(default, bool):
                values[f.name] = raw.strip().lower() in {"1", "true", "yes", "on"}
            elif isinstance(default, int):
                values[f.name] = int(raw)
            else:
                values[f.name] = raw
        return replace(cls(), **values)


class RtcService:
    """What the rtc handlers of one server share."""

    def __init__(self, settings: RtcSettings, bus: SignalBus | None = None) -> None:
        Speak(settings.speak)  # fail at start-up, not at the first call
        self.settings = settings
        self.bus = bus if bus is not None else MemoryBus()
        self.topics = TopicHub(self.bus)
        self.calls = CallHub(self.bus, settings.policy_for, self._new_recorder)
        self._relay: Any = None

    @property
    def recording_dir(self) -> Path:
        return Path(self.settings.recording_dir)

    def media_ready(self) -> None:
        from .media import restrict_host_addresses

        restrict_host_addresses(self.settings.media_addresses)

    def relay(self) -> Any:
        if self._relay is None:
            self.media_ready()
            from .relay import AudioRelay

            self._relay = AudioRelay(self.settings.relay_max_listeners, self.recording_dir)
        return self._relay

    async def _new_recorder(self, room: str, peer_id: str) -> Any:
        self.media_ready()
        from .recording import CallRecorder

        return CallRecorder(self.recording_dir, room, peer_id, self.calls.signal)

    async def aclose(self) -> None:
        await self.calls.aclose()
        if self._relay is not None:
            await self._relay.aclose()


def attach(app: Starlette, settings: RtcSettings, bus: SignalBus | None = None) -> RtcService:
    service = RtcService(settings, bus)
    app.state.rtc = service
    app.router.routes[0:0] = routes
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[Any]:
        async with inner(app) as state:
            try:
                yield state
            finally:
                await service.aclose()

    app.router.lifespan_context = lifespan
    return service


# -- the audio relay and recordings over HTTP ---------------------------------------------------------


async def _sdp_request(request: Request) -> tuple[Any, Any, str, str] | Response:
    room = request.path_params["room"]
    try:
        principal = authenticate(request, room)
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
    from .relay import RelayError

    policy = rtc.settings.policy_for(room)
    call = rtc.calls.rooms.get(room)
    speak = call.speak if call is not None else policy.speak
    if speak is Speak.OWNERS and principal.role is not Role.OWNER:
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
    from .relay import RelayError

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
    from .recording import list_recordings

    return JSONResponse({"room": room, "recordings": list_recordings(rtc.recording_dir, room)})


routes = [
    WebSocketRoute("/signal", signal_endpoint),
    WebSocketRoute("/call/{room}", call_endpoint),
    Route("/api/rtc-config", rtc_config),
    Route("/api/rooms/{room}/recordings", recordings_list),
    Route("/rtc/{room}/speak", relay_speak, methods=["POST"]),
    Route("/rtc/{room}/listen", relay_listen, methods=["POST"]),
    Route("/rtc/{room}/sessions/{session}", relay_end, methods=["DELETE"]),
]
