"""What an extension that did not ask for every capability is handed instead of the room or the node.

The runner (``ExtensionRunner``) gives an extension whose declared capabilities lack ``doc.read`` or
``doc.write`` these handles in its hooks, in place of the ``Room``, its ``Member``s and the node:

- ``RoomHandle``: the room's name, members (id, principal, role) and ``role_of``; its ``doc`` is a
  read-only view with ``doc.read`` and refused without it; ``local_change`` needs ``doc.write``;
- ``ReadOnlyMap``, ``ReadOnlyArray``, ``ReadOnlyText``: the document's shared types, reading only;
  anything not a read (a write, or the raw ``doc`` behind a type) is refused;
- ``NodeHandle``: the node an extension's ``lifespan`` receives: ``node_id``, ``metrics``,
  ``supervisor`` and ``record`` (an event on a room's timeline, with ``doc.write``); the rooms (``registry``, ``store``, ``cluster``) need ``doc.read`` and ``doc.write``,
  ``state`` (where the kernels live) needs ``kernel``.

A refusal raises ``CapabilityError``, logged at ERROR and kept by the runner for
``GET /api/extensions``. This is a guard against mistakes and a statement of intent, not a sandbox:
the extension's Python runs in the server's process with its rights and could reach around a handle
(``docs/extensions.md``, "Capabilities").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pycrdt import Array, Map, Text

from .identity import Principal, Role

if TYPE_CHECKING:
    from .member import Member
    from .room import Room

Refuse = Callable[[str, str], Exception]  # (capability, what was tried) -> the error to raise


class CapabilityError(PermissionError):
    """An extension tried something its declared capabilities do not allow."""


@dataclass(frozen=True, slots=True)
class MemberView:
    """A member as a restricted extension sees it: who, not the connection itself."""

    id: str
    principal: Principal | None
    role: Role


def member_view(member: Member) -> MemberView:
    return MemberView(member.id, member.principal, member.role)


def read_only(value: Any, refuse: Refuse) -> Any:
    """A shared type wrapped for reading; plain values as they are."""
    if isinstance(value, Map):
        return ReadOnlyMap(value, refuse)
    if isinstance(value, Array):
        return ReadOnlyArray(value, refuse)
    if isinstance(value, Text):
        return ReadOnlyText(value, refuse)
    if hasattr(value, "integrated") or hasattr(value, "doc"):  # another shared type: its JSON only
        return value.to_py() if hasattr(value, "to_py") else str(value)
    return value


class _ReadOnly:
    __slots__ = ("_refuse", "_value")

    def __init__(self, value: Any, refuse: Refuse) -> None:
        self._value = value
        self._refuse = refuse

    def __getattr__(self, name: str) -> Any:  # deny by default: anything not a read below
        raise self._refuse("doc.write", f"{type(self).__name__}.{name}")

    def __setitem__(self, key: Any, value: Any) -> None:
        raise self._refuse("doc.write", f"writing {key!r}")

    def __delitem__(self, key: Any) -> None:
        raise self._refuse("doc.write", f"deleting {key!r}")

    def __len__(self) -> int:
        return len(self._value)

    def to_py(self) -> Any:
        return self._value.to_py()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._value.to_py()!r})"


class ReadOnlyMap(_ReadOnly):
    __slots__ = ()

    def get(self, key: str, default: Any = None) -> Any:
        return read_only(self._value.get(key, default), self._refuse)

    def __getitem__(self, key: str) -> Any:
        return read_only(self._value[key], self._refuse)

    def __contains__(self, key: object) -> bool:
        return key in self._value

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._value.keys()))

    def keys(self) -> list[str]:
        return list(self._value.keys())

    def values(self) -> list[Any]:
        return [read_only(v, self._refuse) for v in self._value.values()]

    def items(self) -> list[tuple[str, Any]]:
        return [(k, read_only(v, self._refuse)) for k, v in self._value.items()]


class ReadOnlyArray(_ReadOnly):
    __slots__ = ()

    def __getitem__(self, index: int) -> Any:
        return read_only(self._value[index], self._refuse)

    def __iter__(self) -> Iterator[Any]:
        return iter([read_only(v, self._refuse) for v in self._value])


class ReadOnlyText(_ReadOnly):
    __slots__ = ()

    def __str__(self) -> str:
        return str(self._value)

    def __contains__(self, text: str) -> bool:
        return text in str(self._value)


class ReadOnlyDoc:
    """The document's roots, read-only."""

    __slots__ = ("_doc", "_refuse")

    def __init__(self, doc: Any, refuse: Refuse) -> None:
        self._doc = doc
        self._refuse = refuse

    def get(self, name: str, *, type: Any) -> Any:
        return read_only(self._doc.get(name, type=type), self._refuse)

    def __getattr__(self, name: str) -> Any:
        raise self._refuse("doc.write", f"doc.{name}")


