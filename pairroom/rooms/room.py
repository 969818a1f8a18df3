"""A room owns one shared document, its awareness and its members; transports call into it.

``Room.receive`` is synchronous on purpose: applying an update and queueing it for the other members
needs no I/O, so a frame is fully handled before the next one is read and the order of updates is the
order they arrived in. Durable writes happen later, in batches (see ``flush``).

What gets broadcast and logged is what the document actually integrated (pycrdt's transaction
update), not the client's raw bytes: a duplicate update (a reconnecting client re-sending what the
room already has) changes nothing and so is neither broadcast nor logged, and an update waiting for a
missing dependency goes out together with it once that arrives.

Broadcasts are batched per room: updates integrated within ``broadcast_window`` of the last send are
merged and encoded once, and every member gets the same bytes (see ``_queue_broadcast``).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pycrdt import Doc, Map, TransactionEvent, merge_updates

from pairroom.protocol import sync as protocol
from pairroom.protocol.origins import LocalOrigin, Origin, PeerOrigin
from pairroom.protocol.sync import CloseCode, Message, MessageType, ProtocolError, SyncStep
from pairroom.rooms.member import Member, one_write_each
from pairroom.rooms.presence import Presence, PresenceLimits
from pairroom.storage.store import LoadedRoom, NewUpdate, Store, StoreError, clip_label

from .dependencies import HeldUpdates
from .doc import RoomDoc
from .extension import Change, ExtensionRunner
from .guards import DocumentGuards
from .identity import Principal, Role, earlier_room
from .persistence import write_pending

log = logging.getLogger("pairroom.room")

# How long the whole document's sync step 2 is kept after an encode for the next joiners (a join
# wave: a class opening a large notebook at once), unless the document changes before.
JOIN_WAVE_SECONDS = 2.0
# Below this size an encode is cheaper than keeping it around.
JOIN_CACHE_MIN_BYTES = 16 * 1024

# The least time between two sends of a busy room, per member: 1 ms for a room of 50, the whole
# window from 500. A send writes one frame per member, about 15 us of CPU each, so a busy room's
# sends take at most ~75 % of a core. Five times this (0.1 ms) held the edits of a 50-member room
# at 20 edits/s per writer 2.8-3.5 ms at the median (Hocuspocus, which never waits: 0.8-1.0 ms), and
# saved no CPU measurably at 160 edits/s per writer, whose edits still arrive within 1 ms.
SEND_SPACING_PER_MEMBER = 0.00002


class RoomState(enum.Enum):
    LOADING = "loading"
    ACTIVE = "active"
    UNLOADING = "unloading"
    CLOSED = "closed"


_CLOSED = RoomState.CLOSED  # read per broadcast; an enum class lookup is slow on Python 3.11

_TRANSITIONS = {
    RoomState.LOADING: {RoomState.ACTIVE, RoomState.CLOSED},
    RoomState.ACTIVE: {RoomState.UNLOADING, RoomState.CLOSED},
    RoomState.UNLOADING: {RoomState.ACTIVE, RoomState.CLOSED},
    RoomState.CLOSED: set(),
}


@dataclass(frozen=True, slots=True)
class _Txn:
    """Who the transaction being integrated comes from: set for its length by ``_integrating``."""

    origin: Origin
    exclude: Member | None  # the member it came from, not echoed to
    logged: bool  # logged by the caller under the uid its first node gave it (a peer's update)
    author: Principal | None


_LOADING = _Txn(LocalOrigin("load"), None, True, None)
_SERVER = _Txn(LocalOrigin("server"), None, False, None)


class RoomListener:
    """Hooks a room calls synchronously; the registry and metrics implement them."""

    def on_dirty(self, room: Room) -> None:
        """The room has updates waiting to be flushed."""

    def on_update(self, room: Room, origin: Origin, size: int) -> None:
        """The document integrated an update of ``size`` bytes."""

    def on_update_dropped(self, room: Room, member: Member) -> None:
        """A member without write permission sent an update; it was dropped."""

    def on_write_reverted(self, room: Room, member: Member, root: str, key: str | None) -> None:
        """The guards reverted a member's write to ``root`` (``key``) that its row does not allow."""

    def on_local_update(self, room: Room, uid: str, update: bytes) -> None:
        """An update that did not come from a peer node was integrated (the cluster relays it)."""

    def new_uid(self) -> str:
        """A uid for an update this node integrated first (unique across nodes)."""
        raise NotImplementedError


