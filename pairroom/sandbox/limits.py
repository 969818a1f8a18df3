"""Resource limits for kernels: setrlimit (through ``prlimit`` inside the sandbox) and cgroups.

rlimits are set by ``prlimit`` as the last step before the kernel's Python, inside the sandbox, so
they apply to the kernel's whole process tree and RLIMIT_NPROC is counted per sandbox (each has its
own user namespace). RLIMIT_CPU is a lifetime budget of the process, so it is only a coarse backstop;
the per-run wall-clock limit lives in ``kernel``.

Memory and process counts are better held by a cgroup, which this module uses when the host lets the
server create one. Hosts differ (docs/kernels.md): cgroup v2 with a delegated subtree
(``memory.max``, ``pids.max``), or v1 controllers (``memory.limit_in_bytes``, ``pids.max``), or
neither writable (then RLIMIT_AS stands in for memory and RLIMIT_NPROC for processes). Detection
reads ``/proc/self/cgroup`` and ``/proc/self/mounts`` and makes a test directory; nothing is assumed.

Each launch gets a fresh cgroup: a killed kernel's processes take a moment to leave theirs, and a
restart inside a cgroup that is still at ``pids.max`` fails to create its namespaces.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import logging
import os
import secrets
import shlex
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pairroom.sandbox.settings import KernelSettings

log = logging.getLogger("pairroom.sandbox.limits")


def prlimit_argv(settings: KernelSettings, *, memory_in_cgroup: bool, isolated: bool) -> list[str]:
    """The ``prlimit ... --`` prefix for the kernel's Python (empty if prlimit is missing)."""
    prlimit = shutil.which("prlimit", path="/usr/bin:/bin")
    if prlimit is None:
        return []
    args = [
        prlimit,
        f"--nofile={settings.open_files}",
        f"--fsize={settings.file_bytes}",
        f"--cpu={settings.cpu_seconds}",
    ]
    if isolated:
        # Outside a user namespace RLIMIT_NPROC would count every process of the server's user.
        args.append(f"--nproc={settings.pids}")
    if not memory_in_cgroup:
        # Address space is not resident memory: leave room for thread stacks and mapped libraries.
        args.append(f"--as={2 * settings.memory_bytes}")
    return [*args, "--"]


class CgroupMode(enum.Enum):
    V2 = "cgroup v2"
    V1 = "cgroup v1"
    NONE = "rlimits only"


@dataclass(frozen=True, slots=True)
class Cgroups:
    """Where this server may create per-kernel cgroups. ``parents`` maps a controller to its dir."""

    mode: CgroupMode
    parents: dict[str, Path]

    @property
    def limits_memory(self) -> bool:
        return "memory" in self.parents

    def describe(self) -> str:
        if self.mode is CgroupMode.NONE:
            return "rlimits only (no writable memory/pids cgroup)"
        return f"{self.mode.value}: " + ", ".join(sorted(self.parents))

    def create(self, name: str, settings: KernelSettings) -> KernelCgroup | None:
        """A fresh cgroup (one dir per controller hierarchy) with the limits written, or None."""
        if self.mode is CgroupMode.NONE:
            return None
        dirs: list[Path] = []
        try:
            for controller, parent in sorted(self.parents.items()):
                path = parent / name
                if path not in dirs:
                    path.mkdir(mode=0o755)
                    dirs.append(path)
                write_limits(self.mode, controller, path, settings)
        except OSError as exc:
            log.warning("could not set up a kernel cgroup, using rlimits only", extra={"error": str(exc)})
            for path in reversed(dirs):
                _rmdir_quietly(path)
            return None
        memory_dir = self.parents["memory"] / name if "memory" in self.parents else None
        return KernelCgroup(self.mode, dirs, memory_dir)

    def close(self) -> None:
        """Remove this server's parent cgroups (their kernels are gone by now)."""
        for parent in set(self.parents.values()):
            _rmdir_quietly(parent)


def write_limits(mode: CgroupMode, controller: str, path: Path, settings: KernelSettings) -> None:
    """The memory or pids limit of ``settings`` in the cgroup at ``path``."""
    if controller == "memory":
        if mode is CgroupMode.V2:
            (path / "memory.max").write_text(str(settings.memory_bytes))
            swap = path / "memory.swap.max"
            if swap.exists():
                swap.write_text("0")
        else:
            (path / "memory.limit_in_bytes").write_text(str(settings.memory_bytes))
            memsw = path / "memory.memsw.limit_in_bytes"
            if memsw.exists():
                memsw.write_text(str(settings.memory_bytes))
    elif controller == "pids":
        (path / "pids.max").write_text(str(settings.pids))


def _rmdir_quietly(path: Path) -> None:
    try:
        path.rmdir()
    except FileNotFoundError:
        return
    except OSError as exc:
        log.warning("could not remove cgroup", extra={"path": str(path), "error": str(exc)})


