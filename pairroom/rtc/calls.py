"""Room calls at ``/call/{room}``: who is in a room's call, and signaling addressed to one peer.

pairroom's browser client joins a room's call over its own websocket (``?token=`` for the room).
Client messages, one JSON object per text frame:

- ``join {audio, video}`` and ``leave``;
- ``offer {to, sdp}``, ``answer {to, sdp}``, ``candidate {to, candidate}``: delivered only to peer
  ``to``, as ``{type, from, ...}``; a peer that is not (or no longer) in the call is refused;
- ``state {muted, camera}``: everyone in the call sees it;
- ``policy {speak: "everyone" | "owners"}`` and ``allow {peer, speak}`` (owners only);
- ``ping`` -> ``pong``.

Server messages: ``joined {peer, peers, policy}`` to the joiner (the newcomer offers to each of
``peers``), ``peer-joined``, ``peer-left``, ``state``, ``policy``, the relayed signals, ``error``.

Speaking policy. ``speak: everyone`` lets every member send audio and video; ``owners`` lets only
owners and the members an owner allowed (a mentor session: learners listen, the mentor can hand
one of them the floor). The server enforces it: a listener's offer or answer whose SDP sends audio
or video in any media section, and a listener unmuting, are refused (4403). Who is an owner is the
live role (``Room.role_of``): it is asked again on every join, offer, answer, unmute and policy
change, so an owner demoted during the call stops being one there too.

Cluster. Every event goes through the ``SignalBus`` on channel ``call:ROOM`` and is applied on the
way back in, so each node keeps a replica of the room's call (peers, policy) and delivers to its own
connections only: a signal reaches the node holding its ``to`` peer and nobody else. A node that
starts following a room asks the others to announce their peers (``sync`` -> ``present``). Every
event carries the sending node's id, so each replica knows which node holds each peer; peers of a
node that dies without saying ``leave`` are dropped when the bus reports the node gone
(``node_gone``, called by broker_bus.py from the cluster's heartbeats).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Awaitable, Callable, Protocol

from starlette.websockets import WebSocket

from pairroom.web.api import live_role
from pairroom.web.auth import AuthError, Principal, Role, admit
from pairroom.web.websocket import room_name_from_path
from pairroom.protocol.sync import ProtocolError
from pairroom.rooms.registry import RoomLoadError
from pairroom.rtc.bus import SignalBus
from pairroom.rtc.connection import Connection
from pairroom.rtc.limits import Refused, CloseCode
from pairroom.rtc.settings import CallPolicy, Speak
from pairroom.rtc.limits import field as checked

log = logging.getLogger("pairroom.rtc.call")

MAX_SDP = 32 * 1024


class Member(Protocol):
    """Anything that takes the call's messages for one peer: a websocket connection or the recorder."""

    def send(self, message: dict[str, Any] | str) -> None: ...


@dataclass(slots=True)
class CallPeer:
    id: str
    user: dict[str, Any]
    owner: bool
    audio: bool = False
    video: bool = False
    muted: bool = False
    camera: bool = True
    recorder: bool = False
    allowed: bool = False  # an owner gave this peer the floor under ``speak: owners``

    def public(self, speak: Speak) -> dict[str, Any]:
        data = asdict(self)
        data["peer"] = data.pop("id")
        data["speaker"] = may_speak(self, speak)
        return data


def may_speak(peer: CallPeer, speak: Speak) -> bool:
    if peer.recorder:
        return False
    return speak is Speak.EVERYONE or peer.owner or peer.allowed


_MEDIA_LINE = re.compile(r"^m=(\w+) ", re.M)
_DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")


def sdp_sends_media(sdp: str) -> bool:
    """Whether any audio or video section of ``sdp`` may send (sendrecv, or sendonly; sendrecv is
    the default). Fails closed: a section that lists several directions (``recvonly`` then
    ``sendrecv``) counts as sending if any of them sends, since parsers disagree on which one wins;
    every media section is checked, as is every line of each."""
    sections = re.split(r"(?m)^(?=m=)", sdp.replace("\r\n", "\n").replace("\r", "\n"))
    session_directions = _directions(sections[0]) or {"sendrecv"}
    for section in sections[1:]:
        kind = _MEDIA_LINE.match(section)
        if kind and kind.group(1).lower() in ("audio", "video") and not re.match(r"m=\S+ 0 ", section):
            if (_directions(section) or session_directions) & {"sendrecv", "sendonly"}:
                return True
    return False


def _directions(section: str) -> set[str]:
    """Every direction attribute of an SDP section."""
    return {
        line[2:].strip().lower()
        for line in section.split("\n")
        if line.startswith("a=") and line[2:].strip().lower() in _DIRECTIONS
    }


