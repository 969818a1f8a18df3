"""Server-side checks on what clients write into the shared document.

Yjs has no server veto inside an update, so these run right after a client's update is integrated,
in the same turn, and correct the document with a server change that is queued right behind the
client's update (members receive both back to back; the log keeps both, so a replay shows the same):

- ``chat``: every entry a client appends is stamped with the author id, name and time the server
  knows (see docs/doc-schema.md); entries that are not an object with a text, or whose text is over
  the cap, are removed.
- ``meta.roles``: the live role map is the server's. A client change to it is reverted to the
  server's copy (``Room.roles``), which only ``Room.set_role`` changes.
"""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING, Any

from pycrdt import Array, ArrayEvent, Map

from pairroom.protocol.origins import ClientOrigin, LocalOrigin
from pairroom.rooms.identity import Principal, Role

if TYPE_CHECKING:
    from pairroom.rooms.member import Member
    from pairroom.rooms.room import Room

MAX_CHAT_TEXT = 4096


class DocumentGuards:
    def __init__(self, room: Room) -> None:
        self.room = room
        self.chat = room.doc.get("chat", type=Array)
        self.meta = room.doc.get("meta", type=Map)
        self._chat_inserts: list[tuple[int, Any]] = []
        self._roles_touched = False
        self._subscriptions = [
            (self.chat, self.chat.observe(self._on_chat)),
            (self.meta, self.meta.observe_deep(self._on_meta)),
        ]

    def close(self) -> None:
        for shared, subscription in self._subscriptions:
            shared.unobserve(subscription)
        self._subscriptions.clear()

    def _from_client(self) -> bool:
        return isinstance(self.room.current_origin, ClientOrigin)

    def _on_chat(self, event: ArrayEvent) -> None:
        if not self._from_client():
            return
        position = 0
        for step in event.delta:
            if "retain" in step:
                position += step["retain"]
            elif "insert" in step:
                for item in step["insert"]:
                    self._chat_inserts.append((position, item))
                    position += 1

    def _on_meta(self, events: list[Any]) -> None:
        if not self._from_client():
            return
        for event in events:
            if event.path and event.path[0] == "roles":
                self._roles_touched = True
            elif not event.path and "roles" in getattr(event, "keys", {}):
                self._roles_touched = True

    def after_client_update(self, member: Member) -> None:
        """Correct what ``member``'s update just wrote, if anything needs it."""
        inserts, self._chat_inserts = self._chat_inserts, []
        roles_touched, self._roles_touched = self._roles_touched, False
        if not inserts and not roles_touched:
            return
        with self.room.local_change(LocalOrigin("guard")):
            for index, item in reversed(inserts):
                fixed = stamped_chat_entry(item, member.principal, member.id)
                if fixed == item:
                    continue
                del self.chat[index]
                if fixed is not None:
                    self.chat.insert(index, fixed)
            if roles_touched:
                self.meta["roles"] = Map({uid: role.value for uid, role in self.room.roles.items()})

    def load_roles(self) -> dict[str, Role]:
        """The role map as stored in the document (trusted: every client change was reverted)."""
        roles = self.meta.get("roles")
        if not isinstance(roles, Map):
            return {}
        out = {}
        for user_id, value in roles.items():
            try:
                out[user_id] = Role(value)
            except ValueError:
                continue  # written before a role was renamed; the token's role applies
        return out


def stamped_chat_entry(item: Any, principal: Principal | None, fallback_id: str) -> dict[str, Any] | None:
    """The chat entry as the server accepts it from ``principal``, or None to remove it."""
    if not isinstance(item, dict) or not isinstance(item.get("text"), str):
        return None
    text = item["text"]
    if not text.strip() or len(text.encode()) > MAX_CHAT_TEXT:
        return None
    if principal is None or principal.names_itself:
        author = principal.user_id if principal else fallback_id
        name = str(item.get("name") or (principal.name if principal else "Guest"))[:64]
    else:
        author, name = principal.user_id, principal.name
    entry_id = item.get("id") if isinstance(item.get("id"), str) and len(item["id"]) <= 32 else None
    at = item.get("at")
    now = int(time.time() * 1000)
    if not isinstance(at, (int, float)) or abs(at - now) > 10_000:
        at = now
    return {
        "id": entry_id or secrets.token_urlsafe(9),
        "author": author,
        "name": name,
        "at": int(at),
        "text": text,
    }
