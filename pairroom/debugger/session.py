"""One debug session of a room: the server is the debugger's only client and multiplexes the room.

Life of a session::

    start --> queued (a debug run waits in the room's run queue like any run)
          --> running (its turn: initialize, attach, every source's breakpoints, configurationDone)
          <--> stopped (a DAP ``stopped`` event: threads, stack, scopes and variables fetched once)
          --> ended (the program ended, it was stopped, the kernel died, or the pause limit)

The state lives in the room document under ``debug`` (``publish``), written by the server in one
transaction per change, so every member, late joiner and replay sees the same stop without asking
the kernel; 100 watchers cost the adapter what one costs. Expanding a variable goes through
``variables``, cached by reference until the program moves on.

Every step names the stop it answers (``stopId``). A step checks and leaves the ``stopped`` state
with no await in between, so of two people pressing *Step* on one stop exactly one advances and the
other gets ``SessionConflict`` (409).

The program runs under its real path in the kernel's working directory (``/home/room/<path>``, through
``runpy``), so breakpoints in the file and in the room modules it imports use their real paths too.
After the run the session sends ``disconnect``, before the next queued run starts: later plain runs
never meet a breakpoint.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pycrdt import Map, Text

from pairroom.protocol.origins import LocalOrigin
from pairroom.rooms.room import Room

from . import breakpoints as bps
from .ports import DebuggableKernel, Finished

log = logging.getLogger("pairroom.debugger")

ORIGIN = LocalOrigin("debugger")
WORKDIR = "/home/room"  # the room's working directory inside the kernel's sandbox
MAX_FRAMES = 20
MAX_VARIABLES = 200
MAX_REPR = 200
MAX_LOG = 4096  # one logpoint message, characters
LOG_SETTLE = 0.05  # seconds for the IOPub reader to deliver events sent before a control answer
DRIVING = ("continue", "next", "stepIn", "stepOut")


class SessionError(Exception):
    """A request the session refuses; ``status`` is the HTTP status that says why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def conflict(reason: str) -> SessionError:
    return SessionError(409, reason)


def run_code(path: str) -> str:
    """The cell a debug run executes: the room file under its real path, as ``__main__``."""
    return f"__import__('runpy').run_path({WORKDIR + '/' + path!r}, run_name='__main__');"


def room_path(source: dict[str, Any] | None) -> str | None:
    """The room file a DAP source is, or None for code outside the room (the cell, libraries)."""
    path = (source or {}).get("path")
    prefix = WORKDIR + "/"
    if isinstance(path, str) and path.startswith(prefix):
        return path[len(prefix) :]
    return None


def clip(value: object, limit: int = MAX_REPR) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def variable(raw: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": clip(raw.get("name", ""), 100),
        "value": clip(raw.get("value", "")),
        "type": clip(raw.get("type", ""), 100),
        "ref": int(raw.get("variablesReference") or 0),
    }


@dataclass
class AdapterRequests:
    """Counts what the server sends to the adapter, by command (the metric and the benchmark read it)."""

    sent: dict[str, int] = field(default_factory=dict)
    on_send: Callable[[str], None] | None = None

    def add(self, command: str) -> None:
        self.sent[command] = self.sent.get(command, 0) + 1
        if self.on_send is not None:
            self.on_send(command)


