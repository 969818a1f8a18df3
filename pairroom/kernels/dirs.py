"""The host directories of one kernel (see ``launcher`` for the layout); no jupyter-client here, so
the pool and the workspaces can handle them without loading it."""

from __future__ import annotations

import itertools
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from pairroom.sandbox.bubblewrap import Sandbox


@dataclass(slots=True)
class KernelDirs:
    """The host directories of one kernel; created by ``create``, removed by ``remove``."""

    base: Path
    uid: int | None  # chown to this uid (the server is root and kernels run unprivileged)
    gid: int | None
    _launches: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def work(self) -> Path:
        return self.base / "work"

    @property
    def log(self) -> Path:
        return self.base / "kernel.log"

    @classmethod
    def create(cls, root: Path, kernel_id: str, sandbox: Sandbox) -> KernelDirs:
        uid = gid = None
        if sandbox.drops_privileges:
            uid, gid = sandbox.settings.kernel_uid, sandbox.settings.kernel_gid
        dirs = cls(root / kernel_id, uid, gid)
        dirs.base.mkdir(mode=0o711)
        dirs._private_dir(dirs.work)
        return dirs

    def new_launch_dir(self) -> Path:
        path = self.base / f"launch-{next(self._launches)}"
        self._private_dir(path)
        return path

    def give(self, path: Path) -> None:
        """Hand a file the server wrote to the kernel uid (no-op when kernels run as the server)."""
        if self.uid is not None:
            os.chown(path, self.uid, self.gid if self.gid is not None else -1)

    def _private_dir(self, path: Path) -> None:
        path.mkdir(mode=0o700)
        os.chmod(path, 0o700)  # mkdir's mode is masked by the umask
        self.give(path)

    def remove(self) -> None:
        shutil.rmtree(self.base, ignore_errors=False)