@dataclass(slots=True)
class CallRoom:
    """This node's replica of one room's call, and the peers of it that are connected here."""

    name: str
    speak: Speak
    record: bool
    handler: Callable[[str], None]
    peers: dict[str, CallPeer] = field(default_factory=dict)
    homes: dict[str, str] = field(default_factory=dict)  # peer id -> the node it is connected to
    local: dict[str, Member] = field(default_factory=dict)
    recorder: Any = None  # the recorder peer while this node records the call

    def policy(self) -> dict[str, Any]:
        return {"speak": self.speak.value, "record": self.record}

    def to_local(self, message: dict[str, Any], *, skip: str | None = None) -> None:
        text = json.dumps(message)
        for peer_id, member in list(self.local.items()):
            if peer_id != skip:
                member.send(text)


RecorderFactory = Callable[[str, str], Awaitable[Any]]  # (room, recorder peer id) -> recorder member


class CallHub:
    """Room calls on this node. Owns its background tasks (``aclose`` ends them)."""

    def __init__(
        self,
        bus: SignalBus,
        policy_for: Callable[[str], CallPolicy],
        recorder_factory: RecorderFactory | None = None,
    ) -> None:
        self.bus = bus
        self.policy_for = policy_for
        self.recorder_factory = recorder_factory
        self.rooms: dict[str, CallRoom] = {}
        self._node = secrets.token_hex(4)
        self._tasks: set[asyncio.Task[None]] = set()
        self._locks: dict[str, asyncio.Lock] = {}

    @property
    def node(self) -> str:
        """This node's id on the bus: the cluster's node id once a broker bus is bound."""
        return getattr(self.bus, "node_id", None) or self._node

    # -- commands from local members ---------------------------------------------------------------

    async def join(self, room_name: str, peer: CallPeer, member: Member) -> None:
        async with self._lock(room_name):
            room = await self._follow(room_name)
            if room.record and room.recorder is None and self.recorder_factory is not None:
                await self._start_recorder(room)
            room.local[peer.id] = member
            await self._publish(room, {"ev": "join", "peer": asdict(peer)})

    async def leave(self, room_name: str, peer_id: str) -> None:
        async with self._lock(room_name):
            room = self.rooms.get(room_name)
            if room is None or room.local.pop(peer_id, None) is None:
                return
            await self._publish(room, {"ev": "leave", "peer": peer_id})
            humans = [p for p in room.local if room.recorder is None or p != room.recorder.id]
            if not humans:
                await self._stop_recorder(room)
                del self.rooms[room_name]
                await self.bus.unsubscribe(channel(room_name), room.handler)

    async def signal(self, room_name: str, sender: str, message: dict[str, Any]) -> None:
        room = self._joined(room_name, sender)
        to = message["to"]
        if to not in room.peers or to == sender:
            raise Refused(CloseCode.FORBIDDEN, f"peer {to[:40]!r} is not in the call", strike=False)
        if message["type"] in ("offer", "answer") and sdp_sends_media(message["sdp"]):
            if not may_speak(room.peers[sender], room.speak):
                raise Refused(CloseCode.FORBIDDEN, "listeners may not send audio or video", strike=False)
        out = {k: v for k, v in message.items() if k != "to"}
        out["from"] = sender
        await self._publish(room, {"ev": "signal", "to": to, "msg": out})

    async def state(self, room_name: str, sender: str, muted: bool | None, camera: bool | None) -> None:
        room = self._joined(room_name, sender)
        if muted is False and not may_speak(room.peers[sender], room.speak):
            raise Refused(CloseCode.FORBIDDEN, "listeners may not unmute", strike=False)
        await self._publish(room, {"ev": "state", "peer": sender, "muted": muted, "camera": camera})

    async def set_policy(self, room_name: str, sender: str, speak: Speak | None, allow: tuple[str, bool] | None) -> None:
        room = self._joined(room_name, sender)
        if not room.peers[sender].owner:
            raise Refused(CloseCode.FORBIDDEN, "only owners change who may speak", strike=False)
        if allow is not None and allow[0] not in room.peers:
            raise Refused(CloseCode.FORBIDDEN, f"peer {allow[0][:40]!r} is not in the call", strike=False)
        await self._publish(
            room,
            {"ev": "policy", "speak": speak.value if speak else None, "allow": list(allow) if allow else None},
        )

    async def set_owner(self, room_name: str, peer_id: str, owner: bool) -> None:
        """A local peer's live role changed: decide with it here at once, and tell every replica
        (``present`` updates the peer, ``policy`` re-announces who may speak)."""
        room = self.rooms.get(room_name)
        peer = room.peers.get(peer_id) if room is not None else None
        if room is None or peer is None or peer_id not in room.local or peer.owner == owner:
            return
        peer.owner = owner
        await self._publish(room, {"ev": "present", "peer": asdict(peer)})
        await self._publish(room, {"ev": "policy", "speak": None, "allow": None})

    def _joined(self, room_name: str, peer_id: str) -> CallRoom:
        room = self.rooms.get(room_name)
        if room is None or peer_id not in room.local or peer_id not in room.peers:
            raise Refused(CloseCode.FORBIDDEN, "join the call first")
        return room

    # -- events from the bus (this node's included) --------------------------------------------------

    def _apply(self, room_name: str, payload: str) -> None:
        room = self.rooms.get(room_name)
        if room is None:
            return
        event = json.loads(payload)
        kind = event["ev"]
        if kind in ("join", "present"):
            peer = CallPeer(**event["peer"])
            known = peer.id in room.peers
            room.peers[peer.id] = peer
            room.homes[peer.id] = event.get("node", "")
            if kind == "join" and peer.id in room.local:
                others = [p.public(room.speak) for p in room.peers.values() if p.id != peer.id]
                room.local[peer.id].send(
                    {"type": "joined", "peer": peer.id, "peers": others, "policy": room.policy()}
                )
            if not known:
                room.to_local({"type": "peer-joined", **peer.public(room.speak)}, skip=peer.id)
        elif kind == "leave":
            room.homes.pop(event["peer"], None)
            if room.peers.pop(event["peer"], None) is not None:
                room.to_local({"type": "peer-left", "peer": event["peer"]})
        elif kind == "signal":
            member = room.local.get(event["to"])
            if member is not None:  # on the node that holds the peer, and only while it is here
                member.send(event["msg"])
        elif kind == "state":
            peer = room.peers.get(event["peer"])
            if peer is not None:
                if event["muted"] is not None:
                    peer.muted = event["muted"]
                if event["camera"] is not None:
                    peer.camera = event["camera"]
                room.to_local({"type": "state", "peer": peer.id, "muted": peer.muted, "camera": peer.camera})
        elif kind == "policy":
            if event["speak"] is not None:
                room.speak = Speak(event["speak"])
            if event["allow"] is not None and event["allow"][0] in room.peers:
                room.peers[event["allow"][0]].allowed = bool(event["allow"][1])
            speakers = [p.id for p in room.peers.values() if may_speak(p, room.speak)]
            room.to_local({"type": "policy", **room.policy(), "speakers": speakers})
        elif kind == "sync" and event["node"] != self.node:
            for peer_id in room.local:
                if peer_id in room.peers:
                    self._spawn(self._publish(room, {"ev": "present", "peer": asdict(room.peers[peer_id])}))
        elif kind != "sync":
            log.warning("unknown call event", extra={"room": room_name, "event": kind})

    def node_gone(self, node: str) -> None:
        """A node died without its peers saying ``leave``: they leave every replica here."""
        for room in list(self.rooms.values()):
            for peer_id, home in list(room.homes.items()):
                if home == node and peer_id not in room.local:
                    del room.homes[peer_id]
                    if room.peers.pop(peer_id, None) is not None:
                        room.to_local({"type": "peer-left", "peer": peer_id})

    # -- plumbing ----------------------------------------------------------------------------------

    async def _follow(self, room_name: str) -> CallRoom:
        room = self.rooms.get(room_name)
        if room is None:
            policy = self.policy_for(room_name)
            room = self.rooms[room_name] = CallRoom(
                room_name, policy.speak, policy.record, handler=lambda payload: self._apply(room_name, payload)
            )
            await self.bus.subscribe(channel(room_name), room.handler)
            await self._publish(room, {"ev": "sync", "node": self.node})
        return room

    async def _start_recorder(self, room: CallRoom) -> None:
        assert self.recorder_factory is not None
        peer_id = "rec-" + secrets.token_hex(4)
        recorder = await self.recorder_factory(room.name, peer_id)
        room.recorder = recorder
        room.local[peer_id] = recorder
        peer = CallPeer(peer_id, {"id": peer_id, "name": "Recorder", "role": "recorder"}, owner=False, recorder=True)
        await self._publish(room, {"ev": "join", "peer": asdict(peer)})

    async def _stop_recorder(self, room: CallRoom) -> None:
        recorder, room.recorder = room.recorder, None
        if recorder is None:
            return
        room.local.pop(recorder.id, None)
        await self._publish(room, {"ev": "leave", "peer": recorder.id})
        await recorder.close()

    async def _publish(self, room: CallRoom, event: dict[str, Any]) -> None:
        await self.bus.publish(channel(room.name), json.dumps({**event, "node": self.node}))

    def _lock(self, room_name: str) -> asyncio.Lock:
        return self._locks.setdefault(room_name, asyncio.Lock())

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("call event task failed", exc_info=task.exception())

    async def aclose(self) -> None:
        for room in list(self.rooms.values()):
            await self._stop_recorder(room)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def channel(room: str) -> str:
    return "call:" + room


