"""What one running node holds: its settings, storage, rooms, metrics, extensions and supervisor.

It is the ``node`` every extension's ``lifespan(node)`` receives."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pairroom.cluster.bridge import Cluster
from pairroom.rooms.extension import ExtensionRunner, Supervisor
from pairroom.rooms.registry import RoomRegistry
from pairroom.storage.store import Store
from pairroom.web.metrics import Metrics

if TYPE_CHECKING:  # the settings hold every feature's; the web kit only reads them
    from pairroom.config import Settings


@dataclass(slots=True)
class Hub:
    settings: Settings
    store: Store
    registry: RoomRegistry
    metrics: Metrics
    cluster: Cluster
    supervisor: Supervisor = field(default_factory=Supervisor)
    extensions: ExtensionRunner = field(default_factory=lambda: ExtensionRunner(()))
    state: Any = None  # the app's ``state``, where features keep what their routes need
    node_id: str = ""
