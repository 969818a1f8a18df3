"""A room's document: pycrdt's ``Doc`` with one wrapper per root.

Why: ``Doc.get(name, type=...)`` builds a new Python wrapper for the root on every call (an object
with a list, two sets and two dicts, about 1 KiB, and a write transaction to build it), and a
room's components each asked for the roots they watch: about 18 wrappers per loaded room, for a
dozen roots. Here the first ``get`` of a root builds its wrapper and later ones return it, so a
loaded room keeps one per root, and a ``get`` on a hot path is a dict lookup. The wrappers are
pycrdt's own: observing and unobserving through a shared one is what pycrdt supports (each
subscription is its own object), and a root asked for as another type is cast as pycrdt casts it.
"""

from __future__ import annotations

from typing import Any

from pycrdt import Doc


class RoomDoc(Doc[Any]):
    def __init__(self) -> None:
        super().__init__()
        self._root_wrappers: dict[str, Any] = {}

    def get(self, key: str, *, type: type[Any]) -> Any:  # as ``Doc[Any]``'s
        root = self._root_wrappers.get(key)
        if root.__class__ is not type:
            root = self._root_wrappers[key] = super().get(key, type=type)
        return root

    def forget_roots(self) -> None:
        """Drop the wrappers (each refers to the document) once the room is closed."""
        self._root_wrappers.clear()
