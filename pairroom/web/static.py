"""The web app's pages and assets, as built by ``frontend/`` (``npm run build``) into ``pairroom/static``.

| path | answer |
|---|---|
| ``/`` | the lobby, ``index.html`` |
| ``/r/{room}``, ``/r/{room}/replay`` | the room app, ``room.html``; it reads the room from the address |
| ``/sw.js`` | the offline app shell's service worker (``no-cache``: a new build replaces it at once) |
| ``/assets/...`` | hashed build output, cached for a year (a new build has new names); the build writes a |
| | ``.gz`` beside each script and stylesheet, sent as ``Content-Encoding: gzip`` to clients that take it |

The pages themselves are sent with ``Cache-Control: no-cache`` so that a rebuild is picked up at once.
The build is looked up on every request rather than at import, so a server started before the build
(or across a rebuild) serves it as soon as it exists; until then the pages answer 503 with what to
run, and assets 404.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

import anyio
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import NotModifiedResponse, StaticFiles
from starlette.types import Scope

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

PAGE_CACHE = "no-cache"
COMPRESSED = (".js", ".css")  # the build writes a .gz beside each of these
ASSET_CACHE = "public, max-age=31536000, immutable"

NOT_BUILT = (
    "pairroom: the web app has not been built, so there is no page to serve yet.\n"
    "Run `make run` (it builds the app, then starts the server), or build it by hand:\n"
    "    cd frontend && npm ci && npm run build\n"
    "The websocket endpoint ws://HOST:PORT/yjs/ROOM works without it.\n"
)


class AssetFiles(StaticFiles):
    """Static files that may not exist yet, with long cache headers on what is found."""

    async def check_config(self) -> None:
        # StaticFiles raises (a 500) when the folder is missing; a missing build is a 404 here.
        return None

    async def get_response(self, path: str, scope: Scope) -> Response:
        if not self.directory or not Path(self.directory).is_dir():  # noqa: ASYNC240 - a stat of the app's own folder
            return PlainTextResponse("not found: the web app has not been built\n", 404)
        response = await self.gzipped(path, scope) or await super().get_response(path, scope)
        if response.status_code in (200, 206, 304):
            response.headers["Cache-Control"] = ASSET_CACHE
            if path.endswith(COMPRESSED):
                response.headers["Vary"] = "Accept-Encoding"
        return response

    async def gzipped(self, path: str, scope: Scope) -> Response | None:
        """The build's precompressed ``.gz`` of ``path``, when the client takes gzip and it exists."""
        if scope["method"] not in ("GET", "HEAD") or not path.endswith(COMPRESSED):
            return None
        request_headers = Headers(scope=scope)
        if "gzip" not in request_headers.get("accept-encoding", ""):
            return None
        # lookup_path refuses paths that leave the folder, as for any other asset.
        full_path, stat_result = await anyio.to_thread.run_sync(self.lookup_path, path + ".gz")
        if stat_result is None:
            return None
        media_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
        response = FileResponse(
            full_path,
            stat_result=stat_result,
            media_type=media_type,
            headers={"Content-Encoding": "gzip"},
        )
        if self.is_not_modified(response.headers, request_headers):
            return NotModifiedResponse(response.headers)
        return response


def page(directory: Path, name: str) -> Response:
    """One of the built HTML pages, or 503 telling the operator how to build them."""
    path = directory / name
    if not path.is_file():
        return PlainTextResponse(NOT_BUILT, 503, headers={"Retry-After": "30"})
    return FileResponse(path, media_type="text/html; charset=utf-8", headers={"Cache-Control": PAGE_CACHE})


def static_routes(directory: Path = STATIC_DIR) -> list[BaseRoute]:
    """The routes serving the build in ``directory``."""

    async def lobby(request: Request) -> Response:
        return page(directory, "index.html")

    async def room(request: Request) -> Response:
        return page(directory, "room.html")

    async def service_worker(request: Request) -> Response:
        path = directory / "sw.js"
        if not path.is_file():
            return PlainTextResponse("not found: the web app has not been built\n", 404)
        return FileResponse(path, media_type="text/javascript", headers={"Cache-Control": PAGE_CACHE})

    return [
        Route("/", lobby, name="lobby"),
        Route("/r/{room}", room, name="room"),
        Route("/r/{room}/replay", room, name="replay"),
        Route("/sw.js", service_worker, name="service-worker"),
        Mount("/assets", AssetFiles(directory=directory / "assets", check_dir=False), name="assets"),
    ]


routes: list[BaseRoute] = static_routes()
