"""Where a change came from, as tagged values passed along with every update.

Storage records the origin of each logged update; later the cluster bridge skips ``PeerOrigin`` (to
avoid echoes) and the recorder records them all.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ClientOrigin:
    """A websocket client of this node."""

    connection_id: str
    user: str | None = None

    def label(self) -> str:
        return f"client:{self.connection_id}" + (f":{self.user}" if self.user else "")


@dataclass(frozen=True, slots=True)
class PeerOrigin:
    """Another pairroom node, relayed through the broker."""

    node_id: str

    def label(self) -> str:
        return f"peer:{self.node_id}"


@dataclass(frozen=True, slots=True)
class LocalOrigin:
    """The server itself (restores, imports, maintenance)."""

    reason: str

    def label(self) -> str:
        return f"local:{self.reason}"


@dataclass(frozen=True, slots=True)
class KernelOrigin:
    """A room's kernel writing runs and outputs into the document."""

    run_id: str

    def label(self) -> str:
        return f"kernel:{self.run_id}"


Origin = ClientOrigin | PeerOrigin | LocalOrigin | KernelOrigin
