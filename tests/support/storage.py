"""Read what storage holds for a room, as a test would check it: the text after a full rebuild."""

from __future__ import annotations

from pycrdt import Doc, Text

from pairroom.storage.memory import MemoryStore
from pairroom.storage.store import Store, StoreError, open_store


async def stored_doc(db: str | Store, room: str) -> Doc:
    """The room's document rebuilt from its newest snapshot and the log after it.

    ``db`` is a database URL (opened and closed here) or a store a server ran on (opened for the
    read if it is closed, as a memory store is after its server stopped; left as it was found)."""
    store = open_store(db) if isinstance(db, str) else db
    if isinstance(store, MemoryStore) and isinstance(db, str):
        raise ValueError("memory:// is a new, empty store: pass the MemoryStore the server ran on")
    opened_here = True
    try:
        await store.ping()
        opened_here = False  # already open: a running server's store
    except StoreError:  # not open
        await store.open()
    try:
        loaded = await store.load(room)
    finally:
        if opened_here:
            await store.close()
    doc = Doc()
    if loaded.snapshot:
        doc.apply_update(loaded.snapshot.data)
    for update in loaded.updates:
        doc.apply_update(update.data)
    return doc


async def stored_text(db: str | Store, room: str, name: str = "text") -> str:
    return str((await stored_doc(db, room)).get(name, type=Text))
