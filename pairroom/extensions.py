"""The public API for extensions: ``from pairroom.extensions import Extension, Reject``.

See ``docs/extensions.md`` for every hook, its payload and its guarantees.
"""

from .rooms.identity import Principal, Role
from .protocol.origins import ClientOrigin, KernelOrigin, LocalOrigin, Origin, PeerOrigin
from .rooms.extension import Change, Connection, Extension, ExtensionRunner, Reject, Supervisor

__all__ = [
    "Change",
    "ClientOrigin",
    "Connection",
    "Extension",
    "ExtensionRunner",
    "KernelOrigin",
    "LocalOrigin",
    "Origin",
    "PeerOrigin",
    "Principal",
    "Reject",
    "Role",
    "Supervisor",
]
