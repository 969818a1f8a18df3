"""Version control as an extension: its routes, its service's life on the node, who members are."""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from pycrdt import Map
from starlette.routing import BaseRoute

from pairroom.rooms.extension import Change, Extension
from pairroom.rooms.member import Member
from pairroom.rooms.owners import SERVER, OwnerRow, plain_value
from pairroom.rooms.room import Room

from .api import LobbyOpener, routes
from .gitcli import GIT
from .service import VcsService
from .settings import VcsSettings



log = logging.getLogger("pairroom.vcs")

from .gitcli import GitError


class VersionControl(Extension):
    name = "git"
    builtin = True
    priority = 60  # after kernels and terminals: their workspace settings are the ones in use

    def __init__(self, settings: VcsSettings) -> None:
        self.vcs_settings = settings
        self.service: VcsService | None = None

    def routes(self) -> Sequence[BaseRoute]:
        return routes

    def http_errors(self) -> Mapping[type[Exception], int | None]:
        return {GitError: None}

    def lifespan(self, node: Any) -> contextlib.AbstractAsyncContextManager[None]:
        return self._run(node)

    @contextlib.asynccontextmanager
    async def _run(self, node: Any) -> AsyncIterator[None]:
        node.state.git = node.state.git_opener = None
        if shutil.which(GIT) is None:
            node.state.git_error = "version control needs the git command, which this server does not have"
            log.error("git refused: no git command on PATH")
            yield
            return
        service = VcsService(node.registry, node.store, self.vcs_settings)
        service.start()
        self.service = node.state.git = service
        node.state.git_opener = LobbyOpener(service)
        try:
            yield
        finally:
            self.service = node.state.git = node.state.git_opener = None
            await service.stop()

    def document_rows(self) -> Sequence[OwnerRow]:
        """``meta.git`` is the server's: a copy of the repository's state for people to see."""
        return (
            OwnerRow("meta", "git", SERVER, lambda v: isinstance(v, Map) and plain_value(v, depth=6),
                     "`Y.Map`: `remote`, `branch`, `ref`, `base`, `head`, `skipped`, `lastCommit`, `pushed`, `pulled`"),
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

    def on_deleted(self, room_name: str) -> None:
        if self.service is not None:
            self.service.forget(room_name)
