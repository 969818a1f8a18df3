"""One kernel per room on this node: the run queue, interrupt and restart, idle shutdown.

Life of a room kernel::

    first run --> take a kernel from the pool (or start one cold) --> idle <--> busy
    a run past the wall-clock limit, an interrupt it ignores, an OOM kill, a crash --> dead
    next run on a dead kernel --> restarting (a fresh process over the same working dir) --> busy
    no run for idle_shutdown_seconds --> stopped; the next run starts over from the pool

Runs are queued per room and executed one at a time, in order. The kernel's working directory is
the room's workspace (``pairroom.workspace``): before each run the workspace is flushed, so a run
can import the room's other files, and after it the disk is scanned, so files the run wrote come
back into the document attributed to whoever asked for the run.

A ``RoomKernel`` keeps its room loaded (``registry.hold``) while it lives, so outputs can be written
even when nobody is connected. Which node runs a room's kernel is asked of a ``KernelLease`` before
the kernel starts and renewed while it lives; the single-node default always grants it. On a
cluster (kernels/cluster_lease.py) the lease lives in Redis, and what is asked of a node that does
not hold it (``submit``, ``interrupt``, ``restart``) is forwarded by the lease to the node that does;
the ``*_here`` methods are what the holder runs. A node that starts a room's kernel while the
document says a kernel was alive (its node died, or this one crashed) reports it as restarted and
fails the runs that kernel left unfinished.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pycrdt import Map

from pairroom.kernels import rundoc
from pairroom.kernels.kernel import Finished, Kernel, KernelStartError, Outcome
from pairroom.kernels.pool import KernelPool
from pairroom.kernels.runners import Runners, kernel_code, probe_node
from pairroom.kernels.workdir import kernel_for
from pairroom.protocol.origins import LocalOrigin
from pairroom.rooms.registry import RoomRegistry
from pairroom.rooms.room import Room
from pairroom.sandbox.bubblewrap import Sandbox, probe
from pairroom.sandbox.budget import RoomBudgets
from pairroom.sandbox.limits import Cgroups, detect_cgroups
from pairroom.sandbox.settings import KernelSettings
from pairroom.workspace import Workspace, Workspaces, WorkspaceSettings, safe_fs

log = logging.getLogger("pairroom.kernels")


class KernelLease:
    """Whether this node may run a room's kernel. Async no-op defaults: a single node owns them all.

    A cluster implementation holds a Redis key per room with a TTL: ``acquire`` sets it if absent,
    ``renew`` extends it every ``renew_seconds`` (returning False when the lease was lost, which stops
    the kernel), and ``release`` deletes it."""

    renew_seconds: float = 10.0

    async def start(self, service: KernelService) -> None:
        """Called once the service runs (a cluster lease starts listening for forwarded requests)."""
        return None

    async def stop(self) -> None:
        """Called after every room kernel stopped and released its lease."""
        return None

    async def acquire(self, room: str) -> bool:
        return True

    async def renew(self, room: str) -> bool:
        return True

    async def release(self, room: str) -> None:
        return None

    async def places_elsewhere(self, room: str) -> bool:
        """Whether a new kernel for ``room`` should start on another node (a cluster: the one running
        the room's terminals, so both share the room's budget there). A single node: never."""
        return False

    async def forward(self, room: str, op: str, args: dict[str, Any]) -> Any:
        """Have the node holding the room's kernel do ``op`` (``run``, ``interrupt``, ``restart``, or
        one registered with ``KernelService.serve``) and return its answer. A single node has nobody to ask."""
        raise KernelUnavailable(f"another node runs the kernel of room {room!r}")


class KernelUnavailable(RuntimeError):
    """This node does not run that room's kernel (another node holds the lease)."""


class KernelUnreachable(RuntimeError):
    """The node running the room's kernel did not answer in time, or the broker is down (a 503:
    after a node dies its lease expires and the next request starts a fresh kernel elsewhere)."""


LIVE_STATES = ("starting", "restarting", "idle", "busy")
BUILTIN_OPS = ("run", "interrupt", "restart", "input")

