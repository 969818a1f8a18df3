"""Server-side checks on review threads written by clients, and outdated anchors.

Like ``guards.py`` does for chat, the server owns who said what and when: clients write threads and
messages straight into ``reviews`` (a browser needs no HTTP round trip to comment), and right after
such an update is integrated the server corrects it with a change of its own:

- a new thread gets ``by`` (the sender's user id), a plausible ``createdAt`` and a valid ``status``;
  a value that is not a ``Y.Map`` is removed;
- every message a client inserts is stamped with the sender's id, name and the server's time
  (``review.message_entry``; in open mode the client's name is kept, as chat keeps it); a message that is not ``{text}`` or is over the cap is removed;
- a client change to ``by`` or ``createdAt`` of a thread is reverted, and an unknown ``status`` becomes
  ``open``.

The correction cannot run inside the update's own transaction (pycrdt forbids a write while the
document is being changed), so it is queued with ``loop.call_soon`` and lands as the next update,
before any other frame from the same connection is read. Corrections find the inserted messages by
value, not by index, so edits that arrive in between cannot make them stamp the wrong entry.

Outdated anchors: a range can only vanish when something is deleted, so when a room with review
threads integrates an update that deletes (its delete set is not empty: the update's last byte is not
0, see ``deletes``), or a client writes a thread, a check is scheduled (at most one per
``outdated_delay``) that marks ``outdated`` every open thread whose anchored range was deleted
(``review.mark_outdated``). Editors pay a dictionary lookup and a byte test per update for it.

Register one instance for the whole node, before rooms load::

    ReviewGuard()  # listed among the node's extensions in app.py
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pycrdt import Array, Map, Subscription

from pairroom.protocol.origins import ClientOrigin, LocalOrigin
from pairroom.review import threads as review
from pairroom.rooms.extension import Change, Extension
from pairroom.rooms.room import RoomState

if TYPE_CHECKING:
    from pairroom.rooms.room import Room

log = logging.getLogger("pairroom.review")

GUARD = LocalOrigin("review-guard")
OUTDATED = LocalOrigin("review-outdated")
SERVER_KEYS = ("by", "createdAt")


@dataclass
class _Fix:
    """One thing a client's update wrote that the server checks."""

    kind: str  # "thread", "message", "status", "revert"
    thread_id: str
    value: Any = None
    key: str = ""


@dataclass
class _RoomState:
    reviews: Map
    subscription: Subscription
    has_threads: bool
    pending: list[tuple[ClientOrigin, list[_Fix]]] = field(default_factory=list)
    correction: asyncio.Handle | None = None
    check: asyncio.TimerHandle | None = None


