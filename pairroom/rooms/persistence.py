"""Persistence as an extension: the node's batched writer runs for as long as the node does.

The registry buffers every integrated update per room and the flusher writes them in batches (see
``registry.py``); this extension owns that loop's life: started under the node's supervisor at
start-up, stopped last at shutdown (its priority is the lowest of the built-ins but the cluster
bridge's), which flushes every room after every other extension has stopped writing into them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pairroom.storage.store import Store

from .extension import Extension, Supervisor

if TYPE_CHECKING:
    from .room import Room


async def write_pending(store: Store, rooms: Sequence[Room]) -> int:
    """Write the pending updates of ``rooms`` in one transaction: the one flush of the server, used
    for one room (``Room.flush``: unloads, shutdown, acknowledged writes) and for the flusher's
    groups. Returns how many were written.

    Each room's flush lock is held (taken in name order, so two writers never deadlock); on failure
    every batch goes back to the front of its room's queue and the error propagates: the document
    stays in memory, nothing is lost while storage is down."""
    async with contextlib.AsyncExitStack() as locks:
        for room in sorted(rooms, key=lambda r: r.name):
            await locks.enter_async_context(room.flush_lock)
        taken = {room: room.pending for room in rooms if room.pending}
        if not taken:
            return 0
        for room in taken:
            room.pending = []
        try:
            seqs = await store.append_many({room.name: batch for room, batch in taken.items()})
        except BaseException:
            for room, batch in taken.items():
                room.pending[:0] = batch
            raise
        for room in taken:
            room.stored_seq = seqs[room.name]
        return sum(len(batch) for batch in taken.values())


class Persistence(Extension):
    name = "persistence"
    builtin = True
    priority = -100

    def __init__(self, shutdown_timeout: float = 10.0) -> None:
        self.shutdown_timeout = shutdown_timeout

    def lifespan(self, node: Any) -> contextlib.AbstractAsyncContextManager[None]:
        supervisor: Supervisor = node.supervisor
        return supervisor.running("rooms", node.registry.run, self.shutdown_timeout + 5)