Handler = Callable[[str, dict[str, Any]], Awaitable[Any]]
"""``handler(room, args)`` registered with ``KernelService.serve``: runs on the node holding the room's
kernel and returns what can travel as JSON."""


class RunHooks(Protocol):
    """What a caller that must act on the very kernel running its run passes to ``submit_here``
    (the debugger attaches in ``before``, once the runs queued ahead have finished and the workspace
    is written, and detaches in ``after``, before the next run starts). ``before`` raising fails the
    run with its message; ``after`` always gets the outcome, also when the kernel did not start.
    ``timeout``, if set, replaces ``run_timeout`` for this run. ``output`` given to ``before`` adds an
    output to the run's record, in order with the program's own (the debugger's logpoints)."""

    timeout: float | None

    async def before(self, kernel: Kernel, output: Callable[[dict[str, Any]], None]) -> None: ...

    async def after(self, finished: Finished) -> None: ...


@dataclass(slots=True)
class RunRequest:
    run_id: str
    code: str
    by: str | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    hooks: RunHooks | None = None
    client: str | None = None  # the page that asked: its input() prompts go to it (None: input() refused)


@dataclass(slots=True)
class Waiting:
    """A run blocked in ``input()``: the prompt, and where its answer is echoed."""

    request: RunRequest
    batch: rundoc.OutputBatch
    prompt: str
    password: bool


