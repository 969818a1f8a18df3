"""One shared terminal: its shell, who may type, what everyone sees, and its recording.

Bytes enter only through ``Terminal.input``, which checks the sender's right to write on every
frame (the role is read live, so an owner's grant, revoke or role change applies at once, with no
reconnect). A read-only member's keystrokes never reach the PTY: they get a notice instead.

Output path (one reader per terminal, no parsing on the way):

    PTY read --> rate cap (token bucket; over it the reader pauses: the program blocks on write)
             --> pending bytes --(at once after a quiet spell, then at most every FRAME_SECONDS)
             --> decode UTF-8 once
             --> emulator tail + recording + every viewer's bounded queue

A viewer whose queue passes ``viewer_queue_bytes`` has its backlog dropped and gets a fresh
snapshot instead (never a disconnect, never a stall of the others).
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pairroom.protocol.asciicast import (
    CAST_KIND,
    ENDED_MARKER,
    TERMINAL_KIND,
    CastBatch,
    CastBatcher,
    event_line,
    header,
)
from pairroom.rooms.identity import Principal, Role

from .pty import Shell
from .settings import TerminalSettings

if TYPE_CHECKING:
    from .emulator import Emulator

log = logging.getLogger("pairroom.terminal")

FRAME_SECONDS = 0.016
BATCH_SECONDS = 1.0  # the recording reaches the room's timeline at most this late, one event per batch
MAX_ROWS, MAX_COLS = 200, 500


def clamp_size(rows: Any, cols: Any) -> tuple[int, int]:
    """Absurd sizes are clamped, not refused: 1..200 rows, 1..500 columns."""

    def number(value: Any, default: int) -> int:
        return int(value) if isinstance(value, (int, float)) and value == value and abs(value) < 1e9 else default

    return max(1, min(MAX_ROWS, number(rows, 24))), max(1, min(MAX_COLS, number(cols, 80)))


@dataclass(eq=False)
class Viewer:
    """One websocket watching a terminal: a bounded queue of text frames and a sender."""

    principal: Principal
    send: Callable[[str], Awaitable[None]]
    max_bytes: int
    queue: collections.deque[str] = field(default_factory=collections.deque)
    queued: int = 0
    needs_snapshot: bool = True
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    snapshots: int = 0
    last_notice: float = 0.0
    overflowed: bool = False  # control frames were dropped too: the setup is sent again
    size: tuple[int, int] | None = None  # (rows, cols) this client reported, for the smallest policy

    def push(self, frame: str) -> None:
        if self.needs_snapshot:
            return  # a snapshot is coming, which includes this
        if self.queued + len(frame) > self.max_bytes:
            self.queue.clear()
            self.queued = 0
            self.needs_snapshot = True  # fell behind: a fresh screen instead of the backlog
        else:
            self.queue.append(frame)
            self.queued += len(frame)
        self.wake.set()

    def push_control(self, frame: str) -> None:
        """Frames that are not screen content (notices, proposals) survive a snapshot. A viewer that
        lets even those pile up past twice its cap starts over: a fresh setup and snapshot."""
        if self.queued + len(frame) > 2 * self.max_bytes:
            self.queue.clear()
            self.queued = 0
            self.needs_snapshot = True
            self.overflowed = True
        else:
            self.queue.append(frame)
            self.queued += len(frame)
        self.wake.set()


class Cast:
    """The terminal's asciicast v2 recording: output, resizes and markers, bounded by ``max_bytes``.

    Kept here for ``GET .../cast``, and handed to the room's timeline in batches (``sink``; the
    format and the batching are ``pairroom/protocol/asciicast.py``): at most one stored event per
    ``BATCH_SECONDS`` or 64 KiB of output, never one per write. Past ``max_bytes`` a closing marker
    is the last event, both here and on the timeline."""

    def __init__(
        self,
        terminal: str,
        name: str,
        started: float,
        rows: int,
        cols: int,
        max_bytes: int,
        sink: Callable[[CastBatch], None] | None = None,
    ) -> None:
        self.started = int(started)  # asciicast's header timestamp is whole seconds: times count from it
        self.rows, self.cols = rows, cols
        self.max_bytes = max_bytes
        self.events: list[str] = []
        self.size = 0
        self.truncated = False
        self.sink = sink
        self.batcher = CastBatcher(terminal, name, self.started, cols, rows, max_span=BATCH_SECONDS)
        self._timer: asyncio.TimerHandle | None = None

    def add(self, kind: str, data: str) -> bool:
        """Record an event now; True if this one reached the cap (the caller tells the viewers)."""
        if self.truncated:
            return False
        t = time.time() - self.started
        line = event_line(t, kind, data)
        capped = self.size + len(line) > self.max_bytes
        if capped:
            self.truncated = True
            kind, data = "m", f"recording capped at {self.max_bytes // 1024} KiB: what follows is not recorded"
            line = event_line(t, kind, data)
        self.events.append(line)
        self.size += len(line) + 1
        if self.sink is not None:
            closed = self.batcher.add(t, kind, data, len(line))
            if closed is not None:
                self.sink(closed)
            if self._timer is None:
                with contextlib.suppress(RuntimeError):  # no loop: flushed by the next add or close
                    self._timer = asyncio.get_running_loop().call_later(BATCH_SECONDS, self.flush)
        return capped

    def flush(self) -> None:
        """Hand the open batch to the timeline now (on the timer, and when the terminal ends)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch = self.batcher.flush()
        if batch is not None and self.sink is not None:
            self.sink(batch)

    def export(self, title: str) -> str:
        return "\n".join([json.dumps(header(self.cols, self.rows, self.started, title)), *self.events]) + "\n"