class RoomHandle:
    """The room as a restricted extension gets it (see the module's docstring)."""

    __slots__ = ("__weakref__", "_caps", "_refuse", "_room")

    def __init__(self, room: Room, capabilities: frozenset[str], refuse: Refuse) -> None:
        self._room = room
        self._caps = capabilities
        self._refuse = refuse

    @property
    def name(self) -> str:
        return self._room.name

    @property
    def members(self) -> dict[str, MemberView]:
        return {key: member_view(member) for key, member in self._room.members.items()}

    @property
    def doc(self) -> ReadOnlyDoc:
        if "doc.read" not in self._caps:
            raise self._refuse("doc.read", f"reading the document of room {self._room.name!r}")
        return ReadOnlyDoc(self._room.doc, self._refuse)

    def local_change(self, origin: Any) -> Any:
        if "doc.write" not in self._caps:
            raise self._refuse("doc.write", f"changing the document of room {self._room.name!r}")
        return self._room.local_change(origin)

    def role_of(self, principal: Principal) -> Role:
        return self._room.role_of(principal)

    def __getattr__(self, name: str) -> Any:
        needed = "doc.read" if "doc.read" not in self._caps else "doc.write"
        raise self._refuse(needed, f"room.{name}")

    def __repr__(self) -> str:
        return f"RoomHandle({self._room.name!r}, {sorted(self._caps)})"


class NodeHandle:
    """The node a restricted extension's ``lifespan`` gets (see the module's docstring)."""

    __slots__ = ("_caps", "_node", "_refuse")

    def __init__(self, node: Any, capabilities: frozenset[str], refuse: Refuse) -> None:
        self._node = node
        self._caps = capabilities
        self._refuse = refuse

    @property
    def node_id(self) -> str:
        return str(self._node.node_id)

    @property
    def metrics(self) -> Any:
        return self._node.metrics

    @property
    def supervisor(self) -> Any:
        return self._node.supervisor

    def record(self, room: str, user: str, data: dict[str, Any]) -> None:
        """An event on the room's timeline (kind ``extension``, ``data`` with the extension's name):
        what the recorder keeps, if the node records; needs ``doc.write``."""
        if "doc.write" not in self._caps:
            raise self._refuse("doc.write", f"recording an event in room {room!r}")
        recorder = getattr(getattr(self._node, "state", None), "recorder", None)
        if recorder is not None:
            recorder.record(room, "extension", user, data)

    def __getattr__(self, name: str) -> Any:
        if name == "state":
            if "kernel" in self._caps:
                return self._node.state
            raise self._refuse("kernel", "node.state (the kernels)")
        if name in {"registry", "store", "cluster", "extensions", "settings"}:
            if {"doc.read", "doc.write"} <= self._caps:
                return getattr(self._node, name)
            raise self._refuse("doc.write", f"node.{name} (every room, unguarded)")
        raise AttributeError(name)
