"""One resource budget per room: a cgroup that the room's kernel, terminals and debugger all run in.

A room's sandboxed processes share the room's workspace, and so they share one budget too: a
memory hog in a terminal and the kernel's data cannot together take more than the room's
``memory_bytes``, nor together start more than its ``pids``. The layout, under this node's own
cgroup (one directory per controller hierarchy on cgroup v1, one on v2)::

    pairroom-rooms-<pid>-<token>/        this node's rooms (made by ``detect_cgroups``)
        room-<hash of the room name>/    memory.limit_in_bytes / memory.max, pids.max: the budget
            <one launch>/                a kernel's or a shell's fresh cgroup (the same limits,
            <another launch>/            which the room's bound over all of them makes moot)

Each launch still gets a fresh child (a killed tree takes a moment to leave its cgroup, and a
restart must not wait for it); the room's cgroup holds the budget, which the kernel's hierarchical
accounting charges every child to. A kernel taken from the warm pool was started before it had a
room: it is moved into the room's cgroup when taken (``KernelCgroup.move_to``); on cgroup v1 its
memory charge moves with it (``memory.move_charge_at_immigrate``), on v2 what it had allocated
stays charged to the pool (tens of MiB of an idle kernel) and everything after counts to the room.

Found through the room registry like the workspaces (``RoomBudgets.attach``), so kernels and
terminals, which never import each other, use the same cgroup for a room. The room's cgroup is
made by its first user and removed after its last. Without a writable memory/pids cgroup there is
no shared budget: each process keeps its own rlimits (RLIMIT_AS, RLIMIT_NPROC), see docs/security.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import time
import weakref
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from pairroom.sandbox.limits import CgroupMode, Cgroups, detect_cgroups, remove_cgroup_dir, write_limits
from pairroom.sandbox.settings import KernelSettings

log = logging.getLogger("pairroom.sandbox.budget")


def room_dir_name(room: str) -> str:
    """A cgroup directory name for a room: any room name, no path tricks, short."""
    return "room-" + hashlib.sha256(room.encode()).hexdigest()[:20]


class RoomBudgets:
    """This node's room cgroups. ``async with budgets.use(room) as limits`` gives a ``Cgroups`` whose
    launches (``limits.create``) are children of the room's cgroup."""

    _by_registry: weakref.WeakKeyDictionary[Any, RoomBudgets] = weakref.WeakKeyDictionary()

    def __init__(self, registry: Any, settings: KernelSettings, cgroups: Cgroups) -> None:
        self.registry = registry
        self.settings = settings
        self.cgroups = cgroups  # this node's parent: the rooms' cgroups are made in it
        self.attached = 0
        self.users: dict[str, int] = {}

    @classmethod
    async def attach(cls, registry: Any, settings: KernelSettings) -> RoomBudgets:
        """The registry's budgets, detected by the first service to attach (its settings win)."""
        found = cls._by_registry.get(registry)
        if found is None:
            name = f"pairroom-rooms-{os.getpid()}-{secrets.token_hex(3)}"
            cgroups = await asyncio.to_thread(detect_cgroups, settings, name=name)
            found = cls._by_registry.get(registry)  # another service attached meanwhile
            if found is None:
                found = cls._by_registry[registry] = cls(registry, settings, cgroups)
                log.info("room budgets", extra={"limits": cgroups.describe()})
            else:
                cgroups.close()
        found.attached += 1
        return found

    def detach(self) -> None:
        """The last service to detach removes this node's parent cgroup (its rooms are gone by now)."""
        self.attached -= 1
        if self.attached > 0:
            return
        self._by_registry.pop(self.registry, None)
        self.cgroups.close()

    def describe(self) -> str:
        if self.cgroups.mode is CgroupMode.NONE:
            return self.cgroups.describe()
        return f"one cgroup per room ({self.cgroups.describe()})"

    @contextlib.asynccontextmanager
    async def use(self, room: str) -> AsyncIterator[Cgroups]:
        """The room's cgroup while the block runs (a kernel's or a terminal's life)."""
        if self.cgroups.mode is CgroupMode.NONE:
            yield self.cgroups
            return
        name = room_dir_name(room)
        dirs = {controller: parent / name for controller, parent in self.cgroups.parents.items()}
        self.users[room] = self.users.get(room, 0) + 1
        try:
            if self.users[room] == 1 or not all(d.exists() for d in dirs.values()):
                try:
                    self._make(dirs)
                except OSError as exc:
                    log.warning("room cgroup not made, launches get their own", extra={"room": room, "error": str(exc)})
                    yield self.cgroups
                    return
            yield Cgroups(self.cgroups.mode, dirs)
        finally:
            self.users[room] -= 1
            if self.users[room] == 0:
                del self.users[room]
                await self._remove(room, set(dirs.values()))

    def _make(self, dirs: dict[str, Path]) -> None:
        for controller, path in sorted(dirs.items()):
            path.mkdir(mode=0o755, exist_ok=True)
            write_limits(self.cgroups.mode, controller, path, self.settings)
            if self.cgroups.mode is CgroupMode.V2:
                enable = path / "cgroup.subtree_control"
                enable.write_text(" ".join(f"+{c}" for c in sorted(dirs)))
            elif controller == "memory":
                # A pooled kernel moved in brings what it allocated (v1 only; deprecated, may be absent).
                with contextlib.suppress(OSError):
                    (path / "memory.move_charge_at_immigrate").write_text("3")

    async def _remove(self, room: str, dirs: set[Path], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        for path in dirs:  # a new user of the room keeps it
            await remove_cgroup_dir(path, deadline, "room cgroup left behind", keep=lambda: room in self.users)
