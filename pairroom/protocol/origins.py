"""Where a change came from, as tagged values passed along with every update.

Storage records the origin of each logged update; the cluster bridge skips ``PeerOrigin`` (to avoid
echoes) and the recorder records them all.

An update typed on one node reaches the others as a ``PeerOrigin`` that still names its author (the
origin as the first node knew it: a client and its user, the server, a kernel), so every node logs it
under the same label and the log names the person who typed, whichever node stores it first.
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


AUTHOR_KINDS = ("client", "local", "kernel")


@dataclass(frozen=True, slots=True)
class PeerOrigin:
    """Another pairroom node, relayed through the broker, and who made the update there.

    ``kind`` and ``ref`` are the origin as the node that integrated the update first knew it:
    ``"client"`` and the connection id, ``"local"`` and the reason, ``"kernel"`` and the run id.
    ``user_id``, ``user_name``, ``user_color`` and ``user_role`` are the person behind a client as
    their node knew them (``""`` when not a client; ``user_id`` is also ``""`` for a client of a node
    in open mode). ``kind`` is ``""`` when no single author is known: what a state-vector exchange
    sends is the difference between two copies, possibly many people's edits merged.
    """

    node_id: str
    kind: str = ""
    ref: str = ""
    user_id: str = ""
    user_name: str = ""
    user_color: str = ""
    user_role: str = ""

    def first_origin(self) -> ClientOrigin | LocalOrigin | KernelOrigin | None:
        """The origin the first node logged this update under, or None when unknown."""
        if self.kind == "client":
            return ClientOrigin(self.ref, self.user_id or None)
        if self.kind == "local":
            return LocalOrigin(self.ref)
        if self.kind == "kernel":
            return KernelOrigin(self.ref)
        return None

    def label(self) -> str:
        """The very label the first node logs (so the log names the author), else ``peer:<node>``."""
        first = self.first_origin()
        return first.label() if first is not None else f"peer:{self.node_id}"


Origin = ClientOrigin | PeerOrigin | LocalOrigin | KernelOrigin


def peer_origin(node_id: str, origin: Origin, user_name: str = "", user_color: str = "", user_role: str = "") -> PeerOrigin:
    """How ``origin``, integrated first on this node, is known to a peer node ``node_id`` hears
    it from (a client's name, color and role come from its member). A peer's update relayed on
    keeps its first author."""
    if isinstance(origin, ClientOrigin):
        return PeerOrigin(node_id, "client", origin.connection_id, origin.user or "", user_name, user_color, user_role)
    if isinstance(origin, LocalOrigin):
        return PeerOrigin(node_id, "local", origin.reason)
    if isinstance(origin, KernelOrigin):
        return PeerOrigin(node_id, "kernel", origin.run_id)
    return PeerOrigin(
        node_id, origin.kind, origin.ref, origin.user_id, origin.user_name, origin.user_color, origin.user_role
    )
