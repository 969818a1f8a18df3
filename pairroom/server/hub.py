"""What one running server holds: its settings, storage, rooms and metrics."""

from __future__ import annotations

from dataclasses import dataclass

from ..recorder.store import Store
from ..sessions.cluster import Cluster
from ..sessions.registry import RoomRegistry
from .config import Settings
from .metrics import Metrics


@dataclass(slots=True)
class Hub:
    settings: Settings
    store: Store
    registry: RoomRegistry
    metrics: Metrics
    cluster: Cluster
