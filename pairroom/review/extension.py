"""Review as an extension: the review routes, and the guard that stamps what clients write."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from starlette.routing import BaseRoute

from .api import routes
from .guard import ReviewGuard
from .threads import ReviewError


class Review(ReviewGuard):
    name = "review"
    builtin = True

    def routes(self) -> Sequence[BaseRoute]:
        return routes

    def http_errors(self) -> Mapping[type[Exception], int | None]:
        return {ReviewError: None}  # its own status: 400 invalid, 404 missing, 409 conflict
