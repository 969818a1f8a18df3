"""A room's kernel on one node of a cluster: a lease in Redis, and requests forwarded to its holder.

The lease. ``keys.kernel_lease(room)`` holds the id of the node running the room's kernel, with a
short TTL (``ttl``, 10 s) that the holder renews every ``renew_seconds`` (3 s) while the kernel
lives and drops when it stops. A node that dies stops renewing, so within ``ttl`` the lease is free
and the next node asked for a run takes it and starts a fresh kernel (the service then says in
``meta.kernel`` that the kernel restarted). The broker port has no delete: releasing is renewing
for one millisecond, which only the holder can do.

Forwarding. While it holds a room's lease, a node listens on ``keys.kernel_channel(room)``, so a
node that cannot take the lease publishes its request there without knowing who holds it::

    {"id": correlation id, "from": requesting node, "op": "run" | "interrupt" | "restart", "args": {...}}

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

import asyncio
import json
import logging
import secrets
from typing import Any

from pairroom.protocol import keys
from pairroom.cluster.broker import Broker, BrokerError
from pairroom.rooms.registry import RoomLoadError
from pairroom.cluster.side_channel import SideChannel
from pairroom.sandbox.bubblewrap import SandboxUnavailable
from pairroom.kernels.service import KernelLease, KernelService, KernelUnavailable, KernelUnreachable

log = logging.getLogger("pairroom.kernels.lease")

OPS = ("run", "interrupt", "restart")


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
        if renew_seconds * 2 >= ttl:
            raise ValueError(f"renew_seconds ({renew_seconds}) must be well under ttl ({ttl})")
        self.node_id = broker.node_id
        self.ttl = ttl
        self.renew_seconds = renew_seconds
        self.answer_seconds = answer_seconds
        # Long enough for a dead holder's lease to expire, so a run asked for right after a crash
        # waits for the takeover instead of failing.
        self.forward_timeout = forward_timeout if forward_timeout is not None else ttl + 5.0
        self.side = SideChannel(broker, "kernels")
        self.service: KernelService | None = None
        self._held: set[str] = set()
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._served: dict[str, dict[str, Any] | None] = {}  # correlation id -> answer (None: running)

    # -- the lease ----------------------------------------------------------------------------------

    async def start(self, service: KernelService) -> None:
        self.service = service
        await self.side.start()
        await self.side.listen(keys.node_channel(self.node_id), self._on_answer)

    async def stop(self) -> None:
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(KernelUnreachable("this node is shutting down"))
        await self.side.stop()

    async def acquire(self, room: str) -> bool:
        try:
            granted = await self.side.broker.try_lease(keys.kernel_lease(room), self.node_id, self.ttl)
        except BrokerError as exc:
            raise KernelUnreachable(f"cannot tell which node runs the kernel of room {room!r}: {exc}") from exc
        if granted and room not in self._held:
            self._held.add(room)
            await self.side.listen(keys.kernel_channel(room), lambda data: self._on_request(room, data))
        return granted

    async def renew(self, room: str) -> bool:
        try:
            granted = await self.side.broker.try_lease(keys.kernel_lease(room), self.node_id, self.ttl)
        except BrokerError as exc:
            # Nobody can take the lease while Redis is away either; the next renewal decides.
            log.warning("kernel lease not renewed, broker unreachable", extra={"room": room, "error": str(exc)})
            return True
        if not granted:
            await self._stop_listening(room)
        return granted

    async def release(self, room: str) -> None:
        await self._stop_listening(room)
        try:
            await self.side.broker.try_lease(keys.kernel_lease(room), self.node_id, 0.001)
        except BrokerError as exc:  # the lease then expires after its TTL
            log.info("kernel lease not released, it expires on its own", extra={"room": room, "error": str(exc)})

    async def _stop_listening(self, room: str) -> None:
        if room in self._held:
            self._held.discard(room)
            await self.side.forget(keys.kernel_channel(room))

    # -- the requesting side ------------------------------------------------------------------------

    async def forward(self, room: str, op: str, args: dict[str, Any]) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.forward_timeout
        correlation = secrets.token_hex(8)
        request = json.dumps({"id": correlation, "from": self.node_id, "op": op, "args": args}).encode()
        try:
            while True:
                answer = await self._ask(room, correlation, request, min(self.answer_seconds, deadline - loop.time()))
                if answer is not None and "error" in answer:
                    raise KernelUnreachable(f"node {answer['node']} could not serve room {room!r}: {answer['error']}")
                if answer is not None and "retry" not in answer:
                    return answer["result"]
                if loop.time() >= deadline:
                    raise KernelUnreachable(
                        f"the node running the kernel of room {room!r} did not answer within "
                        f"{self.forward_timeout:g} s; if it died, its lease expires within {self.ttl:g} s"
                    )
                try:
                    return await self._here(room, op, args)  # the lease may be free now
                except KernelUnavailable:
                    continue
        finally:
            self._waiting.pop(correlation, None)

    async def _ask(self, room: str, correlation: str, request: bytes, timeout: float) -> dict[str, Any] | None:
        future = self._waiting[correlation] = asyncio.get_running_loop().create_future()
        if not await self.side.publish(keys.kernel_channel(room), request):
            await asyncio.sleep(max(0.0, timeout))  # disconnected: wait as if unanswered, then retry
            return None
        try:
            async with asyncio.timeout(max(0.0, timeout)):
                return await future
        except TimeoutError:
            return None

    def _on_answer(self, data: bytes) -> None:
        try:
            answer = json.loads(data)
            future = self._waiting.get(answer["id"])
        except (ValueError, KeyError, TypeError) as exc:
            log.error("malformed kernel answer", extra={"error": repr(exc)})
            return
        if future is not None and not future.done():
            future.set_result(answer)

    # -- the holding side ---------------------------------------------------------------------------

    def _on_request(self, room: str, data: bytes) -> None:
        try:
            request = json.loads(data)
            correlation, sender, op, args = request["id"], request["from"], request["op"], request["args"]
            if op not in OPS or not isinstance(args, dict):
                raise ValueError(f"unknown op {op!r}")
        except (ValueError, KeyError, TypeError) as exc:
            log.error("malformed kernel request", extra={"room": room, "error": repr(exc)})
            return
        if sender == self.node_id:
            # Our own request echoed back: a node forwards only what it could not do itself, and it
            # may have taken the lease since (then it ran the request already).
            return
        if correlation in self._served:
            answer = self._served[correlation]
            if answer is not None:  # a republished request that already ran: answer again
                self._spawn(self._reply(sender, answer), f"pairroom-kernel-reply-{room}")
            return
        self._served[correlation] = None
        asyncio.get_running_loop().call_later(self.forward_timeout * 2, self._served.pop, correlation, None)
        assert self.service is not None
        self._spawn(self._serve(room, correlation, sender, op, args), f"pairroom-kernel-forwarded-{room}")

    async def _serve(self, room: str, correlation: str, sender: str, op: str, args: dict[str, Any]) -> None:
        answer: dict[str, Any] = {"id": correlation, "node": self.node_id}
        try:
            answer["result"] = await self._here(room, op, args)
            self._served[correlation] = answer
        except KernelUnavailable as exc:
            answer["retry"] = str(exc)
            self._served.pop(correlation, None)  # not done here: a republished request may try again
        except (RoomLoadError, KernelUnreachable, SandboxUnavailable) as exc:
            answer["error"] = str(exc)
            self._served[correlation] = answer
        except Exception as exc:  # the requester must hear of it, and the service's task group live on
            log.exception("forwarded kernel request failed", extra={"room": room, "op": op})
            answer["error"] = f"{type(exc).__name__}: {exc}"
            self._served[correlation] = answer
        log.info("forwarded kernel request", extra={"room": room, "op": op, "from": sender, "retry": "retry" in answer})
        await self._reply(sender, answer)

    async def _reply(self, node: str, answer: dict[str, Any]) -> None:
        if not await self.side.publish(keys.node_channel(node), json.dumps(answer).encode()):
            log.warning("kernel answer not sent, broker disconnected", extra={"node": node})

    async def _here(self, room: str, op: str, args: dict[str, Any]) -> Any:
        service = self.service
        assert service is not None
        if op == "run":
            return await service.submit_here(room, code=args["code"], path=args.get("path"), by=args["by"])
        if op == "interrupt":
            return await service.interrupt_here(room)
        await service.restart_here(room)
        return None

    def _spawn(self, coro: Any, name: str) -> None:
        assert self.service is not None
        self.service.spawn(coro, name)  # the service's task group owns it
