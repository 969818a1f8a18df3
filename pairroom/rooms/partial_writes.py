"""Which parts of the document a reviewer may write: ``reviews`` and ``chat``, nothing else.

A Yjs update carries no list of the shared types it touches; only integrating it tells. So the check
integrates the update into a scratch copy of the room's document (rebuilt from
``room.doc.get_update()``), with a deep observer on every root type, and allows the update only if
no observer outside the allowed roots fired. The room's own document is never touched by a refused
update: it is dropped like a viewer's (counted, not broadcast, not stored).

Three ways an update could slip past the observers are refused too:

- a new root type other than the allowed ones (it had no observer when the update was applied);
- structs that did not integrate because they wait for a missing dependency: they would integrate
  later, wherever they point, when an editor's update supplies it;
- deletions of items the document does not have yet, which Yjs keeps pending and applies to those
  items when they arrive.

Cost: the copy is rebuilt for every reviewer update, proportional to the document's size
(``bench/partial_writes.py`` measures it). Members with full write rights never reach this check
(``Room._receive_sync`` calls it only for roles that do not write the whole document), so editors'
updates cost exactly what they did before.

Install it for every room a node loads, before rooms load::

    ReviewerWrites()  # listed among the node's extensions in app.py
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pycrdt import Array, Doc, Map, Text, get_update

from pairroom.protocol.sync import ProtocolError, read_var_uint
from pairroom.rooms.extension import Extension
from pairroom.rooms.identity import Role

if TYPE_CHECKING:
    from pairroom.rooms.member import Member
    from pairroom.rooms.room import Room

log = logging.getLogger("pairroom.writes")

REVIEWER_ROOTS = frozenset({"reviews", "chat"})
# Root types as docs/doc-schema.md gives them. Any other root is observed as a Map: an observer
# fires on a change whatever type it is cast to, and only whether it fired is looked at.
ROOT_TYPES: dict[str, type[Text | Array | Map]] = {
    "files": Map, "meta": Map, "chat": Array, "runs": Map, "reviews": Map, "text": Text,
}


class ReviewerWrites(Extension):
    """Reviewers may write ``reviews`` and ``chat``; viewers may write nothing."""

    name = "reviewer-writes"
    builtin = True

    def allows_write(self, room: Room, member: Member, update: bytes) -> bool:
        if member.role is not Role.REVIEWER:
            return False
        allowed = touches_only(room.doc, update, REVIEWER_ROOTS)
        if not allowed:
            log.info("reviewer update outside reviews and chat dropped",
                     extra={"room": room.name, "conn": member.id})
        return allowed


def touches_only(doc: Doc, update: bytes, roots: frozenset[str]) -> bool:
    """True if applying ``update`` to ``doc`` would change nothing outside the root types ``roots``."""
    scratch = Doc()
    scratch.apply_update(doc.get_update())
    before = set(scratch.keys())
    touched: list[str] = []
    subscriptions = []
    for name in before - roots:
        shared = scratch.get(name, type=ROOT_TYPES.get(name, Map))
        subscriptions.append(shared.observe_deep(lambda _events, name=name: touched.append(name)))
    try:
        scratch.apply_update(update)
    except ValueError:
        return False  # does not decode; the room would refuse it too
    if touched or (set(scratch.keys()) - before - roots):
        return False
    return _fully_integrated(scratch, update)


def _fully_integrated(scratch: Doc, update: bytes) -> bool:
    """Every struct of ``update`` is in ``scratch`` and every deletion names an item it has.

    What ``update`` holds beyond the scratch copy's state vector is what did not integrate: it must be
    no struct at all, and its delete set (always kept whole) must stay within that state vector."""
    state = scratch.get_state()
    have = decode_state_vector(state)
    try:
        for client, clock, length in delete_set(get_update(update, state)):
            if clock + length > have.get(client, 0):
                return False
    except (ValueError, ProtocolError):
        return False  # structs left over: they wait for a dependency
    return True


def decode_state_vector(data: bytes) -> dict[int, int]:
    """A lib0-encoded state vector: client id to the next clock it will use."""
    count, pos = read_var_uint(data, 0)
    out = {}
    for _ in range(count):
        client, pos = read_var_uint(data, pos)
        clock, pos = read_var_uint(data, pos)
        out[client] = clock
    return out


def delete_set(update: bytes) -> list[tuple[int, int, int]]:
    """The deletions of an update without structs, as (client, clock, length); ValueError if it has any."""
    structs, pos = read_var_uint(update, 0)
    if structs:
        raise ValueError("update still holds structs")
    clients, pos = read_var_uint(update, pos)
    out = []
    for _ in range(clients):
        client, pos = read_var_uint(update, pos)
        ranges, pos = read_var_uint(update, pos)
        for _ in range(ranges):
            clock, pos = read_var_uint(update, pos)
            length, pos = read_var_uint(update, pos)
            out.append((client, clock, length))
    return out
