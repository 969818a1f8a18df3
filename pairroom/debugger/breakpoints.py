"""Breakpoints in the room document: the root ``breakpoints``, checked, stamped and anchored by the server.

Shape (docs/debugger.md)::

    breakpoints (root Y.Map)  "path:line" ("main.py:12") -> {"author", "authorName", "condition"?,
                                                               "hitCondition"?, "logMessage"?, "anchor"}

A root of its own, with one flat key per breakpoint: a root type exists in every copy of the
document without anyone creating it, so no client ever creates a map that another client's map
could replace. (Under the earlier shape, ``debug.breakpoints`` -> path -> line, two people setting
the first breakpoint of a file at the same instant each created the file's map under the same key,
and Yjs kept one: the other's breakpoint was lost.) Keys of one map always merge; two people on one
line make one entry. Stored documents and older pages with the earlier shape are migrated
(``migrate_legacy``).

Anyone who may edit the document writes entries straight into it (a browser toggles a breakpoint
without an HTTP round trip). Right after a client's update the server corrects what it wrote (``normalize``): a value
that is not a breakpoint is removed, ``author`` is the sender (never what the client claims), text
fields are capped, at most ``MAX_BREAKPOINTS`` per room are kept, and each new entry gets ``anchor``: a
Yjs relative position (pycrdt ``StickyIndex``) at the start of its line, the mechanism review threads
use. When a client edits a file, ``follow_edits`` resolves the anchors and moves every entry whose
line moved to its new key, so a breakpoint stays on its code for everyone.

Only the breakpoints a session can use are sent to the adapter (``sendable``): Python files that exist,
lines inside the file. The others stay in the document and are reported unverified with the reason.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from pycrdt import Assoc, Map, StickyIndex, Text

MAX_BREAKPOINTS = 200
MAX_FIELD = 1024  # condition, hitCondition, logMessage: bytes each
CLIENT_FIELDS = ("condition", "hitCondition", "logMessage")
MAX_LINE = 1_000_000
ROOT = "breakpoints"
LEGACY = "breakpoints"  # the earlier place: a key of the ``debug`` root, path -> line -> entry


def key_of(path: str, line: int | str) -> str:
    return f"{path}:{line}"


def split_key(key: object) -> tuple[str, str] | None:
    """``("main.py", "12")`` of ``"main.py:12"``; None when it is not a path and a line."""
    if not isinstance(key, str):
        return None
    path, sep, line = key.rpartition(":")
    if not sep or not path or len(path) > 255 or parse_line(line) is None:
        return None
    return path, line


@dataclass(frozen=True, slots=True)
class Breakpoint:
    path: str
    line: int
    author: str
    author_name: str
    condition: str | None = None
    hit_condition: str | None = None
    log_message: str | None = None

    def dap(self) -> dict[str, Any]:
        """The DAP ``SourceBreakpoint``."""
        out: dict[str, Any] = {"line": self.line}
        if self.condition:
            out["condition"] = self.condition
        if self.hit_condition:
            out["hitCondition"] = self.hit_condition
        if self.log_message:
            out["logMessage"] = self.log_message
        return out


def parse_line(key: object) -> int | None:
    if not isinstance(key, str) or not key.isascii() or not key.isdigit():
        return None
    line = int(key)
    return line if 1 <= line <= MAX_LINE and str(line) == key else None


def line_starts(content: str) -> list[int]:
    """The UTF-8 byte offset (pycrdt's index) of each line's start."""
    starts = [0]
    offset = 0
    for line in content.split("\n")[:-1]:
        offset += len(line.encode()) + 1
        starts.append(offset)
    return starts


def encode_anchor(text: Text, line: int, starts: list[int]) -> str | None:
    """A relative position at the start of ``line`` (1-based) of ``text``, base64; None past the end."""
    if not 1 <= line <= len(starts):
        return None
    index = starts[line - 1]
    # At the very end of the text there is no character to stick to (pycrdt panics on AFTER there):
    # stick to the one before, which still moves with every edit above.
    assoc = Assoc.AFTER if index < len(text) else Assoc.BEFORE
    try:
        return base64.b64encode(StickyIndex.new(text, index, assoc).encode()).decode()
    except BaseException as exc:  # a panic inside the CRDT library is a BaseException
        if type(exc).__name__ != "PanicException":
            raise
        return None


def resolve_anchor(text: Text, anchor: object, content: str) -> int | None:
    """The line an anchor points at now, or None if it does not decode in this file."""
    if not isinstance(anchor, str):
        return None
    try:
        index = StickyIndex.decode(base64.b64decode(anchor, validate=True), text).get_index()
    except (ValueError, RuntimeError, binascii.Error):
        return None
    if index is None or not 0 <= index <= len(content.encode()):
        return None
    return content.encode()[:index].count(b"\n") + 1


def read(breakpoints: Map[Any]) -> list[Breakpoint]:
    """Every well-formed breakpoint of the room (``breakpoints`` is the root map)."""
    out: list[Breakpoint] = []
    for key, value in breakpoints.items():
        parsed = split_key(key)
        if parsed is None or not isinstance(value, dict):
            continue
        out.append(
            Breakpoint(
                parsed[0],
                int(parsed[1]),
                str(value.get("author", "")),
                str(value.get("authorName", "")),
                _text(value.get("condition")),
                _text(value.get("hitCondition")),
                _text(value.get("logMessage")),
            )
        )
    return sorted(out, key=lambda bp: (bp.path, bp.line))


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def by_path(breakpoints: list[Breakpoint]) -> dict[str, list[Breakpoint]]:
    out: dict[str, list[Breakpoint]] = {}
    for bp in breakpoints:
        out.setdefault(bp.path, []).append(bp)
    return out


def unusable(bp: Breakpoint, files: dict[str, str]) -> str | None:
    """Why a breakpoint cannot be sent to the adapter, or None if it can."""
    if not bp.path.endswith(".py"):
        return "not a Python file"
    content = files.get(bp.path)
    if content is None:
        return "no such file in the room"
    if bp.line > len(line_starts(content)):
        return "past the end of the file"
    return None


# -- the map, and corrections of what clients write ----------------------------------------------


def migrate_legacy(debug: Map[Any], breakpoints: Map[Any]) -> int:
    """Move what is under ``debug.breakpoints`` (the earlier shape: path -> Y.Map line -> entry) into
    the root, as flat keys, and delete it (in a server transaction). An entry already in the root
    wins. Returns how many entries moved."""
    legacy = debug.get(LEGACY)
    if legacy is None:
        return 0
    moved = 0
    if isinstance(legacy, Map):
        for path, lines in legacy.items():
            if not isinstance(lines, Map) or not path or len(path) > 255:
                continue
            for line, value in lines.items():
                key = key_of(path, line)
                if parse_line(line) is not None and isinstance(value, dict) and key not in breakpoints:
                    breakpoints[key] = value
                    moved += 1
    del debug[LEGACY]
    return moved


def normalize(
    breakpoints: Map[Any],
    files: Map[Any],
    known: dict[tuple[str, str], dict[str, Any]],
    author: str,
    author_name: str | None,
) -> int:
    """Correct the ``breakpoints`` root after a client's update (in a server transaction): remove
    what is not a breakpoint, stamp new or changed entries with ``author`` and an anchor, keep the
    room under ``MAX_BREAKPOINTS``. ``known`` is what the server last saw (updated here).
    ``author_name`` None (open mode: nobody is known by name) keeps the name the client wrote as
    ``author``, as chat and review do. Returns the number of entries removed."""
    removed = 0
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    texts: dict[str, tuple[Text | None, list[int]]] = {}
    for key in sorted(breakpoints.keys()):
        value = breakpoints.get(key)
        parsed = split_key(key)
        if parsed is None or not isinstance(value, dict) or len(seen) >= MAX_BREAKPOINTS:
            del breakpoints[key]
            removed += 1
            continue
        path, line_key = parsed
        if known.get(parsed) == value:
            seen[parsed] = value
            continue
        claimed = value.get("author")
        name = author_name if author_name is not None else (claimed[:64] if isinstance(claimed, str) else "")
        entry = {"author": author, "authorName": name or "Anonymous"}
        for field_name in CLIENT_FIELDS:
            field = value.get(field_name)
            if isinstance(field, str) and field and len(field.encode()) <= MAX_FIELD:
                entry[field_name] = field
        if path not in texts:
            text = files.get(path)
            texts[path] = (text, line_starts(str(text))) if isinstance(text, Text) else (None, [])
        text, starts = texts[path]
        if text is not None:
            anchor = encode_anchor(text, int(line_key), starts)
            if anchor is not None:
                entry["anchor"] = anchor
        if entry != value:
            breakpoints[key] = entry
        seen[parsed] = entry
    known.clear()
    known.update(seen)
    return removed


def follow_edits(
    breakpoints: Map[Any], files: Map[Any], paths: set[str], known: dict[tuple[str, str], dict[str, Any]]
) -> int:
    """Move the breakpoints of the edited ``paths`` to the lines their anchors point at now (in a
    server transaction). Two that land on one line become one (the first kept). Returns how many moved."""
    moved = 0
    by_file: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for key, value in breakpoints.items():
        parsed = split_key(key)
        if parsed is not None and parsed[0] in paths and isinstance(value, dict):
            by_file.setdefault(parsed[0], []).append((parsed[1], value))
    for path, entries in by_file.items():
        text = files.get(path)
        if not isinstance(text, Text):
            continue
        content = str(text)
        moves: list[tuple[str, str, dict[str, Any]]] = []
        for line_key, value in entries:
            now = resolve_anchor(text, value.get("anchor"), content)
            if now is not None and str(now) != line_key:
                moves.append((line_key, str(now), value))
        for line_key, _, _ in moves:
            del breakpoints[key_of(path, line_key)]
            known.pop((path, line_key), None)
        for _, new_line, value in moves:
            if key_of(path, new_line) in breakpoints:
                continue
            breakpoints[key_of(path, new_line)] = value
            known[(path, new_line)] = value
            moved += 1
    return moved
