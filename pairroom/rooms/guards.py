"""Server-side enforcement of the owner table (``owners.py``) on what clients write into the document.

Yjs has no server veto inside an update, so these run right after a client's update is integrated,
in the same turn, and correct the document with a server change that is queued right behind the
client's update (members receive both back to back; the log keeps both, so a replay shows the same).

For every root and key a client's transaction touched, the row of the owner table decides:

- the member's role is not among the row's writers (or no row claims the key): the write is
  reverted: a key the server keeps a copy of (every row editors may not write: ``meta.*``, ``runs``,
  ``reviewPasses``) is restored from that copy, any other key is deleted, array entries are removed;
- the value does not have the row's shape (NaN, infinities, wrong types, deep nesting, huge strings):
  the same;
- otherwise the write stands, and for a kept row it becomes the server's copy.

``chat`` entries are then stamped with the author id, name and time the server knows.

Fail closed: if a key cannot be checked (a validator or the bookkeeping raises), it is reverted; if
what a transaction touched cannot even be worked out, every kept key that differs from the server's
copy is restored. Each revert is counted (``pairroom_guard_reverts_total{root,key}``).

The server's copies are kept from the server's own transactions (and the load): an event updates
the copy of the key it touched in place (an appended output appends), or the key is copied whole
again when an event cannot be followed.

What cannot be reverted after the fact (a deletion from ``chat``, a file edit by a member without
the right) is kept out before integration: viewers' updates are dropped and reviewers' are checked by
``partial_writes.py``.
"""

from __future__ import annotations

import asyncio
import difflib
import functools
import json
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pycrdt import Array, Map, Text

from pairroom.protocol.origins import ClientOrigin, LocalOrigin, PeerOrigin
from pairroom.protocol.sync import CloseCode, ProtocolError, read_var_uint
from pairroom.rooms.identity import Principal, Role
from pairroom.rooms.owners import OwnerRow, OwnerTable, checked, valid_key
from pairroom.rooms.partial_writes import UpdateDecodeError, decode_state_vector, decode_update

if TYPE_CHECKING:
    from pairroom.rooms.member import Member
    from pairroom.rooms.room import Room

log = logging.getLogger("pairroom.guards")

MAX_CHAT_TEXT = 4096
MAX_UPDATE_DEPTH = 100  # values nest at most 16 deep by the owner table; pycrdt breaks near 1,000
GUARD = LocalOrigin("guard")
_ABSENT = object()


class _SMap(dict[str, Any]):
    """A kept ``Y.Map`` (plain dicts are JSON values)."""


class _SArray(list[Any]):
    """A kept ``Y.Array``."""


class _SText(str):
    """A kept ``Y.Text``."""


def to_kept(value: Any) -> Any:
    """The server's copy of a document value: shared types tagged, so they are rebuilt as such."""
    if isinstance(value, Map):
        return _SMap({k: to_kept(v) for k, v in value.items()})
    if isinstance(value, Array):
        return _SArray(to_kept(v) for v in value)
    if isinstance(value, Text):
        return _SText(str(value))
    return value


def to_shared(kept: Any) -> Any:
    """A document value (prelim shared types) from the server's copy."""
    if isinstance(kept, _SMap):
        return Map({k: to_shared(v) for k, v in kept.items()})
    if isinstance(kept, _SArray):
        return Array([to_shared(v) for v in kept])
    if isinstance(kept, _SText):
        return Text(str(kept))
    return kept


def _for_root(handler: Callable[[str, Any], None], root: str) -> Callable[[Any], None]:
    """``handler`` for one root, as a plain one-argument function. pycrdt reads the signature of
    every observer it is given; a ``functools.partial``'s takes three times as long, and a room
    load subscribes once per root."""

    def observer(event_or_events: Any) -> None:
        handler(root, event_or_events)

    return observer


