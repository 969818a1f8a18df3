"""Version control as an extension: its routes, its service's life on the node, who members are."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from pycrdt import Map
from starlette.routing import BaseRoute

from pairroom.rooms.extension import Change, Extension
from pairroom.rooms.identity import Principal
from pairroom.rooms.member import Member
from pairroom.rooms.owners import SERVER, OwnerRow, plain_value
from pairroom.rooms.room import Room
from pairroom.web.api import ApiError

from .api import LobbyOpener, routes, run_op, serve_forwarded
from .cluster import GitLeases
from .gitcli import GIT, GitError
from .service import VcsService
from .settings import VcsSettings

log = logging.getLogger("pairroom.vcs")


class VersionControl(Extension):
    name = "git"
    builtin = True
    priority = 60  # after kernels and terminals: their workspace settings are the ones in use
    hook_timeout = 60.0  # on_forked copies a repository, perhaps on another node

    def __init__(self, settings: VcsSettings, lease_timings: dict[str, float] | None = None) -> None:
        self.vcs_settings = settings
        self.lease_timings = lease_timings or {}  # GitLeases' ttl, renew_seconds, answer_seconds
        self.service: VcsService | None = None
        self.node: Any = None

    def routes(self) -> Sequence[BaseRoute]:
        return routes

    def http_errors(self) -> Mapping[type[Exception], int | None]:
        return {GitError: None}

    def lifespan(self, node: Any) -> contextlib.AbstractAsyncContextManager[None]:
        return self._run(node)

    @contextlib.asynccontextmanager
    async def _run(self, node: Any) -> AsyncIterator[None]:
        node.state.git = node.state.git_opener = None
        self.node = node
        if shutil.which(GIT) is None:
            node.state.git_error = "version control needs the git command, which this server does not have"
            log.error("git refused: no git command on PATH")
            yield
            return
        service = VcsService(node.registry, node.store, self.vcs_settings)
        service.start()
        # Which node holds which room's repository, so any node answers git requests (cluster.py).
        # Outside a cluster the broker is in memory and this node holds every lease.
        leases = GitLeases(node.cluster.broker, **self.lease_timings)
        await leases.start(serve_forwarded(node.state))
        service.leases = leases
        for room_name in await asyncio.to_thread(service.on_disk):  # after a restart with --git-root
            try:
                if not await leases.hold(room_name):
                    log.warning("a repository on disk whose lease another node holds", extra={"room": room_name})
            except GitError as exc:  # Redis away: the first request for the room takes the lease
                log.warning("git lease not taken at start", extra={"room": room_name, "error": exc.reason})
        renewal = node.supervisor.spawn("git-leases", leases.renew_forever, restart=True)
        self.service = node.state.git = service
        node.state.git_opener = LobbyOpener(service)
        try:
            yield
        finally:
            self.service = node.state.git = node.state.git_opener = None
            await node.supervisor.stop(renewal, 5.0)
            await leases.stop()
            await service.stop()

    def document_rows(self) -> Sequence[OwnerRow]:
        """``meta.git`` is the server's: a copy of the repository's state for people to see."""
        return (
            OwnerRow(
                "meta",
                "git",
                SERVER,
                lambda v: isinstance(v, Map) and plain_value(v, depth=6),
                "`Y.Map`: `remote`, `branch`, `ref`, `base`, `head`, `skipped`, `lastCommit`, `pushed`, `pulled`",
            ),
        )

    def on_join(self, room: Room, member: Member) -> None:
        """Remember each member's name and email, to credit them in commits others make."""
        if self.service is not None and member.principal is not None:
            self.service.note_person(room, member.principal)

    def after_client_change(self, change: Change) -> None:
        """A member who types is noted too: the room may have got its repository after they joined."""
        if self.service is not None and change.author is not None:
            self.service.note_person(change.room, change.author)

    def on_unload(self, room: Room) -> None:
        if self.service is not None:
            self.service.unloaded(room.name)

    async def on_forked(self, source: str, fork: str, seq: int, by: Principal) -> Mapping[str, Any] | None:
        """A fork of a repository room gets a repository of its own, at the commit at or before the
        fork point (``VcsService.fork``), made where the source's repository is. Its answer goes into
        the fork's; a failure is said there (``error``), the fork stays a room without repository."""
        if self.service is None:
            return None
        async with self.node.registry.hold(source) as room:
            git = room.doc.get("meta", type=Map).get("git")
            if not isinstance(git, Map) or not git.get("head"):
                return None  # not a repository room: nothing to copy, no node to ask
        try:
            answer = await run_op(self.node.state, source, by, "fork", {"fork": fork, "seq": seq})
        except (ApiError, GitError) as exc:
            log.warning("fork without repository", extra={"room": fork, "source": source, "error": exc.reason})
            return {"error": exc.reason, "status": exc.status}
        return answer.get("json")

    def on_deleted(self, room_name: str) -> None:
        if self.service is not None:
            self.service.forget(room_name)
