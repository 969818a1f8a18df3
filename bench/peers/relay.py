"""A bare y-websocket byte relay: no CRDT, no document, no storage. The ceiling of a Python server.

    python relay.py PORT [HOST] [WS_IMPL]

A room is the URL path. A client's sync step 1 is answered with an empty sync step 2 (the relay
holds no document); every other frame is written, unchanged and undecoded, to the other members of
the room, in arrival order. It runs on the websocket stack pairroom uses (uvicorn with httptools,
uvloop and, by default, the websockets-sansio implementation) as a plain ASGI app (no Starlette).

What it cannot do: a client that joins late gets nothing of what was said before it joined (so it
has no part in the large-document scenario), and a slow member slows its room down (each frame is
written to every member before the next frame is read): it is a floor for the work per message, not
a server. Prints one JSON line {"msg": "listening", "port": N} once bound.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn
import uvloop

Send = Callable[[dict[str, Any]], Awaitable[None]]

SYNC_STEP1_PREFIX = b"\x00\x00"  # message type sync (0), sync step 1 (0)
EMPTY_SYNC_STEP2 = {"type": "websocket.send", "bytes": b"\x00\x01\x02\x00\x00"}  # step 2 of an empty update

rooms: dict[str, list[Send]] = {}


async def app(scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]], send: Send) -> None:
    if scope["type"] == "http":
        await receive()
        await send({"type": "http.response.start", "status": 404, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"websocket only\n"})
        return
    if scope["type"] != "websocket":
        return
    if (await receive())["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    name = scope["path"]
    members = rooms.setdefault(name, [])
    members.append(send)
    try:
        while True:
            message = await receive()
            if message["type"] != "websocket.receive":
                return
            data = message.get("bytes")
            if not data:
                continue
            if data.startswith(SYNC_STEP1_PREFIX):
                await send(EMPTY_SYNC_STEP2)
                continue
            out = {"type": "websocket.send", "bytes": data}
            for other in members:
                if other is not send:
                    try:
                        await other(out)
                    except Exception:  # that member is going away; its own loop cleans up
                        pass
    finally:
        members.remove(send)
        if not members:
            rooms.pop(name, None)


class Server(uvicorn.Server):
    async def startup(self, sockets=None) -> None:  # type: ignore[no-untyped-def]
        await super().startup(sockets)
        port = self.servers[0].sockets[0].getsockname()[1] if self.servers else None
        print(json.dumps({"msg": "listening", "port": port, "server": "relay"}), flush=True)


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    host = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"
    ws = sys.argv[3] if len(sys.argv) > 3 else "websockets-sansio"
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="none",
        http="httptools",
        ws=ws,
        lifespan="off",
        log_level="warning",
        ws_max_size=64 * 1024 * 1024,
    )
    uvloop.run(Server(config).serve())


if __name__ == "__main__":
    main()
