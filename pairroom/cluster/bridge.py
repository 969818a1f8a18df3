"""Rooms shared across nodes: the bridge between a node's rooms and the broker.

Fan-out. A node with a room loaded subscribes to the room's channel. Updates its members (and the
server itself) integrate are published once, with the uid they are logged under; awareness changes of
its members likewise. Messages from other nodes are applied to the local copy (``PeerOrigin``), which
fans them out to local members; a node drops its own echoes by node id.

Race-free join (``opening`` then ``opened``, called by the registry around the storage load):

1. subscribe to the room's channel, and from then on buffer the room's messages;
2. load the room from storage (the registry does this);
3. apply the buffered messages, then publish the state vector asking for replies from the nodes that
   hold the room (a Redis set lists them; dead ones are filtered out by heartbeats). Each answers with
   what the new copy is missing and its own state vector, to which the new copy answers likewise;
4. wait (bounded by ``sync_timeout``) for every live holder's answer, then let members in.

Nothing published after step 1 is missed (it is buffered), nothing stored before step 2 is missed, and
what other nodes hold but have not stored yet comes with their answers.

Healing. Pub/sub drops messages while a node is disconnected. After a reconnect, and every
``anti_entropy`` seconds, a node publishes the state vector of every room it holds; any node holding
more answers with what is missing. When nothing is missing that costs one small message per room.

Authorship. An update is published with its author (``bus.Author``: the client's connection and
user, the server, a kernel), read from the room's current origin while the transaction that made it
is still being integrated. Receivers integrate it with a ``PeerOrigin`` naming that author, so they
log it under the very label the first node logs. Answers to state vectors carry no author: they are
the difference between two copies, and are logged as ``peer:<node>``.

Held while away. A message whose publish fails (Redis away, or on a cluster the master of the room's
slot killed and its replica not promoted yet) is not dropped: it is held, with every later message of
that room, in order, and published once the broker is connected again, before anything newer of that
room. Rooms whose channel works go on meanwhile. Holding is bounded per room (``max_held`` messages,
``max_held_bytes``) and over all rooms (``max_held_total_bytes``); beyond that a message is dropped (``held_full``) and the state-vector exchange
after the reconnect brings its content back. So edits typed while a slot is away reach the other
nodes as they were typed, as soon as the slot is back, without waiting for a resync.

Drops. Whatever is not delivered (refused as too large, outbox full, held buffer full, undecodable or
of an unknown codec version, refused by the room) is counted by reason
(``pairroom_cluster_dropped_total``); the state-vector exchange brings the content back.

Node failure. Nodes publish a heartbeat every ``heartbeat`` seconds; a node not heard from for
``dead_after`` seconds is taken for dead and the awareness states of its members are removed here, well
before the 30 s awareness timeout.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from pairroom.cluster.broker import Broker, BrokerError, raise_if_cancelled
from pairroom.protocol import bus as wire
from pairroom.protocol import keys
from pairroom.protocol.bus import Author, BusMessage, Kind, UnknownBusVersion
from pairroom.protocol.origins import ClientOrigin, PeerOrigin
from pairroom.protocol.sync import EMPTY_UPDATE, CloseCode, ProtocolError

if TYPE_CHECKING:
    from pairroom.rooms.room import Room

log = logging.getLogger("pairroom.cluster")


class ClusterMetrics:
    def published(self, kind: Kind, ok: bool) -> None: ...
    def received(self, kind: Kind) -> None: ...
    def dropped(self, reason: str) -> None:
        """A message was not delivered: ``too_large``, ``outbox_full``, ``held_full`` (its room's
        held buffer was full while the broker was away), ``undecodable``, ``unknown_version``, ``refused`` (the room would not take it) or ``failed``
        (an unexpected error handling it)."""


class Cluster:
    def __init__(
        self,
        broker: Broker,
        rooms: dict[str, Room],
        *,
        metrics: ClusterMetrics | None = None,
        heartbeat: float = 1.0,
        dead_after: float = 3.0,
        anti_entropy: float = 10.0,
        sync_timeout: float = 2.0,
        max_outbox: int = 100_000,
        max_held: int = 10_000,
        max_held_bytes: int = 16 * 1024 * 1024,
        max_held_total_bytes: int = 64 * 1024 * 1024,
        held_retry: float = 0.1,
        solo: bool = False,
    ) -> None:
        self.broker = broker
        self.solo = solo  # no other node can exist (no shared broker): room messages are not sent
        self.node_id = broker.node_id
        self.rooms = rooms
        self.metrics = metrics or ClusterMetrics()
        self.heartbeat = heartbeat
        self.dead_after = dead_after
        self.anti_entropy = anti_entropy
        self.sync_timeout = sync_timeout
        self.peers: dict[str, float] = {}  # node id -> when last heard
        self.started_at = time.monotonic()
        self._buffers: dict[str, list[BusMessage]] = {}
        self._answers: dict[str, set[str]] = {}  # room being opened -> nodes that answered
        self._answered: dict[str, asyncio.Event] = {}
        self._outbox: deque[tuple[str, bytes, Kind]] = deque()
        self._outbox_ready = asyncio.Event()
        self._max_outbox = max_outbox
        # channel -> messages whose publish failed, and every later one of that room, in order
        self._held: dict[str, deque[tuple[bytes, Kind]]] = {}
        self._held_bytes: dict[str, int] = {}
        self._held_ready = asyncio.Event()
        self.max_held = max_held
        self.max_held_bytes = max_held_bytes
        self.max_held_total_bytes = max_held_total_bytes  # over every room: a long outage stays bounded
        self._held_total_bytes = 0
        self.held_retry = held_retry
        self.held_total = 0  # messages ever held (each published later, or dropped as held_full)
        self.released_total = 0  # held messages published once the broker was back
        self.dropped = 0
        self._unknown_versions: set[int] = set()  # logged once each, counted always
        self.on_room_deleted: Callable[[str], None] | None = None  # the registry evicts the room

    # -- lifecycle --------------------------------------------------------------------------------

    async def run(self, started: asyncio.Event) -> None:
        self.started_at = time.monotonic()
        try:
            await self.broker.start(self._on_message, self._on_reconnect)
        except BrokerError as exc:  # a broker that cannot work as configured: say why in one line
            log.critical("start-up stopped: the cluster broker cannot start", extra={"error": str(exc)})
            raise
        await self.broker.subscribe(keys.cluster_channel())
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._publisher(), name="pairroom-cluster-publisher")
                tasks.create_task(self._releaser(), name="pairroom-cluster-held-releaser")
                tasks.create_task(self._heartbeats(), name="pairroom-cluster-heartbeat")
                tasks.create_task(self._anti_entropy(), name="pairroom-cluster-anti-entropy")
                started.set()
        finally:
            await self._say_goodbye()
            await self.broker.stop()

    async def _say_goodbye(self) -> None:
        if self._held:  # a last chance for what waited on a slot
            try:
                async with asyncio.timeout(1.0):
                    await self._release_held()
            except TimeoutError:
                log.warning("held room messages not all sent at shutdown", extra={"rooms": len(self._held)})
        for name in list(self.rooms):
            await self._forget_holder(name)
        data = wire.encode(BusMessage(Kind.NODE_LEFT, self.node_id, ""))
        await self.broker.publish(keys.cluster_channel(), data)

    @property
    def connected(self) -> bool:
        return self.broker.connected

    @property
    def problem(self) -> str:
        """Why the broker is not connected, for ``/readyz`` ("" when it is)."""
        if self.broker.connected:
            return ""
        return getattr(self.broker, "problem", "") or "disconnected, reconnecting"

    # -- joining ----------------------------------------------------------------------------------

    async def opening(self, name: str) -> None:
        """Step 1 of a join: subscribe and buffer before the storage load."""
        self._buffers[name] = []
        await self.broker.subscribe(keys.room_channel(name))

    async def opened(self, room: Room) -> None:
        """Steps 3 and 4: apply what was buffered, ask the holders, wait for their answers."""
        buffered = self._buffers.pop(room.name, [])
        for message in buffered:
            self._dispatch(room, message)
        holders = await self._live_holders(room.name)
        await self._add_holder(room.name)
        if not holders:
            return
        answered = self._answered[room.name] = asyncio.Event()
        self._answers[room.name] = set()
        self.send(room.name, Kind.STATE_VECTOR_REPLY_WANTED, room.doc.get_state())
        try:
            async with asyncio.timeout(self.sync_timeout):
                while not holders <= self._answers[room.name]:
                    answered.clear()
                    await answered.wait()
        except TimeoutError:
            missing = sorted(holders - self._answers[room.name])
            log.warning("peers did not answer a join in time", extra={"room": room.name, "nodes": missing})
        finally:
            del self._answered[room.name]
            del self._answers[room.name]

    async def closed(self, name: str) -> None:
        self._buffers.pop(name, None)
        await self.broker.unsubscribe(keys.room_channel(name))
        await self._forget_holder(name)

    async def _live_holders(self, name: str) -> set[str]:
        try:
            holders = await self.broker.set_members(keys.room_holders(name))
        except BrokerError as exc:  # without the hint, ask nobody: the anti-entropy still heals
            log.warning("cannot list room holders", extra={"room": name, "error": repr(exc)})
            return set()
        now = time.monotonic()
        # Right after start-up this node has not heard every heartbeat yet: a holder it has not heard
        # of counts as alive then (at worst the join waits ``sync_timeout`` for a dead one).
        unknown_is_alive = now - self.started_at < self.dead_after
        return {
            n
            for n in holders
            if n != self.node_id
            and (now - self.peers.get(n, -1e9) < self.dead_after or (unknown_is_alive and n not in self.peers))
        }

    async def _add_holder(self, name: str) -> None:
        try:
            await self.broker.add_to_set(keys.room_holders(name), self.node_id)
        except BrokerError as exc:  # a missing hint only costs a slower heal
            log.warning("cannot register as room holder", extra={"room": name, "error": repr(exc)})

    async def _forget_holder(self, name: str) -> None:
        try:
            await self.broker.remove_from_set(keys.room_holders(name), self.node_id)
        except BrokerError as exc:  # a stale hint is filtered by heartbeats
            log.info("cannot unregister as room holder", extra={"room": name, "error": repr(exc)})

    # -- sending ----------------------------------------------------------------------------------

    def send(
        self, room: str, kind: Kind, payload: bytes, *, target: str = "", uid: str = "", author: Author = wire.NO_AUTHOR
    ) -> None:
        """Queue a message for the room's channel (never blocks the caller)."""
        if self.solo:
            return
        try:
            data = wire.encode(BusMessage(kind, self.node_id, room, payload, target, uid, author))
        except wire.BusMessageTooLarge as exc:
            self._drop("too_large")
            log.error("bus message refused, the state-vector exchange will cover it", extra={"error": str(exc)})
            return
        if len(self._outbox) >= self._max_outbox:
            self._drop("outbox_full")
            return
        self._outbox.append((keys.room_channel(room), data, kind))
        self._outbox_ready.set()

    def _drop(self, reason: str) -> None:
        self.dropped += 1
        self.metrics.dropped(reason)

    def publish_update(self, room: Room, uid: str, update: bytes) -> None:
        """Publish an update this node integrated first, with its author: called while the room is
        integrating it, so ``room.current_origin`` is the update's origin. A solo node has no one
        to tell, and skips working out the author (this runs for every edit)."""
        if self.solo:
            return
        self.send(room.name, Kind.UPDATE, update, uid=uid, author=author_of(room))

    def publish_awareness(self, room: Room, payload: bytes) -> None:
        self.send(room.name, Kind.AWARENESS, payload)

    def publish_deleted(self, name: str) -> None:
        self.send(name, Kind.ROOM_DELETED, b"")

    async def _publisher(self) -> None:
        """One task publishes in order. A message whose publish fails is held with every later one
        of its room (``_hold``); ``_releaser`` sends them once the broker is back."""
        while True:
            if not self._outbox:
                self._outbox_ready.clear()
                await self._outbox_ready.wait()
                continue
            channel, data, kind = self._outbox.popleft()
            # Older messages of this room wait (keep the order), or its slot is known to be away (a
            # publish would only fail, after up to a second that every other room would wait too).
            if channel in self._held or not self._may_publish(channel, unknown=True):
                self._hold(channel, data, kind)
                continue
            ok = await self.broker.publish(channel, data)
            raise_if_cancelled()
            self.metrics.published(kind, ok)
            if not ok:
                self._hold(channel, data, kind)

    def _hold(self, channel: str, data: bytes, kind: Kind) -> None:
        held = self._held.get(channel)
        if held is None:
            held = self._held[channel] = deque()
            self._held_bytes[channel] = 0
            log.warning("room messages held until the broker takes them again", extra={"channel": channel})
        if (
            len(held) >= self.max_held
            or self._held_bytes[channel] + len(data) > self.max_held_bytes
            or self._held_total_bytes + len(data) > self.max_held_total_bytes
        ):
            self._drop("held_full")  # the state-vector exchange after the reconnect brings it back
            return
        held.append((data, kind))
        self._held_bytes[channel] += len(data)
        self._held_total_bytes += len(data)
        self.held_total += 1
        self._held_ready.set()

    def _may_publish(self, channel: str, *, unknown: bool) -> bool:
        """Whether the broker can take ``channel``'s messages now: per channel if the broker knows
        (a cluster knows which slots are away), else ``unknown`` (the publisher just tries) or
        whether it is connected at all (the releaser waits for that)."""
        can_publish = getattr(self.broker, "can_publish", None)
        if can_publish is not None:
            return bool(can_publish(channel))
        return unknown or self.broker.connected

    async def _releaser(self) -> None:
        """Publishes held messages once the broker can take them: each room as soon as its slot is
        back on a cluster, every room once connected otherwise (checked every ``held_retry``
        seconds while something is held: a reconnect has no event of its own here)."""
        while True:
            if not self._held:
                self._held_ready.clear()
                await self._held_ready.wait()
                continue
            await self._release_held()
            if self._held:
                await asyncio.sleep(self.held_retry)

    async def _release_held(self) -> None:
        """Each held room in turn, its messages in order; a room whose publish still fails keeps the
        rest for the next round, the others go on."""
        for channel in list(self._held):
            if not self._may_publish(channel, unknown=False):
                continue
            held = self._held[channel]
            sent = 0
            while held:
                data, kind = held[0]
                ok = await self.broker.publish(channel, data)
                raise_if_cancelled()
                self.metrics.published(kind, ok)
                if not ok:
                    break
                held.popleft()
                self._held_bytes[channel] -= len(data)
                self._held_total_bytes -= len(data)
                sent += 1
            self.released_total += sent
            if not held:  # nothing was appended since the last publish returned: the order holds
                del self._held[channel]
                del self._held_bytes[channel]
                log.warning("held room messages sent", extra={"channel": channel, "messages": sent})

    # -- receiving --------------------------------------------------------------------------------

    def _on_message(self, channel: str, data: bytes) -> None:
        """The broker's reader calls this for every message: nothing may escape it, or the reader,
        and with it every room's traffic, would stop."""
        try:
            self._receive(channel, data)
        except Exception:  # a bug handling one message; the next ones are still read
            self._drop("failed")
            log.exception("cannot handle a bus message", extra={"channel": channel, "size": len(data)})

    def _receive(self, channel: str, data: bytes) -> None:
        try:
            message = wire.decode(data)
        except UnknownBusVersion as exc:
            self._drop("unknown_version")
            if exc.version not in self._unknown_versions:  # once per version: a newer node talks a lot
                self._unknown_versions.add(exc.version)
                log.error(
                    "bus message of an unknown version dropped (is a newer pairroom node on this broker?)",
                    extra={"channel": channel, "version": exc.version, "error": exc.reason},
                )
            return
        except ProtocolError as exc:
            self._drop("undecodable")
            log.error("undecodable bus message", extra={"channel": channel, "error": exc.reason})
            return
        if message.node == self.node_id:
            return
        self.peers[message.node] = time.monotonic()
        self.metrics.received(message.kind)
        if message.kind is Kind.HEARTBEAT:
            return
        if message.kind is Kind.NODE_LEFT:
            self._node_gone(message.node)
            return
        if message.target and message.target != self.node_id:
            return
        if message.kind is Kind.ROOM_DELETED:
            if self.on_room_deleted is not None:
                self.on_room_deleted(message.room)
            return
        buffer = self._buffers.get(message.room)
        if buffer is not None:
            buffer.append(message)
            return
        room = self.rooms.get(message.room)
        if room is not None:
            self._dispatch(room, message)

    def _dispatch(self, room: Room, message: BusMessage) -> None:
        try:
            if message.kind is Kind.UPDATE:
                room.apply_update(message.payload, message.author.origin(message.node), uid=message.uid)
            elif message.kind is Kind.MISSING:
                room.apply_update(message.payload, PeerOrigin(message.node))
                self._note_answer(room.name, message.node)
            elif message.kind is Kind.AWARENESS:
                room.presence.receive_remote(message.node, message.payload)
            elif message.kind in (Kind.STATE_VECTOR, Kind.STATE_VECTOR_REPLY_WANTED):
                self._answer_state_vector(room, message)
        except ProtocolError as exc:
            self._drop("refused")
            log.error(
                "bad message from a peer node",
                extra={"room": room.name, "node": message.node, "kind": message.kind.name, "error": exc.reason},
            )

    def _answer_state_vector(self, room: Room, message: BusMessage) -> None:
        try:
            missing = room.doc.get_update(message.payload)
        except ValueError as exc:
            raise ProtocolError(CloseCode.MALFORMED, f"invalid state vector: {exc}") from exc
        wants_reply = message.kind is Kind.STATE_VECTOR_REPLY_WANTED
        if missing != EMPTY_UPDATE or wants_reply:
            self.send(room.name, Kind.MISSING, missing, target=message.node)
        if wants_reply:
            self.send(room.name, Kind.STATE_VECTOR, room.doc.get_state(), target=message.node)
            presence = room.presence.local_states()
            if presence is not None:  # a node that just opened the room knows nobody's presence yet
                self.send(room.name, Kind.AWARENESS, presence, target=message.node)

    def _note_answer(self, name: str, node: str) -> None:
        answers = self._answers.get(name)
        if answers is not None:
            answers.add(node)
            self._answered[name].set()

    # -- healing ----------------------------------------------------------------------------------

    async def _on_reconnect(self) -> None:
        await self.broker.subscribe(keys.cluster_channel())
        for name, room in list(self.rooms.items()):
            if name not in self._buffers:
                await self._add_holder(name)
                self.send(name, Kind.STATE_VECTOR_REPLY_WANTED, room.doc.get_state())

    async def _anti_entropy(self) -> None:
        while True:
            await asyncio.sleep(self.anti_entropy)
            for name, room in list(self.rooms.items()):
                if name not in self._buffers:
                    self.send(name, Kind.STATE_VECTOR, room.doc.get_state())

    async def _heartbeats(self) -> None:
        data = wire.encode(BusMessage(Kind.HEARTBEAT, self.node_id, ""))
        while True:
            await self.broker.publish(keys.cluster_channel(), data)
            raise_if_cancelled()
            now = time.monotonic()
            for node, seen in list(self.peers.items()):
                if now - seen > self.dead_after:
                    log.warning("node presumed dead", extra={"node": node, "silent_for": round(now - seen, 1)})
                    self._node_gone(node)
            await asyncio.sleep(self.heartbeat)

    def _node_gone(self, node: str) -> None:
        self.peers.pop(node, None)
        for room in list(self.rooms.values()):
            room.presence.remove_node(node)


def author_of(room: Room) -> Author:
    """The author of the update ``room`` is integrating now; a client's name, color and (live) role
    come from its member."""
    origin = room.current_origin
    if isinstance(origin, ClientOrigin):
        member = room.members.get(origin.connection_id)
        if member is not None and member.principal is not None:
            principal = member.principal
            return Author.of(origin, principal.name, principal.color, member.role.value)
    return Author.of(origin)