class DocumentGuards:
    def __init__(self, room: Room, rows: Sequence[OwnerRow] = ()) -> None:
        self.room = room
        self.table = OwnerTable.default(rows)
        self.roots: dict[str, Map[Any] | Array[Any] | Text] = {
            name: room.doc.get(name, type=kind) for name, kind in self.table.roots.items()
        }
        chat, meta = self.roots["chat"], self.roots["meta"]
        assert isinstance(chat, Array) and isinstance(meta, Map)  # the built-in rows say so
        self.chat: Array[Any] = chat
        self.meta: Map[Any] = meta
        self.kept: dict[str, dict[str, Any]] = {
            name: {} for name, shared in self.roots.items() if isinstance(shared, Map)
        }
        # Array roots: a fingerprint of each entry as the server has seen it, so that when a
        # client's transaction could not be followed, the entries it added can still be found.
        self.entries: dict[str, list[Any]] = {
            name: [] for name, shared in self.roots.items() if isinstance(shared, Array)
        }
        self.reverted = 0  # writes reverted since the room loaded (also counted by the listener)
        self._touched: set[tuple[str, str | None]] = set()
        self._inserts: list[tuple[str, int, Any]] = []
        self._lost = False  # what a client's transaction touched could not be worked out
        self.client_ids = ClientIdClaims(room)
        self._nested = False  # the update being integrated may hold nested values
        self._subscriptions: list[tuple[Map[Any] | Array[Any] | Text, Any]] = []
        for name, shared in self.roots.items():
            if self.table.deep(name):
                watch = shared.observe_deep(_for_root(self._on_events, name))
            elif isinstance(shared, Map):  # only keys set and deleted: not every keystroke
                watch = shared.observe(_for_root(self._on_event, name))
            else:
                continue  # a text root taken whole: its writers are checked before integrating
            self._subscriptions.append((shared, watch))

    def close(self) -> None:
        for shared, subscription in self._subscriptions:
            shared.unobserve(subscription)
        self._subscriptions.clear()

    # -- watching ---------------------------------------------------------------------------------

    def _on_event(self, root: str, event: Any) -> None:
        self._on_events(root, [event])

    def _on_events(self, root: str, events: list[Any]) -> None:
        from_client = isinstance(self.room.current_origin, ClientOrigin)
        try:
            if from_client:
                self._collect(root, events)
            elif root in self.kept:
                self._keep(root, events)
                if root == "meta" and isinstance(self.room.current_origin, PeerOrigin) and _touches(events, "roles"):
                    # An owner changed a role on another node: follow it here too, after this
                    # transaction (the members' identities are restamped in their presence).
                    try:
                        asyncio.get_running_loop().call_soon(self._roles_changed_elsewhere)
                    except RuntimeError:  # no loop: a synchronous caller, nothing is in flight
                        self._roles_changed_elsewhere()
            if root in self.entries:
                self._follow_entries(root, events)
        except Exception:
            log.exception("guard could not follow a change", extra={"room": self.room.name, "root": root})
            if from_client:
                self._lost = True
            else:
                self._recopy(root)

    def _follow_entries(self, root: str, events: list[Any]) -> None:
        """Keep the fingerprints of an array root's entries in step with it (any origin)."""
        entries = self.entries[root]
        for event in events:
            if list(event.path):
                continue  # inside an entry: entries are plain values; a shared one is removed
            position = 0
            for step in event.delta:
                if "retain" in step:
                    position += step["retain"]
                elif "insert" in step:
                    prints = [_fingerprint(item) for item in step["insert"]]
                    entries[position:position] = prints
                    position += len(prints)
                elif "delete" in step:
                    del entries[position : position + step["delete"]]

    def _collect(self, root: str, events: list[Any]) -> None:
        shared = self.roots[root]
        for event in events:
            path = list(event.path)
            if isinstance(shared, Map):
                if path:
                    self._touched.add((root, str(path[0])))
                else:
                    self._touched.update((root, str(key)) for key in event.keys)
            elif isinstance(shared, Array) and not path:
                self._touched.add((root, None))
                position = 0
                for step in event.delta:
                    if "retain" in step:
                        position += step["retain"]
                    elif "insert" in step:
                        for item in step["insert"]:
                            self._inserts.append((root, position, item))
                            position += 1
            else:
                self._touched.add((root, None))

    def _keep(self, root: str, events: list[Any]) -> None:
        """Follow a server change in the server's copy of the kept keys it touched."""
        shared = self.roots[root]
        assert isinstance(shared, Map)
        kept = self.kept[root]
        for event in events:
            path = list(event.path)
            if not path:
                for key, change in event.keys.items():
                    if not self._is_kept(root, key):
                        continue
                    if change["action"] == "delete":
                        kept.pop(key, None)
                    else:
                        kept[key] = to_kept(change["newValue"])
                continue
            key = str(path[0])
            if not self._is_kept(root, key):
                continue
            try:
                node = kept[key]
                for step in path[1:]:
                    node = node[step]
                _follow(node, event)
            except (KeyError, IndexError, TypeError, ValueError):
                kept[key] = to_kept(shared.get(key))  # could not follow: copy it whole again

    def _is_kept(self, root: str, key: str) -> bool:
        row = self.table.row(root, key)
        return row is None or row.server_kept

    def _recopy(self, root: str) -> None:
        shared = self.roots[root]
        if isinstance(shared, Map):
            self.kept[root] = {k: to_kept(v) for k, v in shared.items() if self._is_kept(root, k)}
        elif isinstance(shared, Array):
            self.entries[root] = [_fingerprint(item) for item in shared]

    # -- before integrating -----------------------------------------------------------------------

    def before_client_update(self, member: Member, update: bytes) -> None:
        """Refuse, before it touches the document, an update the guards could not undo afterwards.
        Raises ProtocolError (4422, the connection closes; nothing was integrated):

        - a value nested deeper than ``MAX_UPDATE_DEPTH``: pycrdt builds the events of a change
          recursively, so one 3,000 deep would keep every observer, the guards' included, from
          seeing the transaction at all;
        - structs under a Yjs client id of another person's live connection (``ClientIdClaims``).
        """
        # Nested values are where pycrdt's events can fail; only then are arrays recounted after.
        self._nested = _may_nest_deeper(update, 8)
        if self._nested and _may_nest_deeper(update, MAX_UPDATE_DEPTH):
            try:
                depth = decode_update(update).depth
            except UpdateDecodeError:
                depth = 0  # the CRDT refuses it or reads it; either way not deep
            if depth > MAX_UPDATE_DEPTH:
                raise ProtocolError(
                    CloseCode.UPDATE_REJECTED, f"update holds a value nested {depth} deep (at most {MAX_UPDATE_DEPTH})"
                )
        stolen = self.client_ids.check(member, update)
        if stolen is not None:
            raise ProtocolError(
                CloseCode.UPDATE_REJECTED, f"update writes under Yjs client id {stolen} of another connection"
            )

    def client_left(self, member: Member) -> None:
        self.client_ids.forget(member)

    # -- correcting -------------------------------------------------------------------------------

    def after_client_update(self, member: Member, *, lost: bool = False) -> None:
        """Correct what ``member``'s update just wrote, if anything needs it. ``lost``: the update
        was integrated but what it touched is unknown (an observer failed on it)."""
        touched, self._touched = self._touched, set()
        inserts, self._inserts = self._inserts, []
        lost, self._lost = self._lost or lost, False
        if not lost and self._nested and any(len(self.roots[r]) != len(seen) for r, seen in self.entries.items()):
            lost = True  # an array changed and its events never reached the guards
        self._nested = False
        if not touched and not inserts and not lost:
            return
        # Decide first, outside any transaction: an edit that needs nothing costs no server change.
        wrong_keys: list[tuple[str, str]] = []
        for root, key in sorted(touched, key=lambda rk: (rk[0], rk[1] or "")):
            if key is None:
                continue  # arrays are checked entry by entry below; text roots need no shape
            try:
                accepted = self._accept_key(member.role, root, key)
            except Exception:
                log.exception("guard check failed; reverting", extra={"room": self.room.name, "root": root})
                accepted = False
            if not accepted:
                wrong_keys.append((root, key))
        wrong_entries: list[tuple[str, int, Any]] = []
        for root, index, item in reversed(inserts):
            try:
                fixed = self._accepted_entry(member, root, item)
            except Exception:
                log.exception("guard check failed; removing", extra={"room": self.room.name, "root": root})
                fixed = None
            if fixed is not item:
                wrong_entries.append((root, index, fixed))
        if not lost and not wrong_keys and not wrong_entries:
            return
        reverts: list[tuple[str, str | None]] = []
        with self.room.local_change(GUARD):
            for root, key in wrong_keys:
                self._revert_key_safely(root, key)
                reverts.append((root, key))
            for root, index, fixed in wrong_entries:  # from the last index to the first
                array = self.roots[root]
                assert isinstance(array, Array)
                del array[index]
                if fixed is not None:
                    array.insert(index, fixed)
                else:
                    reverts.append((root, None))
        if lost:  # after the fixes above are committed, so that what they wrote counts as seen
            with self.room.local_change(GUARD):
                reverts.extend(self._check_everything())
        for root, key in reverts:
            self.reverted += 1
            self.room.listener.on_write_reverted(self.room, member, root, key)
        if reverts:
            log.info(
                "client writes reverted",
                extra={
                    "room": self.room.name,
                    "conn": member.id,
                    "role": member.role.value,
                    "keys": sorted({f"{r}.{k}" if k else r for r, k in reverts}),
                },
            )

    def _accept_key(self, role: Role, root: str, key: str) -> bool:
        row = self.table.row(root, key)
        if row is None or not row.allows(role) or not valid_key(row, key):
            return False
        shared = self.roots[root]
        assert isinstance(shared, Map)
        value = shared.get(key, _ABSENT)
        if value is _ABSENT:
            if row.server_kept:
                self.kept[root].pop(key, None)
            return True  # a writer may delete what it may write
        if not checked(row.validate, value):
            return False
        if row.server_kept:
            self.kept[root][key] = to_kept(value)
        return True

    def _revert_key(self, root: str, key: str) -> None:
        shared = self.roots[root]
        assert isinstance(shared, Map)
        kept = self.kept[root]
        if self._is_kept(root, key) and key in kept:
            shared[key] = to_shared(kept[key])
        elif key in shared:
            del shared[key]

    def _revert_key_safely(self, root: str, key: str) -> None:
        try:
            self._revert_key(root, key)
        except Exception:
            log.exception("guard could not revert", extra={"room": self.room.name, "root": root, "key": key})

    def _check_everything(self) -> list[tuple[str, str | None]]:
        """Fail closed when what a transaction touched is unknown: every kept key whose value is not
        the server's copy is restored, and every other key and array entry is checked for its shape
        (the cost of the whole document, on this error path only)."""
        reverted: list[tuple[str, str | None]] = []
        for root, shared in self.roots.items():
            if isinstance(shared, Map):
                kept = self.kept[root]
                for key in set(kept) | set(shared.keys()):
                    if not self._is_kept(root, key):
                        row = self.table.row(root, key)
                        assert row is not None
                        if valid_key(row, key) and _read_checked(row.validate, functools.partial(shared.get, key)):
                            continue
                    elif (
                        key in kept
                        and key in shared
                        and _read_checked(
                            functools.partial(_same_as_kept, kept[key]), functools.partial(shared.get, key)
                        )
                    ):
                        continue
                    elif key not in kept and key not in shared:
                        continue
                    self._revert_key_safely(root, key)
                    reverted.append((root, key))
            elif isinstance(shared, Array):
                reverted.extend((root, None) for _ in range(self._remove_unseen_entries(root, shared)))
        return reverted

    def _remove_unseen_entries(self, root: str, shared: Array[Any]) -> int:
        """Remove every entry the server has not seen (added by the transaction that could not be
        followed: it cannot be stamped) and every entry without the row's shape."""
        seen = self.entries[root]
        now = []
        for index in range(len(shared)):
            try:
                now.append(_fingerprint(shared[index]))
            except Exception:  # noqa: BLE001 - a guard that cannot check a client's change fails closed
                now.append(object())  # cannot even be read: never matches
        keep = [False] * len(now)
        matcher = difflib.SequenceMatcher(None, seen, now, autojunk=False)
        for tag, _, _, j1, j2 in matcher.get_opcodes():
            if tag == "equal":
                keep[j1:j2] = [True] * (j2 - j1)
        row = self.table.row(root, None)
        removed = 0
        for index in reversed(range(len(now))):
            if (
                not keep[index]
                or row is None
                or not _read_checked(row.validate, functools.partial(shared.__getitem__, index))
            ):
                del shared[index]
                removed += 1
        return removed

    def _accepted_entry(self, member: Member, root: str, item: Any) -> Any:
        """``item`` as the server accepts it into array ``root`` (the same object when unchanged),
        or None to remove it."""
        row = self.table.row(root, None)
        if row is None or not row.allows(member.role) or not checked(row.validate, item):
            return None
        if root == "chat":
            fixed = stamped_chat_entry(item, member.principal, member.id)
            return item if fixed == item else fixed
        return item

    def _roles_changed_elsewhere(self) -> None:
        room = self.room
        room.roles = self.load_roles()
        for member in list(room.members.values()):
            if member.principal is None:
                continue
            role = room.role_of(member.principal)
            if member.role is not role:
                member.role = role
                room.presence.restamp(member)

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


