"""A room's repository on one node of a cluster: a lease in Redis, and git requests forwarded to it.

A room's bare repository lives on the disk of the node that opened it (``service.py``). That node
holds ``keys.git_lease(room)`` (its id, a short TTL renewed every ``renew_seconds`` while it runs)
and listens on ``keys.git_channel(room)``. Any other node that gets a git request for the room (a
member connected there, a load balancer's choice) publishes it there::

    {"id": correlation id, "from": requesting node, "op": "status" | "commit" | ..., "room": name,
     "principal": {...the member, already admitted by the requester...}, "args": {...}}

and the holder runs it as if it had been asked (``api.OPS``), answering on ``keys.git_answers(from)``::

    {"id": ..., "node": holder, "status": 200, "json": {...}} | {..., "text": "...", "type": "..."}

Errors travel the same way (``status`` 4xx/5xx with ``error``). The requester republishes every
``answer_seconds`` until an answer comes (a commit or a push may take as long as git's own timeout);
the holder remembers correlation ids, so a republished request runs once. Between attempts the
requester checks the lease: if it can take it, nobody holds the repository (it was never opened, or
its node stopped and the lease expired), and the answer is 409 after one unanswered attempt
(``answer_seconds``) instead of the whole wait. Asking first and probing after keeps a holder whose
renewal is late (the lease lapsed for a moment) from being taken for gone while it still listens.

Why forward rather than rebuild the repository on each node from stored state: the credential an
owner gives is kept in one server's memory only, and stays there; one repository with one lock
orders the room's commits; and nothing about git has to be written to the shared database
(docs/git.md says what that costs when the holding node is lost).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from pairroom.cluster.broker import Broker, BrokerError
from pairroom.cluster.side_channel import SideChannel
from pairroom.protocol import keys
from pairroom.rooms.identity import Principal, principal_from_json, principal_to_json

from .gitcli import GitError

log = logging.getLogger("pairroom.vcs.cluster")

Answer = dict[str, Any]  # {"status", "json" | "text" + "type" | "error"}
Serve = Callable[[str, str, Principal, dict[str, Any]], Awaitable[Answer]]


class GitLeases:
    """``start(serve)``, ``hold(room)``, ``holds(room)``, ``forward(room, op, principal, args)``, ``stop()``."""

    def __init__(
        self,
        broker: Broker,
        *,
        ttl: float = 10.0,
        renew_seconds: float = 3.0,
        answer_seconds: float = 1.0,
        forward_timeout: float = 300.0,
    ) -> None:
        if renew_seconds * 2 >= ttl:
            raise ValueError(f"renew_seconds ({renew_seconds}) must be well under ttl ({ttl})")
        self.node_id = broker.node_id
        self.ttl = ttl
        self.renew_seconds = renew_seconds
        self.answer_seconds = answer_seconds
        self.forward_timeout = forward_timeout  # git's own timeout bounds a request on the holder
        self.side = SideChannel(broker, "git")
        self.serve: Serve | None = None
        self._held: set[str] = set()  # leases this node holds, whose channels it serves
        self._wanted: set[str] = set()  # rooms whose repositories this node has: it takes their leases back
        self._waiting: dict[str, asyncio.Future[Answer]] = {}
        self._served: dict[str, Answer | None] = {}  # correlation id -> answer (None: running)
        self._tasks: set[asyncio.Task[None]] = set()

    # -- the lease ----------------------------------------------------------------------------------

    async def start(self, serve: Serve) -> None:
        self.serve = serve
        await self.side.start()
        await self.side.listen(keys.git_answers(self.node_id), self._on_answer)

    async def stop(self) -> None:
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(GitError(503, "this node is shutting down"))
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for room in list(self._held):  # the next node asked learns at once that nobody holds them
            await self.release(room)
        await self.side.stop()

    def holds(self, room: str) -> bool:
        return room in self._held

    async def hold(self, room: str) -> bool:
        """Take (or keep) the room's lease and serve its channel; False if another node holds it."""
        try:
            granted = await self.side.broker.try_lease(keys.git_lease(room), self.node_id, self.ttl)
        except BrokerError as exc:
            raise GitError(503, f"cannot tell which node holds the repository of room {room!r}: {exc}") from exc
        self._wanted.add(room)  # asked by a node that has the repository: it wants the lease while it lives
        await self._serve_channel(room, granted)
        return granted

    async def _serve_channel(self, room: str, granted: bool) -> None:
        if granted and room not in self._held:
            self._held.add(room)
            await self.side.listen(keys.git_channel(room), lambda data: self._on_request(room, data))
        elif not granted and room in self._held:
            await self._stop_listening(room)

    async def release(self, room: str) -> None:
        self._wanted.discard(room)
        await self._stop_listening(room)
        try:  # the broker has no delete: a lease renewed for a millisecond is free right after
            await self.side.broker.try_lease(keys.git_lease(room), self.node_id, 0.001)
        except BrokerError as exc:
            log.info("git lease not released, it expires on its own", extra={"room": room, "error": str(exc)})

    async def _stop_listening(self, room: str) -> None:
        if room in self._held:
            self._held.discard(room)
            await self.side.forget(keys.git_channel(room))

    async def renew_forever(self) -> None:
        """The holder's loop: renew the lease of every repository this node has. A lease another node
        holds meanwhile (its own copy, or a lease that expired while Redis was slow and was probed)
        stops this node serving the room until the lease is free again, then it takes it back."""
        while True:
            await asyncio.sleep(self.renew_seconds)
            for room in list(self._wanted):
                try:
                    granted = await self.side.broker.try_lease(keys.git_lease(room), self.node_id, self.ttl)
                except BrokerError as exc:  # nobody can take it while Redis is away either
                    log.warning("git lease not renewed, broker unreachable", extra={"room": room, "error": str(exc)})
                    continue
                if not granted and room in self._held:
                    log.error("git lease held by another node", extra={"room": room})
                elif granted and room not in self._held:
                    log.info("git lease taken back", extra={"room": room})
                if room in self._wanted:  # not released while the broker answered
                    await self._serve_channel(room, granted)

    async def nobody_holds(self, room: str) -> bool:
        """True if no node holds the room's lease (taking it to find out, and giving it back)."""
        if room in self._held:
            return False
        try:
            granted = await self.side.broker.try_lease(keys.git_lease(room), self.node_id, self.ttl)
        except BrokerError as exc:
            raise GitError(503, f"cannot tell which node holds the repository of room {room!r}: {exc}") from exc
        if granted:
            await self.release(room)
        return granted

    # -- the requesting side ------------------------------------------------------------------------

    async def forward(self, room: str, op: str, principal: Principal, args: dict[str, Any]) -> Answer:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.forward_timeout
        correlation = secrets.token_hex(8)
        request = json.dumps(
            {
                "id": correlation,
                "from": self.node_id,
                "op": op,
                "room": room,
                "principal": principal_to_json(principal),
                "args": args,
            }
        ).encode()
        gone = GitError(
            409,
            f"room {room!r} has no repository on any node (it was not opened from git, or the node that"
            ' opened it stopped): open one with POST /api/rooms {"git": {"url"}}',
        )
        try:
            while True:
                answer = await self._ask(correlation, room, request, min(self.answer_seconds, deadline - loop.time()))
                if answer is not None:
                    return answer
                if loop.time() >= deadline:
                    raise GitError(503, f"the node holding the repository of room {room!r} did not answer in time")
                if await self.nobody_holds(room):
                    raise gone
        finally:
            self._waiting.pop(correlation, None)

    async def _ask(self, correlation: str, room: str, request: bytes, timeout: float) -> Answer | None:
        future = self._waiting[correlation] = asyncio.get_running_loop().create_future()
        if not await self.side.publish(keys.git_channel(room), request):
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
            log.error("malformed git answer", extra={"error": repr(exc)})
            return
        if future is not None and not future.done():
            future.set_result(answer)

    # -- the holding side ---------------------------------------------------------------------------

    def _on_request(self, room: str, data: bytes) -> None:
        try:
            request = json.loads(data)
            correlation, sender, op, args = request["id"], request["from"], request["op"], request["args"]
            principal = principal_from_json(request["principal"])
            if request["room"] != room or not isinstance(args, dict):
                raise ValueError("request for another room")
        except (ValueError, KeyError, TypeError) as exc:
            log.error("malformed git request", extra={"room": room, "error": repr(exc)})
            return
        if sender == self.node_id:
            return  # our own request echoed back: it was forwarded because we do not hold the room
        if correlation in self._served:
            answer = self._served[correlation]
            if answer is not None:  # republished after it ran: answer again
                self.spawn(self._reply(sender, answer))
            return
        self._served[correlation] = None
        asyncio.get_running_loop().call_later(self.forward_timeout * 2, self._served.pop, correlation, None)
        self.spawn(self._serve(room, correlation, sender, op, principal, args))

    async def _serve(
        self, room: str, correlation: str, sender: str, op: str, principal: Principal, args: dict[str, Any]
    ) -> None:
        assert self.serve is not None
        try:
            answer = await self.serve(room, op, principal, args)
        except Exception as exc:  # the requester must hear of it; the trace is logged here
            log.exception("forwarded git request failed", extra={"room": room, "op": op})
            answer = {"status": 500, "error": f"{type(exc).__name__}: {exc}"}
        answer = {**answer, "id": correlation, "node": self.node_id}
        self._served[correlation] = answer
        log.info("forwarded git request", extra={"room": room, "op": op, "from": sender, "status": answer["status"]})
        await self._reply(sender, answer)

    async def _reply(self, node: str, answer: Answer) -> None:
        if not await self.side.publish(keys.git_answers(node), json.dumps(answer).encode()):
            log.warning("git answer not sent, broker disconnected", extra={"node": node})

    def spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
