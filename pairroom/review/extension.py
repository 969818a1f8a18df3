"""Review as an extension: the review routes, and the guard that stamps what clients write."""

from __future__ import annotations

from collections.abc import Sequence

from starlette.routing import BaseRoute

from .api import routes
from .guard import ReviewGuard


class Review(ReviewGuard):
    name = "review"
    builtin = True

    def routes(self) -> Sequence[BaseRoute]:
        return routes
