"""The terminals' recordings, read back from the room's timeline as asciicast v2.

Terminals store their output, resizes and markers as ``terminal-cast`` events (batches; the format
is ``pairroom/protocol/asciicast.py``); this puts each terminal's batches back into one recording,
for the replay page (``GET /api/rooms/{room}/casts``), for ``pairroom export --casts`` and for
anyone with an asciicast player.

The batches are the bulk of a room's events (up to 16 MiB a terminal), so they are read from the
start of the earliest terminal that matters, not from the room's beginning: the small ``terminal``
marks (``started``, ``ended``) say which terminals were open in a session and since when.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from pairroom.protocol.asciicast import CAST_KIND, TERMINAL_KIND, TerminalCast, assemble
from pairroom.recording.history_store import HistoryStore

TERMINAL_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SLACK = timedelta(seconds=2)  # a cast's times count from its start in whole seconds, before the mark


async def terminal_casts(
    db: HistoryStore,
    room: str,
    since: datetime | None = None,
    until: datetime | None = None,
    terminal: str | None = None,
) -> list[TerminalCast]:
    """Every terminal (or just ``terminal``) that printed, resized or ran a command between
    ``since`` and ``until``, or was still open at ``since``: its whole recording up to ``until`` (a
    screen at ``since`` needs the output before it). In the order the terminals started."""
    started: dict[str, datetime] = {}
    ended: dict[str, datetime] = {}
    for mark in await db.events(room, None, until, kinds=(TERMINAL_KIND,)):
        tid = mark.data.get("terminal")
        if not isinstance(tid, str) or (terminal is not None and tid != terminal):
            continue
        if mark.data.get("event") == "started":
            started.setdefault(tid, mark.at)
        elif mark.data.get("event") == "ended":
            ended[tid] = mark.at
    open_then = {tid for tid in started if since is None or tid not in ended or ended[tid] >= since}
    if terminal is not None:
        read_from = started.get(terminal)  # None (no started mark recorded): from the room's start
    elif since is None:
        read_from = None  # the whole recording
    else:
        read_from = min([since, *(started[tid] for tid in open_then)])
    events = await db.events(room, read_from - _SLACK if read_from else None, until, kinds=(CAST_KIND,))
    casts = assemble([event.data for event in events])
    low = since.timestamp() if since is not None else float("-inf")
    return [
        cast
        for cast in casts
        if (terminal is None or cast.terminal == terminal)
        and (since is None or cast.terminal in open_then or cast.end >= low)
    ]