class DebugSession:
    """The room's one debug session (``DebugRoom.session``), from start to end."""

    def __init__(
        self,
        room: Room,
        path: str,
        by: str,
        by_name: str,
        *,
        node: str = "",
        counter: AdapterRequests,
        spawn: Callable[[Any, str], Any],
        record: Callable[[str, str, dict[str, Any]], None],
        write: Callable[[dict[str, Any]], None],
        pause_limit: float,
        max_seconds: float,
        on_end: Callable[[DebugSession], None],
    ) -> None:
        self.room = room
        self.path = path
        self.by = by
        self.by_name = by_name
        self.node = node  # the node running it (and the room's kernel)
        self.counter = counter
        self.spawn = spawn
        self.record = record
        self.room_write = write  # values under ``debug``, in one server transaction
        self.pause_limit = pause_limit
        self.timeout: float | None = max_seconds  # RunHooks: the debug run's wall-clock limit
        self.on_end = on_end
        self.id = secrets.token_urlsafe(6)
        self.run_id: str | None = None
        self.state = "queued"
        self.stop_id: str | None = None
        self.thread_id: int | None = None
        self.frames: list[dict[str, Any]] = []
        self.kernel: DebuggableKernel | None = None
        self.attached = False  # ipykernel's debugger is started for us: disconnect exactly once
        self.notice: str | None = None
        self._cache: dict[int, list[dict[str, Any]]] = {}
        self._known_refs: set[int] = set()
        self._pause_timer: asyncio.TimerHandle | None = None
        self._sync_task: asyncio.Task[None] | None = None
        self._sync_again = False
        self._moves = 0  # how often the program moved on from a stop: a stop fetched before a move is stale
        self._sent_sources: set[str] = set()
        self._ended = asyncio.Event()
        self.output: Callable[[dict[str, Any]], None] | None = None

    # -- the adapter ------------------------------------------------------------------------------

    async def request(self, command: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
        """One DAP request to the kernel's debugger; a failure answer raises SessionError(502)."""
        kernel = self.kernel
        if kernel is None:
            raise conflict("the debug session is not attached to a kernel")
        self.counter.add(command)
        try:
            response = await kernel.debug_request(command, arguments)
        except RuntimeError as exc:  # KernelDebugError: no answer, the kernel died
            raise SessionError(503, f"the debugger did not answer: {exc}") from exc
        if not response.get("success", False):
            message = response.get("message") or (response.get("body") or {}).get("error") or "failed"
            raise SessionError(502, f"the debugger refused {command!r}: {clip(message, 500)}")
        return response

    # -- RunHooks: called by the room kernel around the debug run ---------------------------------

    async def before(self, kernel: DebuggableKernel, output: Callable[[dict[str, Any]], None]) -> None:
        """Attach to the kernel that is about to run the file (after the runs queued ahead);
        ``output`` adds to the debug run's outputs (what logpoints log)."""
        self.kernel = kernel
        self.output = output
        kernel.on_debug_event = self._on_event
        await self.request(
            "initialize",
            {
                "clientID": "pairroom",
                "clientName": "pairroom",
                "adapterID": "python",
                "pathFormat": "path",
                "linesStartAt1": True,
                "columnsStartAt1": True,
                "supportsVariableType": True,
            },
        )
        self.attached = True  # from initialize on, ipykernel's debugger is on: it must be turned off
        await self.request("attach", {})
        await self.send_breakpoints()
        await self.request("configurationDone", {})
        self.state = "running"
        self.publish(event="started")

    async def after(self, finished: Finished) -> None:
        """The run ended (the program finished, failed, was stopped, or the kernel died)."""
        log.info(
            "debug run ended",
            extra={
                "room": self.room.name,
                "session": self.id,
                "outcome": getattr(finished.outcome, "value", None),
                "reason": finished.reason,
            },
        )
        self._cancel_pause_timer()
        await self._drain_logs()
        await self._detach()
        outcome = getattr(finished.outcome, "value", str(finished.outcome))
        if self.notice is None and finished.reason and outcome == "failed":
            self.notice = f"the run failed: {finished.reason}; the breakpoints stay"
        self.end(outcome)

    async def _drain_logs(self) -> None:
        """Let the logpoint messages still on their way arrive before detaching drops the listener.

        Measured with ipykernel 7.4 / debugpy 1.8.22: a logpoint's ``output`` event can reach the
        server after the program's own later prints, even after the run ended. debugpy answers
        requests in order with the events it sent before, and the kernel forwards those events to
        IOPub before it answers on the control channel; one round trip (``threads``), then one short
        settle for the IOPub reader, collects them."""
        if self.kernel is None or not self.attached or self.kernel.on_debug_event is None:
            return
        try:
            await self.request("threads")
        except SessionError as exc:  # the kernel died with the program: nothing more will arrive
            log.info("logpoints not drained", extra={"room": self.room.name, "error": exc.reason})
            return
        await asyncio.sleep(LOG_SETTLE)

    def end(self, outcome: str) -> None:
        if self.state == "ended":
            return
        self.state = "ended"
        self.stop_id = None
        self.frames = []
        self._cache.clear()
        self._cancel_pause_timer()
        self.publish(event="ended", outcome=outcome)
        self._ended.set()
        self.on_end(self)

    # -- breakpoints --------------------------------------------------------------------------------

    async def send_breakpoints(self) -> None:
        """Send the merged set: one full ``setBreakpoints`` per source, only what the adapter can use;
        write what the adapter verified (and why the others are not) to ``debug.checks``."""
        with self.room.local_change(LocalOrigin("debugger-read")) as doc:
            files = {p: str(t) for p, t in doc.get("files", type=Map).items() if isinstance(t, Text)}
            all_bps = bps.read(doc.get(bps.ROOT, type=Map))
        checks: dict[str, dict[str, Any]] = {}
        sendable: dict[str, list[bps.Breakpoint]] = {}
        for bp in all_bps:
            why = bps.unusable(bp, files)
            if why is None:
                sendable.setdefault(bp.path, []).append(bp)
            else:
                checks.setdefault(bp.path, {})[str(bp.line)] = {"verified": False, "message": why}
        sources = set(sendable) | self._sent_sources
        for path in sorted(sources):
            wanted = sendable.get(path, [])
            response = await self.request(
                "setBreakpoints",
                {
                    "source": {"path": f"{WORKDIR}/{path}", "name": path.rsplit("/", 1)[-1]},
                    "breakpoints": [bp.dap() for bp in wanted],
                    "sourceModified": False,
                },
            )
            answered = (response.get("body") or {}).get("breakpoints") or []
            for bp, result in zip(wanted, answered, strict=False):
                check: dict[str, Any] = {"verified": bool(result.get("verified"))}
                if result.get("message"):
                    check["message"] = clip(result["message"])
                checks.setdefault(path, {})[str(bp.line)] = check
        self._sent_sources = set(sendable)
        self.room_write({"checks": checks})

    def breakpoints_changed(self) -> None:
        """The document's breakpoints changed: send them again while the program runs (coalesced)."""
        if self.state not in ("running", "stopped") or self.kernel is None:
            return
        if self._sync_task is not None and not self._sync_task.done():
            self._sync_again = True
            return
        self._sync_task = self.spawn(self._sync(), f"debug-breakpoints-{self.room.name}")

    async def _sync(self) -> None:
        while True:
            self._sync_again = False
            try:
                await self.send_breakpoints()
            except SessionError as exc:
                log.warning("breakpoints not sent", extra={"room": self.room.name, "error": exc.reason})
            if not self._sync_again or self.state == "ended":
                return

    # -- events -------------------------------------------------------------------------------------

    def _on_event(self, message: dict[str, Any]) -> None:
        """A DAP event from the kernel's IOPub (on the event loop, from the kernel's reader)."""
        event, body = message.get("event"), message.get("body") or {}
        if self.state == "ended":
            return
        if event == "stopped":
            thread = body.get("threadId")
            self.thread_id = thread if isinstance(thread, int) else self.thread_id
            self.spawn(self._stopped(str(body.get("reason", "")), self.thread_id), f"debug-stop-{self.room.name}")
        elif event == "continued" and self.state == "stopped":
            self._moved_on()
            self.publish(event="continued")
        elif event == "output":
            self._logged(body)

    def _logged(self, body: dict[str, Any]) -> None:
        """A logpoint's message (debugpy interpolated its ``{expr}``s) into the debug run's outputs,
        where everyone sees it beside what the program prints. debugpy sends it as an ``output``
        event of category ``console`` or ``stdout`` (the program's own prints reach the run through
        the kernel, not here; ``telemetry`` and the adapter's ``important`` notices are not logs)."""
        text = body.get("output")
        if body.get("category") not in (None, "console", "stdout", "stderr") or not isinstance(text, str) or not text:
            return
        if self.output is None:
            return
        name = "stderr" if body.get("category") == "stderr" else "stdout"
        self.output({"output_type": "stream", "name": name, "text": clip(text, MAX_LOG)})

    async def _stopped(self, reason: str, thread: int | None) -> None:
        """Fetch the stop once (stack, top frame's scopes and variables) and publish it for all.
        A move made while this was fetched (a continue from the stop another fetch published) makes
        it stale: publishing it would show a stop the program has already left."""
        moves = self._moves
        if thread is None:
            threads = await self.request("threads")
            listed = (threads.get("body") or {}).get("threads") or []
            thread = listed[0]["id"] if listed else None
            self.thread_id = thread
        try:
            trace = await self.request("stackTrace", {"threadId": thread, "startFrame": 0, "levels": MAX_FRAMES})
        except SessionError as exc:
            log.warning("stack not fetched", extra={"room": self.room.name, "error": exc.reason})
            return
        raw = (trace.get("body") or {}).get("stackFrames") or []
        frames = []
        for frame in raw:
            path = room_path(frame.get("source"))
            if path is not None:
                frames.append(
                    {
                        "id": frame["id"],
                        "name": clip(frame.get("name", ""), 100),
                        "path": path,
                        "line": int(frame.get("line") or 0),
                    }
                )
        if not frames and reason not in ("pause", "step refused"):
            # Stepped out of the room's code, into the cell that ran the file: go on to the end.
            await self.request("continue", {"threadId": thread})
            return
        if not frames:  # a pause caught the thread outside the room's code: show where, as it is
            frames = [
                {
                    "id": f["id"],
                    "name": clip(f.get("name", ""), 100),
                    "path": None,
                    "line": int(f.get("line") or 0),
                    "external": clip((f.get("source") or {}).get("path") or "?", 300),
                }
                for f in raw[:MAX_FRAMES]
            ]
            if not frames:
                return
        top = frames[0]
        scopes = await self._scopes(top["id"])
        if self.state == "ended" or self._moves != moves:  # left while it was fetched: nothing to show
            return
        self.stop_id = secrets.token_urlsafe(6)
        self.frames = frames
        self.state = "stopped"
        author = self._breakpoint_author(top["path"], top["line"]) if reason == "breakpoint" else None
        stopped = {
            "path": top["path"],
            "line": top["line"],
            "reason": reason,
            "thread": thread,
            "breakpointBy": author,
            "at": int(time.time() * 1000),
        }
        self.publish(event="stopped", stopped=stopped, frames=frames, scopes=scopes)
        self._arm_pause_timer()

    async def _scopes(self, frame_id: int) -> list[dict[str, Any]]:
        response = await self.request("scopes", {"frameId": frame_id})
        out = []
        for scope in (response.get("body") or {}).get("scopes") or []:
            ref = int(scope.get("variablesReference") or 0)
            entry: dict[str, Any] = {"name": clip(scope.get("name", ""), 100), "ref": ref, "variables": None}
            if ref and not scope.get("expensive"):
                entry["variables"] = await self._fetch_variables(ref)
            self._known_refs.add(ref)
            out.append(entry)
        return out

    async def _fetch_variables(self, ref: int) -> list[dict[str, Any]]:
        cached = self._cache.get(ref)
        if cached is not None:
            return cached
        response = await self.request("variables", {"variablesReference": ref})
        found = [variable(raw) for raw in ((response.get("body") or {}).get("variables") or [])[:MAX_VARIABLES]]
        self._known_refs.update(v["ref"] for v in found if v["ref"])
        self._cache[ref] = found
        return found

    def _breakpoint_author(self, path: str, line: int) -> str | None:
        with self.room.local_change(LocalOrigin("debugger-read")) as doc:
            for bp in bps.read(doc.get(bps.ROOT, type=Map)):
                if bp.path == path and bp.line == line:
                    return bp.author_name or bp.author
        return None

    def _moved_on(self) -> None:
        self._moves += 1
        self.state = "running"
        self.stop_id = None
        self.frames = []
        self._cache.clear()
        self._known_refs.clear()
        self._cancel_pause_timer()

    # -- what people ask --------------------------------------------------------------------------

    def check_stop(self, stop_id: object) -> None:
        if self.state != "stopped":
            raise conflict(f"the program is {self.state}, not stopped")
        if stop_id != self.stop_id:
            raise conflict("that stop was already left: read the state again")

    def drive(self, command: str, stop_id: object, thread: int | None, who: str) -> None:
        """continue, next, stepIn, stepOut from the stop ``stop_id`` names (409 if it was left)."""
        self.check_stop(stop_id)
        thread = thread if thread is not None else self.thread_id
        self._moved_on()  # no await since the check: a second request for this stop gets 409
        self.publish(event="continued", command=command, who=who)
        # Accepted, not awaited: the program's next stop (or end) arrives as events for everyone.
        # (ipykernel 7.4 now and then sent no reply to a ``continue`` whose program then ran to its
        # end, which held the HTTP answer for the request's full timeout.)
        self.spawn(self._step(command, thread), f"debug-{command}-{self.room.name}")

    async def _step(self, command: str, thread: int | None) -> None:
        """Send a step; if the debugger refuses it, the program is still where it was: fetch that
        stop again (a new stop id), so everyone sees it and can step from it once more."""
        try:
            await self.request(command, {"threadId": thread})
        except SessionError as exc:
            log.warning("debug step refused", extra={"room": self.room.name, "step": command, "error": exc.reason})
            if exc.status == 502 and self.state == "running":  # refused, not unanswered
                await self._stopped("step refused", thread)

    async def pause(self, thread: int | None) -> None:
        """DAP ``pause`` of the kernel's main thread (or ``thread``).

        Measured with ipykernel 7.4 and debugpy 1.8.22: the thread is reported stopped in frames
        outside the room's code (a stack of IPython's ``logger.py`` alone), even while it runs a loop
        in a room file. The stop is published as it is, outside frames included (``external``), so
        everyone sees the program is paused and may continue or stop it (docs/debugger.md)."""
        if self.state != "running":
            raise conflict(f"the program is {self.state}, not running")
        if thread is None:
            threads = await self.request("threads")
            listed = (threads.get("body") or {}).get("threads") or []
            main = [t for t in listed if t.get("name") == "MainThread"] or listed
            if not main:
                raise conflict("no thread to pause")
            thread = int(main[0]["id"])
        await self.request("pause", {"threadId": thread})

    async def evaluate(self, expression: str, frame_id: int | None) -> dict[str, Any]:
        if self.state != "stopped":
            raise conflict(f"the program is {self.state}, not stopped: evaluate needs a frame")
        frame = frame_id if frame_id is not None else self.frames[0]["id"]
        if frame not in {f["id"] for f in self.frames}:
            raise SessionError(404, f"no frame {frame} in this stop")
        response = await self.request("evaluate", {"expression": expression, "frameId": frame, "context": "repl"})
        body = response.get("body") or {}
        ref = int(body.get("variablesReference") or 0)
        if ref:
            self._known_refs.add(ref)
        return {"result": clip(body.get("result", ""), 4096), "type": clip(body.get("type", ""), 100), "ref": ref}

    async def variables(self, ref: int) -> list[dict[str, Any]]:
        if self.state != "stopped":
            raise conflict(f"the program is {self.state}: variables exist only at a stop")
        if ref not in self._known_refs and ref not in self._cache:
            raise SessionError(404, f"no variables reference {ref} at this stop")
        return await self._fetch_variables(ref)

    async def frame_scopes(self, frame_id: int) -> list[dict[str, Any]]:
        if self.state != "stopped":
            raise conflict(f"the program is {self.state}, not stopped")
        if frame_id not in {f["id"] for f in self.frames}:
            raise SessionError(404, f"no frame {frame_id} in this stop")
        return await self._scopes(frame_id)

    async def stop(self, notice: str | None = None) -> None:
        """End the session: detach (which resumes the program without breakpoints), then interrupt it."""
        if notice:
            self.notice = notice
        if self.state in ("running", "stopped"):
            was_stopped, thread = self.state == "stopped", self.thread_id
            self._moved_on()
            if self.kernel is not None:
                self.kernel.on_debug_event = None
            try:
                # No breakpoint may catch the program again, and a paused one goes on; then detach.
                for path in sorted(self._sent_sources):
                    await self.request("setBreakpoints", {"source": {"path": f"{WORKDIR}/{path}"}, "breakpoints": []})
                self._sent_sources = set()
                if was_stopped and thread is not None:
                    await self.request("continue", {"threadId": thread})
            except SessionError as exc:
                log.info("could not resume before detaching", extra={"room": self.room.name, "error": exc.reason})
            await self._detach()

    async def _detach(self) -> None:
        """``disconnect``, once: ipykernel then stops tracing and resumes a paused program, and drops
        its breakpoints, so later plain runs never stop. (A second ``disconnect`` got no answer from
        ipykernel 7.4 here, and the request waited for its full timeout.)"""
        kernel = self.kernel
        if kernel is None or not self.attached:
            return
        self.attached = False
        kernel.on_debug_event = None
        log.info("detaching the debugger", extra={"room": self.room.name, "session": self.id})
        try:
            await self.request("disconnect", {"restart": False, "terminateDebuggee": False})
        except SessionError as exc:
            log.info("debugger not detached (the kernel is gone)", extra={"room": self.room.name, "error": exc.reason})

    async def wait_ended(self) -> None:
        await self._ended.wait()

    # -- the pause limit ----------------------------------------------------------------------------

    def _arm_pause_timer(self) -> None:
        self._cancel_pause_timer()
        self._pause_timer = asyncio.get_running_loop().call_later(self.pause_limit, self._pause_expired)

    def _cancel_pause_timer(self) -> None:
        if self._pause_timer is not None:
            self._pause_timer.cancel()
            self._pause_timer = None

    def _pause_expired(self) -> None:
        self._pause_timer = None
        if self.state != "stopped":
            return
        notice = f"paused longer than {self.pause_limit:g} s: resumed without the debugger"
        log.info("debug pause limit reached", extra={"room": self.room.name, "seconds": self.pause_limit})
        self.spawn(self.stop(notice), f"debug-pause-limit-{self.room.name}")

    # -- the document -------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state,
            "path": self.path,
            "by": self.by,
            "byName": self.by_name,
            "node": self.node,
            "run": self.run_id,
            "stopId": self.stop_id,
            "notice": self.notice,
        }

    def publish(self, *, event: str, **fields: Any) -> None:
        """Write the session's state under ``debug`` in one transaction; record the event."""
        values: dict[str, Any] = {"session": self.describe()}
        values["state"] = self.state
        if self.state != "stopped":
            values.update(stopped=None, frames=[], scopes=[])
        for key in ("stopped", "frames", "scopes"):
            if key in fields:
                values[key] = fields[key]
        self.room_write(values)
        data = {"session": self.id, "path": self.path}
        stopped = fields.get("stopped")
        if stopped:
            # ``where``, not ``at``: the timeline's marks spread the data over their own ``at`` (the time)
            data.update(where=f"{stopped['path']}:{stopped['line']}", reason=stopped["reason"])
        for key in ("outcome", "command"):
            if key in fields:
                data[key] = fields[key]
        if self.notice and event == "ended":
            data["notice"] = self.notice
        self.record(event, fields.get("who") or self.by, data)
