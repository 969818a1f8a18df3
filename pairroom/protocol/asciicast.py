"""Terminal recordings on the room's timeline, as asciicast v2: the one format the terminals write and
the recorder stores, exports and replays. Pure: no I/O, no clock (times are passed in).

A terminal's output (``o``), resizes (``r``, ``"COLSxROWS"``) and markers (``m``) are asciicast v2
events, ``[t, code, data]`` with ``t`` in seconds since the terminal started. They reach the
timeline coalesced, never one row per write: a ``CastBatcher`` gathers them into batches of at most
``max_span`` seconds or ``max_bytes`` of data, and each batch is one event of kind ``terminal-cast``::

    {"terminal": "Xy3_a1", "name": "Terminal 1", "start": 1796482800, "width": 80, "height": 24,
     "events": [[0.0, "m", "shell started by Ada"], [0.412, "o", "$ "], ...]}

``start`` is the terminal's start in whole seconds since the epoch (asciicast's header
``timestamp``), so ``start + t`` is when an event happened on the room's clock, and ``width`` and
``height`` the size when the batch began. The stored event's ``at`` is its first event's time.

Who typed is never recorded as bytes: a command line becomes a marker in the cast ("Ada ran
`pytest -q`") and an event of kind ``terminal`` (``user`` the typist) on the timeline.

``assemble`` turns the stored batches back into one asciicast v2 file per terminal.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

CAST_KIND = "terminal-cast"  # batches of asciicast events
TERMINAL_KIND = "terminal"  # attribution marks: started, command, exited, ended, capped
CODES = ("o", "r", "m")  # output, resize, marker; input ("i") is never recorded
ENDED_MARKER = "terminal ended"  # the marker that ends the recording of a terminal that was ended
ENV = {"TERM": "xterm-256color", "SHELL": "/bin/bash"}


class CastError(ValueError):
    """A stored batch or a cast file that is not what this module writes."""


@dataclass(slots=True)
class CastBatch:
    """Some consecutive events of one terminal: one ``terminal-cast`` event on the timeline."""

    terminal: str
    name: str
    start: int
    width: int
    height: int
    events: list[list[Any]] = field(default_factory=list)
    size: int = 0  # characters of event data as stored, for the batcher's bound

    @property
    def first(self) -> float:
        """When the batch's first event happened, in seconds since the epoch."""
        return self.start + (self.events[0][0] if self.events else 0.0)

    def data(self) -> dict[str, Any]:
        return {
            "terminal": self.terminal,
            "name": self.name,
            "start": self.start,
            "width": self.width,
            "height": self.height,
            "events": self.events,
        }


class CastBatcher:
    """Coalesces one terminal's events into ``CastBatch``es: at most ``max_span`` seconds from its
    first event (the owner flushes on a timer, see ``due``) or ``max_bytes`` of data per batch."""

    def __init__(
        self,
        terminal: str,
        name: str,
        start: int,
        width: int,
        height: int,
        *,
        max_bytes: int = 64 * 1024,
        max_span: float = 1.0,
    ) -> None:
        self.terminal, self.name, self.start = terminal, name, start
        self.width, self.height = width, height
        self.max_bytes, self.max_span = max_bytes, max_span
        self.batch: CastBatch | None = None

    def add(self, t: float, code: str, data: str, size: int | None = None) -> CastBatch | None:
        """Add an event at ``t`` (seconds since ``start``); returns the batch it closed, if it did.
        ``size`` is what the event costs stored (its JSON, where control bytes take six characters
        each), if the caller knows it; else the data's length."""
        if code not in CODES:
            raise CastError(f"asciicast event code {code!r} is not recorded (only {', '.join(CODES)})")
        size = len(data) if size is None else size
        closed = None
        if self.batch is not None and (
            self.batch.size + size > self.max_bytes or t - self.batch.events[0][0] >= self.max_span
        ):
            closed = self.flush()
        if self.batch is None:
            self.batch = CastBatch(self.terminal, self.name, self.start, self.width, self.height)
        self.batch.events.append([round(t, 6), code, data])
        self.batch.size += size
        if code == "r":
            self.width, self.height = parse_size(data)
        return closed

    def due(self, t: float) -> bool:
        """Whether the open batch is ``max_span`` old at ``t``."""
        return self.batch is not None and t - self.batch.events[0][0] >= self.max_span

    def flush(self) -> CastBatch | None:
        batch, self.batch = self.batch, None
        return batch


def parse_size(data: str) -> tuple[int, int]:
    """``"COLSxROWS"`` (an ``r`` event's data) as (cols, rows)."""
    cols, sep, rows = data.partition("x")
    if not sep or not cols.isdigit() or not rows.isdigit():
        raise CastError(f"a resize is COLSxROWS, not {data!r}")
    return int(cols), int(rows)


