"""Server settings: one frozen dataclass, filled from command-line flags and ``PAIRROOM_*`` variables.

Nothing reads the environment at import time; ``Settings.from_env`` is called by the CLI (and tests
build ``Settings`` directly).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping

from ..sessions.registry import RoomSettings

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    db: str = "sqlite:///./pairroom.db"
    log_level: str = "info"
    log_format: str = "json"  # json | text
    max_message_bytes: int = 16 * MiB
    max_room_name: int = 255
    max_queue_messages: int = 2048
    max_queue_bytes: int = 64 * MiB
    room_idle_seconds: float = 30.0
    room_load_timeout: float = 10.0
    flush_interval_ms: float = 50.0
    flush_max_updates: int = 200
    snapshot_every: int = 500
    keepalive_seconds: float = 15.0
    shutdown_timeout: float = 10.0
    ws_impl: str = "websockets-sansio"
    extra: Mapping[str, Any] = field(default_factory=dict)

    def room_settings(self) -> RoomSettings:
        return RoomSettings(
            idle_unload_seconds=self.room_idle_seconds,
            load_timeout=self.room_load_timeout,
            flush_interval=self.flush_interval_ms / 1000,
            flush_max_updates=self.flush_max_updates,
            snapshot_every=self.snapshot_every,
            keepalive_seconds=self.keepalive_seconds,
            shutdown_flush_timeout=self.shutdown_timeout,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then ``PAIRROOM_<FIELD>`` variables, then explicit overrides (CLI flags)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name == "extra":
                continue
            raw = environ.get(f"PAIRROOM_{f.name.upper()}")
            if raw is not None:
                values[f.name] = _convert(f.name, raw, type(getattr(cls(), f.name)))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return replace(cls(), **values)


def _convert(name: str, raw: str, kind: type) -> Any:
    try:
        if kind is bool:
            return raw.strip().lower() in {"1", "true", "yes", "on"}
        return kind(raw)
    except ValueError as exc:
        raise ValueError(f"PAIRROOM_{name.upper()}={raw!r} is not a valid {kind.__name__}") from exc
