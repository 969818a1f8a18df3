"""Recording as an extension: the history routes, the replay websocket and the event recorder.

The recorder (``events.RecorderObserver``) is this extension's hook target; its writer loop runs
under the node's supervisor for as long as the node does and flushes what it buffered when the node
stops.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from starlette.routing import BaseRoute

from .api import link_call_audio, routes
from .events import RecorderObserver, RecorderSettings
from .history import History, PointError


class Recording(RecorderObserver):
    name = "recording"
    builtin = True
    priority = 200  # after the server's own extensions: it records what they corrected

    def __init__(self, extra: Mapping[str, Any], shutdown_timeout: float = 10.0) -> None:
        super().__init__(None, RecorderSettings.from_mapping(extra))
        self.shutdown_timeout = shutdown_timeout

    def routes(self) -> Sequence[BaseRoute]:
        return routes

    def http_errors(self) -> Mapping[type[Exception], int | None]:
        return {PointError: None}  # a point in history that does not exist, or cannot be read

    def lifespan(self, node: Any) -> contextlib.AbstractAsyncContextManager[None]:
        return self._run(node)

    @contextlib.asynccontextmanager
    async def _run(self, node: Any) -> AsyncIterator[None]:
        self.bind(History(node.store))  # its HistoryStore adapter goes with the store (SQL or memory)
        node.state.recorder = self
        link_call_audio(node.state, self)
        async with node.supervisor.running("recorder", self.run, self.shutdown_timeout):
            yield
