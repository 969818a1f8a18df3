"""What both Redis brokers keep in Redis besides pub/sub: the room holders sets and short leases,
written once over each broker's own ``_command`` (which routes, times out and reports faults)."""

from __future__ import annotations

from typing import Any


def describe(exc: BaseException) -> str:
    """An error with Redis's own text (``repr`` of a redis-py error can be just its class)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class SharedFacts:
    """Sets and leases over ``_command``; every key of one room shares a slot (``protocol/keys.py``)."""

    async def _command(self, *args: Any) -> Any:
        raise NotImplementedError

    async def add_to_set(self, key: str, member: str) -> None:
        await self._command("SADD", key, member)

    async def remove_from_set(self, key: str, member: str) -> None:
        await self._command("SREM", key, member)

    async def set_members(self, key: str) -> set[str]:
        return {_text(m) for m in await self._command("SMEMBERS", key)}

    async def try_lease(self, key: str, holder: str, ttl: float) -> bool:
        """Take the lease for ``ttl`` seconds if nobody else holds it; the holder renews it."""
        millis = max(1, int(ttl * 1000))
        if await self._command("SET", key, holder, "NX", "PX", millis):
            return True
        current = await self._command("GET", key)
        if current is not None and _text(current) == holder:
            await self._command("PEXPIRE", key, millis)
            return True
        return False

    async def lease_holder(self, key: str) -> str | None:
        current = await self._command("GET", key)
        return None if current is None else _text(current)
