"""The cluster bridge as an extension: the node's broker reader runs for as long as the node does.

Entered first and left last of all extensions, so the rooms' final flush (``Persistence``) happens
while the node is still part of the cluster, and the goodbye to peers is the last thing it says.
"""

from __future__ import annotations

import contextlib
from typing import Any

from pairroom.rooms.extension import Extension


class ClusterBridge(Extension):
    name = "cluster"
    builtin = True
    priority = -200

    def __init__(self, shutdown_timeout: float = 10.0) -> None:
        self.shutdown_timeout = shutdown_timeout

    def lifespan(self, node: Any) -> contextlib.AbstractAsyncContextManager[None]:
        return node.supervisor.running("cluster", node.cluster.run, self.shutdown_timeout + 5)
