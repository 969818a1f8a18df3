"""A kernel's working directory is its room's workspace (``pairroom.workspace``).

The workspace outlives the kernel: a kernel stopped after its idle timeout no longer takes the
room's files on disk with it, and terminals see the same directory. A room's first kernel comes
from the warm pool: its empty ``work`` dir, already bound at ``/home/room`` in its sandbox, becomes
the room's workspace (renamed; the bind follows the directory), and a symlink takes its place so a
restart of that kernel binds the workspace again. A room whose workspace already exists (a terminal
made it, or an earlier kernel) gets a kernel started over it, its ``work`` a symlink to the
workspace. The symlink lives in the server's own per-kernel dir, never in a directory room code can
write, so bubblewrap resolving it is safe.

Every file operation on the workspace itself goes through ``pairroom.workspace.safe_fs``, off the
event loop (issue 22, item 1).
"""

from __future__ import annotations

import os
from pathlib import Path

from pairroom.kernels.dirs import KernelDirs
from pairroom.kernels.kernel import Kernel, new_kernel_id
from pairroom.kernels.pool import KernelPool
from pairroom.sandbox.bubblewrap import Sandbox
from pairroom.sandbox.limits import Cgroups
from pairroom.workspace import Workspace
from pairroom.workspace.safe_fs import valid_path

__all__ = ["kernel_for", "valid_path"]


async def kernel_for(workspace: Workspace, pool: KernelPool, root: Path, sandbox: Sandbox, cgroups: Cgroups) -> Kernel:
    """A started kernel whose ``/home/room`` is the room's workspace, in ``cgroups`` (the room's
    budget: a pooled kernel is moved into it)."""
    if not workspace.exists:
        kernel = await pool.take()
        try:
            await kernel.join(cgroups)
            await workspace.ensure_dir(adopt=kernel.dirs.work)
            return kernel
        except OSError:
            await kernel.kill(
                "its work dir could not become the room's workspace, or it could not join the room's cgroup"
            )
            kernel.dirs.remove()
            if not workspace.exists:
                await workspace.ensure_dir()
    dirs = KernelDirs.create(root, new_kernel_id(), sandbox)
    os.rmdir(dirs.work)
    os.symlink(workspace.path, dirs.work)
    kernel = Kernel(dirs, sandbox, cgroups)
    try:
        async with pool.starts:
            await kernel.start()
    except BaseException:
        dirs.remove()
        raise
    return kernel