class InputRefused(Exception):
    """An answer to ``input()`` that cannot be taken: ``status`` is the HTTP status that says why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


MAX_INPUT_CHARS = 65536


def new_run_id() -> str:
    return secrets.token_urlsafe(9)  # 12 characters, as the document schema says


class RoomKernel:
    """The kernel of one room on this node, and its queue of runs."""

    def __init__(self, service: KernelService, room: str, *, first_here: bool = False) -> None:
        self.service = service
        self.name = room
        self.first_here = first_here  # no earlier kernel of this room on this node: check for a lost one
        self.lost_elsewhere = False
        self.settings = service.settings
        self.queue: asyncio.Queue[RunRequest] = asyncio.Queue()
        self.kernel: Kernel | None = None
        self.current: RunRequest | None = None
        self.closing = False
        self.room: Room | None = None
        self.workspace: Workspace | None = None
        self.limits: Cgroups | None = None  # the room's budget (sandbox.budget), shared with its terminals
        self._kernel_lock = asyncio.Lock()
        self._started = asyncio.Event()
        self.waiting: Waiting | None = None  # the current run waits in input()

    async def serve(self) -> None:
        """Hold the room and run its queue until idle for ``idle_shutdown_seconds`` (or cancelled)."""
        try:
            async with (
                self.service.registry.hold(self.name) as room,
                self.service.workspaces.use(self.name) as workspace,
                self.service.budgets.use(self.name) as limits,
            ):
                self.room = room
                self.workspace = workspace
                self.limits = limits
                if self.first_here:
                    self.lost_elsewhere = take_over_lost_kernel(room)
                self._started.set()
                try:
                    await self._loop()
                finally:
                    self.closing = True
                    await self._stop_kernel()
                    with contextlib.suppress(RuntimeError):  # the room may be closing with the server
                        rundoc.set_kernel_state(room, self.settings.node, "dead")
        finally:
            self.closing = True
            self._started.set()
            self.service.forget(self)

    async def ready(self) -> Room:
        await self._started.wait()
        if self.room is None:
            raise KernelUnavailable(f"room {self.name!r} could not be held for its kernel")
        return self.room

    async def _loop(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.settings.idle_shutdown_seconds):
                    request = await self.queue.get()
            except TimeoutError:
                if self.queue.empty():
                    self.closing = True  # set with no await before it: a submit now starts a new one
                    log.info("room kernel idle, shutting down", extra={"room": self.name})
                    return
                continue
            self.current = request
            try:
                await self._run(request)
            except Exception as exc:  # a failure of this room's run is this room's problem only
                log.exception("room run failed inside the server", extra={"room": self.name, "run": request.run_id})
                await self._fail_run(request.run_id, f"the server could not finish the run: {type(exc).__name__}")
                await self._after(
                    request, Finished(Outcome.FAILED, f"the server could not finish the run: {type(exc).__name__}")
                )
            finally:
                self.current = None
                request.done.set()

    async def _ensure_kernel(self, room: Room) -> Kernel:
        async with self._kernel_lock:
            kernel = self.kernel
            if kernel is not None and not kernel.died.is_set():
                return kernel
            restarting = kernel is not None or self.lost_elsewhere
            self.lost_elsewhere = False
            rundoc.set_kernel_state(
                room, self.settings.node, "restarting" if restarting else "starting", restarted=restarting
            )
            if kernel is None:
                assert self.workspace is not None and self.service.sandbox is not None
                kernel = await kernel_for(
                    self.workspace,
                    self.service.pool,
                    self.service.root,
                    self.service.sandbox,
                    self.limits or self.service.cgroups_or_none(),
                )
            else:
                await kernel.kill("restart")
                kernel = Kernel(kernel.dirs, kernel.sandbox, kernel.cgroups)
                try:
                    await kernel.start()
                finally:
                    self.kernel = kernel
            self.kernel = kernel
            rundoc.set_kernel_state(room, self.settings.node, "idle")
            return kernel

    async def _run(self, request: RunRequest) -> None:
        room = self.room
        assert room is not None
        run_id = request.run_id
        batch = rundoc.OutputBatch(room, run_id, self.settings.output_cap_bytes, self.settings.output_flush_seconds)
        try:
            kernel = await self._ensure_kernel(room)
        except KernelStartError as exc:
            batch.add_error("KernelStartError", str(exc))
            batch.flush()
            rundoc.update_run(room, run_id, status="failed", startedAt=rundoc.now_ms(), endedAt=rundoc.now_ms())
            rundoc.set_kernel_state(room, self.settings.node, "dead")
            await self._after(request, Finished(Outcome.FAILED, str(exc)))
            return
        workspace = self.workspace
        assert workspace is not None
        workspace.note_actor(request.by)
        try:
            await workspace.flushed()
        except (OSError, TimeoutError, RuntimeError) as exc:  # the run would see old files
            batch.add_error("KernelFailed", f"the room's files could not be written to its workspace: {exc}")
            batch.flush()
            rundoc.update_run(room, run_id, status="failed", startedAt=rundoc.now_ms(), endedAt=rundoc.now_ms())
            await self._after(request, Finished(Outcome.FAILED, f"the room's files could not be written: {exc}"))
            return
        rundoc.update_run(room, run_id, status="running", startedAt=rundoc.now_ms())
        rundoc.set_kernel_state(room, self.settings.node, "busy")
        try:
            finished = await self._execute(request, kernel, batch)
        finally:
            workspace.scan_now()
        try:
            await workspace.synced()  # what the run wrote is in the document when the run has ended
        except (OSError, RuntimeError) as exc:
            log.error("workspace not synced after a run", extra={"room": self.name, "error": str(exc)})
        if finished.outcome is Outcome.FAILED:
            # the time limit, or the kernel died or sent what cannot be read: stop it for good
            await kernel.kill(finished.reason or "run failed")
        if finished.reason:
            ename = "KernelInterrupted" if finished.outcome is Outcome.INTERRUPTED else "KernelFailed"
            note = "; the kernel restarts with a fresh state on the next run" if kernel.died.is_set() else ""
            batch.add_error(ename, finished.reason + note)
        batch.flush()
        fields: dict[str, Any] = {"status": finished.outcome.value, "endedAt": rundoc.now_ms()}
        rundoc.update_run(room, run_id, **fields)
        rundoc.set_kernel_state(room, self.settings.node, "dead" if kernel.died.is_set() else "idle")
        await self._after(request, finished)

    async def _after(self, request: RunRequest, finished: Finished) -> None:
        if request.hooks is None:
            return
        try:
            await request.hooks.after(finished)
        except Exception:
            log.exception("run hook failed after the run", extra={"room": self.name, "run": request.run_id})

    async def _execute(self, request: RunRequest, kernel: Kernel, batch: rundoc.OutputBatch) -> Finished:
        """Run the request's code, after its ``before`` hook (a hook that fails fails the run)."""
        if request.hooks is not None:
            try:
                await request.hooks.before(kernel, batch)
            except Exception as exc:  # noqa: BLE001 - a room's kernel failing is that room's problem: logged, the others carry on
                log.warning("run hook failed", extra={"room": self.name, "run": request.run_id, "error": str(exc)})
                return Finished(Outcome.FAILED, f"could not prepare the run: {exc}")
        timeout = request.hooks.timeout if request.hooks is not None and request.hooks.timeout else None
        on_input = None
        if request.client is not None:

            def on_input(prompt: str, password: bool) -> None:
                self._ask_input(request, batch, prompt, password)

        try:
            return await kernel.execute(request.code, batch, timeout or self.settings.run_timeout, on_input)
        finally:
            if self.waiting is not None and self.waiting.request is request:
                self.waiting = None
                with contextlib.suppress(RuntimeError):  # the room may be closing with the server
                    rundoc.update_run(self.room, request.run_id, input=None)  # type: ignore[arg-type]

    def _ask_input(self, request: RunRequest, batch: rundoc.OutputBatch, prompt: str, password: bool) -> None:
        """The run waits in ``input()``: what it printed so far, then the prompt in the run's record
        (``input``), which the page that asked for the run turns into a field and the others into
        "waiting for input"."""
        if self.current is not request or self.room is None:
            return
        batch.flush()
        self.waiting = Waiting(request, batch, prompt, password)
        rundoc.update_run(self.room, request.run_id, input={"prompt": prompt, "password": password})

    def answer_input(self, run_id: str, value: str, *, by: str, client: str, check_by: bool) -> None:
        """Give the waiting ``input()`` of run ``run_id`` its answer, echoed in the run's output (a
        password as dots). Only the page that ran it answers (``client``; and, with tokens, the same
        user). Raises InputRefused."""
        waiting = self.waiting
        if waiting is None or waiting.request.run_id != run_id:
            raise InputRefused(409, f"run {run_id!r} is not waiting for input")
        request = waiting.request
        if request.client != client or (check_by and request.by != by):
            raise InputRefused(403, "only the person who ran the code answers its input()")
        kernel = self.kernel
        if kernel is None or not kernel.answer_input(value):
            raise InputRefused(409, f"run {run_id!r} is not waiting for input: the kernel stopped")
        self.waiting = None
        shown = "•" * min(len(value), 12) if waiting.password else value
        waiting.batch({"output_type": "stream", "name": "stdout", "text": f"{waiting.prompt}{shown}\n"})
        waiting.batch.flush()
        assert self.room is not None
        rundoc.update_run(self.room, run_id, input=None)

    async def _fail_run(self, run_id: str, reason: str) -> None:
        """After an unexpected error: say so in the run, and start the next run on a fresh kernel."""
        kernel = self.kernel
        try:
            if kernel is not None:
                await kernel.kill(reason)
            room = self.room
            if room is not None:
                batch = rundoc.OutputBatch(room, run_id, 0, 0.0)
                batch.add_error("KernelFailed", reason + "; the kernel restarts with a fresh state on the next run")
                batch.flush()
                rundoc.update_run(room, run_id, status="failed", endedAt=rundoc.now_ms())
                rundoc.set_kernel_state(room, self.settings.node, "dead")
        except Exception:
            log.exception("could not record a failed run", extra={"room": self.name, "run": run_id})

    async def interrupt(self) -> bool:
        """Interrupt the current run; kill the kernel if it is still busy after ``interrupt_grace``.
        Returns False if nothing was running."""
        request, kernel = self.current, self.kernel
        if request is None or kernel is None or kernel.died.is_set():
            return False
        await kernel.interrupt()
        self.service.spawn(self._escalate(request, kernel), f"pairroom-interrupt-{self.name}")
        return True

    async def _escalate(self, request: RunRequest, kernel: Kernel) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.interrupt_grace):
                await request.done.wait()
                return
        if self.current is request and not kernel.died.is_set():
            log.info("kernel ignored the interrupt, killing it", extra={"room": self.name})
            await kernel.kill("interrupted")

    async def restart(self) -> None:
        """Kill the kernel now (a run in flight fails and says so) and start a fresh one."""
        room = self.room
        assert room is not None
        kernel = self.kernel
        if kernel is not None and not kernel.died.is_set():
            await kernel.kill("the kernel was restarted")
        await self._ensure_kernel(room)

    async def _stop_kernel(self) -> None:
        kernel, self.kernel = self.kernel, None
        if kernel is not None:
            await kernel.kill("room kernel stopped")
            await remove_dirs(str(kernel.dirs.base), self.settings.file_sync_timeout)
        await self.service.lease.release(self.name)

    def state(self) -> dict[str, Any]:
        kernel = self.kernel
        return {
            "running": self.current.run_id if self.current else None,
            "queued": self.queue.qsize(),
            "alive": kernel is not None and not kernel.died.is_set(),
            "death": kernel.death if kernel is not None and kernel.died.is_set() else None,
        }


