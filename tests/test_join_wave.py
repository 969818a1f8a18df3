"""A wave of new clients joining a large room costs one encode of the document, not one each."""

from __future__ import annotations

import asyncio

from pycrdt import Text

from pairroom.rooms.room import Room
from tests.conftest import RunningServer
from tests.yclient import YClient, eventually

ROOM = "large"
FILES = 8
JOINERS = 8


async def seeded(server: RunningServer) -> tuple[YClient, Room, dict[str, str]]:
    """A room of several files, about 1 MiB encoded, written by one client that stays connected."""
    seeder = await YClient.connect(server.ws(ROOM))
    await asyncio.wait_for(seeder.synced.wait(), 5)
    expected = {}
    for n in range(FILES):
        text = seeder.doc.get(f"file-{n}", type=Text)
        with seeder.doc.transaction():
            for line in range(1_000):
                text.insert(len(text), f"{n}:{line}: " + "x" * 120 + "\n")
        expected[f"file-{n}"] = str(text)
    room = server.hub.registry.rooms[ROOM]
    await eventually(lambda: str(room.doc.get("file-7", type=Text)) == expected["file-7"], timeout=10, what="seeded")
    return seeder, room, expected


def holds(client: YClient, expected: dict[str, str]) -> bool:
    return all(str(client.doc.get(name, type=Text)) == content for name, content in expected.items())


async def test_joiners_at_once_cause_one_encode_and_get_the_whole_document(server: RunningServer) -> None:
    seeder, room, expected = await seeded(server)
    before = room.full_encodes
    joiners = await asyncio.gather(*(YClient.connect(server.ws(ROOM)) for _ in range(JOINERS)))
    await asyncio.wait_for(asyncio.gather(*(j.synced.wait() for j in joiners)), 10)
    assert all(holds(j, expected) for j in joiners)
    assert room.full_encodes - before == 1, "one encode for the whole wave"
    for client in (seeder, *joiners):
        await client.close()


async def test_a_change_after_the_wave_reaches_the_next_joiner(server: RunningServer) -> None:
    """The kept encoding is dropped by any change, including a deletion (which leaves the state
    vector as it was, so the vector could not tell the encoding is stale)."""
    seeder, room, expected = await seeded(server)
    first = await YClient.connect(server.ws(ROOM))
    await asyncio.wait_for(first.synced.wait(), 10)
    encodes = room.full_encodes
    state = room.doc.get_state()
    del seeder.doc.get("file-0", type=Text)[0:10]
    expected["file-0"] = expected["file-0"][10:]
    await eventually(lambda: holds(first, expected), timeout=5, what="the deletion reaches the first joiner")
    assert room.doc.get_state() == state  # a deletion: same state vector
    second = await YClient.connect(server.ws(ROOM))
    await asyncio.wait_for(second.synced.wait(), 10)
    assert holds(second, expected)
    assert room.full_encodes == encodes + 1
    for client in (seeder, first, second):
        await client.close()