class Terminal:
    """One shared shell of a room (see the module docstring)."""

    def __init__(
        self,
        terminal_id: str,
        name: str,
        room: str,
        created_by: Principal,
        settings: TerminalSettings,
        role_of: Callable[[Principal], Role],
        start_shell: Callable[[Terminal], Awaitable[Shell]],
        workspace: Any,
        record: Callable[[Terminal, dict[str, Any] | None], None] = lambda terminal, command: None,
    ) -> None:
        self.id = terminal_id
        self.name = name
        self.room = room
        self.created_by = created_by
        self.created_at = time.time()
        self.settings = settings
        self.role_of = role_of
        self._start_shell = start_shell
        self.workspace = workspace
        self.record = record  # writes the terminal's entry in the document's ``terminals`` map
        self.rows, self.cols = settings.rows, settings.cols
        self.size_policy = "writers"  # or "smallest"
        self.status = "starting"
        self.exit_code: int | None = None
        self.shell: Shell | None = None
        from .emulator import Emulator  # pyte and wcwidth (several MiB) load with the first terminal

        self.emulator: Emulator = Emulator(self.rows, self.cols)
        self.viewers: set[Viewer] = set()
        self.grants: set[str] = set()
        self.revokes: set[str] = set()
        self.proposals: dict[str, dict[str, Any]] = {}
        self._proposers: dict[str, Principal] = {}
        self.commands: collections.deque[dict[str, Any]] = collections.deque(maxlen=200)
        self.cast = Cast(
            terminal_id, name, time.time(), self.rows, self.cols, settings.recording_bytes, self._cast_batch
        )
        # The room's timeline (the recording), given by the service: (kind, user, data, at seconds).
        self.timeline: Callable[[str, str, dict[str, Any], float], None] | None = None
        self.last_activity = time.monotonic()
        self.ended = asyncio.Event()
        self._lines: dict[str, list[str]] = {}
        self._pending: list[bytes] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        self._last_flush = float("-inf")
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._tokens = float(settings.output_bytes_per_second)
        self._refilled = time.monotonic()
        self._capped_notice = 0.0
        self._resume_handle: asyncio.TimerHandle | None = None
        self._snapshot_cache: tuple[int, str] | None = None
        self._rendering: asyncio.Future[None] | None = None
        self._recent: collections.deque[tuple[int, str]] = collections.deque()
        self._recent_size = 0
        self._recent_floor = 0  # snapshots of this version or newer can be caught up from _recent
        self._scan_handle: asyncio.TimerHandle | None = None
        self.output_bytes = 0

    # -- life --------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.shell = await self._start_shell(self)
        self.status = "running"
        self.exit_code = None
        self._recorded("m", f"shell started by {self.created_by.name}")
        self._mark("started", self.created_by, {})
        self.record(self, None)

    def on_output(self, data: bytes) -> None:
        self.output_bytes += len(data)
        self.last_activity = time.monotonic()
        self._pending.append(data)
        self._charge(len(data))
        if self._flush_handle is None:
            # Leading edge: a keystroke's echo after a quiet spell goes out at once; output that
            # keeps coming is gathered into frames at most FRAME_SECONDS apart.
            loop = asyncio.get_running_loop()
            wait = self._last_flush + FRAME_SECONDS - loop.time()
            if wait <= 0:
                self._flush_handle = loop.call_soon(self._flush_output)  # type: ignore[assignment]
            else:
                self._flush_handle = loop.call_later(wait, self._flush_output)

    def _charge(self, size: int) -> None:
        """The rate cap: a token bucket of ``output_bytes_per_second``, one second deep."""
        now = time.monotonic()
        rate = self.settings.output_bytes_per_second
        self._tokens = min(float(rate), self._tokens + (now - self._refilled) * rate)
        self._refilled = now
        self._tokens -= size
        if self._tokens >= 0 or self.shell is None:
            return
        self.shell.pause()
        wait = -self._tokens / rate
        if self._resume_handle is None:
            self._resume_handle = asyncio.get_running_loop().call_later(wait, self._resume)
        if now - self._capped_notice > 10:
            self._capped_notice = now
            self.notice_all(f"output rate-capped at {rate // 1024} KiB/s: the program waits while viewers catch up")

    def _resume(self) -> None:
        self._resume_handle = None
        if self.shell is not None:
            self.shell.resume()

    def _flush_output(self) -> None:
        self._flush_handle = None
        with contextlib.suppress(RuntimeError):
            self._last_flush = asyncio.get_running_loop().time()
        if not self._pending:
            return
        data, self._pending = b"".join(self._pending), []
        text = self._decoder.decode(data)
        if not text:
            return
        self.emulator.feed(text)
        self._keep_recent(self.emulator.version, text)
        self._recorded("o", text)
        frame = json.dumps(["stdout", text])
        for viewer in list(self.viewers):
            viewer.push(frame)
        self._schedule_scan()

    def _keep_recent(self, version: int, text: str) -> None:
        """The output since the last snapshot, bounded: a viewer catching up gets the snapshot and
        this, so a snapshot can be shared by everyone behind instead of rendered per viewer."""
        self._recent.append((version, text))
        self._recent_size += len(text)
        while self._recent_size > self.settings.viewer_queue_bytes and len(self._recent) > 1:
            old_version, old = self._recent.popleft()
            self._recent_size -= len(old)
            self._recent_floor = old_version  # a snapshot older than this cannot be caught up from

    def _schedule_scan(self) -> None:
        """When output goes quiet, the workspace looks at the disk (a command probably wrote files)."""
        if self._scan_handle is not None:
            self._scan_handle.cancel()
        self._scan_handle = asyncio.get_running_loop().call_later(0.15, self._scan)

    def _scan(self) -> None:
        self._scan_handle = None
        if self.workspace is not None:
            self.workspace.scan_now()

    def on_exit(self, code: int) -> None:
        self._flush_output()
        self.status = "exited"
        self.exit_code = code
        self._recorded("m", f"shell exited with code {code}")
        self._mark("exited", None, {"code": code})
        self.broadcast(json.dumps(["exit", code]))
        self.record(self, None)
        log.info("terminal shell exited", extra={"room": self.room, "terminal": self.id, "code": code})

    async def restart(self) -> None:
        if self.shell is not None and self.status == "running":
            await self.shell.kill()
        self.notice_all("the shell was restarted")
        await self.start()

    async def close(self) -> None:
        """End the shell and everything it started; every viewer is told."""
        for handle in (self._flush_handle, self._resume_handle, self._scan_handle):
            if handle is not None:
                handle.cancel()
        if self.shell is not None:
            await self.shell.kill()
        self.status = "ended"
        self._recorded("m", ENDED_MARKER)
        self._mark("ended", None, {})
        self.cast.flush()
        self.record(self, None)
        self.ended.set()

    # -- the recording ---------------------------------------------------------------------------

    def _recorded(self, kind: str, data: str) -> None:
        if self.cast.add(kind, data):
            self.notice_all(
                f"this terminal's recording reached its cap ({self.cast.max_bytes // 1024} KiB): "
                "what follows is shown live but not recorded"
            )

    def _cast_batch(self, batch: CastBatch) -> None:
        if self.timeline is not None:
            self.timeline(CAST_KIND, "", batch.data(), batch.first)

    def _mark(self, event: str, principal: Principal | None, data: dict[str, Any]) -> None:
        """An attribution mark on the room's timeline (who started the shell, who ran what)."""
        if self.timeline is None:
            return
        mark = {"event": event, "terminal": self.id, "terminalName": self.name, **data}
        if principal is not None:
            mark["name"] = principal.name
        self.timeline(TERMINAL_KIND, principal.user_id if principal is not None else "", mark, time.time())

    # -- viewers -----------------------------------------------------------------------------------

    def can_write(self, principal: Principal) -> bool:
        if self.status != "running":
            return False
        user = principal.user_id
        if user in self.grants:
            return True
        if user in self.revokes:
            return False
        return self.role_of(principal).writes_files

    def writers(self) -> list[dict[str, str]]:
        seen: dict[str, dict[str, str]] = {}
        for viewer in self.viewers:
            if self.can_write(viewer.principal):
                seen[viewer.principal.user_id] = {"id": viewer.principal.user_id, "name": viewer.principal.name}
        return sorted(seen.values(), key=lambda w: w["name"])

    def watchers(self) -> list[dict[str, Any]]:
        """Everyone connected, once each, and whether they may type: what an owner grants and
        revokes from (the panel's *Who may type*). Sent to owners only."""
        seen: dict[str, dict[str, Any]] = {}
        for viewer in self.viewers:
            p = viewer.principal
            seen[p.user_id] = {"id": p.user_id, "name": p.name, "can_write": self.can_write(p)}
        return sorted(seen.values(), key=lambda w: (w["name"], w["id"]))

    def setup_frame(self, principal: Principal) -> str:
        role = self.role_of(principal)
        return json.dumps(
            [
                "setup",
                {
                    "id": self.id,
                    "name": self.name,
                    "rows": self.rows,
                    "cols": self.cols,
                    "role": role.value,
                    "can_write": self.can_write(principal),
                    "size_policy": self.size_policy,
                    "writers": self.writers(),
                    # owners only: they grant and revoke; a hundred watchers' setups stay small
                    "watchers": self.watchers() if role is Role.OWNER else [],
                    "status": self.status,
                    "exit": self.exit_code,
                    "commands": list(self.commands)[-50:],
                    "proposals": list(self.proposals.values()),
                },
            ]
        )

    def attach(self, viewer: Viewer) -> None:
        self.viewers.add(viewer)
        self.last_activity = time.monotonic()
        self.refresh_setups()

    def detach(self, viewer: Viewer) -> None:
        self.viewers.discard(viewer)
        self.last_activity = time.monotonic()
        if self.size_policy == "smallest" and viewer.size is not None:
            self._apply_smallest()  # the smallest one left may be larger
        self.refresh_setups()

    def refresh_setups(self) -> None:
        """Rights or writers changed: every viewer gets its setup again (no reconnect needed)."""
        for viewer in list(self.viewers):
            viewer.push_control(self.setup_frame(viewer.principal))

    async def snapshot(self) -> tuple[int, str]:
        """A rendered screen and the emulator version it shows. One render at a time, shared: while
        one runs (in a worker thread), whoever else needs a screen waits for it, so a hundred
        viewers falling behind at once cost one render, not a hundred."""
        while True:
            cached = self._snapshot_cache
            if cached is not None and cached[0] == self.emulator.version:
                return cached  # nothing printed since: exact
            if self._rendering is None:
                self._rendering = asyncio.ensure_future(self._render())
            rendering = self._rendering
            try:
                await asyncio.shield(rendering)
            finally:
                if self._rendering is rendering and rendering.done():
                    self._rendering = None
            rendering.result()  # a failed render is raised here, to the viewer's sender
            cached = self._snapshot_cache
            if cached is not None and cached[0] >= self._recent_floor:
                return cached  # the render that was running, plus what _recent kept since

    async def _render(self) -> None:
        version = self.emulator.version
        captured = self.emulator.capture()  # at this instant; later output is in ``_recent``
        from .emulator import render

        rendered = await asyncio.to_thread(render, *captured)
        if self._snapshot_cache is None or self._snapshot_cache[0] < version:
            self._snapshot_cache = (version, rendered)

    async def serve_viewer(self, viewer: Viewer) -> None:
        """Send a viewer its frames until cancelled: a snapshot first, and again whenever it fell
        behind. The snapshot may be a little older than now; the output since it comes from
        ``_recent``, taken in the same instant as the viewer's queue is reset, so nothing is shown
        twice or skipped."""
        while True:
            await viewer.wake.wait()
            viewer.wake.clear()
            if viewer.needs_snapshot:
                # while it stays set, push() adds no output to the queue: it is all in _recent
                version, rendered = await self.snapshot()
                if version < self._recent_floor:
                    viewer.wake.set()  # the output since that render is no longer all kept: again
                    continue
                viewer.needs_snapshot = False
                controls = [f for f in viewer.queue if not f.startswith('["stdout"')]
                if viewer.overflowed:
                    viewer.overflowed = False
                    controls.insert(0, self.setup_frame(viewer.principal))
                viewer.queue.clear()
                viewer.queued = 0
                since = "".join(text for v, text in self._recent if v > version)
                viewer.snapshots += 1
                for frame in controls:
                    await viewer.send(frame)
                await viewer.send(json.dumps(["snapshot", rendered]))
                if since:
                    await viewer.send(json.dumps(["stdout", since]))
            while viewer.queue:
                frame = viewer.queue.popleft()
                viewer.queued -= len(frame)
                await viewer.send(frame)

    def broadcast(self, frame: str) -> None:
        for viewer in list(self.viewers):
            viewer.push_control(frame)

    def notice_all(self, text: str) -> None:
        self.broadcast(json.dumps(["notice", text]))

    def notice(self, viewer: Viewer, text: str, *, every: float = 0.0) -> None:
        now = time.monotonic()
        if every and now - viewer.last_notice < every:
            return
        viewer.last_notice = now
        viewer.push_control(json.dumps(["notice", text]))

    # -- input -------------------------------------------------------------------------------------

    async def input(self, viewer: Viewer, data: str) -> None:
        """Keystrokes from ``viewer``: typed into the shell if they may write, else a notice."""
        principal = viewer.principal
        if not self.can_write(principal):
            why = (
                "the shell has exited"
                if self.status != "running"
                else (f"read-only: a {self.role_of(principal).value} watches this terminal; propose a command instead")
            )
            self.notice(viewer, why + " (your keystrokes were not sent)", every=2.0)
            return
        await self._type(principal, data)

    async def _type(self, principal: Principal, data: str, approved_by: Principal | None = None) -> None:
        assert self.shell is not None
        entered = self._track_line(principal, data)
        if entered and self.workspace is not None:
            self.workspace.note_actor(principal.user_id)
            with contextlib.suppress(OSError, RuntimeError, TimeoutError):
                await self.workspace.flushed()  # the command sees the editor's latest text
        for line in entered:
            self._record_command(principal, line, approved_by)
        self.last_activity = time.monotonic()
        if not self.shell.write(data.encode("utf-8", "surrogateescape")):
            self.notice_all("input dropped: the shell is not reading its input")

    def _track_line(self, principal: Principal, data: str) -> list[str]:
        """The command lines ``data`` completes for this typist (printable keys, backspace, Enter;
        escape sequences are skipped). An approximation of what the shell's line editor holds."""
        buffer = self._lines.setdefault(principal.user_id, [])
        entered: list[str] = []
        index = 0
        while index < len(data):
            char = data[index]
            if char == "\x1b":  # skip an escape sequence (arrows, function keys)
                index += 1
                if index < len(data) and data[index] in "[O":
                    index += 1
                    while index < len(data) and not data[index].isalpha() and data[index] != "~":
                        index += 1
                index += 1
                continue
            if char in "\r\n":
                line = "".join(buffer).strip()
                buffer.clear()
                if line:
                    entered.append(line[:1000])
            elif char in "\x7f\b":
                if buffer:
                    buffer.pop()
            elif char in "\x03\x15":  # ^C, ^U: the line is abandoned
                buffer.clear()
            elif char >= " " and len(buffer) < 4096:
                buffer.append(char)
            index += 1
        return entered

    def _record_command(self, principal: Principal, line: str, approved_by: Principal | None) -> None:
        entry: dict[str, Any] = {
            "by": principal.user_id,
            "name": principal.name,
            "line": line,
            "at": int(time.time() * 1000),
        }
        if approved_by is not None:
            entry["approvedBy"] = approved_by.user_id
            entry["approvedByName"] = approved_by.name
        self.commands.append(entry)
        label = f"{principal.name} ran `{line}`" + (f", approved by {approved_by.name}" if approved_by else "")
        self._recorded("m", label)
        self._mark("command", principal, {k: v for k, v in entry.items() if k not in ("by", "at")})
        self.broadcast(json.dumps(["command", entry]))
        self.record(self, entry)

    def resize(self, viewer: Viewer, rows: Any, cols: Any) -> None:
        """A client's size. Under the ``writers`` policy (the default) only members who may type set
        the PTY's size and viewers render at it; under ``smallest`` every client reports its size
        and the PTY takes the smallest rows and columns among them (one phone shrinks everyone's)."""
        rows, cols = clamp_size(rows, cols)
        if self.size_policy == "smallest":
            viewer.size = (rows, cols)
            self._apply_smallest()
            return
        if not self.can_write(viewer.principal):
            self.notice(viewer, "read-only: the terminal keeps the size of those who type", every=5.0)
            return
        self._set_size(rows, cols)

    def _apply_smallest(self) -> None:
        sizes = [v.size for v in self.viewers if v.size is not None]
        if sizes:
            self._set_size(min(r for r, _ in sizes), min(c for _, c in sizes))

    def set_size_policy(self, policy: str) -> None:
        """``writers`` or ``smallest`` (owners choose, live); every viewer's setup says which."""
        if policy not in ("writers", "smallest"):
            raise ValueError(f"unknown size policy {policy!r}: writers or smallest")
        self.size_policy = policy
        if policy == "smallest":
            self._apply_smallest()
        self.refresh_setups()

    def _set_size(self, rows: int, cols: int) -> None:
        if (rows, cols) == (self.rows, self.cols) or self.shell is None:
            return
        self.rows, self.cols = rows, cols
        self.shell.resize(rows, cols)
        self._flush_output()  # what was printed at the old size is fed before the resize
        self.emulator.resize(rows, cols)
        self._recent_floor = self.emulator.version  # a screen of the old size is no use any more
        self._recent.clear()
        self._recent_size = 0
        self._recorded("r", f"{cols}x{rows}")
        self.broadcast(json.dumps(["resize", rows, cols]))
        self.record(self, None)

    # -- proposals ---------------------------------------------------------------------------------

    def propose(self, viewer: Viewer, line: Any) -> None:
        if not isinstance(line, str) or not line.strip():
            self.notice(viewer, "a proposal is a non-empty command line")
            return
        if len(self.proposals) >= 20:
            self.notice(viewer, "too many open proposals; wait for the writers to answer")
            return
        line = line.replace("\r", " ").replace("\n", " ").strip()[:1000]
        proposal = {
            "id": secrets.token_urlsafe(6),
            "by": viewer.principal.user_id,
            "name": viewer.principal.name,
            "line": line,
            "status": "open",
            "at": int(time.time() * 1000),
        }
        self.proposals[proposal["id"]] = proposal
        self._proposers[proposal["id"]] = viewer.principal
        self.broadcast(json.dumps(["proposal", proposal]))

    async def answer(self, viewer: Viewer, proposal_id: Any, accept: bool) -> None:
        """A writer accepts (the line is typed into the shell, attributed to both) or dismisses."""
        if not self.can_write(viewer.principal):
            self.notice(viewer, "only those who may type can accept or dismiss a proposal")
            return
        proposal = self.proposals.pop(proposal_id, None) if isinstance(proposal_id, str) else None
        if proposal is None:
            self.notice(viewer, "no such open proposal")
            return
        proposer = self._proposers.pop(proposal["id"])
        proposal = {
            **proposal,
            "status": "accepted" if accept else "dismissed",
            "answeredBy": viewer.principal.user_id,
            "answeredByName": viewer.principal.name,
        }
        self.broadcast(json.dumps(["proposal", proposal]))
        if accept:
            await self._type(proposer, proposal["line"] + "\r", approved_by=viewer.principal)

    # -- rights ------------------------------------------------------------------------------------

    def set_write(self, user: str, write: bool) -> None:
        """An owner grants or revokes write for one member, live."""
        if write:
            self.grants.add(user)
            self.revokes.discard(user)
        else:
            self.revokes.add(user)
            self.grants.discard(user)
        self.refresh_setups()

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "status": self.status,
            "exit": self.exit_code,
            "rows": self.rows,
            "cols": self.cols,
            "sizePolicy": self.size_policy,
            "createdBy": self.created_by.user_id,
            "createdByName": self.created_by.name,
            "createdAt": int(self.created_at * 1000),
            "viewers": len(self.viewers),
            "grants": sorted(self.grants),
            "revokes": sorted(self.revokes),
            "commands": list(self.commands)[-20:],
        }
