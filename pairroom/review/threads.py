"""Review threads in the room document (``reviews`` in docs/doc-schema.md): anchors, messages, status.

A thread is anchored to a range of a file with two Yjs relative positions (pycrdt ``StickyIndex``),
stored in the binary form ``Y.encodeRelativePosition`` writes, so y-codemirror and the browser read
the same anchors the server writes. The start sticks to the range's first character (``Assoc.AFTER``)
and the end to its last (``Assoc.BEFORE``): text typed right before or right after the range stays
outside it, text typed inside grows it, and the anchors follow concurrent edits from any client.

When every character of the range is deleted, both anchors collapse onto one point. An empty range
can only mean that (threads are created on non-empty ranges), so the thread is marked ``outdated``
instead of pointing at whatever code now sits there. Deleting or renaming the file does the same:
the old ``Y.Text`` and its characters are deleted with it.

Indices: pycrdt counts ``Y.Text`` offsets in UTF-8 bytes, Yjs in UTF-16 units, people in characters.
This module takes and returns character (code point) offsets and lines and converts at the edge.

Every function here works on a ``Doc`` inside a transaction the caller opened (``room.local_change``
for writes), so a change is one update, broadcast and logged like any edit.
"""

from __future__ import annotations

import base64
import secrets
import time
from dataclasses import dataclass
from typing import Any

from pycrdt import Array, Assoc, Doc, Map, StickyIndex, Text

STATUSES = ("open", "resolved", "outdated")
MAX_MESSAGE_TEXT = 8192
MAX_SUGGESTION = 64 * 1024
BINARY = (bytes, bytearray)  # a Y.Map gives Uint8Array values back as bytearray


class ReviewError(Exception):
    """A review request that cannot be done: ``kind`` is ``invalid``, ``missing`` or ``conflict``."""

    STATUS = {"invalid": 400, "missing": 404, "conflict": 409}

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason

    @property
    def status(self) -> int:
        """The HTTP status the routes answer with (``Review.http_errors``)."""
        return self.STATUS.get(self.kind, 400)


def now_ms() -> int:
    return int(time.time() * 1000)


def new_id() -> str:
    return secrets.token_urlsafe(9)


# -- offsets --------------------------------------------------------------------------------------


def byte_offset(content: str, index: int) -> int:
    """The pycrdt (UTF-8) offset of character ``index`` in ``content``."""
    return len(content[:index].encode())


def char_index(content: str, offset: int) -> int:
    """The character index of pycrdt (UTF-8) offset ``offset`` in ``content``."""
    return len(content.encode()[:offset].decode(errors="ignore"))


def line_range(content: str, first: int, last: int) -> tuple[int, int]:
    """Character range of lines ``first``..``last`` (1-based, inclusive), without the last newline."""
    lines = content.split("\n")
    if not 1 <= first <= last <= len(lines):
        raise ReviewError("invalid", f"lines {first}-{last} are outside the file's {len(lines)} lines")
    start = sum(len(line) + 1 for line in lines[: first - 1])
    end = sum(len(line) + 1 for line in lines[:last]) - 1
    return start, end


def line_of(content: str, index: int) -> int:
    return content.count("\n", 0, index) + 1


# -- anchors --------------------------------------------------------------------------------------


def anchor(text: Text, start: int, end: int) -> tuple[bytes, bytes]:
    """Encoded relative positions for the character range [start, end) of ``text``."""
    content = str(text)
    if not 0 <= start < end <= len(content):
        raise ReviewError("invalid", f"range {start}-{end} is not a non-empty range of a {len(content)}-character file")
    first = StickyIndex.new(text, byte_offset(content, start), Assoc.AFTER)
    last = StickyIndex.new(text, byte_offset(content, end), Assoc.BEFORE)
    return first.encode(), last.encode()


@dataclass(frozen=True, slots=True)
class Resolved:
    """Where a thread's anchors point now, in characters; ``gone`` when the range was deleted."""

    start: int
    end: int
    gone: bool


def resolve(doc: Doc, thread: Map) -> Resolved:
    offsets = _offsets(doc, thread)
    if offsets is None:
        return Resolved(0, 0, True)
    text, start, end = offsets
    content = str(text)
    return Resolved(char_index(content, start), char_index(content, end), False)


def is_gone(doc: Doc, thread: Map, files: Map | None = None) -> bool:
    """Whether the thread's anchored range was deleted (cheaper than ``resolve``: no text is read)."""
    return _offsets(doc, thread, files) is None