class ReviewGuard(Extension):
    """Stamps and checks what clients write into ``reviews``; marks outdated threads."""

    name = "review-guard"
    builtin = True
    priority = 50

    def __init__(self, outdated_delay: float = 0.2) -> None:
        self.outdated_delay = outdated_delay
        self._rooms: dict[Room, _RoomState] = {}

    # -- Extension hooks -----------------------------------------------------------------------------

    def on_loaded(self, room: Room) -> None:
        reviews = room.doc.get("reviews", type=Map)
        subscription = reviews.observe_deep(functools.partial(self._on_reviews, room))
        state = self._rooms[room] = _RoomState(reviews, subscription, has_threads=len(reviews) > 0)
        if state.has_threads:
            self._schedule_check(room, state)

    def on_unload(self, room: Room) -> None:
        state = self._rooms.pop(room, None)
        if state is None:
            return
        state.reviews.unobserve(state.subscription)
        for handle in (state.correction, state.check):
            if handle is not None:
                handle.cancel()

    def on_change(self, change: Change) -> None:
        room, origin, update = change.room, change.origin, change.update
        state = self._rooms.get(room)
        if state is not None and state.has_threads and deletes(update) and origin is not OUTDATED:
            self._schedule_check(room, state)

    # -- collecting what clients wrote ------------------------------------------------------------

    def _on_reviews(self, room: Room, events: list[Any]) -> None:
        state = self._rooms.get(room)
        if state is None:
            return
        try:
            self._collect(room, state, events)
        except Exception:
            # A value too hostile to read (a 3,000-deep map): the document guards remove the
            # thread, as its shape is not a thread's; there is nothing to stamp.
            log.warning("review change could not be read", exc_info=True, extra={"room": room.name})

    def _collect(self, room: Room, state: _RoomState, events: list[Any]) -> None:
        origin = room.current_origin
        fixes: list[_Fix] = []
        for event in events:
            path = list(event.path)
            if not path:
                for key, change in event.keys.items():
                    if change["action"] in ("add", "update"):
                        state.has_threads = True
                        fixes.append(_Fix("thread", key))
            elif len(path) == 1:
                for key, change in event.keys.items():
                    if key == "status":
                        fixes.append(_Fix("status", path[0]))
                    elif key in SERVER_KEYS:
                        fixes.append(_Fix("revert", path[0], change.get("oldValue"), key))
                    elif key == "messages":
                        fixes.append(_Fix("thread", path[0]))
            elif len(path) == 2 and path[1] == "messages":
                for step in event.delta:
                    for item in step.get("insert", ()):
                        fixes.append(_Fix("message", path[0], item))
        if fixes and isinstance(origin, ClientOrigin):
            state.pending.append((origin, fixes))
            if state.correction is None:
                state.correction = asyncio.get_running_loop().call_soon(self._correct, room)
            if any(fix.kind == "thread" for fix in fixes):
                self._schedule_check(room, state)  # a client's anchors may point at deleted code

    # -- correcting -------------------------------------------------------------------------------

    def _correct(self, room: Room) -> None:
        state = self._rooms.get(room)
        if state is None:
            return
        state.correction = None
        pending, state.pending = state.pending, []
        if room.state is not RoomState.ACTIVE:
            return
        with room.local_change(GUARD):
            for origin, fixes in pending:
                author, name = self._identity(room, origin)
                for fix in fixes:
                    try:
                        self._apply_fix(state.reviews, fix, author, name)
                    except Exception:
                        # Fail closed: a thread the guard cannot correct does not stay as written.
                        log.exception("review correction failed; thread removed",
                                      extra={"room": room.name, "review_thread": fix.thread_id})
                        if fix.thread_id in state.reviews:
                            del state.reviews[fix.thread_id]

    @staticmethod
    def _identity(room: Room, origin: ClientOrigin) -> tuple[str, str | None]:
        """Who wrote it: a user id, and the name the server vouches for (None in open mode, where
        nobody's name is checked and the client's own is kept, as chat does)."""
        member = room.members.get(origin.connection_id)
        principal = member.principal if member is not None else None
        if principal is not None:
            return principal.user_id, None if principal.names_itself else principal.name
        return origin.user or origin.connection_id, None

    def _apply_fix(self, reviews: Map, fix: _Fix, author: str, name: str | None) -> None:
        thread = reviews.get(fix.thread_id)
        if fix.kind == "thread" and fix.thread_id in reviews and not isinstance(thread, Map):
            del reviews[fix.thread_id]
            return
        if not isinstance(thread, Map):
            return  # deleted since
        if fix.kind == "thread":
            if thread.get("by") != author:
                thread["by"] = author
            if not _plausible(thread.get("createdAt")):
                thread["createdAt"] = review.now_ms()
            if thread.get("status") not in review.STATUSES:
                thread["status"] = "open"
            messages = thread.get("messages")
            if not isinstance(messages, Array):
                thread["messages"] = Array([])
                return
            for item in list(messages):
                _fix_message(messages, item, author, name)
        elif fix.kind == "message":
            messages = thread.get("messages")
            if isinstance(messages, Array):
                _fix_message(messages, fix.value, author, name)
        elif fix.kind == "status":
            if thread.get("status") not in review.STATUSES:
                thread["status"] = "open"
        elif fix.kind == "revert":
            if fix.value is None:
                if fix.key in thread:
                    del thread[fix.key]
            elif thread.get(fix.key) != fix.value:
                thread[fix.key] = fix.value

    # -- outdated anchors -------------------------------------------------------------------------

    def _schedule_check(self, room: Room, state: _RoomState) -> None:
        if state.check is None:
            loop = asyncio.get_running_loop()
            state.check = loop.call_later(self.outdated_delay, self._check, room)

    def _check(self, room: Room) -> None:
        state = self._rooms.get(room)
        if state is None:
            return
        state.check = None
        if room.state is not RoomState.ACTIVE:
            return
        with room.local_change(OUTDATED) as doc:
            marked = review.mark_outdated(doc)
        if marked:
            log.info("review threads outdated", extra={"room": room.name, "threads": marked})


def deletes(update: bytes) -> bool:
    """Whether a v1 update deletes anything. It ends with its delete set, whose last varuint is a
    range length (at least 1, so its last byte is not 0) unless the set is empty (one 0 byte)."""
    return bool(update) and update[-1] != 0


def _fix_message(messages: Array, item: Any, author: str, name: str | None) -> None:
    """Replace ``item`` in ``messages`` with its stamped form, or remove it if it is not a message."""
    items = list(messages)
    try:
        index = items.index(item)
    except ValueError:
        return  # removed since
    stamped = _stamped(item, author, name)
    if stamped == item:
        return
    del messages[index]
    if stamped is not None:
        messages.insert(index, stamped)


def _stamped(item: Any, author: str, name: str | None) -> dict[str, Any] | None:
    if not isinstance(item, dict):
        return None
    if name is None:
        name = item["name"] if isinstance(item.get("name"), str) and item["name"].strip() else "Guest"
    run = item.get("run")
    entry_id = item.get("id") if isinstance(item.get("id"), str) and len(item["id"]) <= 32 else None
    at = item.get("at")
    try:
        return review.message_entry(
            item.get("text"),
            author=author,
            name=name,
            run=run if isinstance(run, str) and run else None,
            at=int(at) if _plausible(at) else None,
            entry_id=entry_id,
        )
    except review.ReviewError:
        return None


def _plausible(at: Any) -> bool:
    """A client's time is kept when it is within 10 s of the server's (clients queue offline edits
    for longer, but then the server's time of arrival is the honest one). NaN and infinities fail."""
    return (
        isinstance(at, (int, float)) and not isinstance(at, bool)
        and math.isfinite(at) and abs(at - time.time() * 1000) <= 10_000
    )
