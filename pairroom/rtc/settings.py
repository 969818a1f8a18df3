"""The rtc settings, with no imports from the server package, so ``server.config`` can hold them.

``RtcSettings`` goes into the server's ``Settings``; ``CallPolicy`` is what a room's call runs with.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from pairroom.rtc.limits import Limits


class Speak(str, enum.Enum):
    EVERYONE = "everyone"
    OWNERS = "owners"


@dataclass(frozen=True, slots=True)
class CallPolicy:
    """A room's call settings: who may speak, and whether the server records the call's audio."""

    speak: Speak = Speak.EVERYONE
    record: bool = False


@dataclass(frozen=True, slots=True)
class RtcSettings:
    stun_urls: tuple[str, ...] = ()
    turn_urls: tuple[str, ...] = ()
    turn_secret: str | None = None  # coturn's static-auth-secret
    turn_ttl_seconds: int = 3600
    limits: Limits = field(default_factory=Limits)
    speak: str = "everyone"  # default speaking policy of a room's call: everyone | owners
    owners_speak_rooms: frozenset[str] = frozenset()  # rooms whose calls use ``owners``
    record_rooms: frozenset[str] = frozenset()  # rooms whose call audio the server records
    record_all: bool = False
    recording_dir: str = "./recordings"
    relay_max_listeners: int = 30  # measured on 2 shared cores: docs/rtc.md
    media_addresses: tuple[str, ...] = ()  # host candidates of the server's own peers (empty: all)

    def policy_for(self, room: str) -> CallPolicy:
        speak = Speak.OWNERS if room in self.owners_speak_rooms else Speak(self.speak)
        return CallPolicy(speak=speak, record=self.record_all or room in self.record_rooms)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> RtcSettings:
        """``PAIRROOM_RTC_<FIELD>`` from the variables ``config.py`` read; lists and sets are
        comma-separated."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(f"PAIRROOM_RTC_{f.name.upper()}")
            if raw is None or f.name == "limits":
                continue
            default = getattr(cls(), f.name)
            if isinstance(default, (tuple, frozenset)):
                values[f.name] = type(default)(x.strip() for x in raw.split(",") if x.strip())
            elif isinstance(default, bool):
                values[f.name] = raw.strip().lower() in {"1", "true", "yes", "on"}
            elif isinstance(default, int):
                values[f.name] = int(raw)
            else:
                values[f.name] = raw
        return replace(cls(), **values)