def _touches(events: list[Any], key: str) -> bool:
    """Whether these events of a map root change ``key`` (set, deleted, or inside it)."""
    for event in events:
        path = list(event.path)
        if (path and str(path[0]) == key) or (not path and key in event.keys):
            return True
    return False


def _fingerprint(item: Any) -> Any:
    """An array entry as a comparable value: its JSON, or for anything else a value equal to
    nothing (a shared type in ``chat`` is never the server's)."""
    try:
        return json.dumps(item, sort_keys=True)
    except (TypeError, ValueError, RecursionError):
        return object()


def _same_as_kept(kept: Any, value: Any) -> bool:
    return bool(to_kept(value) == kept)


def _read_checked(validate: Any, read: Any) -> bool:
    """Read a value and validate it; a value that cannot even be read (too deep) fails."""
    try:
        return checked(validate, read())
    except Exception:  # noqa: BLE001 - a guard that cannot check a client's change fails closed
        return False


def _follow(node: Any, event: Any) -> None:
    """Apply one event of a server change to the server's copy of the value it happened in."""
    if isinstance(node, _SMap) and hasattr(event, "keys"):
        for key, change in event.keys.items():
            if change["action"] == "delete":
                node.pop(key, None)
            else:
                node[key] = to_kept(change["newValue"])
    elif isinstance(node, _SArray):
        position = 0
        for step in event.delta:
            if "retain" in step:
                position += step["retain"]
            elif "insert" in step:
                items = [to_kept(v) for v in step["insert"]]
                node[position:position] = items
                position += len(items)
            elif "delete" in step:
                del node[position : position + step["delete"]]
    else:
        raise TypeError("not followed")  # text and the like: copied whole again


