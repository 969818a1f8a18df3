"""Prometheus metrics of one server (its own registry, so several apps can live in one process).

The counters bumped for every frame (messages and bytes in and out, integrated updates, bus
traffic) are plain integers read at scrape time by ``HotCounters``: a prometheus ``Counter`` takes a
lock on each ``inc``, which on the broadcast path costs more than the write it counts.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from pairroom.protocol.origins import Origin
from pairroom.cluster.bridge import ClusterMetrics
from pairroom.rooms.registry import RegistryMetrics
from pairroom.protocol.bus import Kind


class HotCounters(Collector):
    """Counters kept as plain integers on the hot path and exported when scraped.

    Single-threaded use only (the event loop's thread), which is where every frame is handled."""

    def __init__(self) -> None:
        self.messages_in = 0
        self.bytes_in = 0
        self.messages_out = 0
        self.bytes_out = 0
        self.integrated = 0
        self.bus_published: Tally[tuple[str, str]] = Tally()  # (kind, ok)
        self.bus_received: Tally[str] = Tally()  # kind
        self.cluster_dropped: Tally[str] = Tally()  # reason

    def collect(self) -> Iterator[CounterMetricFamily]:
        for name, help_text, value in (
            ("pairroom_messages_received", "Frames received", self.messages_in),
            ("pairroom_messages_sent", "Frames sent", self.messages_out),
            ("pairroom_bytes_received", "Bytes received in frames", self.bytes_in),
            ("pairroom_bytes_sent", "Bytes sent in frames", self.bytes_out),
            ("pairroom_updates_integrated", "Document updates that changed a room", self.integrated),
        ):
            yield CounterMetricFamily(name, help_text, value=value)
        published = CounterMetricFamily(
            "pairroom_bus_published", "Messages published to other nodes", labels=["kind", "ok"]
        )
        for (kind, ok), count in sorted(self.bus_published.items()):
            published.add_metric([kind, ok], count)
        yield published
        received = CounterMetricFamily(
            "pairroom_bus_received", "Messages received from other nodes", labels=["kind"]
        )
        for kind, count in sorted(self.bus_received.items()):
            received.add_metric([kind], count)
        yield received
        dropped = CounterMetricFamily(
            "pairroom_cluster_dropped",
            "Node-to-node messages not delivered (the state-vector exchange heals them), by reason",
            labels=["reason"],
        )
        for reason, count in sorted(self.cluster_dropped.items()):
            dropped.add_metric([reason], count)
        yield dropped


class Metrics(RegistryMetrics, ClusterMetrics):
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.hot = HotCounters()
        r.register(self.hot)
        self.connections = Gauge("pairroom_connections", "Open websocket connections", registry=r)
        self.rooms_loaded = Gauge("pairroom_rooms_loaded", "Rooms held in memory", registry=r)
        self.stored_updates = Counter("pairroom_updates_stored", "Updates written to storage", registry=r)
        self.flush_seconds = Histogram(
            "pairroom_flush_seconds",
            "Time to write one room's batch of updates",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.flush_failures = Counter("pairroom_flush_failures", "Failed batch writes", registry=r)
        self.slow_client_disconnects = Counter(
            "pairroom_slow_client_disconnects", "Members closed for outbound queue overflow", registry=r
        )
        self.client_errors = Counter(
            "pairroom_client_errors", "Connections closed for bad input", ["code"], registry=r
        )
        self.updates_dropped = Counter(
            "pairroom_updates_dropped", "Updates from members without write permission", registry=r
        )
        self.guard_reverts = Counter(
            "pairroom_guard_reverts",
            "Client writes the document's owner table does not allow, reverted by the server",
            ["root", "key"],
            registry=r,
        )
        self.room_load_failures = Counter(
            "pairroom_room_load_failures", "Joins refused because a room failed to load", registry=r
        )
        self.extension_errors = Counter(
            "pairroom_extension_errors",
            "Extension hooks that raised or timed out (the room carried on)",
            ["extension", "hook"],
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def received_frame(self, size: int) -> None:
        hot = self.hot
        hot.messages_in += 1
        hot.bytes_in += size

    def sent(self, size: int) -> None:
        hot = self.hot
        hot.messages_out += 1
        hot.bytes_out += size

    # RegistryMetrics
    def room_loaded(self, count: int) -> None:
        self.rooms_loaded.set(count)

    def update_integrated(self, origin: Origin, size: int) -> None:
        self.hot.integrated += 1

    def updates_stored(self, count: int, seconds: float) -> None:
        self.stored_updates.inc(count)
        self.flush_seconds.observe(seconds)

    def extension_error(self, extension: str, hook: str) -> None:
        self.extension_errors.labels(extension or "unnamed", hook).inc()

    def flush_failed(self) -> None:
        self.flush_failures.inc()

    def update_dropped(self) -> None:
        self.updates_dropped.inc()

    def write_reverted(self, root: str, key: str | None) -> None:
        # Map keys a client invents (run ids, paths) would grow the label set without bound.
        known = {"title", "createdAt", "roles", "policy", "kernel"}
        self.guard_reverts.labels(root[:32], key if key in known else "*" if key else "").inc()

    # ClusterMetrics
    def published(self, kind: Kind, ok: bool) -> None:
        self.hot.bus_published[(kind.name.lower(), "true" if ok else "false")] += 1

    def received(self, kind: Kind) -> None:
        self.hot.bus_received[kind.name.lower()] += 1

    def dropped(self, reason: str) -> None:
        self.hot.cluster_dropped[reason] += 1
