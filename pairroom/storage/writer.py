"""Writing to storage in batches, off the request path: one implementation of the debounce, the
retry with backoff and the keeping of what failed.

``BatchWriter`` buffers items that callers ``add`` (never awaiting, so it fits on a room's path) and
one task (``run``) writes them with the ``write`` function it was given:

* **Debounced with a maximum delay** (Hocuspocus ``debounce`` / ``maxDebounce``): a batch is written
  once no item has arrived for ``quiet`` seconds, and never later than ``max_delay`` after its first
  item, so a steady trickle (presence samples) cannot postpone it forever. Past ``max_items``
  buffered items it is written at once.
* **A failed write keeps its batch.** The items go back in front of what arrived meanwhile, in their
  order, and the next attempt writes them all; nothing is dropped here (the caller may bound its
  buffer in ``on_failure``). Only the errors named by ``retry_on`` (``StoreError``) are retried;
  anything else ends ``run`` with that error, for its supervisor to see.
* **Exponential backoff** (``Backoff``): after a failure the writer waits ``initial`` seconds, then
  twice as long after each further failure, up to ``maximum``; a success starts over. No loop spins
  while storage is down.
* **A write is never cut in half**: ``run`` shields it from cancellation, and ``flush`` (for a final
  write at shutdown, or "store it now") takes the same lock, which callers may also hold to keep a
  batch from committing while they change storage (deleting a room).

The registry's flusher (``rooms/registry.py``) writes per room rather than from one buffer; it can
reuse ``Backoff``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from pairroom.storage.store import StoreError

__all__ = ["Backoff", "BatchWriter"]

T = TypeVar("T")


class Backoff:
    """Exponential backoff: ``initial`` seconds after the first failure, doubling up to ``maximum``."""

    def __init__(self, initial: float, maximum: float, factor: float = 2.0) -> None:
        if not 0 < initial <= maximum or factor < 1:
            raise ValueError(
                f"backoff needs 0 < initial <= maximum and factor >= 1, got {initial}, {maximum}, {factor}"
            )
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.failures = 0

    def failed(self) -> float:
        """Count a failure; the seconds to wait before trying again."""
        self.failures += 1
        return self.delay

    def succeeded(self) -> None:
        self.failures = 0

    @property
    def delay(self) -> float:
        """The wait after the failures counted so far (0 when the last attempt succeeded)."""
        if self.failures == 0:
            return 0.0
        return min(self.initial * self.factor ** (self.failures - 1), self.maximum)


class BatchWriter(Generic[T]):
    """Buffer items and write them in batches from one task; see the module docstring."""

    def __init__(
        self,
        write: Callable[[list[T]], Awaitable[object]],
        *,
        quiet: float,
        max_delay: float,
        max_items: int,
        backoff: Backoff | None = None,
        retry_on: tuple[type[BaseException], ...] = (StoreError,),
        on_failure: Callable[[BaseException, list[T]], None] | None = None,
    ) -> None:
        if quiet < 0 or max_delay < quiet or max_items < 1:
            raise ValueError(f"need 0 <= quiet <= max_delay and max_items >= 1, got {quiet}, {max_delay}, {max_items}")
        self._write = write
        self.quiet = quiet
        self.max_delay = max_delay
        self.max_items = max_items
        self.backoff = backoff or Backoff(max(quiet, 0.05), 5.0)
        self.retry_on = retry_on
        self.on_failure = on_failure
        self.pending: list[T] = []  # what the next write takes, oldest first
        self.lock = asyncio.Lock()  # held while a batch is written
        self.failing = False  # the last write failed; the batch is kept and retried
        self._arrived = asyncio.Event()
        self._first_arrival = 0.0  # of the oldest buffered item
        self._last_arrival = 0.0
        self._urgent = False

    # -- the caller's side: never awaits ------------------------------------------------------------

    def add(self, item: T) -> None:
        now = time.monotonic()
        if not self.pending:
            self._first_arrival = now
        self.pending.append(item)
        self._last_arrival = now
        self._arrived.set()

    def discard(self, drop: Callable[[T], bool]) -> int:
        """Remove the buffered items ``drop`` picks (not those being written now); how many went."""
        kept = [item for item in self.pending if not drop(item)]
        removed = len(self.pending) - len(kept)
        self.pending = kept
        return removed

    def write_soon(self) -> None:
        """Write what is buffered without waiting for the quiet period (a room closed)."""
        if self.pending:
            self._urgent = True
            self._arrived.set()

    # -- writing --------------------------------------------------------------------------------------

    async def flush(self) -> int:
        """Write everything buffered now, in one batch; how many items went. On failure the batch is
        back in ``pending`` and the error propagates."""
        async with self.lock:
            batch, self.pending = self.pending, []
            if not batch:
                return 0
            first = self._first_arrival
            try:
                await self._write(batch)
            except BaseException:
                self.pending[:0] = batch
                self._first_arrival = first  # the kept batch is older than what arrived meanwhile
                raise
            return len(batch)

    async def run(self) -> None:
        """Write batches as they become due, until cancelled (then return without a final write:
        the owner calls ``flush`` when it is ready to)."""
        while True:
            await self._due()
            try:
                await asyncio.shield(self.flush())
            except self.retry_on as exc:
                self.failing = True
                if self.on_failure is not None:
                    self.on_failure(exc, self.pending)
                await asyncio.sleep(self.backoff.failed())
                continue
            self.failing = False
            self.backoff.succeeded()

    async def _due(self) -> None:
        """Return when the buffered batch should be written (see the module docstring)."""
        while not self.pending:
            self._arrived.clear()
            await self._arrived.wait()
        first = self._first_arrival
        while not self._urgent and len(self.pending) < self.max_items:
            now = time.monotonic()
            wait = min(self._last_arrival + self.quiet, first + self.max_delay) - now
            if wait <= 0:
                break
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._arrived.wait()
        self._urgent = False
