"""Jupyter IOPub messages to nbformat outputs, and the per-run output cap.

The cap counts the JSON size of what a run keeps. The output that crosses it is cut (a stream keeps
its first bytes; anything else is dropped whole), a ``{"output_type": "truncated", "limit": cap}``
marker follows, and everything after is discarded, so a 50 MB print costs the document 1 MiB.
Rich outputs keep their MIME bundles as the kernel sent them (images are base64 already).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
CELL = re.compile(r"Cell In\[\d+\], line (\d+)")
FRAME = re.compile(r"File ((?:~|/)[^\s:]*):(\d+)")  # IPython writes the kernel's home (the room) as ~
LIBRARY = re.compile(r".*/(?:site-packages|dist-packages|lib/python3(?:\.\d+)?)/")


def to_output(msg_type: str, content: dict[str, Any]) -> dict[str, Any] | None:
    """The nbformat output for an IOPub message, or None for messages that are not outputs.

    The kernel runs the room's code, which can send any message it likes: every field is checked and
    anything of the wrong type becomes an empty value, so what reaches the document is always the
    shape docs/doc-schema.md describes."""
    if msg_type == "stream":
        name = content.get("name")
        return {"output_type": "stream", "name": name if name in ("stdout", "stderr") else "stdout",
                "text": _text(content.get("text"))}
    if msg_type in ("display_data", "update_display_data"):
        return {"output_type": "display_data", "data": _bundle(content.get("data")),
                "metadata": _bundle(content.get("metadata"))}
    if msg_type == "execute_result":
        count = content.get("execution_count")
        return {
            "output_type": "execute_result",
            "execution_count": count if isinstance(count, int) and not isinstance(count, bool) else None,
            "data": _bundle(content.get("data")),
            "metadata": _bundle(content.get("metadata")),
        }
    if msg_type == "error":
        traceback = content.get("traceback")
        return {
            "output_type": "error",
            "ename": _text(content.get("ename")),
            "evalue": _text(content.get("evalue")),
            "traceback": [_text(line) for line in traceback] if isinstance(traceback, list) else [],
        }
    return None


MAX_DEPTH = 32
"""How deep a MIME bundle's JSON value may nest (``application/json`` outputs); deeper is dropped."""


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _bundle(value: object) -> dict[str, Any]:
    """A MIME bundle (or metadata): string keys, JSON values no deeper than MAX_DEPTH, finite numbers."""
    if not isinstance(value, dict):
        return {}
    return {key: item for key, item in value.items() if isinstance(key, str) and _plain_json(item, MAX_DEPTH)}


def _plain_json(value: object, depth: int) -> bool:
    """JSON that the document can hold: no NaN or infinity, string keys, bounded nesting (iterative)."""
    stack = [(value, depth)]
    while stack:
        item, left = stack.pop()
        if isinstance(item, (str, bool)) or item is None:
            continue
        if isinstance(item, int):
            if abs(item) > 2**53:
                return False
            continue
        if isinstance(item, float):
            if item != item or item in (float("inf"), float("-inf")):
                return False
            continue
        if left <= 0:
            return False
        if isinstance(item, list):
            stack.extend((child, left - 1) for child in item)
        elif isinstance(item, dict):
            if not all(isinstance(key, str) for key in item):
                return False
            stack.extend((child, left - 1) for child in item.values())
        else:
            return False
    return True


def size_of(output: dict[str, Any]) -> int:
    return len(json.dumps(output, ensure_ascii=False).encode())


@dataclass(slots=True)
class OutputCap:
    """Admits outputs until ``limit`` bytes, then one truncation marker, then nothing."""

    limit: int
    used: int = 0
    truncated: bool = False
    dropped: int = field(default=0)

    def admit(self, output: dict[str, Any]) -> list[dict[str, Any]]:
        """What to keep of ``output``: itself, a cut stream plus the marker, just the marker, or nothing."""
        if self.truncated:
            self.dropped += 1
            return []
        size = size_of(output)
        if self.used + size <= self.limit:
            self.used += size
            return [output]
        self.truncated = True
        kept: list[dict[str, Any]] = []
        if output["output_type"] == "stream":
            room = self.limit - self.used - size_of({**output, "text": ""})
            if room > 0:
                text = output["text"].encode()[:room].decode(errors="ignore")
                # JSON escaping can grow the text; trim until it fits.
                while text and self.used + size_of({**output, "text": text}) > self.limit:
                    text = text[: max(0, len(text) - max(1, len(text) // 16))]
                if text:
                    cut = {**output, "text": text}
                    self.used += size_of(cut)
                    kept.append(cut)
        kept.append(marker(self.limit))
        return kept


def shown_path(path: str, roots: tuple[str, ...]) -> str:
    """A path as the room may see it: relative to the room's folder, a library's module path, or the
    file's name; never where the server keeps things."""
    if path.startswith("~/"):
        return path[2:]
    for root in roots:
        if path.startswith(root.rstrip("/") + "/"):
            return path[len(root.rstrip("/")) + 1 :]
    library = LIBRARY.match(path)
    if library:
        return path[library.end() :]
    return path.rsplit("/", 1)[-1]


def room_traceback(output: dict[str, Any], label: str, roots: tuple[str, ...]) -> dict[str, Any]:
    """An error output told in the room's terms: ``main.py, line 4`` for the run's code (``label``)
    instead of ``Cell In[2], line 4``, and frames in the room's files or libraries without the server's
    paths. The colours go too: the page shows tracebacks as plain text."""

    def frame(match: re.Match[str]) -> str:
        return f"File {shown_path(match.group(1), roots)}, line {match.group(2)}"

    def clean(text: str) -> str:
        text = CELL.sub(lambda m: f"{label}, line {m.group(1)}", ANSI.sub("", text))
        text = FRAME.sub(frame, text)
        for root in roots:
            text = text.replace(root.rstrip("/") + "/", "")
        return text

    lines = output.get("traceback")
    return {
        **output,
        "evalue": clean(str(output.get("evalue", ""))),
        "traceback": [clean(str(line)) for line in lines] if isinstance(lines, list) else [],
    }


def marker(limit: int) -> dict[str, Any]:
    return {"output_type": "truncated", "limit": limit}


def kernel_error(ename: str, evalue: str) -> dict[str, Any]:
    """An error output the server writes itself (kernel died, time limit, restart)."""
    return {"output_type": "error", "ename": ename, "evalue": evalue, "traceback": []}