RoleOf = Callable[[], Awaitable[Role]]  # the live role of a connection's principal in its room


class CallSession:
    """One ``/call/{room}`` connection. ``role`` answers the principal's live role (``Room.role_of``)."""

    def __init__(self, hub: CallHub, room: str, principal: Principal, peer_id: str, role: RoleOf) -> None:
        self.hub = hub
        self.room = room
        self.principal = principal
        self.peer_id = peer_id
        self.role = role
        self.in_call = False

    async def _owner(self) -> bool:
        try:
            return (await self.role()) is Role.OWNER
        except RoomLoadError as exc:
            raise Refused(CloseCode.TRY_AGAIN_LATER, "room could not be loaded; try again", strike=False) from exc

    async def _refresh_owner(self) -> None:
        """Bring this peer's owner flag in line with the live role before a decision that uses it."""
        if self.in_call:
            await self.hub.set_owner(self.room, self.peer_id, await self._owner())

    async def handle(self, conn: Connection, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "ping":
            conn.send({"type": "pong"})
        elif kind == "join":
            if self.in_call:
                raise Refused(CloseCode.MALFORMED, "already in the call", strike=False)
            audio = bool(checked(message, "audio", bool, optional=True))
            video = bool(checked(message, "video", bool, optional=True))
            identity = {**self.principal.identity(), "role": (await self.role()).value}
            peer = CallPeer(
                self.peer_id, identity, owner=await self._owner(),
                audio=audio, video=video, muted=not audio, camera=video,
            )
            room = self.hub.rooms.get(self.room)
            speak = room.speak if room else self.hub.policy_for(self.room).speak
            if not may_speak(peer, speak):
                peer = replace(peer, audio=False, video=False, muted=True, camera=False)
            self.in_call = True
            await self.hub.join(self.room, peer, conn)
        elif kind == "leave":
            await self.leave()
        elif kind in ("offer", "answer", "candidate"):
            checked(message, "to", str)
            if kind == "candidate":
                checked(message, "candidate", (dict, str), optional=True)
            else:
                sdp = checked(message, "sdp", str)
                if len(sdp) > MAX_SDP:
                    raise Refused(CloseCode.MESSAGE_TOO_BIG, f"sdp over {MAX_SDP} bytes")
                if sdp_sends_media(sdp):
                    await self._refresh_owner()
            await self.hub.signal(self.room, self.peer_id, message)
        elif kind == "state":
            if checked(message, "muted", bool, optional=True) is False:
                await self._refresh_owner()
            await self.hub.state(
                self.room, self.peer_id,
                checked(message, "muted", bool, optional=True), checked(message, "camera", bool, optional=True),
            )
        elif kind == "policy":
            try:
                speak = Speak(checked(message, "speak", str))
            except ValueError as exc:
                raise Refused(CloseCode.MALFORMED, "'speak' must be 'everyone' or 'owners'") from exc
            await self._refresh_owner()
            await self.hub.set_policy(self.room, self.peer_id, speak, None)
        elif kind == "allow":
            peer = checked(message, "peer", str)
            await self._refresh_owner()
            await self.hub.set_policy(self.room, self.peer_id, None, (peer, bool(checked(message, "speak", bool))))
        else:
            raise Refused(CloseCode.UNKNOWN_TYPE, f"unknown message type {kind[:40]!r}")

    async def leave(self) -> None:
        if self.in_call:
            self.in_call = False
            await self.hub.leave(self.room, self.peer_id)


async def call_endpoint(websocket: WebSocket) -> None:
    rtc: Any = websocket.app.state.rtc
    await websocket.accept()
    conn = Connection(websocket, secrets.token_hex(6), rtc.settings.limits, kind="call")
    try:
        room = room_name_from_path(websocket.path_params["room"], websocket.app.state.hub.settings.max_room_name)
        principal = await admit(websocket, room, "call")
    except (AuthError, ProtocolError) as exc:
        log.warning("call refused", extra={"conn": conn.id, "code": exc.code, "reason": exc.reason})
        conn.close_after_pending(exc.code, exc.reason)
        await conn.run(_ignore)
        return

    async def role() -> Role:
        return await live_role(websocket.app.state.hub, room, principal)

    session = CallSession(rtc.calls, room, principal, conn.id, role)
    try:
        await conn.run(session.handle)
    finally:
        await session.leave()


async def _ignore(conn: Connection, message: dict[str, Any]) -> None:
    return None


__all__ = ["CallHub", "CallPeer", "CallPolicy", "Speak", "call_endpoint", "sdp_sends_media"]