async def supervised(coro: Any, name: str) -> Any:
    """Await ``coro``; an exception is logged and swallowed here, so the shared task group lives on."""
    try:
        return await coro
    except Exception:
        log.exception("kernel task failed", extra={"task": name})
        return None


async def remove_dirs(path: str, timeout: float) -> None:
    """Remove a kernel's dirs (room code wrote in them: no recursion, no link followed, off the loop)."""
    try:
        await safe_fs.run_off_loop(safe_fs.remove_path_tree, path, timeout=timeout, what="kernel dirs")
    except OSError as exc:
        log.error("kernel dirs not removed", extra={"path": path, "error": str(exc)})


def take_over_lost_kernel(room: Room) -> bool:
    """If ``meta.kernel`` says a kernel is alive although none runs here, the node that ran it died
    (its lease expired) or this node crashed: fail the runs it left queued or running, and return
    True so the next kernel start says "restarted"."""
    if rundoc.read_kernel_state(room).get("status") not in LIVE_STATES:
        return False
    with room.local_change(LocalOrigin("kernel-read")) as doc:
        runs = doc.get("runs", type=Map)
        orphans = [
            run_id
            for run_id, run in runs.items()
            if isinstance(run, Map) and run.get("status") in ("queued", "running")
        ]
    for run_id in orphans:
        batch = rundoc.OutputBatch(room, run_id, 0, 0.0)
        batch.add_error("KernelFailed", "the node running the kernel stopped; the kernel restarts with a fresh state")
        batch.flush()
        rundoc.update_run(room, run_id, status="failed", endedAt=rundoc.now_ms())
    log.warning("taking over a lost room kernel", extra={"room": room.name, "failed_runs": len(orphans)})
    return True


