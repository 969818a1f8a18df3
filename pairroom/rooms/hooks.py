"""Extension points on rooms: small typed hook classes with no-op defaults.

``RoomObserver``: told what happens in a room (members coming and going, presence, updates), for the
recorder and anything else that watches. Called synchronously on the room's path: keep them cheap and
never raise (an observer's error is logged, the room carries on).

``WriteCheck``: decides, for a member whose role may write only parts of the document (a reviewer),
whether an update stays inside those parts. Members with full write rights never reach it, so it
costs ordinary editors nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pairroom.protocol.origins import Origin
    from pairroom.rooms.member import Member
    from pairroom.rooms.room import Room


class RoomObserver:
    priority = 100

    def on_room_loaded(self, room: Room) -> None: ...

    def on_room_closed(self, room: Room) -> None: ...

    def on_room_deleted(self, name: str) -> None:
        """The room was deleted (here or on another node) and evicted without a final flush."""

    def on_join(self, room: Room, member: Member) -> None: ...

    def on_leave(self, room: Room, member: Member) -> None: ...

    def on_awareness(self, room: Room, member: Member, states: dict[int, Any]) -> None:
        """A member's awareness states changed (client id -> state; None when removed)."""

    def on_update(self, room: Room, origin: Origin, update: bytes) -> None:
        """The document integrated ``update`` (any origin)."""


class WriteCheck:
    def allows(self, room: Room, member: Member, update: bytes) -> bool:
        """True if ``member`` may apply ``update`` (default: members without full rights may not)."""
        return False
