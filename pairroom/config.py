"""Server settings: one frozen dataclass, filled from command-line flags and ``PAIRROOM_*`` variables.

Nothing reads the environment at import time; ``Settings.from_env`` is called by the CLI (and tests
build ``Settings`` directly).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from pairroom.rooms.presence import PresenceLimits
from pairroom.rooms.registry import RoomSettings
from pairroom.rtc.settings import RtcSettings
from pairroom.sandbox.settings import KernelSettings
from pairroom.vcs.settings import VcsSettings

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    db: str = "sqlite:///./pairroom.db"
    log_level: str = "info"
    log_format: str = "auto"  # json | text | auto (text on a terminal, JSON otherwise)
    max_message_bytes: int = 16 * MiB
    max_room_name: int = 255
    max_body_bytes: int = 2 * MiB  # any HTTP request body; routes cap theirs lower (JSON: 64 KiB)
    http_header_timeout: float = 10.0  # a request's line and headers must arrive within this
    http_body_timeout: float = 30.0  # and its body within this after the headers
    http_keepalive_timeout: float = 5.0  # an idle connection between requests is closed after this
    max_queue_messages: int = 2048
    max_queue_bytes: int = 64 * MiB
    room_idle_seconds: float = 30.0
    room_load_timeout: float = 10.0
    flush_interval_ms: float = 250.0  # how long updates gather before one write per room
    flush_max_updates: int = 200
    snapshot_every: int = 1000
    keepalive_seconds: float = 15.0
    # websocket pings: a peer that sends nothing, pong included, for ws_ping_timeout after a ping is
    # closed with 1011 (on /yjs a peer still sending is alive: web/door.py)
    ws_ping_interval: float = 20.0
    ws_ping_timeout: float = 20.0
    shutdown_timeout: float = 10.0
    ws_impl: str = "websockets-sansio"
    # /yjs connections through the front door (web/door.py: no ASGI chain per connection); off: through
    # Starlette like every other route (the door needs the websockets-sansio stack)
    yjs_door: bool = True
    # permessage-deflate: every connection keeps a zlib state (about 48 KiB) and every message is
    # compressed once per recipient; Yjs updates are small binary, so it is off unless links are slow
    ws_compression: bool = False
    secret: str | None = None  # HS256 token secret; None = open mode (anonymous editors)
    secret_file: str = ""  # without a secret: read it from this file, made with a new random one if missing
    welcome: str = ""  # a room name: once listening, print its owner link (what `make run` shows first)
    kernel_setup: bool = True  # prepare the kernels' Python environment at start if it is missing
    kernel_venv: str = ""  # the kernels' Python environment (default: see sandbox/settings.py)
    allow_anonymous: bool = False  # open mode on a non-loopback address
    allowed_origins: str = ""  # comma-separated Origin values; empty = any
    max_members: int = 1000  # per room
    rate_limit: float = 200.0  # messages per second per connection (sustained)
    rate_burst: int = 1000  # messages a connection may send at once
    awareness_tick_ms: float = 20.0  # presence relay throttle per room
    # presence caps per connection (rooms/presence.py PresenceLimits; beyond them: close 4413)
    presence_entries_per_message: int = 16
    presence_clients_per_connection: int = 8
    presence_state_bytes: int = 16 * 1024
    presence_recorded_bytes_per_second: float = 32 * 1024
    broadcast_window_ms: float = 10.0  # a busy room's updates wait this long to go out merged
    public_url: str = ""  # base of invite links; default: the URL the request came in on
    open_lobby: bool = False  # with a secret: anyone may create rooms (else a creator token is needed)
    lobby_rooms_per_minute: float = 10.0  # an open lobby's rooms per client address (as many at once)
    redis: str | None = None  # redis://host:port/db to share rooms across nodes; None = one node
    node_id: str = ""  # this node's id on the broker; default: random at start
    heartbeat_seconds: float = 1.0
    node_dead_after_seconds: float = 3.0
    anti_entropy_seconds: float = 10.0
    kernels: bool = True  # shared code execution in sandboxed kernels
    unsafe_kernels: bool = False  # run kernels without the sandbox: trusted local use only
    kernel_pool_size: int = 2
    kernel_idle_seconds: float = 600.0
    kernel_run_timeout: float = 300.0
    kernel_output_cap: int = MiB
    kernel_memory_bytes: int = 1024 * MiB
    kernel_pids: int = 128
    kernel_cpu_seconds: int = 3600
    kernel_file_bytes: int = 100 * MiB
    git_allow_local: bool = False  # git remotes over git://, http://, file:// or to loopback/private hosts
    git_root: str = ""  # where rooms' repositories are kept; empty: a temporary dir removed at stop
    rtc: RtcSettings = field(default_factory=RtcSettings)
    extra: Mapping[str, Any] = field(default_factory=dict)
    # third-party extensions to run, by entry-point name (PAIRROOM_EXTENSIONS=a,b or --extension)
    extensions: tuple[str, ...] = ()
    # every PAIRROOM_EXT_<NAME>_<KEY> variable, without the PAIRROOM_EXT_ prefix; see extension_settings
    extension_env: Mapping[str, str] = field(default_factory=dict)
    # the extension catalog: a local file (trusted as the operator's own) or a TUF repository URL
    extension_catalog: str = ""
    extension_catalog_root: str = ""  # the pinned TUF root.json of a catalog URL
    extension_catalog_cache: str = ""  # where the TUF client keeps trusted metadata (default ~/.cache/pairroom/catalog)

    @property
    def origins(self) -> frozenset[str]:
        return frozenset(o.strip().rstrip("/") for o in self.allowed_origins.split(",") if o.strip())

    def kernel_settings(self) -> KernelSettings:
        settings = KernelSettings(
            pool_size=self.kernel_pool_size,
            idle_shutdown_seconds=self.kernel_idle_seconds,
            run_timeout=self.kernel_run_timeout,
            output_cap_bytes=self.kernel_output_cap,
            unsafe=self.unsafe_kernels,
            cpu_seconds=self.kernel_cpu_seconds,
            memory_bytes=self.kernel_memory_bytes,
            pids=self.kernel_pids,
            file_bytes=self.kernel_file_bytes,
            setup_missing=self.kernel_setup,
        )
        return replace(settings, kernel_venv=Path(self.kernel_venv)) if self.kernel_venv else settings

    def vcs_settings(self) -> VcsSettings:
        return VcsSettings(root=Path(self.git_root) if self.git_root else None, allow_local=self.git_allow_local)

    def cluster_settings(self) -> dict[str, Any]:
        return {
            "heartbeat": self.heartbeat_seconds,
            "dead_after": self.node_dead_after_seconds,
            "anti_entropy": self.anti_entropy_seconds,
            "solo": self.redis is None,  # without a shared broker no other node can hear anything
        }

    def room_settings(self) -> RoomSettings:
        return RoomSettings(
            idle_unload_seconds=self.room_idle_seconds,
            load_timeout=self.room_load_timeout,
            flush_interval=self.flush_interval_ms / 1000,
            flush_max_updates=self.flush_max_updates,
            snapshot_every=self.snapshot_every,
            keepalive_seconds=self.keepalive_seconds,
            shutdown_flush_timeout=self.shutdown_timeout,
            awareness_tick=self.awareness_tick_ms / 1000,
            presence_limits=PresenceLimits(
                entries_per_message=self.presence_entries_per_message,
                clients_per_connection=self.presence_clients_per_connection,
                state_bytes=self.presence_state_bytes,
                recorded_bytes_per_second=self.presence_recorded_bytes_per_second,
                recorded_burst_bytes=max(int(self.presence_recorded_bytes_per_second * 4), self.presence_state_bytes),
            ),
            broadcast_window=self.broadcast_window_ms / 1000,
            stamp_identity=self.secret is not None,
        )

    def extension_settings(self, name: str) -> dict[str, str]:
        """The settings of one enabled extension: ``PAIRROOM_EXT_<NAME>_<KEY>=value`` gives
        ``{"<key>": value}``, keys lower-case. ``<NAME>`` is the name upper-cased with ``-`` and
        ``.`` written as ``_`` (``my-ext`` reads ``PAIRROOM_EXT_MY_EXT_*``). When the prefix of one
        enabled extension starts another's (``my`` and ``my-ext``), a variable belongs to the longest."""
        prefixes = sorted({env_name(n) + "_" for n in (*self.extensions, name)}, key=len, reverse=True)
        own = env_name(name) + "_"
        found: dict[str, str] = {}
        for variable, value in self.extension_env.items():
            owner = next((p for p in prefixes if variable.startswith(p)), None)
            if owner == own and len(variable) > len(own):
                found[variable[len(own) :].lower()] = value
        return found

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then ``PAIRROOM_<FIELD>`` variables, then explicit overrides (CLI flags)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in ("extra", "rtc", "extensions", "extension_env"):
                continue
            raw = environ.get(f"PAIRROOM_{f.name.upper()}")
            if raw is not None:
                default = getattr(cls(), f.name)
                values[f.name] = _convert(f.name, raw, str if default is None else type(default))
        values["rtc"] = RtcSettings.from_env(environ)
        recording = {  # PAIRROOM_RECORDING_<FIELD> travels as extra["recording_<field>"]
            "recording_" + key.removeprefix("PAIRROOM_RECORDING_").lower(): value
            for key, value in environ.items()
            if key.startswith("PAIRROOM_RECORDING_")
        }
        if recording:
            values["extra"] = {**recording, **cls().extra}
        values["extensions"] = parse_names(environ.get("PAIRROOM_EXTENSIONS", ""))
        values["extension_env"] = {
            key.removeprefix(EXT_PREFIX): value for key, value in environ.items() if key.startswith(EXT_PREFIX)
        }
        overrides = {k: v for k, v in overrides.items() if v is not None}
        if "extensions" in overrides:  # --extension flags take the place of PAIRROOM_EXTENSIONS
            overrides["extensions"] = parse_names(",".join(overrides["extensions"]))
        values.update(overrides)
        return replace(cls(), **values)


EXT_PREFIX = "PAIRROOM_EXT_"


def env_name(extension: str) -> str:
    """How an extension's name is spelled in its variables: ``my-ext`` -> ``MY_EXT``."""
    return extension.upper().replace("-", "_").replace(".", "_")


def parse_names(text: str) -> tuple[str, ...]:
    """``"a, b,,a"`` -> ``("a", "b")``: names in order, blanks and repeats dropped."""
    return tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))


def _convert(name: str, raw: str, kind: type) -> Any:
    try:
        if kind is bool:
            return raw.strip().lower() in {"1", "true", "yes", "on"}
        return kind(raw)
    except ValueError as exc:
        raise ValueError(f"PAIRROOM_{name.upper()}={raw!r} is not a valid {kind.__name__}") from exc
