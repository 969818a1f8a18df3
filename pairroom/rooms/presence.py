"""A room's presence (Yjs awareness): who controls which client ids, identity stamped by the server,
who sees whom, and a relay throttled per room so presence does not grow as members squared.

- A connection controls the awareness client ids it announced first; entries for ids another live
  connection controls are dropped, so nobody can move someone else's cursor.
- With authenticated members the server overwrites each state's ``user`` field with the identity from
  the member's token (id, name, role), so nobody can appear as someone else. A token minted for a role
  without a name keeps the name the person typed (the page asks for it).
- In every mode the server gives each member a colour (``user.color`` and ``user.colorLight``, the
  colour at 20% for selections): the first free one of ``identity.PALETTE`` from a start that the
  user id fixes, so no two members present share one while there are colours left, and a person
  tends to get the same colour each time. A member keeps its colour until it leaves. The member
  learns it from its own state sent back stamped at a newer clock (its awareness then takes it as its
  local state; a viewer gets its own back directly, as the relay sends viewers only participants); a change it sent before that arrived (same clock, other content) is kept and sent
  back the same way, so neither side drops it. Across nodes
  each node picks among the colours it sees (its own members' and the states relayed from the
  others), so two members joining two nodes in the same instant may get one colour.
- Viewers' presence goes only to participants (owners, editors, reviewers). Viewers see the
  participants and a summary the server publishes under its own client id:
  ``{"pairroom": {"viewers": n, "hands": [{"id", "name"}]}}``. With 1 mentor and 200 viewers that
  turns 200 x 200 relayed renewals into 200 x (a few).
- Presence is bounded (``PresenceLimits``): client ids per message and per connection, the size of
  one state, and the bytes of states a connection hands to observers (the recording) per second. A
  message past the first three closes the connection with 4413; states past the observer budget are
  still relayed, only not recorded.
- Changes are relayed at once when the room has been quiet for a tick, else gathered and sent as one
  message per audience at the end of the tick (leading and trailing edge), so a burst of cursor moves
  costs one message per member per tick and an isolated move costs no added latency. An isolated
  move that comes right behind an edit still waiting to go out (the editor sends the edit, then the
  cursor it moved) waits for it instead (``defer_flush``): the room sends both in one pass, one
  socket write per member, and the cursor never arrives before the text it points into.
- A renewal (a client re-sending the state it already shows, at a newer clock, every 15 s so others
  do not time it out after 30 s) changes nothing anyone sees: renewals are gathered for
  ``renew_tick`` (5 s) and relayed as one message per audience, so N members renewing cost each
  member one message per 5 s instead of N / 15 a second (the N x N path of a large room). A state
  then reaches the others at most 15 + 5 s apart, inside their 30 s timeout.
- Across nodes the same holds: a node publishes its members' renewals gathered over
  ``publish_renew_tick`` (1 s) as one bus message, and a node receiving a peer's renewals (a state it
  already shows, at a newer clock) gathers them with its own for the next ``renew_tick``. A renewal
  then reaches a member on another node at most 15 + 1 + 5 s apart, still inside the 30 s.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pycrdt import Awareness, Doc

from pairroom.protocol import sync as protocol
from pairroom.protocol.sync import AwarenessEntry, CloseCode, ProtocolError
from pairroom.rooms.identity import Role, pick_color
from pairroom.rooms.member import Member

NULL = "null"
# The roles that see only the participants' presence. ``member.role.participates`` costs an enum
# class lookup (slow on 3.11) per call; the relay asks it for every member of every flush.
_VIEWER_ROLES = tuple(role for role in Role if not role.participates)


@dataclass(frozen=True, slots=True)
class PresenceLimits:
    """Caps on what one connection may put into a room's presence (docs/security.md).

    A browser tab has one awareness client id and a state of a few hundred bytes (user, cursor,
    selection, file); the caps leave room for several editors in one tab and long selections."""

    entries_per_message: int = 16
    clients_per_connection: int = 8
    state_bytes: int = 16 * 1024
    recorded_bytes_per_second: float = 32 * 1024  # states handed to observers, per connection
    recorded_burst_bytes: int = 128 * 1024


class ByteBudget:
    """A token bucket of bytes: ``take(n)`` is False when ``n`` bytes are not available now."""

    __slots__ = ("rate", "burst", "tokens", "at")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = float(burst)
        self.at = time.monotonic()

    def take(self, amount: int) -> bool:
        now = time.monotonic()
        self.tokens = min(float(self.burst), self.tokens + (now - self.at) * self.rate)
        self.at = now
        if amount > self.tokens:
            return False
        self.tokens -= amount
        return True


class Presence:
    def __init__(
        self,
        doc: Doc[Any],
        members: dict[str, Member],
        *,
        tick: float = 0.02,
        renew_tick: float = 5.0,
        publish_renew_tick: float = 1.0,
        stamp_identity: bool = True,
        limits: PresenceLimits | None = None,
    ) -> None:
        self.limits = limits or PresenceLimits()
        self.awareness = Awareness(doc)
        self.awareness.set_local_state(None)  # no summary until there is a viewer
        self.members = members
        self.tick = tick
        self.renew_tick = renew_tick
        self.publish_renew_tick = publish_renew_tick
        self.stamp_identity = stamp_identity
        self.owner: dict[int, Member] = {}  # awareness client id -> the connection controlling it
        self.remote_owner: dict[int, str] = {}  # awareness client id -> the node its connection is on
        self.on_publish: Callable[[bytes], None] | None = None  # local changes, for other nodes
        self.on_member_states: Callable[[Member, dict[int, Any]], None] | None = None  # for observers
        self._pending: dict[int, bool] = {}  # client id -> changed by a viewer
        self._renewed: dict[int, bool] = {}  # client id -> by a viewer: renewed, unchanged (relayed slowly)
        self._shown: dict[int, str] = {}  # client id -> its stamped state as last applied (JSON)
        self._renew_timer: asyncio.TimerHandle | None = None
        self._renewed_out: set[int] = set()  # this node's members' renewals not yet published
        self._publish_timer: asyncio.TimerHandle | None = None
        self._last_flush = 0.0
        self._timer: asyncio.TimerHandle | None = None
        # Asked before an at-once flush: True when the room will flush with its own send pass, soon.
        self.defer_flush: Callable[[], bool] | None = None
        self.deferred = False  # a flush is promised by the room's next send pass
        self._summary: dict[str, Any] | None = None
        self._recorded: dict[str, ByteBudget] = {}  # member id -> what it may still hand to observers
        self.colors: dict[str, str] = {}  # member id -> its colour, distinct among the members present
        self._echoed: set[int] = set()  # client ids whose stamped state went back at a newer clock

    # -- states -----------------------------------------------------------------------------------

    def visible_to(self, viewer: Member) -> list[int]:
        """Client ids whose states ``viewer`` may see."""
        if viewer.role.participates:
            return list(self.awareness.states)
        return [cid for cid in self.awareness.states if self._from_participant(cid)]

    def _from_participant(self, client_id: int) -> bool:
        member = self.owner.get(client_id)
        if member is not None:
            return member.role.participates
        if client_id in self.remote_owner:
            state = self.awareness.states.get(client_id) or {}
            user = user_fields(state)
            return user.get("role") != "viewer"
        return True  # the server's own summary

    def greet(self, member: Member, *, even_if_empty: bool = False) -> None:
        """Send a member the states it may see: on join, and as the answer to a query."""
        ids = self.visible_to(member)
        if ids:
            member.send(protocol.awareness_message(self.awareness.encode_awareness_update(ids)))
        elif even_if_empty:
            member.send(protocol.KEEPALIVE)  # an awareness update with no states

    def receive(self, member: Member, payload: bytes) -> None:
        """An awareness update from ``member``: validate, stamp, store, and schedule its relay.
        Raises ProtocolError (PRESENCE_LIMIT) past a cap, before anything is applied."""
        limits = self.limits
        entries = protocol.decode_awareness(
            payload, max_entries=limits.entries_per_message, max_state_bytes=limits.state_bytes
        )
        claimed = {e.client_id for e in entries if e.state != NULL} - member.awareness_clients
        if claimed and len(member.awareness_clients) + len(claimed) > limits.clients_per_connection:
            raise ProtocolError(
                CloseCode.PRESENCE_LIMIT,
                f"a connection may show at most {limits.clients_per_connection} awareness client ids",
            )
        accepted: list[AwarenessEntry] = []
        bumped: list[AwarenessEntry] = []  # sent back at a newer clock: the member learns its colour
        renewals: set[int] = set()
        shown = self._shown
        for entry in entries:
            if entry.client_id == self.awareness.client_id:
                continue  # the server's own summary, sent back (y-websocket relays every state it gets)
            owner = self.owner.get(entry.client_id)
            if owner is not None and owner is not member and owner.id in self.members:
                continue  # another live connection controls this client id
            if entry.state == NULL:
                self._echoed.discard(entry.client_id)
                member.awareness_clients.discard(entry.client_id)
                self.owner.pop(entry.client_id, None)
                shown.pop(entry.client_id, None)
                accepted.append(entry)
                continue
            member.awareness_clients.add(entry.client_id)
            self.owner[entry.client_id] = member
            stamped, news = self._stamped(member, entry)
            cid = entry.client_id
            current = self.awareness.meta.get(cid, {}).get("clock", -1)
            if entry.clock > current:
                if news:
                    # The client does not know its colour yet: a newer clock makes its awareness take
                    # the stamped state as its own local state.
                    stamped = AwarenessEntry(cid, entry.clock + 1, stamped.state)
                    self._echoed.add(cid)
                    bumped.append(stamped)
                else:
                    self._echoed.discard(cid)  # it has caught up
            elif cid in self._echoed and json.loads(stamped.state) != self.awareness.states.get(cid):
                # A change the client made before our newer clock reached it (same clock, other
                # content; y-websocket relaying our state back has the same content and is ignored):
                # keep it, at a newer clock again, so neither side loses it.
                stamped = AwarenessEntry(cid, current + 1, stamped.state)
                bumped.append(stamped)
            if stamped.clock > current:
                if shown.get(cid) == stamped.state:
                    renewals.add(cid)  # the same state at a newer clock: nothing anyone sees changes
                else:
                    shown[cid] = stamped.state
            accepted.append(stamped)
        if not accepted:
            return
        payload = protocol.encode_awareness(accepted)
        self._apply(payload, accepted, member.id, by_viewer=lambda _: not member.role.participates, renewals=renewals)
        if bumped and not member.role.participates:
            # The relay sends viewers only the participants' states: a viewer's own stamped state
            # goes back to it here, or its page would keep a colour of its own that nobody else sees.
            member.send(protocol.awareness_message(protocol.encode_awareness(bumped)))
        if self.on_publish is not None:
            if len(renewals) == len(accepted):  # only renewals: other nodes get them gathered
                self._renewed_out.update(renewals)
                if self._publish_timer is None:
                    self._publish_timer = asyncio.get_running_loop().call_later(
                        self.publish_renew_tick, self.publish_renewals
                    )
            else:
                self._renewed_out.difference_update(e.client_id for e in accepted)
                self.on_publish(payload)
        if self.on_member_states is not None and len(renewals) < len(accepted):
            # a renewal shows nothing new: observers (the recording) keep the state they have
            changes = [e for e in accepted if e.client_id not in renewals] if renewals else accepted
            states = self._recordable(member, changes)
            if states:
                self.on_member_states(member, states)

    def _recordable(self, member: Member, accepted: list[AwarenessEntry]) -> dict[int, Any]:
        """The accepted states observers get, within the member's byte budget (removals are free)."""
        budget = self._recorded.get(member.id)
        if budget is None:
            budget = self._recorded[member.id] = ByteBudget(
                self.limits.recorded_bytes_per_second, self.limits.recorded_burst_bytes
            )
        states: dict[int, Any] = {}
        for entry in accepted:
            if entry.state == NULL or budget.take(len(entry.state)):
                states[entry.client_id] = self.awareness.states.get(entry.client_id)
        return states

    def receive_remote(self, node: str, payload: bytes) -> None:
        """Awareness entries of another node's members (already stamped there)."""
        entries = protocol.decode_awareness(payload)
        renewals: set[int] = set()
        meta, shown = self.awareness.meta, self._shown
        for entry in entries:
            cid = entry.client_id
            if cid in self.owner:
                continue  # a local connection controls it; a stale remote copy cannot override
            if entry.state == NULL:
                self.remote_owner.pop(cid, None)
                shown.pop(cid, None)
                continue
            self.remote_owner[cid] = node
            if entry.clock > meta.get(cid, {}).get("clock", 0):
                if shown.get(cid) == entry.state:
                    renewals.add(cid)  # what everyone here shows already: relayed gathered
                else:
                    shown[cid] = entry.state
        self._apply(
            payload, entries, f"peer:{node}", by_viewer=lambda cid: not self._from_participant(cid), renewals=renewals
        )

    def _apply(
        self,
        payload: bytes,
        entries: list[AwarenessEntry],
        origin: str,
        by_viewer: Callable[[int], bool],
        renewals: set[int] | None = None,
    ) -> None:
        self.awareness.apply_awareness_update(payload, origin)
        meta = self.awareness.meta
        changed = renewed = False
        for entry in entries:
            # Awareness ignores an entry whose clock is not newer (as y-protocols does, including a
            # new client's clock 0); only what it took is relayed.
            cid = entry.client_id
            if meta.get(cid, {}).get("clock") == entry.clock:
                if renewals and cid in renewals and cid not in self._pending:
                    self._renewed[cid] = by_viewer(cid)
                    renewed = True
                else:
                    self._pending[cid] = by_viewer(cid)
                    self._renewed.pop(cid, None)  # the fast relay carries the newest clock
                    changed = True
        if changed:
            self._schedule()
        if renewed and self._renew_timer is None:
            self._renew_timer = asyncio.get_running_loop().call_later(self.renew_tick, self.flush_renewals)

    def local_states(self) -> bytes | None:
        """The awareness states of this node's members, as one update (for other nodes)."""
        ids = [cid for cid in self.owner if cid in self.awareness.states]
        return self.awareness.encode_awareness_update(ids) if ids else None

    def remove_node(self, node: str) -> None:
        """A node died: the states of its members are removed for everyone here."""
        gone = [cid for cid, owner in self.remote_owner.items() if owner == node]
        for cid in gone:
            del self.remote_owner[cid]
            self._shown.pop(cid, None)
        self._remove(gone, f"peer:{node}", by_viewer=False)

    def color_of(self, member: Member) -> str:
        """The member's colour, picked when first asked among the colours of the others present."""
        color = self.colors.get(member.id)
        if color is None:
            taken = set(self.colors.values())
            for cid in self.remote_owner:
                user = (self.awareness.states.get(cid) or {}).get("user")
                if isinstance(user, dict) and isinstance(user.get("color"), str):
                    taken.add(user["color"])
            user_id = member.principal.user_id if member.principal is not None else member.id
            color = self.colors[member.id] = pick_color(user_id, taken)
        return color

    def _stamped(self, member: Member, entry: AwarenessEntry) -> tuple[AwarenessEntry, bool]:
        """The entry with the server's identity and colour, and whether the colour is news to the client."""
        stamp_identity = self.stamp_identity and member.principal is not None and not member.principal.anonymous
        state = json.loads(entry.state)  # decode_awareness checked it is JSON
        if not isinstance(state, dict):
            if not stamp_identity:
                return entry, False
            state = {}
        elif not stamp_identity and not isinstance(state.get("user"), dict):
            return entry, False  # not a person (no user): nothing to colour
        user = user_fields(state)
        shown_color = user.get("color")  # before the identity's own colour field is merged in
        if stamp_identity:
            assert member.principal is not None
            identity = member.principal.identity(member.role)
            if member.principal.names_itself:  # a token without a name: the name the person typed
                typed = user.get("name")
                if isinstance(typed, str) and typed.strip():
                    identity["name"] = typed.strip()[:64]
            user = {**user, **identity}
        color = self.color_of(member)
        news = shown_color != color
        state["user"] = {**user, "color": color, "colorLight": color + "33"}
        return AwarenessEntry(entry.client_id, entry.clock, json.dumps(state, separators=(",", ":"))), news

    def remove_member(self, member: Member) -> None:
        """The member left: the states it controlled are removed for everyone."""
        self._recorded.pop(member.id, None)
        gone = [cid for cid in member.awareness_clients if self.owner.get(cid) is member]
        for cid in gone:
            del self.owner[cid]
            self._echoed.discard(cid)
            self._shown.pop(cid, None)
        self.colors.pop(member.id, None)
        payload = self._remove(gone, member.id, by_viewer=not member.role.participates)
        if payload is not None and self.on_publish is not None:
            self.on_publish(payload)

    def _remove(self, ids: list[int], origin: str, *, by_viewer: bool) -> bytes | None:
        gone = [cid for cid in ids if cid in self.awareness.states]
        if not gone:
            return None
        self.awareness.remove_awareness_states(gone, origin)
        for cid in gone:
            self._pending[cid] = by_viewer
        self._schedule()
        return self.awareness.encode_awareness_update(gone)

    def restamp(self, member: Member) -> None:
        """The member's role changed: its states carry the new identity, visibility follows."""
        for cid in member.awareness_clients:
            state = self.awareness.states.get(cid)
            if state is None:
                continue
            clock = self.awareness.meta[cid]["clock"] + 1
            entry, _ = self._stamped(member, AwarenessEntry(cid, clock, json.dumps(state)))
            payload = protocol.encode_awareness([entry])
            self.awareness.apply_awareness_update(payload, "server")
            self._shown[cid] = entry.state
            self._renewed.pop(cid, None)
            self._pending[cid] = False  # everyone should see the change of role
            if self.on_publish is not None:
                self.on_publish(payload)
        self._schedule()

    # -- relay ------------------------------------------------------------------------------------

    def _schedule(self) -> None:
        if self._timer is not None or self.deferred:
            return
        wait = self._last_flush + self.tick - time.monotonic()
        if wait <= 0:
            if self.defer_flush is not None and self.defer_flush():
                self.deferred = True
                return
            self.flush()
        else:
            self._timer = asyncio.get_running_loop().call_later(wait, self.flush)

    def flush(self) -> None:
        """Send what changed since the last flush: one message per audience."""
        self._timer = None
        self.deferred = False
        self._last_flush = time.monotonic()
        self._update_summary()
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        self._send(pending)

    def flush_renewals(self) -> None:
        """Relay the renewals gathered over the last ``renew_tick``: one message per audience."""
        self._renew_timer = None
        renewed, self._renewed = self._renewed, {}
        live = {cid: by_viewer for cid, by_viewer in renewed.items() if cid in self.awareness.states}
        if live:
            self._send(live)

    def publish_renewals(self) -> None:
        """Publish this node's members' renewals gathered over ``publish_renew_tick`` as one update
        (the states as they are now: a change published meanwhile carries the same clock)."""
        self._publish_timer = None
        renewed, self._renewed_out = self._renewed_out, set()
        ids = [cid for cid in renewed if cid in self.owner and cid in self.awareness.states]
        if ids and self.on_publish is not None:
            self.on_publish(self.awareness.encode_awareness_update(ids))

    def _send(self, pending: dict[int, bool]) -> None:
        everyone = [cid for cid, by_viewer in pending.items() if not by_viewer]
        all_ids = list(pending)
        to_participants = protocol.awareness_message(self.awareness.encode_awareness_update(all_ids))
        to_viewers = (
            to_participants
            if len(everyone) == len(all_ids)
            else protocol.awareness_message(self.awareness.encode_awareness_update(everyone))
            if everyone
            else None
        )
        for member in list(self.members.values()):
            if member.role not in _VIEWER_ROLES:
                member.send(to_participants)
            elif to_viewers is not None:
                member.send(to_viewers)

    def _update_summary(self) -> None:
        viewers = [m for m in self.members.values() if not m.role.participates]
        if not viewers and self._summary is None:
            return
        hands = []
        for member in viewers:
            for cid in member.awareness_clients:
                state = self.awareness.states.get(cid) or {}
                if state.get("hand"):
                    user = user_fields(state)
                    hands.append({"id": user.get("id"), "name": user.get("name")})
        summary = {"pairroom": {"viewers": len(viewers), "hands": hands}}
        if summary != self._summary:
            self._summary = summary
            self.awareness.set_local_state(summary)
            self._pending[self.awareness.client_id] = False

    def members_view(self) -> list[dict[str, Any]]:
        """Who is here with what they show: for the presence API."""
        out = []
        for cid, node in self.remote_owner.items():
            state = self.awareness.states.get(cid) or {}
            user = user_fields(state)
            out.append(
                {
                    **{k: user.get(k) for k in ("id", "name", "color", "role")},
                    "node": node,
                    "file": state.get("file"),
                    "following": state.get("following"),
                    "hand": bool(state.get("hand")),
                }
            )
        for member in self.members.values():
            states = [self.awareness.states.get(cid) or {} for cid in member.awareness_clients]
            state = next((s for s in states if s), {})
            user = member.principal.identity(member.role) if member.principal else {"id": member.id}
            shown = user_fields(state)
            if member.principal is not None and member.principal.names_itself and isinstance(shown.get("name"), str):
                user["name"] = shown["name"]
            if member.id in self.colors:
                user["color"] = self.colors[member.id]
            out.append(
                {
                    **user,
                    "connection": member.id,
                    "file": state.get("file"),
                    "following": state.get("following"),
                    "hand": bool(state.get("hand")),
                }
            )
        return out


def user_fields(state: Any) -> dict[str, Any]:
    """The ``user`` object of an awareness state, or an empty one (a state may hold anything)."""
    user = state.get("user") if isinstance(state, dict) else None
    return user if isinstance(user, dict) else {}