@dataclass(slots=True)
class KernelCgroup:
    """One launch's cgroup: the shell prefix that joins it, OOM detection, and removal."""

    mode: CgroupMode
    dirs: list[Path]
    memory_dir: Path | None

    def join_argv(self) -> list[str]:
        """A ``/bin/sh`` prefix that moves itself into the cgroup and then execs the rest, so the
        whole kernel tree starts inside it with no window outside."""
        writes = " && ".join(f"echo $$ > {shlex.quote(str(d / 'cgroup.procs'))}" for d in self.dirs)
        return ["/bin/sh", "-c", f'{writes} && exec "$@"', "pairroom-cgroup-join"]

    def move_to(self, other: KernelCgroup) -> None:
        """Move every process of this cgroup into ``other`` (a pooled kernel joining its room's
        budget). Processes forked meanwhile are caught by reading again until nothing is left."""
        for _ in range(20):
            pids = {pid for d in self.dirs for pid in _procs(d)}
            if not pids:
                return
            for pid in sorted(pids):
                for target in other.dirs:
                    try:
                        (target / "cgroup.procs").write_text(str(pid))
                    except ProcessLookupError:
                        break  # it exited meanwhile
        raise OSError(errno.EBUSY, f"processes kept appearing in {self.dirs[0]}")

    def oom_kills(self) -> int:
        """How many processes the kernel OOM-killed in this cgroup (0 if unknown)."""
        if self.memory_dir is None:
            return 0
        name = "memory.events" if self.mode is CgroupMode.V2 else "memory.oom_control"
        try:
            text = (self.memory_dir / name).read_text()
        except OSError:
            return 0
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    async def remove(self, timeout: float = 5.0) -> None:
        """Remove the cgroup once its processes have left (a killed tree takes a moment)."""
        deadline = time.monotonic() + timeout
        for path in reversed(self.dirs):
            await remove_cgroup_dir(path, deadline, "kernel cgroup left behind")


async def remove_cgroup_dir(
    path: Path, deadline: float, left_behind: str, keep: Callable[[], bool] = lambda: False
) -> None:
    """``rmdir`` a cgroup, retrying while it is busy (its last processes are still leaving) until
    ``deadline``; ``keep()`` turning true stops the attempt (a new user arrived)."""
    while not keep():
        try:
            path.rmdir()  # noqa: ASYNC240  # cgroupfs: no disk I/O behind it
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                log.warning(left_behind, extra={"path": str(path), "error": str(exc)})
                return
            await asyncio.sleep(0.05)


def _procs(path: Path) -> list[int]:
    try:
        return [int(line) for line in (path / "cgroup.procs").read_text().split()]
    except FileNotFoundError:
        return []


def detect_cgroups(settings: KernelSettings, *, name: str | None = None) -> Cgroups:
    """Find where per-kernel cgroups can be created, creating this server's parent dirs."""
    name = name or f"pairroom-kernels-{os.getpid()}-{secrets.token_hex(3)}"  # one per service
    try:
        own = _own_cgroups()
        mounts = _cgroup_mounts()
    except OSError as exc:
        log.info("no cgroup information", extra={"error": str(exc)})
        return Cgroups(CgroupMode.NONE, {})
    v2 = _detect_v2(own, mounts, name, settings)
    if v2 is not None:
        return v2
    parents: dict[str, Path] = {}
    for controller in ("memory", "pids"):
        mount = mounts.get(controller)
        relative = own.get(controller)
        if mount is None or relative is None:
            continue
        parent = mount / relative.lstrip("/") / name
        if _try_make(parent, controller, CgroupMode.V1, settings):
            parents[controller] = parent
    return Cgroups(CgroupMode.V1 if parents else CgroupMode.NONE, parents)


def _detect_v2(own: dict[str, str], mounts: dict[str, Path], name: str, settings: KernelSettings) -> Cgroups | None:
    mount = mounts.get("")
    relative = own.get("")
    if mount is None or relative is None:
        return None
    base = mount / relative.lstrip("/")
    try:
        available = set((base / "cgroup.controllers").read_text().split())
    except OSError:
        return None
    wanted = {"memory", "pids"} & available
    if not wanted:
        return None
    parent = base / name
    try:
        enabled = set((base / "cgroup.subtree_control").read_text().split())
        if not wanted <= enabled:
            # Only allowed where the cgroup has no processes of its own (a delegated subtree root).
            (base / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in wanted - enabled))
        parent.mkdir(mode=0o755, exist_ok=True)
        (parent / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in wanted))
    except OSError as exc:
        log.info("cgroup v2 is present but not writable here", extra={"error": str(exc)})
        _rmdir_quietly(parent)
        return None
    for controller in wanted:
        if not _try_make(parent, controller, CgroupMode.V2, settings, exists_ok=True):
            _rmdir_quietly(parent)
            return None
    return Cgroups(CgroupMode.V2, {c: parent for c in wanted})


def _try_make(
    parent: Path, controller: str, mode: CgroupMode, settings: KernelSettings, exists_ok: bool = False
) -> bool:
    """Create ``parent`` and check that a child's limit can be written (the test write)."""
    try:
        parent.mkdir(mode=0o755, exist_ok=True)
        probe = parent / f"probe-{os.getpid()}"
        probe.mkdir(mode=0o755, exist_ok=True)
        try:
            write_limits(mode, controller, probe, settings)
        finally:
            probe.rmdir()
    except OSError as exc:
        log.info("cgroup controller not writable", extra={"controller": controller, "error": str(exc)})
        if not exists_ok:
            _rmdir_quietly(parent)
        return False
    return True


def _own_cgroups() -> dict[str, str]:
    """Controller name to this process's cgroup path ("" is the v2 unified hierarchy)."""
    result: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(","):
            result[controller] = path
    return result


def _cgroup_mounts() -> dict[str, Path]:
    """Controller name to its mount point ("" is the v2 mount)."""
    result: dict[str, Path] = {}
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        point, kind, options = fields[1], fields[2], fields[3].split(",")
        if kind == "cgroup2":
            result.setdefault("", Path(point))
        elif kind == "cgroup":
            for option in options:
                if option in ("memory", "pids"):
                    result.setdefault(option, Path(point))
    return result
