"""A room's presence (Yjs awareness): who controls which client ids, identity stamped by the server,
who sees whom, and a relay throttled per room so presence does not grow as members squared.

- A connection controls the awareness client ids it announced first; entries for ids another live
  connection controls are dropped, so nobody can move someone else's cursor.
- With authenticated members the server overwrites each state's ``user`` field with the identity from
  the member's token (id, name, color, role), so nobody can appear as someone else.
- Viewers' presence goes only to participants (owners, editors, reviewers). Viewers see the
  participants and a summary the server publishes under its own client id:
  ``{"pairroom": {"viewers": n, "hands": [{"id", "name"}]}}``. With 1 mentor and 200 viewers that
  turns 200 x 200 relayed renewals into 200 x (a few).
- Changes are relayed at once when the room has been quiet for a tick, else gathered and sent as one
  message per audience at the end of the tick (leading and trailing edge), so a burst of cursor moves
  costs one message per member per tick and an isolated move costs no added latency.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Callable

from pycrdt import Awareness, Doc

from pairroom.protocol import sync as protocol
from pairroom.protocol.sync import AwarenessEntry
from pairroom.rooms.identity import Role
from pairroom.rooms.member import Member

NULL = "null"
# The roles that see only the participants' presence. ``member.role.participates`` costs an enum
# class lookup (slow on 3.11) per call; the relay asks it for every member of every flush.
_VIEWER_ROLES = tuple(role for role in Role if not role.participates)


class Presence:
    def __init__(
        self,
        doc: Doc,
        members: dict[str, Member],
        *,
        tick: float = 0.02,
        stamp_identity: bool = True,
    ) -> None:
        self.awareness = Awareness(doc)
        self.awareness.set_local_state(None)  # no summary until there is a viewer
        self.members = members
        self.tick = tick
        self.stamp_identity = stamp_identity
        self.owner: dict[int, Member] = {}  # awareness client id -> the connection controlling it
        self.remote_owner: dict[int, str] = {}  # awareness client id -> the node its connection is on
        self.on_publish: Callable[[bytes], None] | None = None  # local changes, for other nodes
        self.on_member_states: Callable[[Member, dict[int, Any]], None] | None = None  # for observers
        self._pending: dict[int, bool] = {}  # client id -> changed by a viewer
        self._last_flush = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._summary: dict[str, Any] | None = None

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
            user = state.get("user") if isinstance(state.get("user"), dict) else {}
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
        """An awareness update from ``member``: validate, stamp, store, and schedule its relay."""
        entries = protocol.decode_awareness(payload)
        accepted: list[AwarenessEntry] = []
        for entry in entries:
            owner = self.owner.get(entry.client_id)
            if owner is not None and owner is not member and owner.id in self.members:
                continue  # another live connection controls this client id
            if entry.state == NULL:
                member.awareness_clients.discard(entry.client_id)
                self.owner.pop(entry.client_id, None)
                accepted.append(entry)
                continue
            member.awareness_clients.add(entry.client_id)
            self.owner[entry.client_id] = member
            accepted.append(self._stamped(member, entry))
        if not accepted:
            return
        payload = protocol.encode_awareness(accepted)
        self._apply(payload, accepted, member.id, by_viewer=lambda _: not member.role.participates)
        if self.on_publish is not None:
            self.on_publish(payload)
        if self.on_member_states is not None:
            self.on_member_states(member, {e.client_id: self.awareness.states.get(e.client_id) for e in accepted})

    def receive_remote(self, node: str, payload: bytes) -> None:
        """Awareness entries of another node's members (already stamped there)."""
        entries = protocol.decode_awareness(payload)
        for entry in entries:
            if entry.client_id in self.owner:
                continue  # a local connection controls it; a stale remote copy cannot override
            if entry.state == NULL:
                self.remote_owner.pop(entry.client_id, None)
            else:
                self.remote_owner[entry.client_id] = node
        self._apply(payload, entries, f"peer:{node}", by_viewer=lambda cid: not self._from_participant(cid))

    def _apply(self, payload: bytes, entries: list[AwarenessEntry], origin: str, by_viewer: Callable[[int], bool]) -> None:
        self.awareness.apply_awareness_update(payload, origin)
        meta = self.awareness.meta
        changed = False
        for entry in entries:
            # Awareness ignores an entry whose clock is not newer (as y-protocols does, including a
            # new client's clock 0); only what it took is relayed.
            if meta.get(entry.client_id, {}).get("clock") == entry.clock:
                self._pending[entry.client_id] = by_viewer(entry.client_id)
                changed = True
        if changed:
            self._schedule()

    def local_states(self) -> bytes | None:
        """The awareness states of this node's members, as one update (for other nodes)."""
        ids = [cid for cid in self.owner if cid in self.awareness.states]
        return self.awareness.encode_awareness_update(ids) if ids else None

    def remove_node(self, node: str) -> None:
        """A node died: the states of its members are removed for everyone here."""
        gone = [cid for cid, owner in self.remote_owner.items() if owner == node]
        for cid in gone:
            del self.remote_owner[cid]
        self._remove(gone, f"peer:{node}", by_viewer=False)

    def _stamped(self, member: Member, entry: AwarenessEntry) -> AwarenessEntry:
        if not self.stamp_identity or member.principal is None or member.principal.anonymous:
            return entry
        state = json.loads(entry.state)
        if not isinstance(state, dict):
            state = {}
        user = state.get("user") if isinstance(state.get("user"), dict) else {}
        state["user"] = {**user, **member.principal.identity(member.role)}
        return AwarenessEntry(entry.client_id, entry.clock, json.dumps(state, separators=(",", ":")))

    def remove_member(self, member: Member) -> None:
        """The member left: the states it controlled are removed for everyone."""
        gone = [cid for cid in member.awareness_clients if self.owner.get(cid) is member]
        for cid in gone:
            del self.owner[cid]
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
            entry = self._stamped(member, AwarenessEntry(cid, clock, json.dumps(state)))
            payload = protocol.encode_awareness([entry])
            self.awareness.apply_awareness_update(payload, "server")
            self._pending[cid] = False  # everyone should see the change of role
            if self.on_publish is not None:
                self.on_publish(payload)
        self._schedule()

    # -- relay ------------------------------------------------------------------------------------

    def _schedule(self) -> None:
        if self._timer is not None:
            return
        wait = self._last_flush + self.tick - time.monotonic()
        if wait <= 0:
            self.flush()
        else:
            self._timer = asyncio.get_running_loop().call_later(wait, self.flush)

    def flush(self) -> None:
        """Send what changed since the last flush: one message per audience."""
        self._timer = None
        self._last_flush = time.monotonic()
        self._update_summary()
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
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
                    user = member.principal.identity(member.role) if member.principal else {}
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
            user = state.get("user") if isinstance(state.get("user"), dict) else {}
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

