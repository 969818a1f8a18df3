"""The webhook extension: room events as signed JSON POSTs, delivered in the background.

The hooks run on the room's path, so they only put an event in a bounded queue and return: a slow
or dead receiver never slows a room. One delivery loop, run under the node's supervisor, POSTs the
events in order, retrying each with exponential backoff; when the queue is full a new event is
dropped, counted (``pairroom_webhook_dropped_total``) and logged. At shutdown the pending change
events are sent and the queue gets ``drain_ms`` to empty.

Each event is posted by the node it happened on: joins and leaves by the member's node, changes by
the node the change came in on (updates relayed from other nodes are skipped), finished runs by the
node running the kernel (only the kernel's own writes to ``runs`` count, so a client cannot forge one).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, fields
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import httpx
from prometheus_client import Counter, Gauge
from pycrdt import Map

from pairroom.extensions import Change, Extension, KernelOrigin, PeerOrigin, ReadOnlyMap

from .signing import HEADER, sign

log = logging.getLogger("pairroom.ext.webhook")

try:
    VERSION = version("pairroom-webhook")
except PackageNotFoundError:  # imported from a source tree without being installed
    VERSION = "0"

FINISHED = frozenset({"ok", "error", "interrupted", "failed"})  # docs/doc-schema.md, runs.status
RUN_FIELDS = ("status", "by", "path", "order", "queuedAt", "startedAt", "endedAt")


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    """From ``PAIRROOM_EXT_WEBHOOK_<KEY>``; ``url`` and ``secret`` are required."""

    url: str
    secret: str
    debounce_ms: float = 2000.0  # a room's changes are posted once it has been quiet this long
    max_wait_ms: float = 10000.0  # ... or at the latest this long after its first unposted change
    queue: int = 1000  # events waiting for delivery; past it new events are dropped
    attempts: int = 6  # tries per event, the first included
    backoff_ms: float = 500.0  # wait before the first retry, doubled each time
    max_backoff_ms: float = 30000.0
    timeout_ms: float = 10000.0  # per request
    drain_ms: float = 5000.0  # at shutdown, how long the queue may take to empty

    @classmethod
    def parse(cls, raw: Mapping[str, str]) -> WebhookSettings:
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise ValueError(
                f"unknown webhook settings {', '.join('PAIRROOM_EXT_WEBHOOK_' + k.upper() for k in unknown)}"
                f" (known: {', '.join(known)})"
            )
        missing = [name for name in ("url", "secret") if not raw.get(name)]
        if missing:
            raise ValueError(f"the webhook needs {' and '.join('PAIRROOM_EXT_WEBHOOK_' + m.upper() for m in missing)}")
        if not raw["url"].startswith(("http://", "https://")):
            raise ValueError(f"PAIRROOM_EXT_WEBHOOK_URL={raw['url']!r} is not an http(s) URL")
        values: dict[str, Any] = {}
        for name, value in raw.items():
            kind = type(known[name].default) if name not in ("url", "secret") else str
            try:
                values[name] = kind(value)
            except ValueError:
                raise ValueError(f"PAIRROOM_EXT_WEBHOOK_{name.upper()}={value!r} is not a {kind.__name__}") from None
            if kind is not str and values[name] < (1 if name in ("queue", "attempts") else 0):
                raise ValueError(f"PAIRROOM_EXT_WEBHOOK_{name.upper()}={value!r} is out of range")
        return cls(**values)


@dataclass(slots=True)
class _Changes:
    """A room's changes not posted yet."""

    first: float  # loop time of the first
    last: float  # loop time of the last
    first_at: int  # wall clock (ms) of the first
    updates: int = 0
    bytes: int = 0
    authors: set[str] = field(default_factory=set)


