"""What the debugger needs of other parts of the node, as Protocols: it reaches them at run time
(``node.state.kernels``, ``node.state.recorder``) and never imports another feature."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol


class DebuggableKernel(Protocol):
    """One running kernel (``kernels.kernel.Kernel``): DAP requests on its control channel, DAP events
    from its IOPub ``debug_event`` messages."""

    on_debug_event: Any  # Callable[[dict], None] | None

    async def debug_request(
        self, command: str, arguments: dict[str, Any] | None = None, answer_within: float = 30.0
    ) -> dict[str, Any]: ...


class Finished(Protocol):
    """How a run ended (``kernels.kernel.Finished``): ``outcome.value`` and ``reason``."""

    outcome: Any
    reason: str | None


class KernelRuns(Protocol):
    """The node's kernel service (``kernels.service.KernelService``)."""

    async def submit_here(self, room: str, *, code: str, path: str | None, by: str, hooks: Any = None) -> str: ...

    async def interrupt(self, room: str) -> bool: ...

    def serve(self, op: str, handler: Callable[[str, dict[str, Any]], Awaitable[Any]]) -> None:
        """Register ``handler(room, args)`` for ``call``, on this node."""

    async def call(self, room: str, op: str, args: dict[str, Any]) -> Any:
        """``op``'s handler on the node running the room's kernel (here, or forwarded on a cluster)."""


class Timeline(Protocol):
    """The recorder (``recording``): an event on the room's timeline."""

    def record(self, room: str, kind: str, user: str, data: dict[str, Any]) -> None: ...
