"""The ``pairroom`` command. ``pairroom serve`` runs a node; every flag also reads ``PAIRROOM_*``."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import ipaddress
import logging
import os
import secrets
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import uvloop
from pycrdt import Map

from pairroom import extension_loader
from pairroom.app import create_app
from pairroom.config import Settings
from pairroom.kernels import setup as kernel_setup
from pairroom.marketplace import commands as extensions_cli
from pairroom.recording import export as recorder_cli
from pairroom.rooms.extension import Extension
from pairroom.rooms.heap import release_freed_memory
from pairroom.rooms.identity import Role
from pairroom.web import logs
from pairroom.web.auth import mint
from pairroom.web.lobby import mint_creator
from pairroom.web.runner import Server, uvicorn_config

log = logging.getLogger("pairroom.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pairroom", description="Real-time collaborative IDE server")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run a server node")
    serve.add_argument("--host", help="address to bind (PAIRROOM_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port, 0 for any free one (PAIRROOM_PORT, default 8000)")
    serve.add_argument(
        "--db",
        help="database URL, or memory:// to keep rooms in this process only (PAIRROOM_DB, default sqlite:///./pairroom.db)",
    )
    serve.add_argument("--log-level", help="debug, info, warning, error (PAIRROOM_LOG_LEVEL)")
    serve.add_argument(
        "--log-format",
        choices=["auto", "json", "text"],
        help="PAIRROOM_LOG_FORMAT; auto (default): text on a terminal, JSON otherwise",
    )
    serve.add_argument("--max-message-bytes", type=int, help="largest websocket message taken (default 16 MiB)")
    serve.add_argument("--max-body-bytes", type=int, help="largest HTTP request body taken (default 2 MiB)")
    serve.add_argument(
        "--http-header-timeout", type=float, help="seconds for a request's headers to arrive (default 10)"
    )
    serve.add_argument("--http-body-timeout", type=float, help="seconds for a request's body to arrive (default 30)")
    serve.add_argument("--room-idle-seconds", type=float, help="unload a room this long after it empties")
    serve.add_argument("--flush-interval-ms", type=float, help="batch window for storage writes")
    serve.add_argument("--presence-entries-per-message", type=int, help="awareness states one message may carry (16)")
    serve.add_argument(
        "--presence-clients-per-connection", type=int, help="awareness client ids one connection may hold (8)"
    )
    serve.add_argument("--presence-state-bytes", type=int, help="largest awareness state of one client (16 KiB)")
    serve.add_argument(
        "--presence-recorded-bytes-per-second",
        type=float,
        help="presence one connection may add to the recording (32 KiB/s; beyond it, relayed, not recorded)",
    )
    serve.add_argument("--broadcast-window-ms", type=float, help="a busy room merges the edits of this window (10)")
    serve.add_argument("--snapshot-every", type=int, help="write a snapshot every N logged updates")
    serve.add_argument("--max-queue-messages", type=int, help="outbound queue limit per connection")
    serve.add_argument("--keepalive-seconds", type=float, help="send something this often at least")
    serve.add_argument("--ws-impl", choices=["websockets", "websockets-sansio", "wsproto"], help="websocket stack")
    serve.add_argument(
        "--yjs-door",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="serve /yjs without the per-connection ASGI chain (default on; off: through Starlette)",
    )
    serve.add_argument(
        "--ws-compression",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="permessage-deflate (off: it costs ~48 KiB per connection and CPU per message)",
    )
    serve.add_argument("--secret", help="token signing secret (PAIRROOM_SECRET); none = open mode")
    serve.add_argument(
        "--secret-file",
        help="without --secret: read the secret from this file, made with a new random one if missing "
        "(PAIRROOM_SECRET_FILE; make run uses .pairroom/secret)",
    )
    serve.add_argument("--welcome", metavar="ROOM", help="once listening, print an owner link of ROOM (make run)")
    serve.add_argument(
        "--kernel-setup",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="prepare the kernels' Python environment at start when it is missing (default on)",
    )
    serve.add_argument(
        "--allow-anonymous",
        action="store_true",
        default=None,
        help="allow open mode (no secret) on a non-loopback address",
    )
    serve.add_argument("--allowed-origins", help="comma-separated Origin values allowed to connect")
    serve.add_argument("--max-members", type=int, help="members per room (default 1000)")
    serve.add_argument("--rate-limit", type=float, help="messages a second per connection")
    serve.add_argument("--public-url", help="base URL for invite links")
    serve.add_argument(
        "--open-lobby",
        action="store_true",
        default=None,
        help="with a secret, let anyone create rooms in the lobby (rate-limited per address); "
        "else creating needs a token from pairroom token --creator",
    )
    serve.add_argument(
        "--lobby-rooms-per-minute", type=float, help="an open lobby's rooms per client address (default 10)"
    )
    serve.add_argument(
        "--redis",
        help="redis://host:port/db, or a Redis Cluster as redis+cluster://host:port[,host:port...]: "
        "share rooms with other nodes (PAIRROOM_REDIS)",
    )
    serve.add_argument("--node-id", help="this node's id among the nodes (default: random)")
    serve.add_argument(
        "--kernels",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="shared code execution in sandboxed kernels (default on)",
    )
    serve.add_argument(
        "--unsafe-kernels",
        action="store_true",
        default=None,
        help="run kernels WITHOUT the sandbox when bubblewrap is missing: trusted local use only",
    )
    serve.add_argument(
        "--kernel-pool-size",
        type=int,
        help="pre-started kernels, started once rooms are open on this node (default 2)",
    )
    serve.add_argument("--kernel-idle-seconds", type=float, help="shut down a room kernel idle this long")
    serve.add_argument("--kernel-run-timeout", type=float, help="wall-clock limit of one run (default 300)")
    serve.add_argument("--kernel-output-cap", type=int, help="output bytes kept per run (default 1 MiB)")
    serve.add_argument(
        "--extension",
        action="append",
        dest="extensions",
        metavar="NAME",
        help="run this installed third-party extension (repeatable; PAIRROOM_EXTENSIONS=a,b);"
        " its settings come from PAIRROOM_EXT_<NAME>_<KEY>",
    )
    serve.add_argument(
        "--extension-catalog",
        metavar="FILE_OR_URL",
        help="the extension catalog: a local JSON file, or a TUF repository URL (PAIRROOM_EXTENSION_CATALOG)",
    )
    serve.add_argument(
        "--extension-catalog-root",
        metavar="ROOT_JSON",
        help="the pinned TUF root metadata a catalog URL is verified against (PAIRROOM_EXTENSION_CATALOG_ROOT)",
    )

    serve.add_argument(
        "--git-allow-local",
        action="store_true",
        default=None,
        help="let rooms open and push git remotes over git://, http://, file:// and to loopback or private"
        " hosts (refused by default: a server must not become a way into its own network)",
    )
    serve.add_argument("--git-root", help="where rooms' repositories are kept (default: a temporary dir)")

    import_git = commands.add_parser("import-git", help="open a git repository as a new room on a running server")
    import_git.add_argument("url", help="https:// or ssh:// remote (others need the server's --git-allow-local)")
    import_git.add_argument("--ref", help="branch or tag (default: the remote's default branch)")
    import_git.add_argument("--as", dest="room", help="the room's name (default: a random one)")
    import_git.add_argument("--name", help="the owner's display name")
    import_git.add_argument("--server", default="http://127.0.0.1:8000", help="the server (default %(default)s)")

    kernels = commands.add_parser("kernels", help="the sandboxed kernels' environment")
    kernels_commands = kernels.add_subparsers(dest="kernels_command", required=True)
    setup = kernels_commands.add_parser(
        "setup", help="create the kernels' Python environment (a venv with ipykernel), with progress"
    )
    setup.add_argument("--venv", help="where (PAIRROOM_KERNEL_VENV; default: the server's kernel venv)")
    setup.add_argument("--python", help="the Python to build it from (default /usr/bin/python3)")

    token = commands.add_parser("token", help="mint an access token for a room")
    token.add_argument("room", nargs="?", help="the room (not with --creator)")
    token.add_argument("--role", default="editor", choices=[r.value for r in Role])
    token.add_argument("--name", help="display name (required for a room token)")
    token.add_argument(
        "--creator",
        action="store_true",
        help="a creator token: lets its holder create rooms in the lobby (default ttl 30d), opens no room",
    )
    token.add_argument("--url", help="with --creator: the server's URL, to print the lobby link that carries it")
    token.add_argument("--ttl", help="lifetime: 3600, 90m, 8h, 7d (default 8h, 30d for --creator)")
    token.add_argument("--color", help="cursor color, e.g. #4363d8")
    token.add_argument("--user-id", help="stable user id (default: random)")
    token.add_argument("--secret", help="token signing secret (default PAIRROOM_SECRET)")
    recorder_cli.add_arguments(commands, Settings.from_env().db)
    extensions_cli.add_arguments(commands)
    return parser


def parse_ttl(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = text.strip().lower()
    try:
        if text and text[-1] in units:
            value = float(text[:-1]) * units[text[-1]]
        else:
            value = float(text)
    except ValueError as exc:
        raise ValueError(f"--ttl {text!r}: use seconds or a number with s, m, h or d") from exc
    if value <= 0:
        raise ValueError("--ttl must be positive")
    return value


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def token_command(args: argparse.Namespace) -> int:
    secret = args.secret or Settings.from_env().secret
    if not secret:
        print("pairroom token: no secret (--secret or PAIRROOM_SECRET)", file=sys.stderr)
        return 2
    try:
        ttl = parse_ttl(args.ttl or ("30d" if args.creator else "8h"))
    except ValueError as exc:
        print(f"pairroom token: {exc}", file=sys.stderr)
        return 2
    if args.creator:
        if args.room:
            print("pairroom token: a creator token names no room", file=sys.stderr)
            return 2
        token = mint_creator(secret, args.name or "creator", ttl_seconds=ttl)
        print(f"{args.url.rstrip('/')}/?creator={token}" if args.url else token)
        return 0
    if not args.room or not args.name:
        print("pairroom token: a room token needs the room and --name", file=sys.stderr)
        return 2
    print(mint(secret, args.room, args.role, args.name, ttl_seconds=ttl, color=args.color, user_id=args.user_id))
    return 0


def import_git_command(args: argparse.Namespace) -> int:
    """``POST /api/rooms {"git"}`` on a running server; prints the room's links."""
    import json
    import urllib.error
    import urllib.request

    body: dict[str, object] = {"git": {"url": args.url, **({"ref": args.ref} if args.ref else {})}}
    if args.room:
        body["room"] = args.room
    if args.name:
        body["name"] = args.name
    request = urllib.request.Request(
        args.server.rstrip("/") + "/api/rooms",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            answer = json.load(response)
    except urllib.error.HTTPError as exc:
        try:
            reason = json.load(exc).get("error", exc.reason)
        except ValueError:
            reason = exc.reason
        print(f"pairroom import-git: {exc.code} {reason}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"pairroom import-git: cannot reach {args.server}: {exc}", file=sys.stderr)
        return 1
    git = answer.get("git") or {}
    print(f"room {answer['room']}: {git.get('files', 0)} files from {git.get('remote')} at {git.get('base', '')[:12]}")
    for invite in answer.get("invites", []):
        print(f"  {invite['role']}: {invite['url']}")
    if answer.get("open"):
        print(f"  {answer['url']}")
    return 0


def extensions_command(args: argparse.Namespace) -> int:
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        print(f"pairroom: {exc}", file=sys.stderr)
        return 2
    context = extensions_cli.Context(
        settings.extensions,
        settings.extension_catalog,
        settings.extension_catalog_root,
        settings.extension_catalog_cache,
    )
    return extensions_cli.run(args, context)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "token":
        return token_command(args)
    if args.command == "import-git":
        return import_git_command(args)
    if args.command in recorder_cli.COMMANDS:
        return recorder_cli.COMMANDS[args.command](args)
    if args.command == "extensions":
        return extensions_command(args)
    if args.command == "kernels":
        venv = args.venv or Settings.from_env().kernel_settings().kernel_venv
        return kernel_setup.main(Path(venv), args.python)
    overrides = {k: v for k, v in vars(args).items() if k != "command"}
    try:
        settings = Settings.from_env(**overrides)
        settings = with_secret_file(settings)
    except (ValueError, OSError) as exc:
        print(f"pairroom: {exc}", file=sys.stderr)
        return 2
    if settings.secret is None and not settings.allow_anonymous and not is_loopback(settings.host):
        print(
            f"pairroom: refusing open mode (no --secret) on {settings.host}: anyone reaching it could"
            " edit every room. Set PAIRROOM_SECRET, bind 127.0.0.1, or pass --allow-anonymous.",
            file=sys.stderr,
        )
        return 2
    if settings.unsafe_kernels and not is_loopback(settings.host):
        print("pairroom: --unsafe-kernels is for trusted local use: bind a loopback address", file=sys.stderr)
        return 2
    try:
        extensions = extension_loader.load(settings.extensions, settings.extension_settings)
    except extension_loader.ExtensionError as exc:
        print(f"pairroom: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format)
    return serve(settings, extensions)


def with_secret_file(settings: Settings) -> Settings:
    """Without a secret but with ``secret_file``: the secret kept in that file, made (random, 0600) if
    the file is missing, so links stay valid from one start to the next."""
    if settings.secret or not settings.secret_file:
        return settings
    path = Path(settings.secret_file)
    if path.exists():
        secret = path.read_text().strip()
        if len(secret) < 16:
            raise ValueError(f"the secret in {path} is shorter than 16 characters: delete the file for a new one")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        secret = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secret + "\n")
        print(f"pairroom: made a new secret in {path} (keep it private; delete it to invalidate every link)")
    return dataclasses.replace(settings, secret=secret)


async def welcome(app: Any, settings: Settings, port: int) -> None:
    """Print how to get in: the owner link of the ``welcome`` room (with a secret), or what open mode means."""
    host = settings.host
    shown = socket.getfqdn() if host in ("0.0.0.0", "::", "") else host
    base = settings.public_url.rstrip("/") or f"http://{shown}:{port}"
    room = settings.welcome
    lines = [f"pairroom is running on {base}"]
    if settings.secret:
        async with app.state.hub.registry.hold(room) as held:
            epoch = held.doc.get("meta", type=Map).get("epoch")
        token = mint(
            settings.secret,
            room,
            Role.OWNER,
            "",  # the page asks the name of whoever opens it
            ttl_seconds=7 * 24 * 3600,
            epoch=epoch if isinstance(epoch, str) else None,
        )
        lines += [
            f"  Your room, as its owner:  {base}/r/{room}?token={token}",
            "  Invite people from the room's Share button (editor, reviewer and viewer links).",
        ]
        if is_loopback(host):
            lines.append("  Only this machine can reach it: HOST=0.0.0.0 make run lets colleagues in too.")
    else:
        lines += [
            f"  Open mode: anyone who can reach it edits every room. Try {base}/r/{room}",
            "  For links with roles, set a secret: PAIRROOM_SECRET=... or --secret-file .pairroom/secret",
        ]
    print("\n".join(["", *lines, ""]), flush=True)


def serve(settings: Settings, extensions: Sequence[Extension] = ()) -> int:
    app = create_app(settings, extensions=extensions)
    server = Server(uvicorn_config(app, settings))

    async def run() -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, dump_tasks)
        task = asyncio.create_task(server.serve())
        ready = asyncio.create_task(server.ready.wait())
        await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        # What starting freed (the compiler's and the imports' transient blocks, the probes' buffers)
        # goes back to the system: about 0.6 MiB of an idle node's RSS.
        release_freed_memory()
        settle_collector()
        if server.port is not None:
            url = f"http://{settings.host}:{server.port}"
            log.info("listening", extra={"host": settings.host, "port": server.port, "url": url})
            if settings.welcome:
                await welcome(app, settings, server.port)
        await task

    uvloop.run(run())
    return 0 if server.started else 1


def settle_collector() -> None:
    """Once started: what starting built (modules, classes, routes: about 140,000 objects) lives as
    long as the process, so it leaves the collector's reach (``gc.freeze``). Measured in S4 (200
    rooms of two): each full collection walked all of it, 57 ms with the event loop stopped; after,
    24 ms, and the collector's time over a run went 146 -> 66 ms. (A longer first generation,
    10,000 objects instead of 700, cut that to 25 ms but cost 5 % more instructions per edit in
    ``bench/instructions.py``'s S4: not kept.)"""
    gc.collect()
    gc.freeze()


def dump_tasks() -> None:
    """SIGUSR1: write every pending task's stack to stderr (to see what a stuck node waits for)."""
    for task in asyncio.all_tasks():
        print(f"--- task {task.get_name()}", file=sys.stderr)
        task.print_stack(limit=12, file=sys.stderr)
    sys.stderr.flush()


if __name__ == "__main__":
    sys.exit(main())