class _Metrics:
    def __init__(self, registry: Any, queue: asyncio.Queue[dict[str, Any]]) -> None:
        def counter(name: str, text: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(f"pairroom_webhook_{name}", text, labels, registry=registry)

        self.events = counter("events", "Events accepted for delivery", ("type",))
        self.delivered = counter("delivered", "Events the receiver accepted (2xx)")
        self.retries = counter("retries", "Delivery attempts that will be retried")
        self.failed = counter("failed", "Events given up after the last attempt")
        self.dropped = counter("dropped", "Events dropped because the queue was full")
        queued = Gauge("pairroom_webhook_queued", "Events waiting for delivery", registry=registry)
        queued.set_function(queue.qsize)


class Webhook(Extension):
    """POSTs ``room.change`` (debounced), ``room.join``, ``room.leave`` and ``run.finished`` events."""

    name = "webhook"
    version = VERSION
    priority = 300  # after the built-ins: it reports what they stored and corrected

    def __init__(self) -> None:
        self.config: WebhookSettings | None = None  # set with ``settings``
        self.node_id = ""
        self._settings: dict[str, str] = {}
        self._queue: asyncio.Queue[dict[str, Any]] | None = None
        self._metrics: _Metrics | None = None
        self._client: httpx.AsyncClient | None = None
        self._changes: dict[str, _Changes] = {}
        self._runs_to_check: dict[tuple[str, str], Any] = {}  # (room, run id) -> room
        self._reported_runs: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._dropped_logged_at = 0.0

    @property  # type: ignore[override]
    def settings(self) -> Mapping[str, str]:
        return self._settings

    @settings.setter
    def settings(self, raw: Mapping[str, str]) -> None:
        """Checked when the loader hands them over, so bad settings stop start-up with a clear message."""
        self.config = WebhookSettings.parse(raw)
        self._settings = dict(raw)

    # -- the node -------------------------------------------------------------------------------

    def lifespan(self, node: Any) -> contextlib.AbstractAsyncContextManager[None]:
        return self._run(node)

    @contextlib.asynccontextmanager
    async def _run(self, node: Any) -> AsyncIterator[None]:
        config = self.config
        if config is None:
            raise RuntimeError("the webhook has no settings (PAIRROOM_EXT_WEBHOOK_URL, PAIRROOM_EXT_WEBHOOK_SECRET)")
        self.node_id = node.node_id
        self._queue = asyncio.Queue(config.queue)
        self._metrics = _Metrics(node.metrics.registry, self._queue)
        async with httpx.AsyncClient(timeout=config.timeout_ms / 1000) as client:
            self._client = client
            task = node.supervisor.spawn("webhook", self._deliver_forever, restart=True)
            log.info("webhook delivering", extra={"url": config.url, "queue": config.queue})
            try:
                yield
            finally:
                for room in list(self._changes):
                    self._post_changes(room)
                try:
                    async with asyncio.timeout(config.drain_ms / 1000):
                        await self._queue.join()
                except TimeoutError:
                    log.warning("webhook events left undelivered at shutdown", extra={"events": self._queue.qsize()})
                self._queue = None  # hooks called from here on are too late
                await node.supervisor.stop(task, 1.0)

    # -- hooks: cheap, never blocking -------------------------------------------------------------

    def on_join(self, room: Any, member: Any) -> None:
        self._enqueue("room.join", room.name, {"user": _person(member), "connection": member.id})

    def on_leave(self, room: Any, member: Any) -> None:
        self._enqueue("room.leave", room.name, {"user": _person(member), "connection": member.id})

    def on_change(self, change: Change) -> None:
        if self._queue is None or isinstance(change.origin, PeerOrigin):
            return  # a peer's update is posted by the node it came in on
        loop = asyncio.get_running_loop()
        now = loop.time()
        name = change.room.name
        pending = self._changes.get(name)
        if pending is None:
            pending = self._changes[name] = _Changes(now, now, _now_ms())
            loop.call_later(self._debounce, self._changes_due, name)
        pending.last = now
        pending.updates += 1
        pending.bytes += len(change.update)
        if change.author is not None:
            pending.authors.add(change.author.user_id)
        if isinstance(change.origin, KernelOrigin):
            # The document cannot be read inside its own transaction: look at the run right after.
            if not self._runs_to_check:
                loop.call_soon(self._check_runs)
            self._runs_to_check[(name, change.origin.run_id)] = change.room

    def on_unload(self, room: Any) -> None:
        if room.name in self._changes:
            self._post_changes(room.name)

    # -- change debouncing ----------------------------------------------------------------------

    @property
    def _debounce(self) -> float:
        assert self.config is not None
        return self.config.debounce_ms / 1000

    def _changes_due(self, name: str) -> None:
        """Timer: post the room's changes if it has been quiet long enough, or waited too long."""
        pending = self._changes.get(name)
        if pending is None or self.config is None:
            return
        now = asyncio.get_running_loop().time()
        quiet_at = pending.last + self._debounce
        latest = pending.first + self.config.max_wait_ms / 1000
        if now >= quiet_at or now >= latest:
            self._post_changes(name)
        else:
            asyncio.get_running_loop().call_at(min(quiet_at, latest), self._changes_due, name)

    def _post_changes(self, name: str) -> None:
        pending = self._changes.pop(name)
        self._enqueue(
            "room.change",
            name,
            {
                "updates": pending.updates,
                "bytes": pending.bytes,
                "authors": sorted(pending.authors),
                "firstAt": pending.first_at,
            },
        )

    # -- finished runs --------------------------------------------------------------------------

    def _check_runs(self) -> None:
        checks, self._runs_to_check = self._runs_to_check, {}
        for (name, run_id), room in checks.items():
            if (name, run_id) in self._reported_runs:
                continue
            run = room.doc.get("runs", type=Map).get(run_id)
            # without doc.write the room is a read-only handle: its maps are ReadOnlyMap
            if not isinstance(run, (Map, ReadOnlyMap)) or run.get("status") not in FINISHED:
                continue
            self._reported_runs[(name, run_id)] = None
            while len(self._reported_runs) > 10_000:
                self._reported_runs.popitem(last=False)
            self._enqueue("run.finished", name, {"run": run_id, **{key: run.get(key) for key in RUN_FIELDS}})

    # -- delivery -------------------------------------------------------------------------------

    def _enqueue(self, kind: str, room: str, data: dict[str, Any]) -> None:
        if self._queue is None or self._metrics is None:
            return
        event = {
            "id": secrets.token_hex(16),
            "type": kind,
            "room": room,
            "node": self.node_id,
            "at": _now_ms(),
            "data": data,
        }
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self._metrics.dropped.inc()
            now = time.monotonic()
            if now - self._dropped_logged_at >= 5.0:  # one line per 5 s, the counter has the total
                self._dropped_logged_at = now
                log.warning(
                    "webhook queue full, event dropped",
                    extra={"type": kind, "room": room, "queue": self._queue.maxsize},
                )
            return
        self._metrics.events.labels(kind).inc()

    async def _deliver_forever(self) -> None:
        while True:
            queue = self._queue
            if queue is None:
                return
            event = await queue.get()
            try:
                await self.deliver(event)
            except Exception:
                log.exception("webhook delivery raised", extra={"id": event["id"], "type": event["type"]})
                if self._metrics is not None:
                    self._metrics.failed.inc()
            finally:
                queue.task_done()

    async def deliver(self, event: dict[str, Any]) -> bool:
        """POST one event, retrying with backoff; True once the receiver answered 2xx."""
        config, client, metrics = self.config, self._client, self._metrics
        assert config is not None and client is not None and metrics is not None
        body = json.dumps(event, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            HEADER: sign(config.secret, body),
            "X-Pairroom-Event": event["type"],
            "X-Pairroom-Delivery": event["id"],
            "User-Agent": f"pairroom-webhook/{VERSION}",
        }
        for attempt in range(1, config.attempts + 1):
            wait = min(config.max_backoff_ms, config.backoff_ms * 2 ** (attempt - 1)) / 1000
            wait *= random.uniform(0.5, 1.0)  # receivers coming back are not hit by every node at once
            try:
                response = await client.post(config.url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.is_success:
                    metrics.delivered.inc()
                    return True
                problem = f"HTTP {response.status_code}"
                if response.status_code < 500 and response.status_code not in (408, 429):
                    log.error(
                        "webhook receiver refused the event",
                        extra={"id": event["id"], "type": event["type"], "status": response.status_code},
                    )
                    metrics.failed.inc()
                    return False
                retry_after = response.headers.get("Retry-After", "")
                if retry_after.isdigit():
                    wait = min(config.max_backoff_ms / 1000, float(retry_after))
            if attempt == config.attempts:
                break
            metrics.retries.inc()
            log.warning(
                "webhook delivery failed, retrying",
                extra={"id": event["id"], "attempt": attempt, "problem": problem, "retry_in": round(wait, 3)},
            )
            await asyncio.sleep(wait)
        log.error(
            "webhook delivery gave up",
            extra={"id": event["id"], "type": event["type"], "attempts": config.attempts, "problem": problem},
        )
        metrics.failed.inc()
        return False


def _person(member: Any) -> dict[str, Any]:
    principal = member.principal
    if principal is None:
        return {"id": None, "name": None, "role": member.role.value}
    return {"id": principal.user_id, "name": principal.name, "role": member.role.value}


def _now_ms() -> int:
    return int(time.time() * 1000)
