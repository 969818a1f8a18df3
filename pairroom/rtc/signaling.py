"""y-webrtc-compatible signaling at ``/signal``: topics, publish to every subscriber, ping/pong.

The wire protocol is the one npm ``y-webrtc`` (10.x) speaks with its ``bin/server.js``, one JSON
object per text frame:

- ``{"type": "subscribe", "topics": [...]}`` and ``{"type": "unsubscribe", "topics": [...]}``;
- ``{"type": "publish", "topic": T, ...}`` is sent, unchanged but for an added ``"clients": N``
  (the number of receivers), to every subscriber of ``T``, the sender included (y-webrtc clients
  drop their own messages by ``data.from``);
- ``{"type": "ping"}`` is answered with ``{"type": "pong"}``.

Topic scoping. A y-webrtc topic is the ``roomName`` given to ``WebrtcProvider``. With a server
secret every connection carries a token (``?token=``, at the handshake) and may use only the topics
of the token's room: the room name itself, or ``ROOM/anything``. Room names never contain ``/``,
so no room's topics are inside another's, and a room named ``*`` is a room like any other. Topics
of other rooms are refused with an error frame (code 4403) and no strike, because y-webrtc
subscribes every room a page knows on every signaling connection. Without a secret (open mode) any
topic is allowed, as with y-webrtc's own server: open mode's principals carry ``any_room``, a flag,
never a room name.

Delivery goes through the ``SignalBus`` port (see bus.py), on channel ``signal:TOPIC``; a node
subscribes a topic's channel while it has local subscribers. ``clients`` counts the receivers on
the delivering node.
"""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any

from starlette.websockets import WebSocket

from pairroom.rtc.bus import Handler, SignalBus
from pairroom.rtc.connection import Connection
from pairroom.rtc.limits import CloseCode, Limits, Refused
from pairroom.rtc.limits import field as checked
from pairroom.web.auth import AuthError, Principal, admit, check_room_identity

log = logging.getLogger("pairroom.rtc.signal")

MAX_TOPIC = 512


def topic_allowed(principal: Principal, topic: str) -> bool:
    if principal.any_room:
        return True
    return topic == principal.room or topic.startswith(principal.room + "/")


def channel(topic: str) -> str:
    return "signal:" + topic


@dataclass(slots=True)
class _Topic:
    handler: Handler
    subscribers: set[Connection] = field(default_factory=set)


class TopicHub:
    """Which local connections hold which topics, and delivery of what the bus brings in."""

    def __init__(self, bus: SignalBus) -> None:
        self.bus = bus
        self.topics: dict[str, _Topic] = {}

    async def subscribe(self, conn: Connection, topic: str) -> None:
        entry = self.topics.get(topic)
        if entry is None:
            entry = self.topics[topic] = _Topic(handler=lambda payload: self._deliver(topic, payload))
            entry.subscribers.add(conn)
            await self.bus.subscribe(channel(topic), entry.handler)
        else:
            entry.subscribers.add(conn)

    async def unsubscribe(self, conn: Connection, topic: str) -> None:
        entry = self.topics.get(topic)
        if entry is None or conn not in entry.subscribers:
            return
        entry.subscribers.discard(conn)
        if not entry.subscribers:
            del self.topics[topic]
            await self.bus.unsubscribe(channel(topic), entry.handler)

    async def publish(self, topic: str, message: dict[str, Any]) -> None:
        await self.bus.publish(channel(topic), json.dumps(message))

    def _deliver(self, topic: str, payload: str) -> None:
        entry = self.topics.get(topic)
        if entry is None or not entry.subscribers:
            return
        message = json.loads(payload)
        message["clients"] = len(entry.subscribers)
        text = json.dumps(message)  # encoded once for every receiver
        for conn in list(entry.subscribers):
            conn.send(text)


class SignalSession:
    """One ``/signal`` connection: its principal, its topics and its message handlers."""

    def __init__(self, hub: TopicHub, principal: Principal, limits: Limits) -> None:
        self.hub = hub
        self.principal = principal
        self.limits = limits
        self.topics: set[str] = set()

    def _topics(self, message: dict[str, Any]) -> list[str]:
        topics = checked(message, "topics", list, optional=True) or []
        for topic in topics:
            if not isinstance(topic, str) or not topic or len(topic) > MAX_TOPIC:
                raise Refused(
                    CloseCode.MALFORMED, f"topics must be non-empty strings of at most {MAX_TOPIC} characters"
                )
        return topics

    async def handle(self, conn: Connection, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "ping":
            conn.send({"type": "pong"})
        elif kind == "subscribe":
            refused = []
            for topic in self._topics(message):
                if not topic_allowed(self.principal, topic):
                    refused.append(topic)
                elif topic not in self.topics:
                    if len(self.topics) >= self.limits.max_topics:
                        raise Refused(CloseCode.FORBIDDEN, f"more than {self.limits.max_topics} topics", strike=False)
                    self.topics.add(topic)
                    await self.hub.subscribe(conn, topic)
            if refused:
                raise Refused(CloseCode.FORBIDDEN, f"topics of another room: {', '.join(refused)}"[:200], strike=False)
        elif kind == "unsubscribe":
            for topic in self._topics(message):
                if topic in self.topics:
                    self.topics.discard(topic)
                    await self.hub.unsubscribe(conn, topic)
        elif kind == "publish":
            topic = checked(message, "topic", str)
            if not topic_allowed(self.principal, topic):
                raise Refused(CloseCode.FORBIDDEN, f"topic {topic[:100]!r} is another room's", strike=False)
            await self.hub.publish(topic, message)
        else:
            raise Refused(CloseCode.UNKNOWN_TYPE, f"unknown message type {kind[:40]!r}")

    async def leave(self, conn: Connection) -> None:
        for topic in list(self.topics):
            await self.hub.unsubscribe(conn, topic)
        self.topics.clear()


async def signal_endpoint(websocket: WebSocket) -> None:
    rtc: Any = websocket.app.state.rtc
    await websocket.accept()
    conn = Connection(websocket, secrets.token_hex(6), rtc.settings.limits, kind="signal")
    try:
        principal = await admit(websocket, None, "signal")
        if not principal.anonymous and not principal.any_room:  # topics are the token's room's: is it this room?
            await check_room_identity(websocket, principal.room, principal)
    except AuthError as exc:
        log.warning("signal refused", extra={"conn": conn.id, "code": exc.code, "reason": exc.reason})
        conn.close_after_pending(exc.code, exc.reason)
        await conn.run(_refuse_everything)
        return
    session = SignalSession(rtc.topics, principal, rtc.settings.limits)
    log.info("signal connected", extra={"conn": conn.id, "room": principal.room, "user": principal.user_id})
    try:
        await conn.run(session.handle)
    finally:
        await session.leave(conn)
        log.info("signal disconnected", extra={"conn": conn.id, "code": conn.closing and conn.closing[0]})


async def _refuse_everything(conn: Connection, message: dict[str, Any]) -> None:
    raise Refused(CloseCode.UNAUTHORIZED, "not authenticated", strike=False)
