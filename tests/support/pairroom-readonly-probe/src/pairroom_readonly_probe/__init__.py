"""An extension that asks for ``doc.read`` only and, when a member joins, tries to change the document
two ways; the tests check both are refused and the document is unchanged."""

from __future__ import annotations

from typing import Any

from pycrdt import Map

from pairroom.extensions import Change, Extension, LocalOrigin


class Probe(Extension):
    name = "readonly-probe"

    def __init__(self) -> None:
        self.seen: list[str] = []  # what it managed to see or do, for the tests

    def on_join(self, room: Any, member: Any) -> None:
        self.seen.append(f"join {type(room).__name__} {type(member).__name__}")
        files = room.doc.get("files", type=Map)
        self.seen.append(f"read {sorted(files.keys())}")
        try:
            files["planted.py"] = "print('planted')\n"  # through the read-only view: refused
        except PermissionError as exc:
            self.seen.append(f"refused {exc}")
        with room.local_change(LocalOrigin("readonly-probe")) as doc:  # refused: raises out of the hook
            doc.get("files", type=Map)["planted.py"] = "print('planted')\n"
        self.seen.append("wrote")

    def on_change(self, change: Change) -> None:
        self.seen.append(f"change {len(change.update)}")

    def on_awareness(self, room: Any, member: Any, states: dict[int, Any]) -> None:
        self.seen.append("awareness")  # asks no "awareness": never called
