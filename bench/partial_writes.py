#!/usr/bin/env python3
"""Partial-write check benchmark: what checking reviewers' updates costs, and that editors pay nothing.

    .venv/bin/python bench/partial_writes.py [--updates 2000] [--json bench/results/partial_writes.json]

Everything runs on a real ``Room`` (its document, its observers, its write check; storage is a real
SQLite file that the benchmark never flushes to), calling ``room.receive`` with real y-websocket
frames the way the websocket adapter does. No network, so the numbers are the room's own cost.

- ``editor keystroke``: an editor's one-character update, per update, in a room with the default
  write check and in a room with ``ReviewerWrites`` installed. The two must not differ: the check is
  never called for a role that writes the whole document.
- ``editor keystroke, ReviewerWrites + ReviewGuard``: the same with the review guard observing a room
  that has a thread: what editors do pay for reviews (a flag test per update, and the outdated-anchor
  check at most every 0.1 s, measured on its own as ``outdated check``).
- ``reviewer comment``: a reviewer's message appended to a thread, through ``room.receive`` (the
  check plus integration), for documents of about 10 KB, 100 KB and 1 MB of files.
- ``reviewer file edit (refused)``: the same for a one-character file edit, which is refused.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pycrdt import Array, Doc, Map, Text

from pairroom.protocol import sync as protocol
from pairroom.protocol.origins import LocalOrigin
from pairroom.review import threads as review
from pairroom.review.guard import ReviewGuard
from pairroom.rooms.hooks import WriteCheck
from pairroom.rooms.identity import Principal, Role
from pairroom.rooms.member import Member
from pairroom.rooms.partial_writes import ReviewerWrites
from pairroom.rooms.room import Room, RoomListener, RoomState
from pairroom.storage.sql import SqlStore

SEED = LocalOrigin("bench-seed")


class Counting(RoomListener):
    """The registry's role, minus storage: uids and a count of dropped updates."""

    def __init__(self) -> None:
        self.uids = itertools.count(1)
        self.dropped = 0

    def new_uid(self) -> str:
        return f"bench:{next(self.uids)}"

    def on_update_dropped(self, room: Room, member: Member) -> None:
        self.dropped += 1


class Discard:
    """A transport that takes frames and drops them (the benchmark has no network)."""

    async def send(self, data: bytes) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...


async def new_room(store: SqlStore, name: str, check: WriteCheck, listener: Counting) -> Room:
    room = Room(name, store, listener=listener)
    room.write_check = check
    await room.load()
    room.transition(RoomState.ACTIVE)
    return room


def member(room: Room, role: Role, conn: str) -> Member:
    principal = Principal("u-" + conn, conn.capitalize(), "#000000", role, room.name)
    joined = Member(Discard(), conn, principal=principal, max_queue_messages=10**9)
    room.join(joined)
    return joined