def stamped_chat_entry(item: Any, principal: Principal | None, fallback_id: str) -> dict[str, Any] | None:
    """The chat entry as the server accepts it from ``principal``, or None to remove it."""
    if not isinstance(item, dict) or not isinstance(item.get("text"), str):
        return None
    text = item["text"]
    if not text.strip() or len(text.encode()) > MAX_CHAT_TEXT:
        return None
    if principal is None or principal.names_itself:
        author = principal.user_id if principal else fallback_id
        given = item.get("name")
        name = (given if isinstance(given, str) and given.strip() else (principal.name if principal else "Guest"))[:64]
    else:
        author, name = principal.user_id, principal.name
    entry_id = item.get("id") if isinstance(item.get("id"), str) and len(item["id"]) <= 32 else None
    at = item.get("at")
    now = int(time.time() * 1000)
    if not (isinstance(at, (int, float)) and not isinstance(at, bool) and abs(at - now) <= 10_000):
        at = now  # NaN and infinities fail the comparison too
    return {
        "id": entry_id or secrets.token_urlsafe(9),
        "author": author,
        "name": name,
        "at": int(at),
        "text": text,
    }


class ClientIdClaims:
    """Which connection writes under which Yjs client id, so nobody writes under someone else's.

    A Yjs client id is one writer's clock: an update that adds structs under another live
    connection's client id, one clock ahead of it, makes that connection's next edit a duplicate
    that is dropped, and the copies never converge again. So a client id belongs to the first
    connection that adds structs under it (or announces it in its awareness), until that connection
    leaves; an update from another person's connection adding structs under it is refused (the
    same person's connections may pass an id between them: a reconnect can come before the server
    notices the old connection is gone). In open mode nobody is anyone in particular: there a
    refusal could only hit someone's own reconnect, so ids pass freely (the protection needs the
    identities a secret gives).

    Structs the room already has do not count: a client's sync step 2 may carry other members'
    edits it received while the server's step 1 was in flight. The cost of a member's next edit is
    reading the update's header; an update under a client id the sender has not claimed yet is
    decoded (``partial_writes.decode_update``) and compared with the room's state vector.
    """

    def __init__(self, room: Room) -> None:
        self.room = room
        self.owner: dict[int, Member] = {}
        self._prefix: dict[str, bytes] = {}  # connection id -> header of its usual one-struct update
        self._of: dict[str, set[int]] = {}  # connection id -> the client ids it claimed

    def check(self, member: Member, update: bytes) -> int | None:
        """The first client id ``update`` writes under that belongs to another live connection, or
        None (and then the client ids it adds structs under are ``member``'s from now on)."""
        if update.startswith(self._prefix.get(member.id, b"\xff")):
            return None  # the common case: a member's next edit, one struct under its own id
        mine = self._of.get(member.id, set())
        first = _single_client(update)
        if first is not None and first in mine:
            self._prefix[member.id] = b"\x01\x01" + _var_uint(first)
            return None
        try:
            decoded = decode_update(update)
        except UpdateDecodeError:
            return None  # the room refuses what the CRDT cannot read; ours is only stricter
        ends: dict[int, int] = {}
        for s in decoded.structs:
            if not s.gc:
                ends[s.client] = max(ends.get(s.client, 0), s.clock + s.length)
        if all(client in mine for client in ends):
            return None
        have = decode_state_vector(self.room.doc.get_state())
        new = [c for c, end in ends.items() if end > have.get(c, 0) and c not in mine]
        presence = self.room.presence
        for client in new:
            holder = self.owner.get(client) or presence.owner.get(client)
            if holder is not None and holder is not member and holder.id in self.room.members:
                if not _same_person(holder, member):
                    return client
                # The same person's new connection (a reconnect the server has not noticed the
                # end of yet, or a second tab sharing the document): the id moves with them.
                self._of.get(holder.id, set()).discard(client)
                self._prefix.pop(holder.id, None)
            if holder is None and client in presence.remote_owner and not self._announced_by(client, member):
                return client  # another person's connection on another node announced it
        for client in new:
            self.owner[client] = member
            self._of.setdefault(member.id, set()).add(client)
        return None

    def _announced_by(self, client: int, member: Member) -> bool:
        """Whether the presence another node relays for ``client`` is ``member``'s person (stamped
        by that node from the token): a reconnect to this node before the other noticed the drop."""
        state = self.room.presence.awareness.states.get(client) or {}
        user = state.get("user") if isinstance(state, dict) else None
        principal = member.principal
        if principal is None or principal.anonymous:
            return True  # open mode: nobody is anyone in particular (see the class docstring)
        return isinstance(user, dict) and user.get("id") == principal.user_id

    def forget(self, member: Member) -> None:
        """``member`` left: its client ids are free again (its next connection reuses them)."""
        self._prefix.pop(member.id, None)
        for client in self._of.pop(member.id, ()):
            if self.owner.get(client) is member:
                del self.owner[client]


def _may_nest_deeper(update: bytes, depth: int) -> bool:
    """False when ``update`` cannot hold a value nested deeper than ``depth``: each level needs an
    object or array marker byte (lib0: 0x75, 0x76; JSON: ``[``, ``{``). A quick count in C spares
    decoding ordinary edits."""
    return update.count(b"\x75") + update.count(b"\x76") + update.count(b"[") + update.count(b"{") > depth


def _single_client(update: bytes) -> int | None:
    """The client id of an update whose structs are all one client's (read from its header), or
    None when it has several or none."""
    try:
        groups, pos = read_var_uint(update, 0)
        if groups != 1:
            return None
        _, pos = read_var_uint(update, pos)
        client, _ = read_var_uint(update, pos)
    except (ProtocolError, IndexError):
        return None
    return client


def _var_uint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    return bytes(out)


def _same_person(a: Member, b: Member) -> bool:
    """Whether two connections may be the same person's: the same user id, or no identity at all
    (open mode, where a refusal could only hit someone's own reconnect)."""
    if a.principal is None or b.principal is None or a.principal.anonymous or b.principal.anonymous:
        return True
    return a.principal.user_id == b.principal.user_id
