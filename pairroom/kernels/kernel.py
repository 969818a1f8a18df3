"""One launched kernel process and the single client the server keeps for it.

One reader task per channel (IOPub, shell and control) dispatches every message by
``parent_header.msg_id`` to the execution that asked for it; nothing else reads the channels, so a
restart or a second request can never swallow another's reply.

The debugger (ipykernel's, on debugpy) is reached the way Jupyter frontends reach it: a DAP request
travels as a ``debug_request`` on the control channel (``debug_request`` below; the control thread
answers even while a run holds the shell), and DAP events come back as IOPub ``debug_event`` messages,
handed to ``on_debug_event``.

A run is finished when its ``execute_reply`` has arrived *and* the kernel went idle for it on
IOPub (outputs can arrive after the reply). It also ends when the process dies: a pidfd tells the
event loop the moment the sandbox exits, and the death is explained from the cgroup's OOM counter or
the exit status. Killing is always the whole sandbox (its pid namespace goes with it).

Every ``RECHECK_SECONDS`` the channels' sockets are looked at again (``_recheck_sockets``). pyzmq's
asyncio sockets wake on zmq's edge-triggered descriptor, and a wake-up can be missed: a reply
arrives while the same socket sends, and nothing is read until the next message comes. Measured on
the control channel (a ``continue`` whose program ended at once, the run's end sending ``threads``
at that moment): the reply sat readable on the socket for the whole 30 s a request waits, in about
1 of 10 runs of the debugger tests on a loaded machine, and every later request of the session
waited behind it. Reading ``zmq.EVENTS`` through pyzmq's socket makes pyzmq wake the reader when a
message is there; once a second per kernel costs about as much as one ``getsockopt`` per channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import importlib
import logging
import os
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from pairroom.kernels.dirs import KernelDirs
from pairroom.kernels.outputs import to_output
from pairroom.sandbox.bubblewrap import Sandbox
from pairroom.sandbox.limits import Cgroups, KernelCgroup

if TYPE_CHECKING:  # jupyter-client is imported by the first launch (``Kernel.start``), not at startup
    from jupyter_client.asynchronous.client import AsyncKernelClient

    from pairroom.kernels.launcher import SandboxedKernelManager

log = logging.getLogger("pairroom.kernels")

RECHECK_SECONDS = 1.0  # how often the channels' sockets are looked at again (see above)
LAUNCHER = "pairroom.kernels.launcher"  # jupyter-client, pyzmq, tornado: loaded with the first kernel
_launcher: ModuleType | None = None

OutputSink = Callable[[dict[str, Any]], None]
"""Receives each output of a run as an nbformat dict; ``{"output_type": "clear_output", "wait": b}``
asks to clear what the run showed so far."""

InputListener = Callable[[str, bool], None]
"""Told ``(prompt, password)`` when the run's code calls ``input()`` (or ``getpass``) and waits for an
answer, which goes back through ``Kernel.answer_input``."""


class KernelStartError(RuntimeError):
    """The kernel did not come up (it died at start or did not answer ``kernel_info`` in time)."""


class KernelDebugError(RuntimeError):
    """A debug request got no answer: the kernel is not running, died, or its debugger timed out."""


class Outcome(enum.Enum):
    OK = "ok"
    ERROR = "error"
    INTERRUPTED = "interrupted"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Finished:
    outcome: Outcome
    reason: str | None = None  # why a run failed or was stopped, for the error output
    execution_count: int | None = None


@dataclass(slots=True)
class _Execution:
    sink: OutputSink
    reply: asyncio.Future[dict[str, Any]]
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    on_input: InputListener | None = None


class Kernel:
    """A sandboxed kernel, launched once (a restart is a new ``Kernel`` over the same dirs)."""

    def __init__(self, dirs: KernelDirs, sandbox: Sandbox, cgroups: Cgroups) -> None:
        self.dirs = dirs
        self.sandbox = sandbox
        self.cgroups = cgroups
        self.settings = sandbox.settings
        self.died = asyncio.Event()
        self.death: str | None = None  # why it died, once it has
        self.kill_reason: str | None = None  # set when the server killed it on purpose
        self.started_at: float | None = None
        self._km: SandboxedKernelManager | None = None
        self._client: AsyncKernelClient | None = None
        self._cgroup: KernelCgroup | None = None
        self._log_file: Any = None
        self._pidfd: int | None = None
        self._readers: list[asyncio.Task[None]] = []
        self._pending: dict[str, _Execution] = {}
        self._info_waiters: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._iopub_seen: dict[str, asyncio.Event] = {}
        self._control_waiters: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._debug_seq = 0
        self.on_debug_event: Callable[[dict[str, Any]], None] | None = None
        """Receives the body of every IOPub ``debug_event`` (a DAP event), whoever caused it."""
        self.bad_messages = 0  # malformed messages skipped (room code can sign its own)

    @property
    def pid(self) -> int | None:
        km = self._km
        process = getattr(km.provisioner, "process", None) if km and km.provisioner else None
        return process.pid if process is not None else None

    # -- start and stop ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Launch and wait until the kernel answers on shell and IOPub and stdin is connected. Raises
        KernelStartError."""
        launcher = await load_launcher()
        launch_dir = self.dirs.new_launch_dir()
        self._cgroup = self.cgroups.create(f"{self.dirs.base.name}-{launch_dir.name}", self.settings)
        km = launcher.SandboxedKernelManager(
            sandbox=self.sandbox,
            dirs=self.dirs,
            launch_dir=launch_dir,
            cgroup=self._cgroup,
            memory_in_cgroup=self._cgroup is not None and self._cgroup.memory_dir is not None,
        )
        self._km = km
        self._log_file = open(self.dirs.log, "ab")  # noqa: ASYNC230 - the server's own log file, kept open for the kernel's life
        try:
            await km.start_kernel(
                env=km.launch_environment(),
                cwd=str(self.dirs.work),
                stdout=self._log_file,
                stderr=self._log_file,
            )
            self._watch_process()
            client: AsyncKernelClient = km.client()
            self._client = client
            client.start_channels()
            stdin_up = launcher.HandshakeWatch(client.stdin_channel.socket)
            self._readers = [
                asyncio.create_task(self._read_iopub(), name="kernel-iopub"),
                asyncio.create_task(self._read_shell(), name="kernel-shell"),
                asyncio.create_task(self._read_control(), name="kernel-control"),
                asyncio.create_task(self._read_stdin(), name="kernel-stdin"),
                asyncio.create_task(self._recheck_sockets(launcher), name="kernel-recheck"),
            ]
            try:
                async with asyncio.timeout(self.settings.start_timeout):
                    await self._handshake()
                    await stdin_up.wait()  # else the first input() of a run could be lost
            finally:
                stdin_up.close()
        except BaseException as exc:
            await self.kill("start failed")
            if isinstance(exc, (TimeoutError, OSError, RuntimeError)):
                raise KernelStartError(
                    f"the kernel did not start: {self.death or exc or 'timeout'}; see {self.dirs.log}"
                ) from exc
            raise
        self.started_at = time.monotonic()

    async def join(self, cgroups: Cgroups) -> None:
        """Move this started kernel into ``cgroups`` (its room's budget, ``sandbox.budget``): a pooled
        kernel was started before it had a room. Later launches (restarts) start there. Raises
        OSError if the move failed (the caller starts a fresh kernel instead)."""
        self.cgroups = cgroups
        old = self._cgroup
        if old is None:
            return  # rlimits only: nothing to move
        new = cgroups.create(f"{self.dirs.base.name}-joined-{uuid.uuid4().hex[:6]}", self.settings)
        if new is None:
            return
        try:
            old.move_to(new)
        except OSError:
            await new.remove(timeout=0.5)
            raise
        self._cgroup = new
        await old.remove()

    async def _handshake(self) -> None:
        """kernel_info until the reply *and* the request's IOPub status both arrive: a ZMQ
        subscriber can miss the first messages, and a run must not lose its first outputs."""
        assert self._client is not None
        while True:
            msg_id = self._client.kernel_info()
            reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            seen = asyncio.Event()
            self._info_waiters[msg_id], self._iopub_seen[msg_id] = reply, seen
            try:
                died = asyncio.create_task(self.died.wait())
                try:
                    await asyncio.wait({reply, died}, return_when=asyncio.FIRST_COMPLETED)  # type: ignore[type-var]
                finally:
                    died.cancel()
                if self.died.is_set():
                    raise KernelStartError(self.death or "the kernel died at start")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        await seen.wait()
                        return
            finally:
                self._info_waiters.pop(msg_id, None)
                self._iopub_seen.pop(msg_id, None)

    def _watch_process(self) -> None:
        """Learn of the sandbox's exit at once, through a pidfd on the launcher process."""
        assert self._km is not None and self._km.provisioner is not None
        process = self._km.provisioner.process  # type: ignore[attr-defined]
        self._pidfd = os.pidfd_open(process.pid)
        asyncio.get_running_loop().add_reader(self._pidfd, self._on_exit, process)

    def _on_exit(self, process: Any) -> None:
        self._close_pidfd()
        returncode = process.poll()
        if self.died.is_set():
            return
        self.death = self._explain(returncode)
        if self.kill_reason is None:
            log.warning("kernel died", extra={"kernel": self.dirs.base.name, "reason": self.death})
        self.died.set()
        for execution in self._pending.values():
            execution.idle.set()

    def _explain(self, returncode: int | None) -> str:
        if self.kill_reason is not None:
            return self.kill_reason
        if self._cgroup is not None and self._cgroup.oom_kills() > 0:
            return f"the kernel was killed: out of memory (limit {self.settings.memory_bytes // 2**20} MiB)"
        if returncode is not None and returncode < 0:
            return f"the kernel was killed by {signal.Signals(-returncode).name}"
        if returncode is not None and returncode > 128:
            with contextlib.suppress(ValueError):
                return f"the kernel was killed by {signal.Signals(returncode - 128).name}"
        return f"the kernel exited (status {returncode})"

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None

    async def kill(self, reason: str) -> None:
        """Kill the whole sandbox now and release everything of this launch. Idempotent."""
        if self.kill_reason is None and not self.died.is_set():
            self.kill_reason = reason
        for task in self._readers:
            task.cancel()
        for task in self._readers:
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:  # the readers catch what a message can do; this is a bug, not the kernel's
                log.exception("kernel reader failed", extra={"kernel": self.dirs.base.name})
        self._readers = []
        if self._client is not None:
            self._client.stop_channels()
            self._client = None
        km, self._km = self._km, None
        if km is not None:
            process = getattr(km.provisioner, "process", None) if km.provisioner else None
            if km.has_kernel:
                await km.shutdown_kernel(now=True)
            if process is not None and not self.died.is_set():
                # shutdown_kernel waited for the exit; record it if the pidfd has not fired yet
                self._on_exit(process)
        self._close_pidfd()
        if not self.died.is_set():
            self.death = self.death or reason
            self.died.set()
        if self._cgroup is not None:
            await self._cgroup.remove()
            self._cgroup = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    # -- running code -----------------------------------------------------------------------------

    async def execute(
        self, code: str, sink: OutputSink, timeout: float, on_input: InputListener | None = None
    ) -> Finished:
        """Run ``code``; outputs go to ``sink`` as they arrive. Never raises for what the code does.

        With ``on_input``, ``input()`` asks it (someone answers through ``answer_input``); without, the
        kernel refuses ``input()`` with StdinNotImplementedError. Returns FAILED if the kernel dies or
        ``timeout`` passes (the caller kills and restarts it)."""
        if self._client is None or self.died.is_set():
            return Finished(Outcome.FAILED, self.death or "the kernel is not running")
        msg_id = self._client.execute(code, store_history=True, allow_stdin=on_input is not None, stop_on_error=False)
        execution = _Execution(sink, asyncio.get_running_loop().create_future(), on_input=on_input)
        self._pending[msg_id] = execution
        try:
            try:
                async with asyncio.timeout(timeout):
                    await execution.idle.wait()
                    if not self.died.is_set():
                        reply = await execution.reply
            except TimeoutError:
                return Finished(Outcome.FAILED, f"stopped by the time limit of {timeout:g} s")
            if self.died.is_set():
                if self.kill_reason == "interrupted":
                    return Finished(Outcome.INTERRUPTED, "the kernel did not stop when interrupted, so it was killed")
                return Finished(Outcome.FAILED, self.death)
        finally:
            del self._pending[msg_id]
        content = reply["content"]  # a map: _on_shell checked it
        count = content.get("execution_count")
        count = count if isinstance(count, int) and not isinstance(count, bool) else None
        status = content.get("status")
        if status == "ok":
            return Finished(Outcome.OK, execution_count=count)
        if status == "error" and content.get("ename") == "KeyboardInterrupt":
            return Finished(Outcome.INTERRUPTED, execution_count=count)
        return Finished(Outcome.ERROR, execution_count=count)

    def answer_input(self, value: str) -> bool:
        """Send the answer to the ``input()`` the kernel waits on (an ``input_reply`` on stdin).
        False when the kernel is no longer running."""
        if self._client is None or self.died.is_set():
            return False
        self._client.input(value)
        return True

    async def interrupt(self) -> None:
        """Ask the kernel to interrupt (an ``interrupt_request`` on control)."""
        if self._km is not None and not self.died.is_set():
            await self._km.interrupt_kernel()

    async def debug_request(
        self, command: str, arguments: dict[str, Any] | None = None, answer_within: float = 30.0
    ) -> dict[str, Any]:
        """Send one DAP request to the kernel's debugger and return its DAP response (a dict with
        ``success``, ``body``, ``message``). Raises KernelDebugError when the kernel is not running,
        dies, or does not answer within ``answer_within`` seconds."""
        client = self._client
        if client is None or self.died.is_set():
            raise KernelDebugError(self.death or "the kernel is not running")
        self._debug_seq += 1
        content = {"seq": self._debug_seq, "type": "request", "command": command, "arguments": arguments or {}}
        msg = client.session.msg("debug_request", content)
        msg_id = msg["header"]["msg_id"]
        reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._control_waiters[msg_id] = reply
        died = asyncio.ensure_future(self.died.wait())
        try:
            client.control_channel.send(msg)
            waiters: set[asyncio.Future[Any]] = {reply, died}
            done, _ = await asyncio.wait(waiters, timeout=answer_within, return_when=asyncio.FIRST_COMPLETED)
            if reply not in done:
                raise KernelDebugError(
                    self.death
                    if self.died.is_set()
                    else f"the debugger did not answer {command!r} in {answer_within:g} s"
                )
        finally:
            died.cancel()
            self._control_waiters.pop(msg_id, None)
        return reply.result()["content"]  # type: ignore[no-any-return]

    @property
    def busy(self) -> bool:
        return bool(self._pending)

    # -- readers ----------------------------------------------------------------------------------

    async def _read_iopub(self) -> None:
        """Dispatch IOPub messages. The kernel runs the room's code, which can sign messages with the
        kernel's key: every message is untrusted input, checked before use and skipped when malformed."""
        assert self._client is not None
        client = self._client
        while True:
            msg = await self._receive(client.get_iopub_msg, "iopub")
            if msg is None:
                return
            try:
                self._on_iopub(msg)
            except Exception as exc:  # noqa: BLE001 - kernel messages are untrusted input: a bad one is logged, never kills the reader
                self._malformed("iopub", exc)

    def _on_iopub(self, msg: dict[str, Any]) -> None:
        header = msg.get("header")
        if isinstance(header, dict) and header.get("msg_type") == "debug_event":
            self._on_debug_event(msg.get("content"))
            return
        parent = parent_id(msg)
        seen = self._iopub_seen.get(parent or "")
        if seen is not None:
            seen.set()
        execution = self._pending.get(parent or "")
        if execution is None:
            return
        header, content = msg.get("header"), msg.get("content")
        msg_type = header.get("msg_type") if isinstance(header, dict) else None
        if not isinstance(msg_type, str) or not isinstance(content, dict):
            raise ValueError("an IOPub message without a type or with content that is not a map")
        if msg_type == "status":
            if content.get("execution_state") == "idle":
                execution.idle.set()
        elif msg_type == "clear_output":
            execution.sink({"output_type": "clear_output", "wait": content.get("wait") is True})
        else:
            output = to_output(msg_type, content)
            if output is not None:
                execution.sink(output)

    def _on_debug_event(self, content: Any) -> None:
        """A DAP event from the kernel's debugger, for ``on_debug_event``. Room code can sign
        messages too, so the listener treats events as hints and checks what it is told."""
        listener = self.on_debug_event
        if listener is None:
            return
        if not isinstance(content, dict):
            raise ValueError("a debug_event whose content is not a map")
        try:
            listener(content)
        except Exception:  # a broken listener must not stop the outputs of every run
            log.exception("debug event listener failed", extra={"kernel": self.dirs.base.name})

    async def _read_shell(self) -> None:
        assert self._client is not None
        client = self._client
        while True:
            msg = await self._receive(client.get_shell_msg, "shell")
            if msg is None:
                return
            try:
                self._on_shell(msg)
            except Exception as exc:  # noqa: BLE001 - kernel messages are untrusted input: a bad one is logged, never kills the reader
                self._malformed("shell", exc)

    def _on_shell(self, msg: dict[str, Any]) -> None:
        parent = parent_id(msg)
        if not isinstance(msg.get("content"), dict):
            raise ValueError("a shell reply with content that is not a map")
        waiter = self._info_waiters.get(parent or "")
        if waiter is not None and not waiter.done():
            waiter.set_result(msg)
            return
        execution = self._pending.get(parent or "")
        if execution is not None and not execution.reply.done():
            execution.reply.set_result(msg)

    async def _read_stdin(self) -> None:
        """``input_request``s of the run that asked for input: handed to its listener."""
        assert self._client is not None
        client = self._client
        while True:
            msg = await self._receive(client.get_stdin_msg, "stdin")
            if msg is None:
                return
            try:
                self._on_stdin(msg)
            except Exception as exc:  # noqa: BLE001 - kernel messages are untrusted input: a bad one is logged, never kills the reader
                self._malformed("stdin", exc)

    def _on_stdin(self, msg: dict[str, Any]) -> None:
        header, content = msg.get("header"), msg.get("content")
        if not isinstance(header, dict) or header.get("msg_type") != "input_request":
            return
        if not isinstance(content, dict):
            raise ValueError("an input_request whose content is not a map")
        execution = self._pending.get(parent_id(msg) or "")
        if execution is None or execution.on_input is None:
            return
        prompt = content.get("prompt")
        execution.on_input(str(prompt)[:1000] if prompt is not None else "", content.get("password") is True)

    async def _read_control(self) -> None:
        assert self._client is not None
        client = self._client
        while True:
            msg = await self._receive(client.get_control_msg, "control")
            if msg is None:
                return
            if not isinstance(msg.get("content"), dict):
                self._malformed("control", ValueError("a control reply with content that is not a map"))
                continue
            parent = parent_id(msg)
            waiter = self._control_waiters.get(parent) if parent is not None else None
            if waiter is not None and not waiter.done():
                waiter.set_result(msg)

    async def _recheck_sockets(self, launcher: ModuleType) -> None:
        """Have pyzmq look at each channel's socket again, every ``RECHECK_SECONDS`` (see above)."""
        assert self._client is not None
        client = self._client
        channels = (client.shell_channel, client.control_channel, client.stdin_channel, client.iopub_channel)
        while True:
            await asyncio.sleep(RECHECK_SECONDS)
            if not [channel for channel in channels if launcher.recheck(channel.socket)]:
                return  # the channels were stopped

    async def _receive(self, get: Callable[[], Any], channel: str) -> dict[str, Any] | None:
        """The next message of a channel, or None when it cannot be read any more (the kernel is then
        marked dead: its runs fail and the next run starts a fresh kernel)."""
        failures = 0
        while True:
            try:
                msg = await get()
            except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # noqa: BLE001 - kernel messages are untrusted input: a bad one is logged, never kills the reader
                failures += 1
                self._malformed(channel, exc)
                if failures >= MAX_BAD_MESSAGES:
                    self._give_up(f"the kernel sent {failures} messages in a row that could not be read")
                    return None
                continue
            if isinstance(msg, dict):
                return msg
            failures += 1
            self._malformed(channel, TypeError(f"a message of type {type(msg).__name__}"))

    def _malformed(self, channel: str, exc: BaseException) -> None:
        self.bad_messages += 1
        if self.bad_messages <= 5 or self.bad_messages % 1000 == 0:
            log.warning(
                "malformed kernel message skipped",
                extra={
                    "kernel": self.dirs.base.name,
                    "channel": channel,
                    "error": f"{type(exc).__name__}: {exc}"[:300],
                    "count": self.bad_messages,
                },
            )

    def _give_up(self, reason: str) -> None:
        """The kernel is treated as dead: every pending run ends (the caller kills the process)."""
        if self.died.is_set():
            return
        self.kill_reason = self.kill_reason or reason
        self.death = reason
        log.warning("kernel given up", extra={"kernel": self.dirs.base.name, "reason": reason})
        self.died.set()
        for execution in self._pending.values():
            execution.idle.set()