def seed(room: Room, size: int) -> None:
    """Files adding up to about ``size`` bytes, and one review thread."""
    line = "value = compute(value, 42)  # a line of code\n"
    per_file = min(size, 10_000)
    with room.local_change(SEED) as doc:
        files = doc.get("files", type=Map)
        for i in range(max(1, size // per_file)):
            files[f"pkg/mod{i}.py"] = Text(line * (per_file // len(line)))
        doc.get("reviews", type=Map)["t1"] = Map({"path": "pkg/mod0.py", "status": "open", "messages": Array([])})


def guard(room: Room) -> ReviewGuard:
    """The review guard, observing ``room`` as the registry attaches it."""
    observer = ReviewGuard()
    room.observers = [observer]
    observer.on_room_loaded(room)
    return observer


def frames(room: Room, count: int, change: Callable[[Doc, int], None]) -> list[bytes]:
    """``count`` update frames from one client that synced with the room, one change each."""
    client = Doc()
    client.apply_update(room.doc.get_update())
    out: list[bytes] = []
    for i in range(count):
        state = client.get_state()
        change(client, i)
        out.append(protocol.sync_update(client.get_update(state)))
    return out


def keystroke(doc: Doc, i: int) -> None:
    doc.get("files", type=Map)["pkg/mod0.py"].insert(i, "x")


def comment(doc: Doc, i: int) -> None:
    doc.get("reviews", type=Map)["t1"]["messages"].append({"id": f"m{i}", "text": "why 42?"})


def timed(room: Room, who: Member, batch: list[bytes]) -> list[float]:
    """Microseconds per ``room.receive`` call."""
    out = []
    for frame in batch:
        started = time.perf_counter()
        room.receive(who, frame)
        out.append((time.perf_counter() - started) * 1e6)
    return out


def stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_us": round(statistics.median(ordered), 1),
        "p95_us": round(ordered[int(len(ordered) * 0.95) - 1], 1),
        "mean_us": round(statistics.fmean(ordered), 1),
        "n": len(ordered),
    }


async def main(updates: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = SqlStore(f"sqlite:///{tmp}/bench.db")
        await store.open()
        try:
            # Editors: the same keystrokes into a 100 KB room, without and with the check installed,
            # interleaved (after a warm-up) so machine noise hits both alike; best median of three.
            checks = (
                ("default check", WriteCheck(), False),
                ("ReviewerWrites", ReviewerWrites(), False),
                ("ReviewerWrites + ReviewGuard", ReviewerWrites(), True),
            )
            runs: dict[str, list[dict[str, float]]] = {label: [] for label, _, _ in checks}
            for attempt in range(4):
                for label, check, guarded in checks:
                    room = await new_room(store, f"editor-{label}-{attempt}", check, Counting())
                    seed(room, 100_000)
                    if guarded:
                        guard(room)
                    editor = member(room, Role.EDITOR, "editor")
                    figures = stats(timed(room, editor, frames(room, updates, keystroke)))
                    if attempt:
                        runs[label].append(figures)
            for label, figures in runs.items():
                results[f"editor keystroke, {label}"] = min(figures, key=lambda r: r["median_us"])
            # The outdated-anchor check a guarded room runs at most every 0.1 s while it changes.
            room = await new_room(store, "outdated", WriteCheck(), Counting())
            seed(room, 100_000)
            with room.local_change(SEED) as doc:
                for i in range(50):
                    review.create_thread(
                        doc,
                        path="pkg/mod0.py",
                        start=i * 100,
                        end=i * 100 + 40,
                        message=review.message_entry("?", author="u", name="U"),
                        by="u",
                    )
            checker = guard(room)
            samples = []
            for _ in range(50):
                started = time.perf_counter()
                checker._check(room)
                samples.append((time.perf_counter() - started) * 1e6)
            results["outdated check, 50 open threads"] = stats(samples)
            # Reviewers: comments (allowed) and file edits (refused), by document size.
            for size in (10_000, 100_000, 1_000_000):
                count = max(20, min(updates, 200, 20_000_000 // size))
                listener = Counting()
                room = await new_room(store, f"reviewer-{size}", ReviewerWrites(), listener)
                seed(room, size)
                kb = len(room.doc.get_update()) // 1000
                reviewer = member(room, Role.REVIEWER, "reviewer")
                allowed = timed(room, reviewer, frames(room, count, comment))
                assert listener.dropped == 0, "a reviewer comment was refused"
                refused = timed(room, reviewer, frames(room, 1, keystroke))
                # Every later update of a client whose edit was refused builds on it: refused too.
                assert listener.dropped == 1, "a reviewer file edit was let through"
                results[f"reviewer comment, {kb} KB doc"] = stats(allowed)
                results[f"reviewer file edit (refused), {kb} KB doc"] = {"us": round(refused[0], 1)}
        finally:
            await store.close()
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=2000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    figures = asyncio.run(main(args.updates))
    for name, values in figures.items():
        print(f"{name:45s} {values}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
