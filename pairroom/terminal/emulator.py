"""What a late joiner (or a viewer who fell behind) is sent first: ANSI that redraws the screen.

The emulator is ``pyte`` 0.8.2, fed lazily. The live stream never waits on it: output is only
appended to a bounded tail (and a few modes are tracked with one regular expression per chunk).
When a snapshot is asked for, a fresh pyte screen is fed the tail in a worker thread and rendered
back to ANSI. pyte parses 0.2-0.6 MB/s, so the tail is bounded (``TAIL_CHARS``): the screen a shell
shows depends only on its last few thousand characters, and a snapshot costs at most ~0.1-0.2 s of a
worker thread, once per output change (it is cached until the next output).

pyte has no alternate screen (selectel/pyte#90), which full-screen programs (vim, less, htop) use.
So the stream is split here at ``ESC[?1049h``/``ESC[?1049l`` (and 1047, 47): what came before
the switch feeds the normal screen, what came after feeds a second pyte screen, and the snapshot
redraws the normal screen, switches with ``ESC[?1049h`` and redraws the alternate one, as xterm.js
itself would have them. Cursor visibility, bracketed paste and application cursor keys are tracked
the same way and restored at the end of the snapshot.

Why not ``@xterm/headless`` in a Node helper (40-130x faster, exact same parser as the browser):
it needs Node at run time (the Docker image has none) and a supervised sidecar per node; the lazy
pyte above keeps the live path free of any parsing, which is what the flood requirement needs. The
helper remains the upgrade path if snapshots of busy full-screen programs prove too lossy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pyte
from pyte.screens import Char

TAIL_CHARS = 48 * 1024  # of each screen's stream kept for a snapshot
SCROLLBACK_LINES = 500

_MODES = re.compile(r"\x1b\[\?(1049|1047|47|25|2004|1)([hl])|\x1bc")
_ALT = {"1049", "1047", "47"}

_FG = {name: code for code, name in pyte.graphics.FG_ANSI.items()}
_FG.update({name: code for code, name in pyte.graphics.FG_AIXTERM.items()})
_BG = {name: code for code, name in pyte.graphics.BG_ANSI.items()}
_BG.update({name: code for code, name in pyte.graphics.BG_AIXTERM.items()})


@dataclass(slots=True)
class Modes:
    alternate: bool = False
    cursor_hidden: bool = False
    bracketed_paste: bool = False
    app_cursor: bool = False

    def prefix(self) -> str:
        out = []
        if self.cursor_hidden:
            out.append("\x1b[?25l")
        if self.bracketed_paste:
            out.append("\x1b[?2004h")
        if self.app_cursor:
            out.append("\x1b[?1h")
        return "".join(out)


@dataclass(slots=True)
class _Tail:
    """The last characters of one screen's stream, cut at a line start when trimmed."""

    parts: list[str] = field(default_factory=list)
    size: int = 0

    def add(self, text: str) -> None:
        self.parts.append(text)
        self.size += len(text)
        if self.size > 2 * TAIL_CHARS:
            joined = "".join(self.parts)[-TAIL_CHARS:]
            cut = joined.find("\n")
            joined = joined[cut + 1:] if 0 <= cut < 4096 else joined
            self.parts, self.size = [joined], len(joined)

    def text(self) -> str:
        joined = "".join(self.parts)
        if len(joined) > TAIL_CHARS:
            joined = joined[-TAIL_CHARS:]
            cut = joined.find("\n")
            joined = joined[cut + 1:] if 0 <= cut < 4096 else joined
        self.parts, self.size = [joined], len(joined)
        return joined

    def clear(self) -> None:
        self.parts, self.size = [], 0


