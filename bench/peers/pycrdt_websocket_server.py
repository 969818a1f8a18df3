"""pycrdt-websocket as a benchmark peer: its ASGIServer under uvicorn, in memory (no store).

    python pycrdt_websocket_server.py PORT [HOST]

The room is the URL path. One change to the stock server: creating and starting a room is serialized
per room name. In 0.16.5 two clients that open a new room at the same moment both try to start it,
the second fails ("YRoom already running") and that client never gets its sync step 2; an editor
would reconnect, the benchmark's clients connect many at a time and would not. And a send to a
client that has just gone (uvicorn's ClientDisconnected, raised when a closing client's awareness
removal is forwarded) is dropped instead of logged as an application error, as pairroom does. The websocket stack is the one pairroom uses (uvicorn with httptools,
uvloop and the websockets-sansio implementation), so the difference is the server, not the socket
library. Prints one JSON line {"msg": "listening", "port": N} once bound.
"""

from __future__ import annotations

import json
import sys
from logging import Logger

import anyio
import uvicorn
import uvloop
from pycrdt.websocket import ASGIServer, WebsocketServer, YRoom
from uvicorn.protocols.utils import ClientDisconnected


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def drop_disconnects(exc: Exception, log: Logger) -> bool:
    """True (handled) when every error is a send to a client that is already gone."""
    return all(isinstance(leaf, ClientDisconnected) for leaf in _leaves(exc))


class SerializedRoomStart(WebsocketServer):
    def __init__(self, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(**kwargs)
        self._room_locks: dict[str, anyio.Lock] = {}

    async def get_room(self, name: str) -> YRoom:
        lock = self._room_locks.setdefault(name, anyio.Lock())
        async with lock:  # one lock per room name ever opened: fine for a benchmark run
            return await super().get_room(name)


class Server(uvicorn.Server):
    async def startup(self, sockets=None) -> None:  # type: ignore[no-untyped-def]
        await super().startup(sockets)
        port = self.servers[0].sockets[0].getsockname()[1] if self.servers else None
        print(json.dumps({"msg": "listening", "port": port, "server": "pycrdt-websocket"}), flush=True)


async def main(port: int, host: str) -> None:
    websocket_server = SerializedRoomStart(auto_clean_rooms=True, exception_handler=drop_disconnects)
    config = uvicorn.Config(
        ASGIServer(websocket_server),
        host=host,
        port=port,
        loop="none",
        http="httptools",
        ws="websockets-sansio",
        lifespan="off",
        log_level="warning",
        ws_max_size=64 * 1024 * 1024,
    )
    async with websocket_server:
        await Server(config).serve()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 0, sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"))
