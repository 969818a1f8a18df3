"""A warm pool of started sandboxed kernels, so a room's first run does not wait ~1 s for a boot.

The pool fills on demand: once rooms are open on this node (``want``, from the kernels extension's
``on_loaded``), or at the first ``take``. A node with no room open keeps no kernel and does not
import jupyter-client (two idle kernels cost the server about 8 MiB and ten threads, and each
kernel about 37 MiB of its own). The first filling starts when no room was loaded for
``SETTLE_SECONDS`` (at most ``SETTLE_AT_MOST`` after the first), so that the kernels' boots do not
compete with a wave of members joining a fresh node (a restart); one member who opens a room gets
warm kernels about 1.5 s later, before they run code. A ``take`` while the pool is starting a kernel
waits for that kernel instead of starting another (on a small machine the second boot would slow
both).

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
from pairroom.sandbox.bubblewrap import Sandbox
from pairroom.sandbox.limits import Cgroups

log = logging.getLogger("pairroom.kernels.pool")

SETTLE_SECONDS = 1.0  # the first filling waits for this long without a room being loaded
SETTLE_AT_MOST = 5.0  # but starts at most this long after the first room was loaded


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
        self.wanted = False  # the first demand (a room here, a take) starts the filling
        self.launching = 0  # pool launches in flight
        self._first_wanted = self._last_wanted = 0.0  # loop times of the first and the last ``want``
        self._need = asyncio.Event()
        self._filled = asyncio.Event()
        self._launch_ended = asyncio.Event()

    def want(self, settle: bool = True) -> None:
        """Someone may run code soon (a room was loaded here): fill the pool if it never was, once
        room loads settle (``settle=False``: at once)."""
        now = asyncio.get_running_loop().time()
        self._last_wanted = now if settle else 0.0
        if not self.wanted:
            self.wanted = True
            self._first_wanted = now if settle else 0.0
            self._need.set()

    async def run(self) -> None:
        """Keep ``size`` kernels ready, once wanted, until cancelled; then kill them."""
        try:
            await self._fill_forever()
        finally:
            ready, self.ready = self.ready, []
            for kernel in ready:
                await kernel.kill("server stopping")
                kernel.dirs.remove()

    async def wait_filled(self) -> None:
        """Until the pool holds ``size`` kernels (benchmarks and tests start measuring from here)."""
        self.want(settle=False)
        while len(self.ready) < self.size:
            self._filled.clear()
            await self._filled.wait()

    async def _fill_forever(self) -> None:
        backoff = 1.0
        first = True
        while True:
            await self._need.wait()
            self._need.clear()
            if first:
                await self._settled()
            else:
                await asyncio.sleep(self.settings.pool_fill_delay)  # debounce: let the taker run first
            first = False
            while len(self.ready) < self.size:
                try:
                    async with self.starts:
                        self.launching += 1
                        try:
                            kernel = await launch(self.root, self.sandbox, self.cgroups)
                        finally:
                            # a waiting taker runs after the append below: nothing in between awaits
                            self.launching -= 1
                            self._launch_ended.set()
                except KernelStartError as exc:
                    log.error(
                        "pool could not start a kernel, will retry", extra={"error": str(exc), "retry_in": backoff}
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 60.0)
                    continue
                backoff = 1.0
                self.ready.append(kernel)
                self._filled.set()

    async def _settled(self) -> None:
        """Until no room was loaded for ``SETTLE_SECONDS``, or ``SETTLE_AT_MOST`` after the first."""
        loop = asyncio.get_running_loop()
        while True:
            wait = min(self._last_wanted + SETTLE_SECONDS, self._first_wanted + SETTLE_AT_MOST) - loop.time()
            if wait <= 0:
                return
            await asyncio.sleep(wait)

    async def take(self) -> Kernel:
        """A started kernel: a pooled one if any is ready and alive, the one the pool is starting
        if it is starting one, else a cold start."""
        self.wanted = True
        while True:
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
            if not self.launching:
                break
            self._launch_ended.clear()
            await self._launch_ended.wait()  # it may have failed: then ready is empty and we go cold
        self._need.set()
        self.cold += 1
        async with self.starts:
            return await launch(self.root, self.sandbox, self.cgroups)
