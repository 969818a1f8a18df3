"""The public API for extensions: ``from pairroom.extensions import Extension, Reject``.

See ``docs/extensions.md`` for every hook, its payload and its guarantees. A package makes its
extension available by declaring an entry point in the ``pairroom.extensions`` group (``GROUP``);
the operator enables it by name (``pairroom serve --extension NAME``), and
``pairroom.extension_loader`` finds, imports and configures it.
"""

from .protocol.origins import ClientOrigin, KernelOrigin, LocalOrigin, Origin, PeerOrigin
from .rooms.extension import Change, Connection, Extension, ExtensionRunner, Reject, Supervisor, hooks_of
from .rooms.handles import CapabilityError, MemberView, ReadOnlyArray, ReadOnlyMap, ReadOnlyText, RoomHandle
from .rooms.identity import Principal, Role
from .rooms.owners import SERVER, OwnerRow, plain_value
from .web.auth import authenticate

GROUP = "pairroom.extensions"  # the entry-point group third-party extensions are declared in

__all__ = [
    "GROUP",
    "CapabilityError",
    "MemberView",
    "ReadOnlyArray",
    "ReadOnlyMap",
    "ReadOnlyText",
    "RoomHandle",
    "Change",
    "ClientOrigin",
    "Connection",
    "Extension",
    "ExtensionRunner",
    "KernelOrigin",
    "LocalOrigin",
    "Origin",
    "OwnerRow",
    "PeerOrigin",
    "Principal",
    "Reject",
    "Role",
    "SERVER",
    "Supervisor",
    "authenticate",
    "hooks_of",
    "plain_value",
]
