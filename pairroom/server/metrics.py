"""Prometheus metrics of one server (its own registry, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ..crdt.origins import Origin
from ..sessions.cluster import ClusterMetrics
from ..sessions.registry import RegistryMetrics
from ..sessions.wire import Kind


class Metrics(RegistryMetrics, ClusterMetrics):
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.connections = Gauge("pairroom_connections", "Open websocket connections", registry=r)
        self.rooms_loaded = Gauge("pairroom_rooms_loaded", "Rooms held in memory", registry=r)
        self.messages_in = Counter("pairroom_messages_received", "Frames received", registry=r)
        self.messages_out = Counter("pairroom_messages_sent", "Frames sent", registry=r)
        self.bytes_in = Counter("pairroom_bytes_received", "Bytes received in frames", registry=r)
        self.bytes_out = Counter("pairroom_bytes_sent", "Bytes sent in frames", registry=r)
        self.integrated_updates = Counter(
            "pairroom_updates_integrated", "Document updates that changed a room", registry=r
        )
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
        self.room_load_failures = Counter(
            "pairroom_room_load_failures", "Joins refused because a room failed to load", registry=r
        )

        self.bus_published = Counter(
            "pairroom_bus_published", "Messages published to other nodes", ["kind", "ok"], registry=r
        )
        self.bus_received = Counter(
            "pairroom_bus_received", "Messages received from other nodes", ["kind"], registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def sent(self, size: int) -> None:
        self.messages_out.inc()
        self.bytes_out.inc(size)

    # RegistryMetrics
    def room_loaded(self, count: int) -> None:
        self.rooms_loaded.set(count)

    def update_integrated(self, origin: Origin, size: int) -> None:
        self.integrated_updates.inc()

    def updates_stored(self, count: int, seconds: float) -> None:
        self.stored_updates.inc(count)
        self.flush_seconds.observe(seconds)

    def flush_failed(self) -> None:
        self.flush_failures.inc()

    def update_dropped(self) -> None:
        self.updates_dropped.inc()

    # ClusterMetrics
    def published(self, kind: Kind, ok: bool) -> None:
        self.bus_published.labels(kind=kind.name.lower(), ok=str(ok).lower()).inc()

    def received(self, kind: Kind) -> None:
        self.bus_received.labels(kind=kind.name.lower()).inc()
