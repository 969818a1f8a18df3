"""Who may create rooms through the lobby (``POST /api/rooms``), how often, and when a room exists.

Open mode (no secret): anyone is an editor of any room anyway; creating one only names it.

With a secret the lobby hands out an owner token, so creating is a privilege:

- by default it needs a **creator token** (``pairroom token --creator``; the lobby page takes it from
  its link, ``/?creator=<token>``, and sends it as ``Authorization: Bearer``). A creator token names
  no room: it opens no room's door, it only lets its holder create rooms.
- ``--open-lobby`` lets anyone create rooms, limited per client address to ``--lobby-rooms-per-minute``
  (a token bucket: that many at once, then that many a minute), so one client cannot mint 1,000
  rooms in seconds.

**A room exists** (and the lobby answers 409 instead of an owner token) when it is loaded on this
node (someone is in it, or was a moment ago), has members, has any stored update, or has content.
People who joined a room by its name but have not typed yet still own it.

**Identity.** A created room gets an epoch in ``meta.epoch`` (random, minted once) and every token the
lobby mints for it carries it as the ``epoch`` claim, so a room deleted and created again under the
same name has a different epoch than the old tokens.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from pairroom.web.auth import ALGORITHM, pyjwt

CREATOR_SCOPE = "create-rooms"


class NotCreator(Exception):
    """The request carries no valid creator token (a 401 with the reason)."""


def mint_creator(secret: str, name: str, *, ttl_seconds: float = 30 * 24 * 3600, now: float | None = None) -> str:
    """A token that lets its holder create rooms in the lobby, and nothing else."""
    issued = int(now if now is not None else time.time())
    claims = {
        "sub": "creator-" + secrets.token_hex(6),
        "scope": CREATOR_SCOPE,
        "room": "",  # no room's door takes it: room names are never empty
        "role": "viewer",
        "name": name,
        "iat": issued,
        "exp": issued + int(ttl_seconds),
    }
    return pyjwt().encode(claims, secret, algorithm=ALGORITHM)  # type: ignore[no-any-return]


def verify_creator(secret: str, token: str | None) -> dict[str, Any]:
    """The claims of a valid creator token; raises NotCreator with the reason."""
    if not token:
        raise NotCreator("creating rooms on this server needs a creator token (pairroom token --creator)")
    jwt = pyjwt()
    try:
        claims = jwt.decode(token, secret, algorithms=[ALGORITHM], options={"require": ["exp", "sub"]})
    except jwt.ExpiredSignatureError as exc:
        raise NotCreator("creator token expired") from exc
    except jwt.InvalidTokenError as exc:
        raise NotCreator(f"invalid creator token: {exc}") from exc
    if claims.get("scope") != CREATOR_SCOPE:
        raise NotCreator("this token is for a room, not a creator token (pairroom token --creator)")
    return claims  # type: ignore[no-any-return]


class CreationLimiter:
    """Rooms created per client address: a token bucket of ``per_minute`` rooms, as many at once.

    Buckets of addresses that are full again are dropped, so the table stays as large as the set
    of addresses that created rooms in the last minute (bounded by ``max_addresses`` regardless)."""

    def __init__(self, per_minute: float, max_addresses: int = 100_000) -> None:
        self.per_minute = per_minute
        self.max_addresses = max_addresses
        self.buckets: dict[str, tuple[float, float]] = {}  # address -> (tokens, at)

    def take(self, address: str, now: float | None = None) -> float:
        """0 if ``address`` may create a room now, else the seconds until it may."""
        now = time.monotonic() if now is None else now
        rate = self.per_minute / 60.0
        burst = max(1.0, self.per_minute)
        tokens, at = self.buckets.get(address, (burst, now))
        tokens = min(burst, tokens + (now - at) * rate)
        if tokens < 1.0:
            self.buckets[address] = (tokens, now)
            return (1.0 - tokens) / rate if rate > 0 else float("inf")
        self.buckets[address] = (tokens - 1.0, now)
        if len(self.buckets) > self.max_addresses:
            self._forget_full(now, rate, burst)
        return 0.0

    def _forget_full(self, now: float, rate: float, burst: float) -> None:
        full = [a for a, (tokens, at) in self.buckets.items() if tokens + (now - at) * rate >= burst]
        for address in full:
            del self.buckets[address]
        while len(self.buckets) > self.max_addresses:  # every address is busy: drop the oldest
            del self.buckets[next(iter(self.buckets))]


def new_epoch() -> str:
    return secrets.token_urlsafe(9)