def _offsets(doc: Doc, thread: Map, files: Map | None = None) -> tuple[Text, int, int] | None:
    """The thread's file and its anchors' pycrdt offsets, or None when the range is gone."""
    files = files if files is not None else doc.get("files", type=Map)
    path, start_bytes, end_bytes = thread.get("path"), thread.get("start"), thread.get("end")
    text = files.get(path) if isinstance(path, str) else None
    if not isinstance(text, Text) or not isinstance(start_bytes, BINARY) or not isinstance(end_bytes, BINARY):
        return None
    try:
        start = StickyIndex.decode(bytes(start_bytes), text).get_index()
        end = StickyIndex.decode(bytes(end_bytes), text).get_index()
    except (ValueError, RuntimeError):
        return None  # not a relative position, or one this document never had
    if start is None or end is None or not 0 <= start < end <= len(text):
        return None
    return text, start, end


# -- threads --------------------------------------------------------------------------------------


def reviews_of(doc: Doc) -> Map:
    return doc.get("reviews", type=Map)


def thread_of(doc: Doc, thread_id: str) -> Map:
    thread = reviews_of(doc).get(thread_id)
    if not isinstance(thread, Map):
        raise ReviewError("missing", f"no review thread {thread_id!r}")
    return thread


def message_entry(
    text: Any, *, author: str, name: str, run: Any = None, at: int | None = None, entry_id: str | None = None
) -> dict[str, Any]:
    """A thread message as the server stores it (author, name and time are the server's)."""
    if not isinstance(text, str) or not text.strip() or len(text.encode()) > MAX_MESSAGE_TEXT:
        raise ReviewError("invalid", f"text must be a non-empty string of at most {MAX_MESSAGE_TEXT} bytes")
    if run is not None and (not isinstance(run, str) or not 0 < len(run) <= 64):
        raise ReviewError("invalid", "run must be a run id")
    return {
        "id": entry_id or new_id(),
        "author": author,
        "name": name[:64],
        "at": at if at is not None else now_ms(),
        "text": text,
        "run": run,
    }


def check_run(doc: Doc, run_id: str | None) -> None:
    """Evidence must point at a run the room has (its outputs are read from ``runs``)."""
    if run_id is not None and not isinstance(doc.get("runs", type=Map).get(run_id), Map):
        raise ReviewError("invalid", f"no run {run_id!r} in this room")


def create_thread(
    doc: Doc,
    *,
    path: str,
    start: int,
    end: int,
    message: dict[str, Any],
    by: str,
    suggestion: str | None = None,
    review_pass: str | None = None,
) -> str:
    text = doc.get("files", type=Map).get(path)
    if not isinstance(text, Text):
        raise ReviewError("invalid", f"no file {path!r} in this room")
    if suggestion is not None and (not isinstance(suggestion, str) or len(suggestion.encode()) > MAX_SUGGESTION):
        raise ReviewError("invalid", f"suggestion must be a string of at most {MAX_SUGGESTION} bytes")
    check_run(doc, message.get("run"))
    start_bytes, end_bytes = anchor(text, start, end)
    thread_id = new_id()
    fields: dict[str, Any] = {
        "path": path,
        "start": start_bytes,
        "end": end_bytes,
        "status": "open",
        "messages": Array([message]),
        "suggestion": suggestion,
        "createdAt": message["at"],
        "by": by,
    }
    if review_pass is not None:
        fields["pass"] = review_pass
    reviews_of(doc)[thread_id] = Map(fields)
    return thread_id


def add_message(doc: Doc, thread_id: str, message: dict[str, Any]) -> None:
    thread = thread_of(doc, thread_id)
    check_run(doc, message.get("run"))
    messages = thread.get("messages")
    if isinstance(messages, Array):
        messages.append(message)
    else:
        thread["messages"] = Array([message])


def set_status(doc: Doc, thread_id: str, status: str) -> None:
    if status not in STATUSES:
        raise ReviewError("invalid", f"status must be one of {', '.join(STATUSES)}")
    thread = thread_of(doc, thread_id)
    if status == "open" and is_gone(doc, thread):
        raise ReviewError("conflict", "the anchored code was deleted; the thread stays outdated")
    thread["status"] = status


