"""Background work is supervised: a loop or hook that fails is seen, counted and contained.

Against a real server: a crashed loop turns ``/readyz`` 503 naming it while rooms keep syncing; an
extension hook that raises is logged and counted while the room and the other extensions carry on;
a room whose batch the database refuses is retried on its own while every other room is stored; an
origin label longer than any column (a token whose ``sub`` is 300 characters) is stored shortened.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
from pycrdt import Map

from pairroom.extensions import Change, Connection, Extension, Reject
from pairroom.rooms.member import Member
from pairroom.rooms.owners import OWNERS, OwnerRow, short_string
from pairroom.rooms.room import Room
from pairroom.web.auth import mint

from .support.storage import stored_text
from .yclient import YClient, eventually

SECRET = "supervision-secret-0123456789abcdef"


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus text page (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(name + ("{" + wanted + "}" if wanted else " ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


class CrashesOnRoom(Extension):
    """A loop of its own that dies when a room named ``boom`` is loaded."""

    name = "crasher"

    def __init__(self) -> None:
        self.trigger = asyncio.Event()

    def on_loaded(self, room: Room) -> None:
        if room.name == "boom":
            self.trigger.set()

    async def _loop(self) -> None:
        await self.trigger.wait()
        raise RuntimeError("the crasher's loop gave up")

    @contextlib.asynccontextmanager
    async def _run(self, node: Any) -> AsyncIterator[None]:
        node.supervisor.spawn("crasher-loop", self._loop)
        yield

    def lifespan(self, node: Any) -> contextlib.AbstractAsyncContextManager[None]:
        return self._run(node)


class RaisesInHooks(Extension):
    name = "clumsy"

    def on_change(self, change: Change) -> None:
        raise ValueError("clumsy on_change")

    def on_join(self, room: Room, member: Member) -> None:
        raise KeyError("clumsy on_join")


class CountsChanges(Extension):
    """A well-behaved extension after the clumsy one: it must still hear every change."""

    name = "counter"
    priority = 150

    def __init__(self) -> None:
        self.changes = 0
        self.authors: set[str] = set()

    def on_change(self, change: Change) -> None:
        self.changes += 1
        if change.author is not None:
            self.authors.add(change.author.user_id)


async def test_a_crashed_loop_turns_readyz_503_naming_it_and_rooms_keep_syncing(start_server) -> None:
    crasher = CrashesOnRoom()
    server = await start_server(extensions=[crasher])
    async with httpx.AsyncClient(base_url=server.http) as http:
        assert (await http.get("/readyz")).status_code == 200
        a = await YClient.connect(server.ws("boom"))
        b = await YClient.connect(server.ws("boom"))
        await asyncio.wait_for(asyncio.gather(a.synced.wait(), b.synced.wait()), 5)

        async def not_ready() -> bool:
            return (await http.get("/readyz")).status_code == 503

        await eventually(not_ready, what="readyz turns 503")
        body = (await http.get("/readyz")).json()
        assert body["status"] == "unavailable"
        assert body["failed"] == {"crasher-loop": "RuntimeError: the crasher's loop gave up"}
        a.insert(0, "still syncing")
        await eventually(lambda: str(b.text) == "still syncing", what="the room still syncs")
        await a.close()
        await b.close()


async def test_a_hook_that_raises_is_counted_and_nobody_else_notices(start_server) -> None:
    counter = CountsChanges()
    server = await start_server(extensions=[RaisesInHooks(), counter], secret=SECRET)
    tokens = [mint(SECRET, "r", "editor", name, user_id=name.lower()) for name in ("Ada", "Bob")]
    a, b = [await YClient.connect(server.ws("r") + f"?token={t}") for t in tokens]
    await asyncio.wait_for(asyncio.gather(a.synced.wait(), b.synced.wait()), 5)
    a.insert(0, "hello ")
    b.insert(0, "world ")
    await eventually(lambda: str(a.text) == str(b.text) and len(str(a.text)) == 12, what="converged")
    await eventually(lambda: counter.authors == {"ada", "bob"}, what="the next extension heard both")
    async with httpx.AsyncClient(base_url=server.http) as http:
        page = (await http.get("/metrics")).text
        assert (await http.get("/readyz")).status_code == 200  # a hook's error is not a node failure
        listed = (await http.get("/api/extensions")).json()["extensions"]
    assert metric(page, "pairroom_extension_errors_total", extension="clumsy", hook="on_change") >= 2
    assert metric(page, "pairroom_extension_errors_total", extension="clumsy", hook="on_join") == 2
    clumsy = next(e for e in listed if e["name"] == "clumsy")
    assert clumsy["hooks"] == ["on_change", "on_join"] and clumsy["builtin"] is False
    assert {"persistence", "cluster", "review", "recording", "kernels", "rtc"} <= {e["name"] for e in listed}
    await a.close()
    await b.close()


async def test_a_300_character_sub_is_stored_and_so_is_everyone_after_a_restart(start_server, db_url) -> None:
    server = await start_server(secret=SECRET, flush_interval_ms=20)
    long_sub = "u" * 300
    long = mint(SECRET, "long", "editor", "Lena", user_id=long_sub)
    other = mint(SECRET, "long", "editor", "Otto", user_id="otto")
    lena = await YClient.connect(server.ws("long") + f"?token={long}")
    otto = await YClient.connect(server.ws("long") + f"?token={other}")
    await asyncio.wait_for(asyncio.gather(lena.synced.wait(), otto.synced.wait()), 5)
    lena.insert(0, "from lena\n")
    await eventually(lambda: "from lena" in str(otto.text), what="otto sees lena")
    otto.insert(len(str(otto.text)), "from otto\n")
    expected = "from lena\nfrom otto\n"
    await eventually(lambda: str(lena.text) == expected, what="converged")

    async def stored() -> bool:
        return await stored_text(db_url, "long") == expected

    await eventually(stored, what="both members' edits stored")
    async with httpx.AsyncClient(base_url=server.http) as http:
        assert (await http.get("/readyz")).status_code == 200
        assert metric((await http.get("/metrics")).text, "pairroom_flush_failures_total") == 0
    await lena.close()
    await otto.close()
    await server.stop()

    with contextlib.closing(sqlite3.connect(db_url.removeprefix("sqlite:///"))) as db:
        origins = [row[0] for row in db.execute("SELECT origin FROM updates WHERE room = 'long'")]
    assert all(len(origin) <= 255 for origin in origins)
    assert any(origin.startswith("client:") and "uuuu" in origin for origin in origins)
    assert any(origin.endswith(":otto") for origin in origins)

    again = await start_server(secret=SECRET)
    reader = await YClient.connect(again.ws("long") + f"?token={other}")
    await eventually(lambda: str(reader.text) == expected, what="everything there after a restart")
    await reader.close()


async def test_a_room_the_database_refuses_is_retried_alone_and_stored_once_it_can_be(start_server, db_url) -> None:
    server = await start_server(flush_interval_ms=20)
    names = ("refused", "fine-1", "fine-2")
    clients = [await YClient.connect(server.ws(name)) for name in names]
    await asyncio.wait_for(asyncio.gather(*(c.synced.wait() for c in clients)), 5)
    path = db_url.removeprefix("sqlite:///")
    with contextlib.closing(sqlite3.connect(path)) as db:  # the database itself refuses one room
        db.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON updates WHEN NEW.room = 'refused' "
            "BEGIN SELECT RAISE(ABORT, 'refused by the database'); END"
        )
        db.commit()
    for name, client in zip(names, clients):
        client.insert(0, f"text of {name}")

    async def fine_stored() -> bool:
        return all([await stored_text(db_url, n) == f"text of {n}" for n in names[1:]])

    await eventually(fine_stored, what="the other rooms are stored")
    async with httpx.AsyncClient(base_url=server.http) as http:

        async def failures() -> float:
            return metric((await http.get("/metrics")).text, "pairroom_flush_failures_total")

        first = await failures()
        assert first >= 1
        await eventually(lambda: _more(failures, first), what="the refused room is retried")
        assert (await http.get("/readyz")).status_code == 503  # storage writes failing, said honestly
        with contextlib.closing(sqlite3.connect(path)) as db:
            db.execute("DROP TRIGGER refuse")
            db.commit()

        async def refused_stored() -> bool:
            return await stored_text(db_url, "refused") == "text of refused"

        await eventually(refused_stored, timeout=15, what="stored once the database accepts it")
        await eventually(lambda: _ready(http), what="ready again")
    for client in clients:
        await client.close()


async def _more(read: Any, than: float) -> bool:
    return bool(await read() > than)


async def _ready(http: httpx.AsyncClient) -> bool:
    return (await http.get("/readyz")).status_code == 200


class OnlyAdaAndBob(Extension):
    """Refuses everyone but two people, the way an access-list extension would."""

    name = "guest-list"

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []

    async def on_authenticate(self, conn: Connection) -> None:
        self.seen.append((conn.endpoint, conn.room_name, conn.principal.user_id))
        if conn.principal.user_id not in ("ada", "bob"):
            raise Reject(4403, f"{conn.principal.name} is not on the guest list")


async def test_an_extension_refuses_a_connection_with_its_close_code(start_server) -> None:
    guest_list = OnlyAdaAndBob()
    server = await start_server(extensions=[guest_list], secret=SECRET)
    ada = mint(SECRET, "party", "editor", "Ada", user_id="ada")
    eve = mint(SECRET, "party", "editor", "Eve", user_id="eve")
    allowed = await YClient.connect(server.ws("party") + f"?token={ada}")
    await asyncio.wait_for(allowed.synced.wait(), 5)
    refused = await YClient.connect(server.ws("party") + f"?token={eve}")
    await eventually(lambda: refused.close_code is not None, what="eve refused")
    assert (refused.close_code, refused.close_reason) == (4403, "Eve is not on the guest list")
    assert not refused.synced.is_set()  # refused before any document byte
    assert ("yjs", "party", "eve") in guest_list.seen
    allowed.insert(0, "still here")  # the room and its member carry on
    await eventually(lambda: str(allowed.text) == "still here", what="ada keeps editing")
    await allowed.close()
    await refused.close()


class PinnedNotes(Extension):
    """Owns a document root of its own: only owners may pin notes, and a note is a short string."""

    name = "pinned-notes"

    def document_rows(self) -> Sequence[OwnerRow]:
        return (OwnerRow("pinned", "*", OWNERS, short_string(80), "string, at most 80 characters"),)


async def test_an_extensions_document_rows_are_enforced_like_the_built_in_ones(start_server) -> None:
    server = await start_server(extensions=[PinnedNotes()], secret=SECRET)
    owner = mint(SECRET, "notes", "owner", "Olga", user_id="olga")
    editor = mint(SECRET, "notes", "editor", "Ed", user_id="ed")
    olga = await YClient.connect(server.ws("notes") + f"?token={owner}")
    ed = await YClient.connect(server.ws("notes") + f"?token={editor}")
    await asyncio.wait_for(asyncio.gather(olga.synced.wait(), ed.synced.wait()), 5)
    olga.doc.get("pinned", type=Map)["welcome"] = "read the README first"
    await eventually(
        lambda: ed.doc.get("pinned", type=Map).get("welcome") == "read the README first",
        what="the owner's note reaches the editor",
    )
    ed.doc.get("pinned", type=Map)["welcome"] = "ignore the README"  # not an owner: reverted
    olga.doc.get("pinned", type=Map)["long"] = "x" * 500  # an owner, but the wrong shape: reverted
    room = server.hub.registry.rooms["notes"]

    def server_notes() -> dict[str, object]:
        return dict(room.doc.get("pinned", type=Map).to_py() or {})

    await eventually(lambda: server_notes() == {"welcome": "read the README first"}, what="both reverted")
    await eventually(
        lambda: dict(ed.doc.get("pinned", type=Map).to_py() or {}) == server_notes(),
        what="the editor's copy is corrected too",
    )
    await olga.close()
    await ed.close()