MAX_BAD_MESSAGES = 100
"""Consecutive messages that fail to decode before a kernel is given up as dead."""


def parent_id(msg: dict[str, Any]) -> str | None:
    parent = msg.get("parent_header")
    msg_id = parent.get("msg_id") if isinstance(parent, dict) else None
    return msg_id if isinstance(msg_id, str) else None


def new_kernel_id() -> str:
    return "k" + uuid.uuid4().hex[:12]


async def load_launcher() -> ModuleType:
    """The jupyter-client side (``launcher``), imported off the event loop by the first launch: about
    50 ms of imports that would stall every room of the node, often while its first members join."""
    global _launcher
    if _launcher is None:
        # another launch may be importing it in its thread: import_module waits for that import
        # (sys.modules already holds the half-initialised module meanwhile, so it is not looked at)
        _launcher = await asyncio.to_thread(importlib.import_module, LAUNCHER)
    return _launcher


async def launch(root: Path, sandbox: Sandbox, cgroups: Cgroups) -> Kernel:
    """A started kernel with fresh dirs under ``root`` (the pool's and a cold start's entry point)."""
    dirs = KernelDirs.create(root, new_kernel_id(), sandbox)
    kernel = Kernel(dirs, sandbox, cgroups)
    try:
        await kernel.start()
    except BaseException:
        dirs.remove()
        raise
    return kernel
