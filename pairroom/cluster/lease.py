"""Something of a room that lives on one node of a cluster: a lease in Redis, and requests
forwarded to its holder. Kernels (``kernels/cluster_lease.py``) and terminals use it; each gives a
``LeaseKind`` (its keys and names) and a ``here`` coroutine that does an operation on this node.

The lease. ``kind.lease_key(room)`` holds the id of the node that holds the room's thing, with a
short TTL (``ttl``, 10 s) that the holder renews every ``renew_seconds`` (3 s) while it needs it
and drops when done. A node that dies stops renewing, so within ``ttl`` the lease is free and the
next node asked takes it. The broker port has no delete: releasing is renewing for one
millisecond, which only the holder can do.

Forwarding. While it holds a room's lease, a node listens on ``kind.channel(room)``, so a node
that cannot take the lease publishes its request there without knowing who holds it::

    {"id": correlation id, "from": requesting node, "op": one of kind.ops, "args": {...}}

The holder runs it (``here(room, op, args)``) and answers on ``keys.node_channel(from, kind.topic)``::

    {"id": ..., "node": holder, "result": ...} | {..., "retry": reason} | {..., "error": reason}

``retry`` means "not mine any more" (``here`` raised one of ``not_here``); ``error`` that it failed
there (one of ``failures``, or a bug), which the requester raises as ``unreachable``. The requester
republishes every ``answer_seconds`` until the timeout (``forward_timeout``, by default long enough
for a dead holder's lease to expire); between attempts it tries ``here`` itself, which takes the
lease once a dead holder's lease expired (unless the caller asked ``take_over=False``, for reads
that must not move anything). The holder remembers recent correlation ids, so a republished request
runs once. Past the timeout the caller gets ``unreachable`` (a 503).

Following another lease (``follows``). Terminals share the room's resource budget with its kernel,
which is one cgroup per room *per node*; so a room's terminals should run where its kernel runs.
With ``follows`` (the kernel's lease key), a node does not take a free lease while another node
holds the followed one: ``acquire`` says no, and ``forward`` sends the request straight to that node
(on ``keys.node_channel(node, "<name>-placed")``), which takes the lease there. If that node does not
answer within ``answer_seconds`` (it died) or fails the request, the requester takes the lease itself
as before: following is a preference, never a reason to fail. With ``follow_on_acquire=False``
``acquire`` takes a free lease regardless, and the caller decides when to follow
(``places_elsewhere``, then ``forward``): the kernels follow the terminals that way for runs and
restarts, while the debugger's start, which must run on the node asked, still takes the lease there.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from pairroom.cluster.broker import Broker, BrokerError
from pairroom.cluster.side_channel import SideChannel
from pairroom.protocol import keys

log = logging.getLogger("pairroom.cluster.lease")

Here = Callable[[str, str, dict[str, Any]], Awaitable[Any]]
# Set while this node does a request regardless of ``follows``: one placed here by another node, or
# one whose followed node did not answer.
_TAKE_HERE: contextvars.ContextVar[bool] = contextvars.ContextVar("pairroom_lease_take_here", default=False)
Spawn = Callable[[Coroutine[Any, Any, Any], str], object]


@dataclass(frozen=True, slots=True)
class LeaseKind:
    name: str  # "kernel": log messages and task names
    what: str  # "the kernel": error messages ("cannot tell which node runs the kernel of room ...")
    lease_key: Callable[[str], str]
    channel: Callable[[str], str]
    ops: tuple[str, ...]
    topic: str = ""  # of this node's answer channel (keys.node_channel)


class HolderLease:
    """One node's side of a ``LeaseKind``: ``acquire``/``renew``/``release`` a room's lease and
    ``forward`` what it cannot do to the holder (see the module docstring)."""

    def __init__(
        self,
        broker: Broker,
        kind: LeaseKind,
        *,
        not_here: tuple[type[BaseException], ...],
        failures: tuple[type[BaseException], ...],
        unreachable: type[Exception],
        ttl: float = 10.0,
        renew_seconds: float = 3.0,
        answer_seconds: float = 1.0,
        forward_timeout: float | None = None,
        follows: Callable[[str], str] | None = None,
        follow_on_acquire: bool = True,
    ) -> None:
        if renew_seconds * 2 >= ttl:
            raise ValueError(f"renew_seconds ({renew_seconds}) must be well under ttl ({ttl})")
        self.kind = kind
        self.node_id = broker.node_id
        self.ttl = ttl
        self.renew_seconds = renew_seconds
        self.answer_seconds = answer_seconds
        # Long enough for a dead holder's lease to expire, so a request asked for right after a crash
        # waits for the takeover instead of failing.
        self.forward_timeout = forward_timeout if forward_timeout is not None else ttl + 5.0
        self.not_here = not_here
        self.failures = failures
        self.unreachable = unreachable
        self.follows = follows  # room -> the lease key of what this lease's thing should share a node with
        # False: ``acquire`` takes a free lease regardless; the caller asks ``places_elsewhere`` where
        # it wants to follow (kernels: for runs and restarts, not for the debugger's local start)
        self.follow_on_acquire = follow_on_acquire
        self.side = SideChannel(broker, kind.name + "s")
        self.held: set[str] = set()
        self._here: Here | None = None
        self._spawn: Spawn | None = None
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._served: dict[str, dict[str, Any] | None] = {}  # correlation id -> answer (None: running)

    # -- the lease ----------------------------------------------------------------------------------

    async def start(self, here: Here, spawn: Spawn) -> None:
        """``here`` runs an operation on this node; ``spawn`` runs a task supervised by the caller."""
        self._here, self._spawn = here, spawn
        await self.side.start()
        await self.side.listen(keys.node_channel(self.node_id, self.kind.topic), self._on_answer)
        if self.follows is not None:
            await self.side.listen(self._placed_channel(self.node_id), self._on_placed)

    async def stop(self) -> None:
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(self.unreachable("this node is shutting down"))
        await self.side.stop()

    async def acquire(self, room: str) -> bool:
        if self.follow_on_acquire and room not in self.held and await self.followed_elsewhere(room) is not None:
            return False  # ``forward`` places the request on that node
        try:
            granted = await self.side.broker.try_lease(self.kind.lease_key(room), self.node_id, self.ttl)
        except BrokerError as exc:
            raise self.unreachable(f"cannot tell which node runs {self.kind.what} of room {room!r}: {exc}") from exc
        if granted and room not in self.held:
            self.held.add(room)
            await self.side.listen(self.kind.channel(room), lambda data: self._on_request(room, data))
        return granted

    async def renew(self, room: str) -> bool:
        try:
            granted = await self.side.broker.try_lease(self.kind.lease_key(room), self.node_id, self.ttl)
        except BrokerError as exc:
            # Nobody can take the lease while Redis is away either; the next renewal decides.
            log.warning(
                f"{self.kind.name} lease not renewed, broker unreachable", extra={"room": room, "error": str(exc)}
            )
            return True
        if not granted:
            await self._stop_listening(room)
        return granted

    async def release(self, room: str) -> None:
        await self._stop_listening(room)
        try:
            await self.side.broker.try_lease(self.kind.lease_key(room), self.node_id, 0.001)
        except BrokerError as exc:  # the lease then expires after its TTL
            log.info(
                f"{self.kind.name} lease not released, it expires on its own", extra={"room": room, "error": str(exc)}
            )

    async def followed_elsewhere(self, room: str) -> str | None:
        """The other node holding the lease this one follows, which should take this one too; None
        when there is none, when this node holds this lease, or when it is to take it regardless."""
        if self.follows is None or room in self.held or _TAKE_HERE.get():
            return None
        try:
            holder = await self.side.broker.lease_holder(self.follows(room))
        except BrokerError as exc:
            log.info(f"{self.kind.name} placement unknown, taking it here", extra={"room": room, "error": str(exc)})
            return None
        return holder if holder and holder != self.node_id else None

    async def _placement(self, room: str) -> str | None:
        """Where to send a request directly: the followed node, while nobody holds this lease."""
        node = await self.followed_elsewhere(room)
        if node is None:
            return None
        try:
            held_by = await self.side.broker.lease_holder(self.kind.lease_key(room))
        except BrokerError:
            return None
        return None if held_by else node

    async def places_elsewhere(self, room: str) -> bool:
        """Whether ``forward`` would send a request for ``room`` straight to the followed node."""
        return await self._placement(room) is not None

    def _placed_channel(self, node: str) -> str:
        return keys.node_channel(node, f"{self.kind.name}-placed")

    async def _stop_listening(self, room: str) -> None:
        if room in self.held:
            self.held.discard(room)
            await self.side.forget(self.kind.channel(room))

    # -- the requesting side ------------------------------------------------------------------------

    async def forward(
        self, room: str, op: str, args: dict[str, Any], *, timeout: float | None = None, take_over: bool = True
    ) -> Any:
        """Have the holder do ``op`` and return its result; with ``take_over`` this node does it
        itself once it can take the lease (a dead holder's expired). With ``follows``, a request for a
        lease nobody holds goes to the node holding the followed lease first (the module docstring)."""
        loop = asyncio.get_running_loop()
        limit = timeout if timeout is not None else self.forward_timeout
        deadline = loop.time() + limit
        correlation = secrets.token_hex(8)
        message = {"id": correlation, "from": self.node_id, "op": op, "args": args}
        request = json.dumps(message).encode()
        placed = False  # asked the followed node once: from then on, the usual way
        try:
            while True:
                wait = min(self.answer_seconds, deadline - loop.time())
                node = None if placed or not take_over else await self._placement(room)
                if node is not None:
                    placed = True
                    direct = json.dumps({**message, "room": room}).encode()
                    answer = await self._ask(self._placed_channel(node), correlation, direct, wait)
                else:
                    answer = await self._ask(self.kind.channel(room), correlation, request, wait)
                if answer is not None and "error" in answer and node is not None:
                    log.warning(
                        f"placed {self.kind.name} request failed there, doing it here",
                        extra={"room": room, "node": node, "error": answer["error"]},
                    )
                    answer = None  # following is a preference: the usual way from here
                if answer is not None and "error" in answer:
                    raise self.unreachable(f"node {answer['node']} could not serve room {room!r}: {answer['error']}")
                if answer is not None and "retry" not in answer:
                    return answer["result"]
                if loop.time() >= deadline:
                    raise self.unreachable(
                        f"the node running {self.kind.what} of room {room!r} did not answer within "
                        f"{limit:g} s; if it died, its lease expires within {self.ttl:g} s"
                    )
                if not take_over:
                    continue
                token = _TAKE_HERE.set(placed)  # the followed node did not take it: this one may
                try:
                    assert self._here is not None
                    return await self._here(room, op, args)  # the lease may be free now
                except self.not_here:
                    continue
                finally:
                    _TAKE_HERE.reset(token)
        finally:
            self._waiting.pop(correlation, None)

    async def _ask(self, channel: str, correlation: str, request: bytes, timeout: float) -> dict[str, Any] | None:
        future = self._waiting[correlation] = asyncio.get_running_loop().create_future()
        if not await self.side.publish(channel, request):
            await asyncio.sleep(max(0.0, timeout))  # disconnected: wait as if unanswered, then retry
            return None
        try:
            async with asyncio.timeout(max(0.0, timeout)):
                answer: dict[str, Any] = await future
                return answer
        except TimeoutError:
            return None

    def _on_answer(self, data: bytes) -> None:
        try:
            answer = json.loads(data)
            future = self._waiting.get(answer["id"])
        except (ValueError, KeyError, TypeError) as exc:
            log.error(f"malformed {self.kind.name} answer", extra={"error": repr(exc)})
            return
        if future is not None and not future.done():
            future.set_result(answer)

    # -- the holding side ---------------------------------------------------------------------------

    def _on_placed(self, data: bytes) -> None:
        """A request sent to this node because it holds the followed lease: served as if this node
        held the lease's channel, taking the lease here."""
        try:
            room = json.loads(data)["room"]
            if not isinstance(room, str):
                raise TypeError("room is not a string")
        except (ValueError, KeyError, TypeError) as exc:
            log.error(f"malformed placed {self.kind.name} request", extra={"error": repr(exc)})
            return
        self._on_request(room, data, placed=True)

    def _on_request(self, room: str, data: bytes, *, placed: bool = False) -> None:
        try:
            request = json.loads(data)
            correlation, sender, op, args = request["id"], request["from"], request["op"], request["args"]
            if op not in self.kind.ops or not isinstance(args, dict):
                raise ValueError(f"unknown op {op!r}")
        except (ValueError, KeyError, TypeError) as exc:
            log.error(f"malformed {self.kind.name} request", extra={"room": room, "error": repr(exc)})
            return
        if sender == self.node_id:
            # Our own request echoed back: a node forwards only what it could not do itself, and it
            # may have taken the lease since (then it ran the request already).
            return
        if correlation in self._served:
            answer = self._served[correlation]
            if answer is not None:  # a republished request that already ran: answer again
                self._run(self._reply(sender, answer), f"pairroom-{self.kind.name}-reply-{room}")
            return
        self._served[correlation] = None
        asyncio.get_running_loop().call_later(self.forward_timeout * 2, self._served.pop, correlation, None)
        self._run(
            self._serve(room, correlation, sender, op, args, placed), f"pairroom-{self.kind.name}-forwarded-{room}"
        )

    async def _serve(
        self, room: str, correlation: str, sender: str, op: str, args: dict[str, Any], placed: bool = False
    ) -> None:
        answer: dict[str, Any] = {"id": correlation, "node": self.node_id}
        assert self._here is not None
        if placed:
            _TAKE_HERE.set(True)  # this task's own context: the request was placed on this node
        try:
            answer["result"] = await self._here(room, op, args)
            self._served[correlation] = answer
        except self.not_here as exc:
            answer["retry"] = str(exc)
            self._served.pop(correlation, None)  # not done here: a republished request may try again
        except self.failures as exc:
            answer["error"] = str(exc)
            self._served[correlation] = answer
        except Exception as exc:  # the requester must hear of it, and the caller's task group live on
            log.exception(f"forwarded {self.kind.name} request failed", extra={"room": room, "op": op})
            answer["error"] = f"{type(exc).__name__}: {exc}"
            self._served[correlation] = answer
        log.info(
            f"forwarded {self.kind.name} request",
            extra={"room": room, "op": op, "from": sender, "retry": "retry" in answer, "placed": placed},
        )
        await self._reply(sender, answer)

    async def _reply(self, node: str, answer: dict[str, Any]) -> None:
        channel = keys.node_channel(node, self.kind.topic)
        if not await self.side.publish(channel, json.dumps(answer).encode()):
            log.warning(f"{self.kind.name} answer not sent, broker disconnected", extra={"node": node})

    def _run(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        assert self._spawn is not None
        self._spawn(coro, name)
