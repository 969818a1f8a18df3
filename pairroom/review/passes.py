"""Review passes: "start review" marks a version of the room and shows what changed since the last one.

A pass records the room's log position (``seq``) when it started, in the document under
``reviewPasses`` (see docs/doc-schema.md), so every member sees it. The version a pass marks is the
document as stored up to ``seq``; what changed since the previous pass is a text diff of the files
between the two versions, rebuilt from storage (the newest snapshot at or before the version, else
the log from its start, which is never rewritten). Nothing else is stored: the diff is recomputed
from the log whenever it is asked for.

When the recorder offers named versions, ``state_at`` is the one function to replace (a version's
document instead of a replay up to ``seq``); the pass keeps ``seq`` as its reference either way.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from pycrdt import Doc, Map, Text

from pairroom.review import threads as review
from pairroom.review.threads import ReviewError
from pairroom.storage.store import Store


@dataclass(frozen=True, slots=True)
class FileChange:
    path: str
    kind: str  # "added", "removed", "changed"
    diff: str


def passes_of(doc: Doc) -> Map:
    return doc.get("reviewPasses", type=Map)


def pass_of(doc: Doc, pass_id: str) -> dict[str, Any]:
    record = passes_of(doc).get(pass_id)
    if not isinstance(record, Map):
        raise ReviewError("missing", f"no review pass {pass_id!r}")
    return {"id": pass_id, **(record.to_py() or {})}


def list_passes(doc: Doc) -> list[dict[str, Any]]:
    records = [{"id": pid, **(p.to_py() or {})} for pid, p in passes_of(doc).items() if isinstance(p, Map)]
    for record in records:
        for key in ("seq", "since", "startedAt", "finishedAt"):
            record[key] = review._int(record.get(key))
    return sorted(records, key=lambda r: (r.get("seq") or 0, r.get("startedAt") or 0, r["id"]))


def start_pass(doc: Doc, *, seq: int, by: str, name: str, title: str | None) -> dict[str, Any]:
    """Record a pass at log position ``seq``; ``since`` is the previous pass's (0: the beginning)."""
    previous = list_passes(doc)
    since = max((int(p.get("seq") or 0) for p in previous), default=0)
    pass_id = review.new_id()
    record = {
        "seq": seq,
        "since": min(since, seq),
        "startedAt": review.now_ms(),
        "by": by,
        "name": name[:64],
        "title": (title or "")[:200],
        "status": "active",
    }
    passes_of(doc)[pass_id] = Map(record)
    return {"id": pass_id, **record}


def active_pass(doc: Doc) -> str | None:
    """The newest pass still active, which new threads created through the API belong to."""
    active = [p for p in list_passes(doc) if p.get("status") == "active"]
    return active[-1]["id"] if active else None


def threads_of_pass(doc: Doc, record: dict[str, Any]) -> list[dict[str, Any]]:
    """Threads created in the pass: tagged with its id, or (written by clients) created while it ran."""
    start = record.get("startedAt") or 0
    end = record.get("finishedAt") or float("inf")
    out = []
    for view in review.list_threads(doc):
        tagged = view.get("pass")
        if tagged == record["id"] or (not tagged and start <= (view.get("createdAt") or 0) <= end):
            out.append(view)
    return out


def summary(threads: list[dict[str, Any]]) -> dict[str, int]:
    counts = {status: 0 for status in review.STATUSES}
    for view in threads:
        if view.get("status") in counts:
            counts[view["status"]] += 1
    return counts


def finish_pass(doc: Doc, pass_id: str) -> dict[str, Any]:
    record = passes_of(doc).get(pass_id)
    if not isinstance(record, Map):
        raise ReviewError("missing", f"no review pass {pass_id!r}")
    if record.get("status") != "finished":
        record["status"] = "finished"
        record["finishedAt"] = review.now_ms()
    data = pass_of(doc, pass_id)
    threads = threads_of_pass(doc, data)
    counts = summary(threads)
    record["summary"] = counts
    return {**data, "summary": counts, "threads": threads}


async def state_at(store: Store, room: str, seq: int) -> Doc:
    """The room's document as stored up to log position ``seq``."""
    doc: Doc[Any] = Doc()
    if seq <= 0:
        return doc
    loaded = await store.load(room)
    parts: list[bytes] = []
    after = 0
    if loaded.snapshot is not None and loaded.snapshot.seq <= seq:
        parts.append(loaded.snapshot.data)
        after = loaded.snapshot.seq
    parts += [u.data for u in await store.read_updates(room, after, seq)]
    with doc.transaction():
        for part in parts:
            doc.apply_update(part)
    return doc


def files_of(doc: Doc) -> dict[str, str]:
    return {path: str(text) for path, text in doc.get("files", type=Map).items() if isinstance(text, Text)}


async def changes_between(store: Store, room: str, since: int, seq: int) -> list[FileChange]:
    before = files_of(await state_at(store, room, since))
    after = files_of(await state_at(store, room, seq))
    return diff_files(before, after)


def diff_files(before: dict[str, str], after: dict[str, str]) -> list[FileChange]:
    changes = []
    for path in sorted(before.keys() | after.keys()):
        old, new = before.get(path), after.get(path)
        if old == new:
            continue
        kind = "added" if old is None else "removed" if new is None else "changed"
        lines = difflib.unified_diff(
            (old or "").splitlines(keepends=True),
            (new or "").splitlines(keepends=True),
            fromfile="/dev/null" if old is None else f"a/{path}",
            tofile="/dev/null" if new is None else f"b/{path}",
        )
        changes.append(FileChange(path, kind, "".join(_ending(line) for line in lines)))
    return changes


def _ending(line: str) -> str:
    return line if line.endswith("\n") else line + "\n\\ No newline at end of file\n"
