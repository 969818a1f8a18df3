"""Persistence as an extension: the node's batched writer runs for as long as the node does.

The registry buffers every integrated update per room and the flusher writes them in batches (see
``registry.py``); this extension owns that loop's life: started under the node's supervisor at
start-up, stopped last at shutdown (its priority is the lowest of the built-ins but the cluster
bridge's), which flushes every room after every other extension has stopped writing into them.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from .extension import Extension


class Persistence(Extension):
    name = "persistence"
    builtin = True
    priority = -100

    def __init__(self, shutdown_timeout: float = 10.0) -> None:
        self.shutdown_timeout = shutdown_timeout

    @contextlib.asynccontextmanager
    async def _run(self, node: Any) -> AsyncIterator[None]:
        task = await node.supervisor.start("rooms", node.registry.run)
        try:
            yield
        finally:
            await node.supervisor.stop(task, self.shutdown_timeout + 5)

    def lifespan(self, node: Any) -> contextlib.AbstractAsyncContextManager[None]:
        return self._run(node)
