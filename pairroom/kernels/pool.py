"""A warm pool of started sandboxed kernels, so a room's first run does not wait ~1 s for a boot.

Each pooled kernel has its own fresh dirs; taking one hands the kernel *and* its dirs to a room (its
``work`` dir becomes the room's working copy), so a pooled kernel never needs re-pointing. A kernel
is never returned: a room's kernel is shut down when the room is done with it, and the pool refills
in the background after ``pool_fill_delay`` (so the refill does not compete with the run that just
took a kernel), starting at most ``max_concurrent_starts`` kernels at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from pairroom.kernels.kernel import Kernel, KernelStartError, launch
from pairroom.sandbox.limits import Cgroups
from pairroom.sandbox.bubblewrap import Sandbox

log = logging.getLogger("pairroom.kernels.pool")


class KernelPool:
    def __init__(self, root: Path, sandbox: Sandbox, cgroups: Cgroups) -> None:
        self.root = root
        self.sandbox = sandbox
        self.cgroups = cgroups
        self.settings = sandbox.settings
        self.size = self.settings.pool_size
        self.ready: list[Kernel] = []
        self.starts = asyncio.Semaphore(max(1, self.settings.max_concurrent_starts))
        self.taken = 0
        self.cold = 0
        self._need = asyncio.Event()
        self._filled = asyncio.Event()

    async def run(self) -> None:
        """Keep ``size`` kernels ready until cancelled; then kill them."""
        self._need.set()
        try:
            await self._fill_forever()
        finally:
            ready, self.ready = self.ready, []
            for kernel in ready:
                await kernel.kill("server stopping")
                kernel.dirs.remove()

    async def wait_filled(self) -> None:
        """Until the pool holds ``size`` kernels (benchmarks and tests start measuring from here)."""
        while len(self.ready) < self.size:
            self._filled.clear()
            await self._filled.wait()

    async def _fill_forever(self) -> None:
        backoff = 1.0
        first = True
        while True:
            await self._need.wait()
            self._need.clear()
            if not first:
                await asyncio.sleep(self.settings.pool_fill_delay)  # debounce: let the taker run first
            first = False
            while len(self.ready) < self.size:
                try:
                    async with self.starts:
                        kernel = await launch(self.root, self.sandbox, self.cgroups)
                except KernelStartError as exc:
                    log.error("pool could not start a kernel, will retry", extra={"error": str(exc), "retry_in": backoff})
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 60.0)
                    continue
                backoff = 1.0
                self.ready.append(kernel)
                self._filled.set()

    async def take(self) -> Kernel:
        """A started kernel: a pooled one if any is ready and alive, else a cold start."""
        while self.ready:
            kernel = self.ready.pop(0)
            self._need.set()
            if not kernel.died.is_set():
                self.taken += 1
                return kernel
            log.warning("pooled kernel had died", extra={"reason": kernel.death})
            await kernel.kill("dead in the pool")
            with contextlib.suppress(FileNotFoundError):
                kernel.dirs.remove()
        self._need.set()
        self.cold += 1
        async with self.starts:
            return await launch(self.root, self.sandbox, self.cgroups)
