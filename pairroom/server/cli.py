"""The ``pairroom`` command. ``pairroom serve`` runs a node; every flag also reads ``PAIRROOM_*``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

import uvloop

from . import logs
from .app import create_app
from .config import Settings
from .runner import Server, uvicorn_config

log = logging.getLogger("pairroom.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pairroom", description="Real-time collaborative IDE server")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run a server node")
    serve.add_argument("--host", help="address to bind (PAIRROOM_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port, 0 for any free one (PAIRROOM_PORT, default 8000)")
    serve.add_argument("--db", help="database URL (PAIRROOM_DB, default sqlite:///./pairroom.db)")
    serve.add_argument("--log-level", help="debug, info, warning, error (PAIRROOM_LOG_LEVEL)")
    serve.add_argument("--log-format", choices=["json", "text"], help="PAIRROOM_LOG_FORMAT")
    serve.add_argument(
        "--max-message-bytes", type=int, help="largest websocket message taken (default 16 MiB)"
    )
    serve.add_argument("--room-idle-seconds", type=float, help="unload a room this long after it empties")
    serve.add_argument("--flush-interval-ms", type=float, help="batch window for storage writes")
    serve.add_argument("--snapshot-every", type=int, help="write a snapshot every N logged updates")
    serve.add_argument("--max-queue-messages", type=int, help="outbound queue limit per connection")
    serve.add_argument("--keepalive-seconds", type=float, help="send something this often at least")
    serve.add_argument(
        "--ws-impl", choices=["websockets", "websockets-sansio", "wsproto"], help="websocket stack"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k != "command"}
    try:
        settings = Settings.from_env(**overrides)
    except ValueError as exc:
        print(f"pairroom: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format)
    return serve(settings)


def serve(settings: Settings) -> int:
    server = Server(uvicorn_config(create_app(settings), settings))

    async def run() -> None:
        task = asyncio.create_task(server.serve())
        ready = asyncio.create_task(server.ready.wait())
        await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if server.port is not None:
            url = f"http://{settings.host}:{server.port}"
            log.info("listening", extra={"host": settings.host, "port": server.port, "url": url})
        await task

    uvloop.run(run())
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
