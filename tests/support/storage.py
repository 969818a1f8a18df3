"""Read what storage holds for a room, as a test would check it: the text after a full rebuild."""

from __future__ import annotations

from pycrdt import Doc, Text

from pairroom.storage.sql import SqlStore


async def stored_doc(db: str, room: str) -> Doc:
    """The room's document rebuilt from its newest snapshot and the log after it."""
    store = SqlStore(db)
    await store.open()
    try:
        loaded = await store.load(room)
    finally:
        await store.close()
    doc = Doc()
    if loaded.snapshot:
        doc.apply_update(loaded.snapshot.data)
    for update in loaded.updates:
        doc.apply_update(update.data)
    return doc


async def stored_text(db: str, room: str, name: str = "text") -> str:
    return str((await stored_doc(db, room)).get(name, type=Text))