def header(width: int, height: int, start: int, title: str) -> dict[str, Any]:
    return {"version": 2, "width": width, "height": height, "timestamp": start, "title": title, "env": ENV}


def event_line(t: float, code: str, data: str) -> str:
    return json.dumps([round(t, 6), code, data])


def cast_text(head: dict[str, Any], events: list[list[Any]]) -> str:
    """An asciicast v2 file: the header line, then one event a line."""
    return "\n".join([json.dumps(head), *(event_line(*e) for e in events)]) + "\n"


@dataclass(slots=True)
class TerminalCast:
    """One terminal's recording, put back together from its stored batches."""

    terminal: str
    name: str
    start: int
    width: int
    height: int
    events: list[list[Any]] = field(default_factory=list)

    @property
    def end(self) -> float:
        """When its last event happened, in seconds since the epoch."""
        return self.start + (self.events[-1][0] if self.events else 0.0)

    def text(self, title: str | None = None) -> str:
        return cast_text(header(self.width, self.height, self.start, title or self.name), self.events)

    def describe(self) -> dict[str, Any]:
        return {
            "terminal": self.terminal,
            "name": self.name,
            "start": self.start,
            "end": round(self.end, 6),
            "width": self.width,
            "height": self.height,
            "events": len(self.events),
        }


def check_batch(data: Any) -> CastBatch:
    """A stored ``terminal-cast`` event's data, checked (an import may carry anything)."""
    if not isinstance(data, dict):
        raise CastError("a terminal-cast event's data is an object")
    terminal, name, start = data.get("terminal"), data.get("name"), data.get("start")
    width, height, events = data.get("width"), data.get("height"), data.get("events")
    if not isinstance(terminal, str) or not terminal or not isinstance(name, str):
        raise CastError("a terminal-cast event names its terminal")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (start, width, height)):
        raise CastError("a terminal-cast event has integer start, width and height")
    if not isinstance(events, list):
        raise CastError("a terminal-cast event holds a list of events")
    for event in events:
        if (
            not isinstance(event, list)
            or len(event) != 3
            or not isinstance(event[0], (int, float))
            or isinstance(event[0], bool)
            or not math.isfinite(event[0])
            or event[1] not in CODES
            or not isinstance(event[2], str)
        ):
            raise CastError(f"not an asciicast event: {str(event)[:80]}")
    return CastBatch(terminal, name, start, width, height, events)  # type: ignore[arg-type]


def assemble(batches: list[Any]) -> list[TerminalCast]:
    """The stored batches (``terminal-cast`` event data, in time order) as one recording per terminal,
    in the order the terminals started. A batch that is not what ``CastBatcher`` writes raises
    ``CastError``."""
    casts: dict[str, TerminalCast] = {}
    for raw in batches:
        batch = check_batch(raw)
        cast = casts.get(batch.terminal)
        if cast is None:
            cast = casts[batch.terminal] = TerminalCast(
                batch.terminal, batch.name, batch.start, batch.width, batch.height
            )
        last = cast.events[-1][0] if cast.events else 0.0
        for event in batch.events:
            t = max(float(event[0]), last)  # asciicast times never go back
            cast.events.append([t, event[1], event[2]])
            last = t
    return sorted(casts.values(), key=lambda c: (c.start, c.terminal))


def parse_cast(text: str) -> tuple[dict[str, Any], list[list[Any]]]:
    """Read an asciicast v2 file (as ``cast_text`` writes it) and check it: the header's version,
    size and timestamp; every event ``[t, code, str]`` with ``t`` never decreasing."""
    lines = [line for line in text.split("\n") if line.strip()]
    if not lines:
        raise CastError("an empty cast file")
    try:
        head = json.loads(lines[0])
        events = [json.loads(line) for line in lines[1:]]
    except ValueError as exc:
        raise CastError(f"not JSON lines: {exc}") from exc
    if not isinstance(head, dict) or head.get("version") != 2:
        raise CastError("the header is not asciicast version 2")
    for key in ("width", "height"):
        if not isinstance(head.get(key), int) or head[key] <= 0:
            raise CastError(f"the header's {key} is not a positive integer")
    last = 0.0
    for event in events:
        if not isinstance(event, list) or len(event) != 3 or not isinstance(event[2], str):
            raise CastError(f"not an asciicast event: {str(event)[:80]}")
        if not isinstance(event[0], (int, float)) or event[0] < last or not isinstance(event[1], str):
            raise CastError(f"event time {event[0]!r} goes back or is not a number")
        last = float(event[0])
    return head, events
