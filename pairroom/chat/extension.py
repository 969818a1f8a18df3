"""Chat as an extension: its route. The ``chat`` root's owner row (who may append, the shape, the
server's stamp) is one of the document's built-in rows (``rooms/owners.py``)."""

from __future__ import annotations

from collections.abc import Sequence

from starlette.routing import BaseRoute

from pairroom.rooms.extension import Extension

from .api import routes


class Chat(Extension):
    name = "chat"
    builtin = True

    def routes(self) -> Sequence[BaseRoute]:
        return routes