class Room:
    def __init__(
        self,
        name: str,
        store: Store,
        *,
        listener: RoomListener,
        awareness_tick: float = 0.05,
        presence_limits: PresenceLimits | None = None,
        broadcast_window: float = 0.0,
        stamp_identity: bool = True,
        extensions: ExtensionRunner | None = None,
    ) -> None:
        self.name = name
        self.store = store
        self.listener = listener
        self.doc = RoomDoc()
        self.members: dict[str, Member] = {}
        self.presence = Presence(
            self.doc, self.members, tick=awareness_tick, stamp_identity=stamp_identity, limits=presence_limits
        )
        self.awareness = self.presence.awareness
        self.roles: dict[str, Role] = {}  # live role changes by owners: user id -> role
        self.extensions = extensions or ExtensionRunner(())
        self.state = RoomState.LOADING
        self.integrated = 0  # updates that changed the document since it was loaded
        self.stored_seq = 0  # the log's last seq, as of this node's last flush or load
        self.snapshot_seq = 0
        self.pending: list[NewUpdate] = []
        self._outbox = []  # integrated, not yet sent; see _queue_broadcast
        self.broadcast_window = broadcast_window
        self._outbox_sent_at = -broadcast_window  # loop time of the last send_outbox
        self.flush_lock = asyncio.Lock()
        self.idle_since: float | None = None
        self.holders = 0  # server-side users (API calls, kernels) keeping the room loaded
        self._txn = _SERVER
        self._subscription = self.doc.observe(self._on_transaction)
        self.guards = DocumentGuards(self, self.extensions.document_rows)
        self.held = HeldUpdates()  # client updates waiting for changes the room does not have
        self._full_sync: bytes | None = None  # sync step 2 of the whole document; see full_sync
        self._full_sync_drop: asyncio.TimerHandle | None = None
        self.full_encodes = 0  # encodes of the whole document for joiners (a test and /metrics count them)
        if self.extensions.has("on_awareness"):
            self.presence.on_member_states = self._awareness_changed
        self.presence.defer_flush = self._outbox_waiting

    def _awareness_changed(self, member: Member, states: dict[int, object]) -> None:
        self.extensions.notify("on_awareness", self, member, states)

    @property
    def current_origin(self) -> Origin:
        """The origin of the transaction being integrated right now."""
        return self._txn.origin

    @contextlib.contextmanager
    def _integrating(self, txn: _Txn) -> Iterator[None]:
        """The context of one transaction: who it comes from travels with it to the observers."""
        previous, self._txn = self._txn, txn
        try:
            yield
        finally:
            self._txn = previous

    def __repr__(self) -> str:
        return f"Room({self.name!r}, {self.state.value}, {len(self.members)} members)"

    def transition(self, new: RoomState) -> None:
        if new not in _TRANSITIONS[self.state]:
            raise RuntimeError(f"room {self.name!r}: cannot go from {self.state.value} to {new.value}")
        self.state = new
        if new is RoomState.CLOSED:
            # The observer callback lives on the Rust side, where Python's cycle collector cannot
            # see it: without this the doc, the room and everything they hold would never be freed.
            self.doc.unobserve(self._subscription)
            self.guards.close()
            self.doc.forget_roots()
            self._drop_full_sync()

    # -- loading and flushing -------------------------------------------------------------------

    async def load(self) -> None:
        """Rebuild the document from storage (the registry then makes it ACTIVE). Raises StoreError."""
        loaded: LoadedRoom = await self.store.load(self.name)
        try:
            with self._integrating(_LOADING), self.doc.transaction():
                if loaded.snapshot is not None:
                    self.doc.apply_update(loaded.snapshot.data)
                for stored in loaded.updates:
                    self.doc.apply_update(stored.data)
        except ValueError as exc:
            raise StoreError(f"room {self.name!r}: stored state does not decode: {exc}") from exc
        self.pending.clear()  # loading re-integrates what is stored; none of it is new
        self.roles = self.guards.load_roles()
        self.stored_seq = loaded.last_seq
        self.snapshot_seq = loaded.snapshot.seq if loaded.snapshot else 0

    async def flush(self) -> int:
        """Write pending updates in one batch. Returns how many were written.

        On failure the batch goes back to the front of the queue and StoreError propagates; the
        document stays in memory, so nothing is lost while storage is down.
        """
        # At least once, even with nothing pending: the flusher may have taken the last batch and be
        # writing it, and write_pending waits for that write (the room's flush lock), so what the
        # caller then reads from the store holds every update made before this call.
        written = await write_pending(self.store, [self])
        while self.pending:  # what arrives during a write goes in the next one
            written += await write_pending(self.store, [self])
        return written

    # -- membership -----------------------------------------------------------------------------

    def join(self, member: Member) -> None:
        """Add a member and greet it: sync step 1 and the current awareness states."""
        if self.state is not RoomState.ACTIVE:
            raise RuntimeError(f"room {self.name!r} is {self.state.value}, cannot join")
        if member.principal is not None:
            member.role = self.role_of(member.principal)
        self.members[member.id] = member
        self.idle_since = None
        member.send(protocol.sync_step1(self.doc.get_state()))
        self.presence.greet(member)
        self.extensions.notify("on_join", self, member)

    def leave(self, member: Member, now: float) -> bool:
        """Remove a member; the awareness states it controlled are removed for everyone.

        Returns False if it was not a member (leaving twice is harmless)."""
        if self.members.pop(member.id, None) is None:
            return False
        self.presence.remove_member(member)
        self.guards.client_left(member)
        self.held.forget(member.id)
        if not self.members:
            self.idle_since = now
        self.extensions.notify("on_leave", self, member)
        return True

    # -- the message path -----------------------------------------------------------------------

    def receive(self, member: Member, frame: bytes) -> None:
        """Handle one binary frame from ``member``. Raises ProtocolError for bad input."""
        message = protocol.decode_message(frame)
        if message.type is MessageType.SYNC:
            self._receive_sync(member, message)
        elif message.type is MessageType.AWARENESS:
            self.presence.receive(member, message.payload)
        else:  # QUERY_AWARENESS
            self.presence.greet(member, even_if_empty=True)

    def _receive_sync(self, member: Member, message: Message) -> None:
        if message.step is SyncStep.STEP1:
            if message.payload == protocol.EMPTY_STATE_VECTOR:  # a new client: it needs everything
                member.send(self.full_sync())
                return
            try:
                missing = self.doc.get_update(message.payload)
            except ValueError as exc:
                raise ProtocolError(CloseCode.MALFORMED, f"invalid state vector: {exc}") from exc
            member.send(protocol.sync_step2(missing))
            return
        if not member.role.writes_document and not (
            message.payload == protocol.EMPTY_UPDATE or self.extensions.allows_write(self, member, message.payload)
        ):
            # Dropped without closing: every client answers the server's step 1 with a step 2 on
            # each connect, and a close would make a viewer's client reconnect forever.
            self.listener.on_update_dropped(self, member)
            return
        self.held.admit(member.id, message.payload, self.doc.get_state())  # bounds missing dependencies
        self.guards.before_client_update(member, message.payload)  # raises ProtocolError to refuse
        try:
            self.apply_update(message.payload, member.origin, exclude=member)
        except ProtocolError:
            raise  # refused by the CRDT: nothing was integrated
        except BaseException:
            # Integrated, but an observer failed on it (pycrdt cannot even build the events of a
            # 3,000-deep value): the guards cannot know what it touched, so they check everything.
            self.guards.after_client_update(member, lost=True)
            raise
        self.guards.after_client_update(member)
        if self.extensions.has("after_client_change"):
            change = Change(self, message.payload, member.origin, member.principal)
            self.extensions.notify("after_client_change", change)

    def apply_update(
        self, update: bytes, origin: Origin, exclude: Member | None = None, uid: str | None = None
    ) -> None:
        """Integrate an update; what it changed is broadcast (not to ``exclude``) and logged.

        A peer node's update comes with the uid its first node gave it and is logged as received,
        whether or not it changes this copy (see ``storage/store.py`` on several writers)."""
        if update == protocol.EMPTY_UPDATE:
            return
        if uid is not None:
            self._log(uid, origin, update)
        author = exclude.principal if exclude is not None else peer_author(origin, self.name)
        # the transaction's context, set for its length (as _integrating does, without a generator:
        # this is every update's path)
        previous, self._txn = self._txn, _Txn(origin, exclude, uid is not None, author)
        try:
            self.doc.apply_update(update)
        except ValueError as exc:
            raise ProtocolError(CloseCode.UPDATE_REJECTED, f"update rejected: {exc}") from exc
        except BaseException as exc:  # a panic inside the CRDT library is a BaseException
            if type(exc).__name__ != "PanicException":
                raise
            raise ProtocolError(CloseCode.UPDATE_REJECTED, "update rejected: CRDT panic") from exc
        finally:
            self._txn = previous

    _outbox: list[tuple[bytes, Member | None]]

    def full_sync(self) -> bytes:
        """Sync step 2 of the whole document, for a client that has nothing.

        Encoded once per join wave: the frame is kept until the document changes (any transaction
        drops it; a state vector would not do as the key, deletions leave it as it was) or for
        ``JOIN_WAVE_SECONDS``, so a class joining a 10 MiB room at once costs one encode, and every
        joiner's queue holds the same bytes object instead of a copy each."""
        frame = self._full_sync
        if frame is not None:
            return frame
        frame = protocol.sync_step2(self.doc.get_update())
        self.full_encodes += 1
        if len(frame) < JOIN_CACHE_MIN_BYTES:
            return frame
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a synchronous caller: nothing would drop it
            return frame
        self._full_sync = frame
        self._full_sync_drop = loop.call_later(JOIN_WAVE_SECONDS, self._drop_full_sync)
        return frame

    def _drop_full_sync(self) -> None:
        self._full_sync = None
        if self._full_sync_drop is not None:
            self._full_sync_drop.cancel()
            self._full_sync_drop = None

    @contextlib.contextmanager
    def local_change(self, origin: Origin) -> Iterator[Doc[Any]]:
        """Change the document from the server side (kernels, restores, imports) in one transaction.

        What changes is broadcast to every member and logged with ``origin``, like a client's edit::

            with room.local_change(KernelOrigin(run_id)) as doc:
                doc.get("runs", type=Map)[run_id] = Map({...})
        """
        if self.state is not RoomState.ACTIVE:
            raise RuntimeError(f"room {self.name!r} is {self.state.value}")
        with self._integrating(_Txn(origin, None, False, None)), self.doc.transaction():
            yield self.doc

    def _on_transaction(self, event: TransactionEvent) -> None:
        if self._full_sync is not None:
            self._drop_full_sync()
        update = event.update
        txn = self._txn
        if txn is _LOADING:
            return
        origin = txn.origin
        self._queue_broadcast(update, txn.exclude)
        self.integrated += 1
        if self.extensions.has("on_change"):
            self.extensions.notify("on_change", Change(self, update, origin, txn.author))
        self.listener.on_update(self, origin, len(update))
        if txn.logged:
            return  # a peer's update, logged by apply_update under the uid its first node gave it
        uid = self.listener.new_uid()
        self._log(uid, origin, update)
        if not isinstance(origin, PeerOrigin):
            self.listener.on_local_update(self, uid, update)

    def _log(self, uid: str, origin: Origin, update: bytes) -> None:
        self.pending.append(NewUpdate(uid, datetime.now(UTC), clip_label(origin.label()), update))
        self.listener.on_dirty(self)

    def _queue_broadcast(self, update: bytes, exclude: Member | None) -> None:
        """Hold an integrated update and send what gathered in one go (``send_outbox``).

        A quiet room sends at the end of the current loop pass. In a busy one, where the last send
        was less than ``spacing`` ago, the update waits until that much time has passed: each
        member then gets one merged message for all the edits of the wait instead of one per edit,
        so the cost of a room stays flat as its edit rate climbs. The spacing grows with the
        number of members (what a send costs), up to ``broadcast_window``: a pair never waits more
        than a fraction of a millisecond, a room of 50 a millisecond, one of 500 or more at most the
        whole window.
        """
        self._outbox.append((update, exclude))
        if len(self._outbox) > 1:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a synchronous caller (a script, a unit test): send at once
            self.send_outbox()
            return
        spacing = min(self.broadcast_window, SEND_SPACING_PER_MEMBER * len(self.members))
        wait = self._outbox_sent_at + spacing - loop.time()
        if wait > 0:
            loop.call_later(wait, self.send_outbox)
        else:
            loop.call_soon(self.send_outbox)

    def _outbox_waiting(self) -> bool:
        """Whether updates wait for a send pass (scheduled, at most ``broadcast_window`` away)."""
        return bool(self._outbox)

    def send_outbox(self) -> None:
        """Send the held updates: one merged update, encoded once, to every member; a member whose
        own edits are among them gets the merge of the others' instead (clients are never echoed).
        Presence that waited for this pass goes with it, in the same socket write per member."""
        if not self.presence.deferred:
            self._send_updates()
            return
        with one_write_each():
            try:
                self._send_updates()
            finally:  # the promised flush, whatever happened to the updates
                self.presence.flush()

    def _send_updates(self) -> None:
        outbox, self._outbox = self._outbox, []
        with contextlib.suppress(RuntimeError):  # no running loop: a synchronous caller
            self._outbox_sent_at = asyncio.get_running_loop().time()
        if not outbox or not self.members or self.state is _CLOSED:
            return
        if len(outbox) == 1:
            update, exclude = outbox[0]
            self.broadcast(protocol.sync_update(update), exclude, update)
            return
        merged = merge_updates(*(update for update, _ in outbox))
        frame = protocol.sync_update(merged)
        authors = {exclude.id: exclude for _, exclude in outbox if exclude is not None}
        if not authors:
            self.broadcast(frame, None, merged)
            return
        for member in list(self.members.values()):
            author = authors.get(member.id)
            if author is None:
                member.send(frame, merged)
                continue
            others = [update for update, exclude in outbox if exclude is not author]
            if len(others) == 1:
                member.send(protocol.sync_update(others[0]), others[0])
            elif others:
                own_excluded = merge_updates(*others)
                member.send(protocol.sync_update(own_excluded), own_excluded)

    def broadcast(self, frame: bytes, exclude: Member | None, update: bytes | None = None) -> None:
        """Queue the same bytes for every member but ``exclude``. Never blocks; slow members are
        kicked by their own queue limit, not waited for."""
        for member in list(self.members.values()):
            if member is not exclude:
                member.send(frame, update)

    def stale_token(self, principal: Principal) -> str | None:
        """Why ``principal``'s token is for an earlier room of this name (deleted, then created again),
        or None: ``identity.earlier_room`` against this room's ``meta.epoch``."""
        meta = self.doc.get("meta", type=Map)
        return earlier_room(principal, meta.get("epoch"), meta.get("createdAt"))

    def role_of(self, principal: Principal) -> Role:
        """The live role of ``principal`` here: an owner's change (``meta.roles``, held in ``roles``)
        over the token's role. Every permission decision, websocket or HTTP, asks this."""
        return self.roles.get(principal.user_id, principal.role)

    def set_role(self, user_id: str, role: Role) -> None:
        """An owner changed a member's role: live, without a reconnect, visible in ``meta.roles``."""
        self.roles[user_id] = role
        with self.local_change(LocalOrigin("roles")):
            roles = self.guards.meta.get("roles")
            if isinstance(roles, Map):
                roles[user_id] = role.value
            else:
                self.guards.meta["roles"] = Map({uid: r.value for uid, r in self.roles.items()})
        for member in list(self.members.values()):
            if member.principal is not None and member.principal.user_id == user_id:
                member.role = role
                self.presence.restamp(member)


def peer_author(origin: Origin, room: str) -> Principal | None:
    """The person behind a peer node's client update, as that node knew them (the bus carries it)."""
    if not isinstance(origin, PeerOrigin) or origin.kind != "client" or not origin.user_id:
        return None
    try:
        role = Role(origin.user_role)
    except ValueError:  # a node of the previous codec version, or a role this node does not know
        return None
    return Principal(origin.user_id, origin.user_name, origin.user_color, role, room)