class Emulator:
    """Follows one terminal's output; ``snapshot()`` (blocking: call it in a thread) redraws it."""

    def __init__(self, rows: int, cols: int) -> None:
        self.rows, self.cols = rows, cols
        self.modes = Modes()
        self.normal = _Tail()
        self.alternate = _Tail()
        self._carry = ""
        self.version = 0  # bumped by every feed and resize: snapshots are cached per version

    def feed(self, text: str) -> None:
        self.version += 1
        text, self._carry = self._carry + text, ""
        escape = text.rfind("\x1b", max(0, len(text) - 8))
        if escape >= 0 and not re.search(r"[A-Za-z]", text[escape + 2:]) and text[escape + 1:escape + 2] in ("[", ""):
            text, self._carry = text[:escape], text[escape:]  # a mode switch split across two reads
        position = 0
        for match in _MODES.finditer(text):
            if match.group(0) == "\x1bc":
                self._current().add(text[position:match.end()])
                position = match.end()
                self.modes = Modes(alternate=self.modes.alternate)
                continue
            number, on = match.group(1), match.group(2) == "h"
            if number in _ALT:
                self._current().add(text[position:match.start()])
                position = match.end()
                if on and not self.modes.alternate:
                    self.alternate.clear()
                self.modes.alternate = on
            elif number == "25":
                self.modes.cursor_hidden = not on
            elif number == "2004":
                self.modes.bracketed_paste = on
            elif number == "1":
                self.modes.app_cursor = on
        self._current().add(text[position:])

    def _current(self) -> _Tail:
        return self.alternate if self.modes.alternate else self.normal

    def resize(self, rows: int, cols: int) -> None:
        self.version += 1
        self.rows, self.cols = rows, cols

    def capture(self) -> tuple[str, str, Modes, int, int]:
        """What a snapshot needs, taken on the loop (cheap); ``render`` does the work in a thread."""
        return self.normal.text(), self.alternate.text(), Modes(**{
            "alternate": self.modes.alternate, "cursor_hidden": self.modes.cursor_hidden,
            "bracketed_paste": self.modes.bracketed_paste, "app_cursor": self.modes.app_cursor,
        }), self.rows, self.cols


def render(normal: str, alternate: str, modes: Modes, rows: int, cols: int) -> str:
    """ANSI that, written to a fresh terminal of ``rows`` x ``cols``, shows what the stream showed."""
    screen = pyte.HistoryScreen(cols, rows, history=SCROLLBACK_LINES)
    stream = pyte.Stream(screen)
    stream.feed(normal)
    history = [_line(screen.history.top[i], cols) for i in range(len(screen.history.top))]
    out = ["\x1b[0m\x1b[H\x1b[2J\x1b[3J"]
    lines = history + [_line(screen.buffer[y], cols) for y in range(rows)]
    out.append("\r\n".join(lines))
    out.append(f"\x1b[0m\x1b[{screen.cursor.y + 1};{screen.cursor.x + 1}H")
    if modes.alternate:
        alt = pyte.Screen(cols, rows)
        pyte.Stream(alt).feed(alternate)
        out.append("\x1b[?1049h\x1b[H\x1b[2J")
        out.append("\r\n".join(_line(alt.buffer[y], cols) for y in range(rows)))
        out.append(f"\x1b[0m\x1b[{alt.cursor.y + 1};{alt.cursor.x + 1}H")
    out.append(modes.prefix())
    return "".join(out)


_DEFAULT_STYLE = ("default", "default", False, False, False, False, False, False)


def _line(row: dict[int, Char], cols: int) -> str:
    """One screen line as text with SGR sequences, trailing blanks trimmed."""
    cells = [row[x] for x in range(cols)] if row else []
    last = len(cells)
    while last > 0 and cells[last - 1].data in (" ", "") and _plain(cells[last - 1]):
        last -= 1
    out: list[str] = []
    current: tuple[object, ...] = _DEFAULT_STYLE
    for cell in cells[:last]:
        style = (cell.fg, cell.bg, cell.bold, cell.italics, cell.underscore, cell.reverse, cell.strikethrough, cell.blink)
        if style != current:
            out.append(_sgr(cell))
            current = style
        out.append(cell.data)
    if current != _DEFAULT_STYLE:
        out.append("\x1b[0m")
    return "".join(out)


def _plain(cell: Char) -> bool:
    return cell.bg == "default" and not cell.reverse and not cell.underscore


def _color(value: str, table: dict[str, int], truecolor: int) -> str | None:
    if value == "default":
        return None
    if value in table:
        return str(table[value])
    if re.fullmatch(r"[0-9a-fA-F]{6}", value):
        r, g, b = int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)
        return f"{truecolor};2;{r};{g};{b}"
    return None


def _sgr(cell: Char) -> str:
    codes = ["0"]
    if cell.bold:
        codes.append("1")
    if cell.italics:
        codes.append("3")
    if cell.underscore:
        codes.append("4")
    if cell.blink:
        codes.append("5")
    if cell.reverse:
        codes.append("7")
    if cell.strikethrough:
        codes.append("9")
    fg = _color(cell.fg, _FG, 38)
    if fg:
        codes.append(fg)
    bg = _color(cell.bg, _BG, 48)
    if bg:
        codes.append(bg)
    return "\x1b[" + ";".join(codes) + "m"