def apply_suggestion(doc: Doc, thread_id: str, message: dict[str, Any]) -> Resolved:
    """Replace the anchored range with the suggestion, as an ordinary edit of the file.

    The thread is re-anchored on the inserted text and resolved, with ``message`` saying so.
    Raises ReviewError when there is no suggestion or the range is gone."""
    thread = thread_of(doc, thread_id)
    suggestion = thread.get("suggestion")
    if not isinstance(suggestion, str):
        raise ReviewError("conflict", "the thread has no suggestion")
    where = resolve(doc, thread)
    if where.gone:
        raise ReviewError("conflict", "the anchored code was deleted; nothing to replace")
    text = doc.get("files", type=Map)[thread["path"]]
    content = str(text)
    first, last = byte_offset(content, where.start), byte_offset(content, where.end)
    # Insert first, then delete: the new text never shares a position with the deleted one.
    text.insert(last, suggestion)
    del text[first:last]
    size = len(suggestion)
    if size:
        thread["start"], thread["end"] = anchor(text, where.start, where.start + size)
    thread["suggestion"] = None
    thread["status"] = "resolved"
    add_message(doc, thread_id, message)
    return Resolved(where.start, where.start + size, size == 0)


def mark_outdated(doc: Doc) -> list[str]:
    """Mark every open thread whose anchored range was deleted; return their ids."""
    marked = []
    files = doc.get("files", type=Map)
    for thread_id, thread in reviews_of(doc).items():
        if isinstance(thread, Map) and thread.get("status") == "open" and is_gone(doc, thread, files):
            thread["status"] = "outdated"
            marked.append(thread_id)
    return marked


def open_threads(doc: Doc) -> bool:
    return any(isinstance(t, Map) and t.get("status") == "open" for t in reviews_of(doc).values())


# -- reading --------------------------------------------------------------------------------------


def run_evidence(doc: Doc, run_id: str | None) -> dict[str, Any] | None:
    """A run referenced by a message: its status, code and outputs as text (None if absent)."""
    if not run_id:
        return None
    run = doc.get("runs", type=Map).get(run_id)
    if not isinstance(run, Map):
        return {"id": run_id, "missing": True}
    data = run.to_py() or {}
    return {
        "id": run_id,
        "status": data.get("status"),
        "code": data.get("code"),
        "path": data.get("path"),
        "output": outputs_text(data.get("outputs") or []),
    }


def outputs_text(outputs: list[Any]) -> str:
    """Jupyter outputs (nbformat) as plain text, for threads and exports."""
    parts = []
    for out in outputs:
        if not isinstance(out, dict):
            continue
        kind = out.get("output_type")
        if kind == "stream":
            parts.append(str(out.get("text", "")))
        elif kind in ("execute_result", "display_data"):
            data = out.get("data") or {}
            if "text/plain" in data:
                plain = data["text/plain"]
                parts.append(("".join(plain) if isinstance(plain, list) else str(plain)) + "\n")
            else:
                parts.append(f"[{', '.join(sorted(data))}]\n")
        elif kind == "error":
            parts.append(f"{out.get('ename')}: {out.get('evalue')}\n")
        elif kind == "truncated":
            parts.append(f"[output truncated at {out.get('limit')} bytes]\n")
    return "".join(parts)


def thread_view(doc: Doc, thread_id: str, thread: Map) -> dict[str, Any]:
    """A thread as the HTTP API shows it: where its anchors point now, and its messages with evidence."""
    data = thread.to_py() or {}
    where = resolve(doc, thread)
    view: dict[str, Any] = {
        "id": thread_id,
        "path": data.get("path"),
        "status": data.get("status"),
        "suggestion": data.get("suggestion"),
        "createdAt": _int(data.get("createdAt")),
        "by": data.get("by"),
        "pass": data.get("pass"),
        "anchor": {
            "start": _b64(data.get("start")),
            "end": _b64(data.get("end")),
        },
        "range": None,
        "messages": [],
    }
    if not where.gone:
        content = str(doc.get("files", type=Map)[data["path"]])
        view["range"] = {
            "start": where.start,
            "end": where.end,
            "line": line_of(content, where.start),
            "endLine": line_of(content, max(where.start, where.end - 1)),
            "code": content[where.start : where.end],
        }
    for message in data.get("messages") or []:
        if isinstance(message, dict):
            view["messages"].append(
                {**message, "at": _int(message.get("at")), "evidence": run_evidence(doc, message.get("run"))}
            )
    return view


def list_threads(doc: Doc) -> list[dict[str, Any]]:
    views = [thread_view(doc, tid, t) for tid, t in reviews_of(doc).items() if isinstance(t, Map)]
    return sorted(views, key=lambda v: (v.get("createdAt") or 0, v["id"]))


def _b64(value: Any) -> str | None:
    return base64.b64encode(value).decode() if isinstance(value, BINARY) else None


def _int(value: Any) -> Any:
    """Numbers come back from the document as floats (JS numbers); times are integers."""
    return int(value) if isinstance(value, float) and value.is_integer() else value