class KernelService:
    """The kernels of this node. ``async with KernelService(registry, settings):`` or start/stop."""

    def __init__(
        self, registry: RoomRegistry, settings: KernelSettings | None = None, lease: KernelLease | None = None
    ) -> None:
        self.registry = registry
        self.settings = settings or KernelSettings()
        self.lease = lease or KernelLease()
        self.rooms: dict[str, RoomKernel] = {}
        self.handlers: dict[str, Handler] = {}  # ``serve``: other features' requests to the holder
        self.sandbox: Sandbox | None = None
        self.cgroups: Cgroups | None = None
        self.runners = Runners()
        self._pool: KernelPool | None = None
        self._root: Path | None = None
        self._workspaces: Workspaces | None = None
        self._budgets: RoomBudgets | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._runner: asyncio.Task[None] | None = None

    @property
    def pool(self) -> KernelPool:
        if self._pool is None:
            raise RuntimeError("the kernel service is not started")
        return self._pool

    async def start(self) -> None:
        """Probe the sandbox (raises SandboxUnavailable), detect cgroups, start the pool (it fills when
        a room is first loaded here, ``KernelPool.want``)."""
        self.sandbox = await asyncio.to_thread(probe, self.settings)
        self.cgroups = await asyncio.to_thread(detect_cgroups, self.settings)
        self.runners = Runners(node=await asyncio.to_thread(probe_node, self.sandbox))
        if self.settings.state_dir is not None:
            self.settings.state_dir.mkdir(parents=True, exist_ok=True)
            self._root = Path(tempfile.mkdtemp(prefix="pairroom-kernels-", dir=self.settings.state_dir))
        else:
            self._root = Path(tempfile.mkdtemp(prefix="pairroom-kernels-"))
        os.chmod(self._root, 0o711)  # the kernel uid must traverse it to reach its own dirs
        uid = gid = None
        if self.sandbox.drops_privileges:
            uid, gid = self.settings.kernel_uid, self.settings.kernel_gid
        self._workspaces = Workspaces.attach(
            self.registry, WorkspaceSettings(root=self.settings.state_dir, uid=uid, gid=gid)
        )
        self._budgets = await RoomBudgets.attach(self.registry, self.settings)
        self._pool = KernelPool(self._root, self.sandbox, self.cgroups)
        log.info(
            "kernels ready" if self.sandbox.isolated else "kernels run UNSANDBOXED (--unsafe-kernels)",
            extra={
                "sandbox": "bubblewrap" if self.sandbox.isolated else "none",
                "limits": self.cgroups.describe(),
                "pool": self.settings.pool_size,
                "node": self.runners.node,
            },
        )
        started = asyncio.Event()
        self._runner = asyncio.create_task(self._run(started), name="pairroom-kernels")
        await started.wait()
        await self.lease.start(self)

    async def _run(self, started: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            tasks.create_task(self.pool.run(), name="pairroom-kernel-pool")
            started.set()

    async def stop(self) -> None:
        """Kill every kernel (room kernels and the pool) and remove their dirs and cgroups."""
        try:
            if self._runner is not None:
                self._runner.cancel()
                try:
                    await self._runner
                except asyncio.CancelledError:
                    pass
                except Exception:  # supervised tasks never get here; the pool loop might
                    log.exception("the kernel service's tasks failed")
        finally:
            self._runner = None
            self._tasks = None
            await self.lease.stop()  # after the room kernels released their leases
            if self._workspaces is not None:
                await self._workspaces.detach()
                self._workspaces = None
            if self._root is not None:
                await remove_dirs(str(self._root), self.settings.file_sync_timeout * 4)
            if self.cgroups is not None:
                self.cgroups.close()
            if self._budgets is not None:
                self._budgets.detach()
                self._budgets = None

    async def __aenter__(self) -> KernelService:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def workspaces(self) -> Workspaces:
        if self._workspaces is None:
            raise RuntimeError("the kernel service is not started")
        return self._workspaces

    @property
    def budgets(self) -> RoomBudgets:
        if self._budgets is None:
            raise RuntimeError("the kernel service is not started")
        return self._budgets

    @property
    def root(self) -> Path:
        if self._root is None:
            raise RuntimeError("the kernel service is not started")
        return self._root

    def cgroups_or_none(self) -> Cgroups:
        assert self.cgroups is not None
        return self.cgroups

    def spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        """Run ``coro`` in the service's task group, supervised: its failure is logged and ends only
        itself (one room's kernel failing must not stop the kernels of every room)."""
        if self._tasks is None:
            coro.close()
            raise RuntimeError("the kernel service is not running")
        return self._tasks.create_task(supervised(coro, name), name=name)

    def forget(self, room_kernel: RoomKernel) -> None:
        if self.rooms.get(room_kernel.name) is room_kernel:
            del self.rooms[room_kernel.name]

    async def room_kernel(self, room: str) -> RoomKernel:
        """The room's kernel on this node, created (not yet started) if needed."""
        existing = self.rooms.get(room)
        if existing is not None and not existing.closing:
            return existing
        if not await self.lease.acquire(room):
            raise KernelUnavailable(f"another node runs the kernel of room {room!r}")
        existing = self.rooms.get(room)  # the lease check awaited: someone may have made it meanwhile
        if existing is not None and not existing.closing:
            return existing
        room_kernel = RoomKernel(self, room, first_here=existing is None)
        self.rooms[room] = room_kernel
        self.spawn(room_kernel.serve(), f"pairroom-kernel-{room}")
        self.spawn(self._renew(room_kernel), f"pairroom-lease-{room}")
        await room_kernel.ready()
        return room_kernel

    async def _renew(self, room_kernel: RoomKernel) -> None:
        while not room_kernel.closing:
            await asyncio.sleep(self.lease.renew_seconds)
            if not room_kernel.closing and not await self.lease.renew(room_kernel.name):
                log.error("kernel lease lost, stopping the room kernel", extra={"room": room_kernel.name})
                room_kernel.closing = True
                if room_kernel.kernel is not None:
                    await room_kernel.kernel.kill("this node lost the room's kernel lease")

    async def submit(
        self,
        room: str,
        *,
        code: str,
        path: str | None,
        by: str,
        client: str | None = None,
        language: str | None = "python",
    ) -> str:
        """Queue a run in ``room`` here, or on the node running its kernel; returns its id. The run
        record is in this node's copy of the document when this returns. ``client`` is the page
        that asked: its ``input()`` calls are put to that page (without one, ``input()`` is refused)."""
        try:
            if await self._starts_elsewhere(room):
                raise KernelUnavailable(f"the kernel of room {room!r} starts beside its terminals")
            return await self.submit_here(room, code=code, path=path, by=by, client=client, language=language)
        except KernelUnavailable:
            args = {"code": code, "path": path, "by": by, "client": client, "language": language}
            run_id = str(await self.lease.forward(room, "run", args))
        await self._until_visible(room, run_id)
        return run_id

    async def _until_visible(self, name: str, run_id: str, timeout: float = 5.0) -> None:
        """Wait for the holder's run record to reach this node's copy (the cluster syncs it in
        milliseconds), so a GET right after the POST finds the run here too."""
        async with self.registry.hold(name) as room:
            changed = asyncio.Event()
            subscription = room.doc.observe(lambda event: changed.set())
            try:
                async with asyncio.timeout(timeout):
                    while rundoc.read_run(room, run_id) is None:
                        changed.clear()
                        await changed.wait()
            except TimeoutError:
                log.warning("forwarded run not synced here yet", extra={"room": name, "run": run_id})
            finally:
                room.doc.unobserve(subscription)

    async def submit_here(
        self,
        room: str,
        *,
        code: str,
        path: str | None,
        by: str,
        hooks: RunHooks | None = None,
        client: str | None = None,
        language: str | None = "python",
    ) -> str:
        """Queue a run on this node's kernel of ``room``; KernelUnavailable if another node runs it.
        ``hooks`` are called around the run by the kernel that runs it (the debugger's way in)."""
        while True:
            room_kernel = await self.room_kernel(room)
            held = await room_kernel.ready()
            if not room_kernel.closing:
                break
        run_id = new_run_id()
        program = kernel_code(self.runners, language, code, path)  # NotRunnable before anything is queued
        rundoc.create_run(held, run_id, code=code, path=path, by=by, client=client, language=language)
        room_kernel.queue.put_nowait(
            RunRequest(run_id, program, by, hooks=hooks, client=client)
        )  # no await since the closing check
        return run_id

    async def answer_input(self, room: str, run_id: str, value: str, *, by: str, client: str, check_by: bool) -> None:
        """Answer a run's ``input()``, here or on the node running the room's kernel. InputRefused."""
        args = {"run": run_id, "value": value, "by": by, "client": client, "check_by": check_by}
        try:
            await self.answer_input_here(room, run_id, value, by=by, client=client, check_by=check_by)
        except KernelUnavailable:
            refused = await self.lease.forward(room, "input", args)
            if refused:
                raise InputRefused(int(refused[0]), str(refused[1])) from None

    async def answer_input_here(self, room: str, run: str, value: str, *, by: str, client: str, check_by: bool) -> None:
        """What the node running the kernel does; KernelUnavailable if another node runs it."""
        room_kernel = self.rooms.get(room)
        if room_kernel is None or room_kernel.closing:
            if not await self.lease.acquire(room):
                raise KernelUnavailable(f"another node runs the kernel of room {room!r}")
            await self.lease.release(room)  # nobody held it: no run waits anywhere
            raise InputRefused(409, f"run {run!r} is not waiting for input: no kernel runs")
        room_kernel.answer_input(run, value, by=by, client=client, check_by=check_by)

    async def interrupt(self, room: str) -> bool:
        try:
            return await self.interrupt_here(room)
        except KernelUnavailable:
            return bool(await self.lease.forward(room, "interrupt", {}))

    async def interrupt_here(self, room: str) -> bool:
        """False when no kernel of the room runs anywhere; KernelUnavailable if another node runs it."""
        room_kernel = self.rooms.get(room)
        if room_kernel is not None:
            return await room_kernel.interrupt()
        if not await self.lease.acquire(room):
            raise KernelUnavailable(f"another node runs the kernel of room {room!r}")
        await self.lease.release(room)  # nobody held it: there is nothing to interrupt
        return False

    async def _starts_elsewhere(self, room: str) -> bool:
        existing = self.rooms.get(room)
        return (existing is None or existing.closing) and await self.lease.places_elsewhere(room)

    async def restart(self, room: str) -> None:
        try:
            if await self._starts_elsewhere(room):
                raise KernelUnavailable(f"the kernel of room {room!r} starts beside its terminals")
            await self.restart_here(room)
        except KernelUnavailable:
            await self.lease.forward(room, "restart", {})

    async def restart_here(self, room: str) -> None:
        room_kernel = await self.room_kernel(room)
        await room_kernel.restart()

    # -- other features' requests to the room's kernel node -----------------------------------------

    def serve(self, op: str, handler: Handler) -> None:
        """Have ``call(room, op, args)`` run ``handler(room, args)`` on the node holding the room's
        kernel, wherever it was asked (the debugger's session lives beside the kernel it debugs). The
        feature registers on every node; the kernels never import it."""
        if op in BUILTIN_OPS or op == "call" or op in self.handlers:
            raise ValueError(f"op {op!r} is already served")
        self.handlers[op] = handler

    async def call(self, room: str, op: str, args: dict[str, Any]) -> Any:
        """``op``'s handler on the node holding the room's kernel: here when this node holds it or
        nobody does, else forwarded to the holder (KernelUnreachable if it does not answer). While no
        kernel runs and the room's terminals run on another node, that node: a kernel the handler
        starts (a debug session's run) starts beside them."""
        try:
            if await self._starts_elsewhere(room):
                raise KernelUnavailable(f"the kernel of room {room!r} starts beside its terminals")
            return await self.call_here(room, op, args)
        except KernelUnavailable:
            return await self.lease.forward(room, "call", {"op": op, "args": args})

    async def call_here(self, room: str, op: str, args: dict[str, Any]) -> Any:
        """KernelUnavailable if another node runs the room's kernel."""
        handler = self.handlers.get(op)
        if handler is None:
            raise ValueError(f"no handler for op {op!r}")
        if room not in self.rooms:
            if not await self.lease.acquire(room):
                raise KernelUnavailable(f"another node runs the kernel of room {room!r}")
            await self.lease.release(room)  # nobody held it: the handler answers from here
        return await handler(room, args)

    def state(self, room: str) -> dict[str, Any]:
        room_kernel = self.rooms.get(room)
        local = (
            room_kernel.state()
            if room_kernel is not None
            else {"running": None, "queued": 0, "alive": False, "death": None}
        )
        return {
            **local,
            "sandbox": "bubblewrap" if self.sandbox is not None and self.sandbox.isolated else "none",
            "limits": self._budgets.describe() if self._budgets is not None else None,
        }
