"""A room's kernel on one node of a cluster: a lease in Redis, and requests forwarded to its holder
(the mechanism is ``pairroom.cluster.lease.HolderLease``, shared with terminals; what is kernel-
specific is here: the keys, the operations and which errors mean what).

The lease. ``keys.kernel_lease(room)`` holds the id of the node running the room's kernel, with a
short TTL (``ttl``, 10 s) that the holder renews every ``renew_seconds`` (3 s) while the kernel
lives and drops when it stops. A node that dies stops renewing, so within ``ttl`` the lease is free
and the next node asked for a run takes it and starts a fresh kernel (the service then says in
``meta.kernel`` that the kernel restarted). The broker port has no delete: releasing is renewing
for one millisecond, which only the holder can do.

Forwarding. While it holds a room's lease, a node listens on ``keys.kernel_channel(room)``, so a
node that cannot take the lease publishes its request there without knowing who holds it::

    {"id": correlation id, "from": requesting node, "op": "run" | "interrupt" | "restart" | "input" | "call", "args": {...}}

(``call``: ``{"op", "args"}`` of an op another feature registered with ``KernelService.serve``, such
as the debugger's ``debug``; the holder runs its handler, the requester gets its answer.)

The holder runs it (``KernelService.*_here``) and answers on ``keys.node_channel(from)``::

    {"id": ..., "node": holder, "result": ...} | {..., "retry": reason} | {..., "error": reason}

``retry`` means "not mine any more" (the kernel stopped meanwhile); ``error`` that it failed there
(the room could not be loaded, say), which the requester reports as a 503. The requester republishes every
``answer_seconds`` until ``forward_timeout``; between attempts it tries to take the lease itself,
which succeeds once a dead holder's lease expired. The holder remembers recent correlation ids, so a
republished request runs once. Outputs are not forwarded: they land in the room document, which the
cluster already shares. Past ``forward_timeout`` the caller gets ``KernelUnreachable`` (a 503).
"""

from __future__ import annotations

from typing import Any

from pairroom.cluster.broker import Broker
from pairroom.cluster.lease import HolderLease, LeaseKind
from pairroom.kernels.service import (
    InputRefused,
    KernelLease,
    KernelService,
    KernelUnavailable,
    KernelUnreachable,
)
from pairroom.protocol import keys
from pairroom.rooms.registry import RoomLoadError
from pairroom.sandbox.bubblewrap import SandboxUnavailable

OPS = ("run", "interrupt", "restart", "input", "call")

KERNEL = LeaseKind("kernel", "the kernel", keys.kernel_lease, keys.kernel_channel, OPS)


class ClusterKernelLease(KernelLease):
    def __init__(
        self,
        broker: Broker,
        *,
        ttl: float = 10.0,
        renew_seconds: float = 3.0,
        answer_seconds: float = 1.0,
        forward_timeout: float | None = None,
    ) -> None:
        self.lease = HolderLease(
            broker,
            KERNEL,
            not_here=(KernelUnavailable,),
            failures=(RoomLoadError, KernelUnreachable, SandboxUnavailable),
            unreachable=KernelUnreachable,
            ttl=ttl,
            renew_seconds=renew_seconds,
            answer_seconds=answer_seconds,
            forward_timeout=forward_timeout,
            # a new kernel starts beside the room's terminals (one budget per room per node): runs,
            # restarts and served calls (the debugger's) follow them; acquire itself takes a free
            # lease, so what must be done here (an input, an interrupt) still is
            follows=keys.terminal_lease,
            follow_on_acquire=False,
        )
        self.node_id = broker.node_id
        self.ttl = ttl
        self.renew_seconds = renew_seconds
        self.side = self.lease.side
        self.service: KernelService | None = None

    async def start(self, service: KernelService) -> None:
        self.service = service
        await self.lease.start(self._here, service.spawn)

    async def stop(self) -> None:
        await self.lease.stop()

    async def acquire(self, room: str) -> bool:
        return await self.lease.acquire(room)

    async def renew(self, room: str) -> bool:
        return await self.lease.renew(room)

    async def release(self, room: str) -> None:
        await self.lease.release(room)

    async def places_elsewhere(self, room: str) -> bool:
        return await self.lease.places_elsewhere(room)

    async def forward(self, room: str, op: str, args: dict[str, Any]) -> Any:
        return await self.lease.forward(room, op, args)

    async def _here(self, room: str, op: str, args: dict[str, Any]) -> Any:
        service = self.service
        assert service is not None
        if op == "run":
            return await service.submit_here(
                room,
                code=args["code"],
                path=args.get("path"),
                by=args["by"],
                client=args.get("client"),
                language=args.get("language", "python"),
            )
        if op == "input":
            try:
                return await service.answer_input_here(
                    room,
                    args["run"],
                    args["value"],
                    by=args["by"],
                    client=args["client"],
                    check_by=args["check_by"],
                )
            except InputRefused as exc:
                return [exc.status, exc.reason]
        if op == "interrupt":
            return await service.interrupt_here(room)
        if op == "call":
            return await service.call_here(room, args["op"], args["args"])
        await service.restart_here(room)
        return None
