"""What one running server holds: its settings, storage, rooms and metrics."""

from __future__ import annotations

from dataclasses import dataclass

from pairroom.storage.store import Store
from pairroom.cluster.bridge import Cluster
from pairroom.rooms.registry import RoomRegistry
from pairroom.config import Settings
from pairroom.web.metrics import Metrics


@dataclass(slots=True)
class Hub:
    settings: Settings
    store: Store
    registry: RoomRegistry
    metrics: Metrics
    cluster: Cluster
