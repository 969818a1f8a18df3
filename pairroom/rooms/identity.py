"""Who a member is: a principal with a role. Tokens that carry it are checked in ``web/auth.py``.

The role here is the token's; what a member may do is decided with ``Room.role_of(principal)``, the
live role, which an owner's change (``meta.roles``) overrides."""

from __future__ import annotations

import dataclasses
import enum
import secrets
from dataclasses import dataclass
from typing import Any

DEFAULT_COLORS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#0a9396", "#f032e6", "#6a994e")

# The colours presence gives people: Okabe and Ito's palette for colour vision deficiency without its
# black and yellow (a black caret looks like your own, a yellow one vanishes on white), four of Paul
# Tol's "muted" scheme, a brown and a dark blue. Every pair stays at least 12 apart (CIELAB delta E)
# in normal vision and in simulated protanopia, deuteranopia and tritanopia (Machado, Oliveira and
# Fernandes 2009); Tol's teal and purple, which this replaces, came within 4 of Okabe-Ito's reddish
# purple and blue for deuteranopes and protanopes. The front end holds the same list
# (frontend/src/shared.js) for people no longer present.
PALETTE = (
    "#0072b2",  # blue
    "#d55e00",  # vermillion
    "#009e73",  # bluish green
    "#cc79a7",  # reddish purple
    "#e69f00",  # orange
    "#56b4e9",  # sky blue
    "#332288",  # indigo
    "#882255",  # wine
    "#117733",  # green
    "#999933",  # olive
    "#664400",  # brown
    "#004488",  # dark blue
)


def preferred_color_index(user_id: str) -> int:
    """Where ``user_id`` starts in ``PALETTE``: FNV-1a of its UTF-8, as the front end computes it."""
    h = 0x811C9DC5
    for byte in user_id.encode():
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h % len(PALETTE)


def pick_color(user_id: str, taken: set[str]) -> str:
    """``user_id``'s colour: its preferred one, else the next one nobody present has. With more people
    present than colours, the preferred one (shared)."""
    start = preferred_color_index(user_id)
    for step in range(len(PALETTE)):
        color = PALETTE[(start + step) % len(PALETTE)]
        if color not in taken:
            return color
    return PALETTE[start]


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
    email: str | None = None  # the token's ``email`` claim (commits credit people by it)
    epoch: str | None = None  # the room identity the token was minted for (``meta.epoch``)
    issued_at: int = 0  # the token's ``iat``, in seconds
    named: bool = True  # False: a token minted for a role without a name; the person names themself

    @property
    def names_itself(self) -> bool:
        """The name the client gives is the one shown: open mode, or a token without a name."""
        return self.anonymous or not self.named

    def identity(self, role: Role | None = None) -> dict[str, Any]:
        """The awareness ``user`` fields the server stamps on this member's presence."""
        return {
            "id": self.user_id,
            "name": self.name,
            "color": self.color,
            "role": (role or self.role).value,
        }


def principal_to_json(principal: Principal) -> dict[str, Any]:
    """A principal as plain JSON, to carry a member's identity to another node (forwarded requests)."""
    fields = dataclasses.asdict(principal)
    fields["role"] = principal.role.value
    return fields


def principal_from_json(fields: dict[str, Any]) -> Principal:
    """The inverse of ``principal_to_json``; unknown keys (a newer node's) are left out."""
    known = {f.name for f in dataclasses.fields(Principal)}
    values = {k: v for k, v in fields.items() if k in known}
    values["role"] = Role(values["role"])
    return Principal(**values)


STALE_TOKEN = "this token is for an earlier room of this name; ask the room's owner for a new link"


def earlier_room(principal: Principal, epoch: object, created_at_ms: object) -> str | None:
    """Why ``principal``'s token belongs to an earlier room of the same name, or None.

    A room the lobby created has ``meta.epoch`` (random, minted once) and ``meta.createdAt``. Its
    tokens carry the epoch; a token with another epoch was minted for a room of this name that was
    deleted. A token without one (``pairroom token``, older servers) fits only if it was issued after
    the room was created. Rooms without an epoch accept every valid token."""
    if principal.anonymous or not isinstance(epoch, str):
        return None
    if principal.epoch is not None:
        return None if principal.epoch == epoch else STALE_TOKEN
    if isinstance(created_at_ms, (int, float)) and principal.issued_at * 1000 + 999 < created_at_ms:
        return STALE_TOKEN
    return None


def anonymous(room: str | None = None) -> Principal:
    """An open-mode member: an editor of any room, with a random id."""
    user_id = "anon-" + secrets.token_hex(4)
    color = DEFAULT_COLORS[int(user_id[-2:], 16) % len(DEFAULT_COLORS)]
    return Principal(
        user_id, "Guest " + user_id[-4:].upper(), color, Role.EDITOR, room or "", anonymous=True, any_room=True
    )
