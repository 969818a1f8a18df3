"""Who a member is: a principal with a role. Tokens that carry it are checked in ``web/auth.py``.

The role here is the token's; what a member may do is decided with ``Room.role_of(principal)``, the
live role, which an owner's change (``meta.roles``) overrides."""

from __future__ import annotations

import enum
import secrets
from dataclasses import dataclass
from typing import Any

DEFAULT_COLORS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#0a9396", "#f032e6", "#6a994e")


class Role(str, enum.Enum):
    OWNER = "owner"
    EDITOR = "editor"
    REVIEWER = "reviewer"
    VIEWER = "viewer"

    @property
    def writes_files(self) -> bool:
        return self in (Role.OWNER, Role.EDITOR)

    @property
    def writes_document(self) -> bool:
        """May send document updates at all; viewers receive everything and change nothing."""
        return self in (Role.OWNER, Role.EDITOR)

    @property
    def participates(self) -> bool:
        """Sees every member's presence (viewers see only the participants' and a summary)."""
        return self is not Role.VIEWER


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: str
    name: str
    color: str
    role: Role
    room: str  # the room the token is for ("" for an open-mode principal on a route without a room)
    anonymous: bool = False
    any_room: bool = False  # open mode: every room's topics; a room's *name* never means this

    def identity(self, role: Role | None = None) -> dict[str, Any]:
        """The awareness ``user`` fields the server stamps on this member's presence."""
        return {
            "id": self.user_id,
            "name": self.name,
            "color": self.color,
            "role": (role or self.role).value,
        }


def anonymous(room: str | None = None) -> Principal:
    """An open-mode member: an editor of any room, with a random id."""
    user_id = "anon-" + secrets.token_hex(4)
    color = DEFAULT_COLORS[int(user_id[-2:], 16) % len(DEFAULT_COLORS)]
    return Principal(
        user_id, "Guest " + user_id[-4:].upper(), color, Role.EDITOR, room or "", anonymous=True, any_room=True
    )
