"""The rooms core without any I/O: Room, Presence and RoomRegistry on ``MemoryStore`` and ``MemoryBroker``.

As ``tests/test_protocol.py`` tests the codec, these drive the core by hand: each client is a real
pycrdt document on the far side of an in-memory transport (``Wire``), answering the room the way a
y-websocket client does, and the test decides when the room's held broadcast goes out
(``room.send_outbox()``). No socket, no database, no server: what fails here is the core's logic.
The registry tests run its flusher and the cluster bridge as the server does, on one event loop.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from pycrdt import Doc, Map, Text

from pairroom.cluster.bridge import Cluster
from pairroom.cluster.broker import MemoryBroker, MemoryHub
from pairroom.protocol import sync as protocol
from pairroom.protocol.origins import LocalOrigin
from pairroom.protocol.sync import AwarenessEntry, CloseCode, MessageType, ProtocolError, SyncStep
from pairroom.rooms.identity import PALETTE, Principal, Role
from pairroom.rooms.member import Member
from pairroom.rooms.registry import RoomRegistry, RoomSettings
from pairroom.rooms.room import Room, RoomListener, RoomState
from pairroom.storage.compaction import compact
from pairroom.storage.memory import MemoryStore, MemoryTables
from pairroom.storage.store import StoreError
from tests.yclient import eventually

# -- the parts: an in-memory transport, a client document, a node that listens to rooms ----------------


class Wire:
    """An in-memory transport: every frame the room sends lands in ``frames``, in order, at once."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.writes: list[int] = []  # frames per write, as a socket would see them
        self.closed: tuple[int, str] | None = None

    def send_now(self, data: bytes) -> None:
        self.frames.append(data)
        self.writes.append(1)

    def send_now_many(self, messages: list[bytes]) -> bool:
        self.frames.extend(messages)
        self.writes.append(len(messages))
        return True

    async def send(self, data: bytes) -> None:
        self.frames.append(data)

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


class Client:
    """A real pycrdt document at the far end of a ``Wire``, speaking y-websocket to a room."""

    _ids = itertools.count(1)

    def __init__(self, name: str, role: Role = Role.EDITOR) -> None:
        self.name = name
        self.doc = Doc()
        self.text = self.doc.get("text", type=Text)
        self.wire = Wire()
        self.principal = Principal(f"user-{name}", name.title(), "#4363d8", role, "*")
        self.member = Member(self.wire, f"conn-{name}-{next(self._ids)}", principal=self.principal)
        self.read = 0  # frames handled so far
        self.presence: dict[int, dict[str, Any] | None] = {}  # awareness client id -> last state seen
        self.awareness_id = 1000 + next(self._ids)
        self.awareness_clock = 0

    def unread(self) -> list[protocol.Message]:
        """Decode the frames that arrived since the last call."""
        frames, self.read = self.wire.frames[self.read :], len(self.wire.frames)
        return [protocol.decode_message(frame) for frame in frames]

    def handle(self, room: Room) -> list[protocol.Message]:
        """Do what a y-websocket client does with what arrived: answer step 1, apply updates,
        keep awareness states. Returns the messages handled."""
        messages = self.unread()
        for message in messages:
            if message.type is MessageType.SYNC and message.step is SyncStep.STEP1:
                room.receive(self.member, protocol.sync_step2(self.doc.get_update(message.payload)))
            elif message.type is MessageType.SYNC:
                self.doc.apply_update(message.payload)
            elif message.type is MessageType.AWARENESS:
                for entry in protocol.decode_awareness(message.payload):
                    self.presence[entry.client_id] = json.loads(entry.state)
        return messages

    def sync(self, room: Room) -> None:
        """Sync step 1: ask the room for what this document lacks."""
        room.receive(self.member, protocol.sync_step1(self.doc.get_state()))

    def edit(self, room: Room, change: Callable[[Text], None]) -> bytes:
        """Change the text here and send the update to the room, as the client's doc observer does."""
        before = self.doc.get_state()
        with self.doc.transaction():
            change(self.text)
        update = self.doc.get_update(before)
        room.receive(self.member, protocol.sync_update(update))
        return update

    def announce(self, room: Room, state: dict[str, Any] | None, client_id: int | None = None) -> None:
        """Send an awareness update for this client's id (or another one's)."""
        self.awareness_clock += 1
        raw = "null" if state is None else json.dumps(state)
        payload = protocol.encode_awareness([AwarenessEntry(client_id or self.awareness_id, self.awareness_clock, raw)])
        room.receive(self.member, protocol.awareness_message(payload))


class Node(RoomListener):
    """What a room reports to the node holding it (the registry's part), kept for the test to read."""

    def __init__(self, node_id: str = "n1") -> None:
        self.node_id = node_id
        self.uids = itertools.count(1)
        self.dirty: list[Room] = []
        self.dropped: list[str] = []
        self.relayed: list[str] = []  # uids the cluster would publish

    def on_dirty(self, room: Room) -> None:
        self.dirty.append(room)

    def on_update_dropped(self, room: Room, member: Member) -> None:
        self.dropped.append(member.id)

    def on_local_update(self, room: Room, uid: str, update: bytes) -> None:
        self.relayed.append(uid)

    def new_uid(self) -> str:
        return f"{self.node_id}:{next(self.uids)}"


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    async with MemoryStore() as opened:
        yield opened


async def open_room(store: MemoryStore, name: str = "core", node: Node | None = None) -> Room:
    """A room loaded from ``store`` and active, as the registry makes it (presence relayed at once)."""
    room = Room(name, store, listener=node or Node(), awareness_tick=0.0)
    await room.load()
    room.transition(RoomState.ACTIVE)
    return room


def joined(room: Room, *clients: Client) -> None:
    """Join each client and complete the sync handshake both ways."""
    for client in clients:
        room.join(client.member)
        client.sync(room)
        client.handle(room)


def clocks(doc: Doc) -> dict[int, int]:
    """The document's state vector as {client: clock} (its encoding's order of clients may vary)."""
    state = doc.get_state()
    count, pos = protocol.read_var_uint(state, 0)
    out: dict[int, int] = {}
    for _ in range(count):
        client, pos = protocol.read_var_uint(state, pos)
        out[client], pos = protocol.read_var_uint(state, pos)
    return out


def same_document(a: Doc, b: Doc) -> bool:
    """Both hold the same updates: equal state vectors, and no struct one could send the other."""
    no_structs = b"\x00"  # an update whose first var-uint (clients with structs) is 0
    return (
        clocks(a) == clocks(b)
        and a.get_update(b.get_state()).startswith(no_structs)
        and b.get_update(a.get_state()).startswith(no_structs)
    )


# -- Room -----------------------------------------------------------------------------------------------


async def test_a_joining_member_is_greeted_with_step1_and_its_step1_is_answered_with_the_document(
    store: MemoryStore,
) -> None:
    room = await open_room(store)
    with room.local_change(LocalOrigin("seed")) as doc:
        doc.get("text", type=Text).insert(0, "already here")
    ada = Client("ada")

    room.join(ada.member)
    [greeting] = ada.unread()
    assert (greeting.type, greeting.step) == (MessageType.SYNC, SyncStep.STEP1)
    assert greeting.payload == room.doc.get_state()

    ada.sync(room)
    [answer] = ada.unread()
    assert (answer.type, answer.step) == (MessageType.SYNC, SyncStep.STEP2)
    ada.doc.apply_update(answer.payload)
    assert str(ada.text) == "already here"


async def test_an_editors_update_is_applied_broadcast_to_the_others_and_not_echoed(store: MemoryStore) -> None:
    room = await open_room(store)
    ada, bob, cy = Client("ada"), Client("bob"), Client("cy")
    joined(room, ada, bob, cy)

    update = ada.edit(room, lambda text: text.insert(0, "hello"))
    room.send_outbox()

    assert str(room.doc.get("text", type=Text)) == "hello"
    for other in (bob, cy):
        [message] = other.handle(room)
        assert (message.step, message.payload) == (SyncStep.UPDATE, update)
        assert str(other.text) == "hello"
    assert ada.unread() == []  # the author is never sent its own edit
    assert [(u.origin, u.data) for u in room.pending] == [(ada.member.origin.label(), update)]


async def test_concurrent_edits_of_several_editors_converge_everywhere(store: MemoryStore) -> None:
    room = await open_room(store)
    clients = [Client(name) for name in ("ada", "bob", "cy")]
    joined(room, *clients)

    for round_ in range(5):
        for i, client in enumerate(clients):
            client.edit(room, lambda text, i=i, r=round_: text.insert(len(str(text)) if i else 0, f"{i}{r}"))
        room.send_outbox()  # one merged broadcast for the round: each gets the others' edits
        for client in clients:
            client.handle(room)

    expected = str(room.doc.get("text", type=Text))
    assert len(expected) == 30
    assert all(str(c.text) == expected for c in clients)
    assert all(same_document(c.doc, room.doc) for c in clients)


async def test_a_viewers_update_is_dropped_counted_and_changes_nothing(store: MemoryStore) -> None:
    node = Node()
    room = await open_room(store, node=node)
    ada, viewer = Client("ada"), Client("vic", Role.VIEWER)
    joined(room, ada, viewer)
    ada.edit(room, lambda text: text.insert(0, "mine"))
    room.send_outbox()
    viewer.handle(room)
    before = room.doc.get_state()

    viewer.edit(room, lambda text: text.insert(0, "vandal "))
    room.send_outbox()

    assert node.dropped == [viewer.member.id]
    assert room.doc.get_state() == before and str(room.doc.get("text", type=Text)) == "mine"
    assert ada.unread() == []
    assert [u.origin for u in room.pending] == [ada.member.origin.label()]  # nothing of the viewer's logged
    # The viewer stays connected and keeps receiving: its own copy is simply ahead of the room's.
    ada.edit(room, lambda text: text.insert(4, "!"))
    room.send_outbox()
    [message] = viewer.handle(room)
    assert message.step is SyncStep.UPDATE and "mine!" in str(viewer.text)
    assert viewer.wire.closed is None


async def test_a_duplicate_update_is_neither_broadcast_nor_logged(store: MemoryStore) -> None:
    room = await open_room(store)
    ada, bob = Client("ada"), Client("bob")
    joined(room, ada, bob)
    update = ada.edit(room, lambda text: text.insert(0, "once"))
    room.send_outbox()
    bob.handle(room)

    room.receive(ada.member, protocol.sync_update(update))  # a reconnecting client re-sends it
    room.send_outbox()

    assert bob.unread() == []
    assert len(room.pending) == 1


async def test_a_malformed_frame_raises_protocol_error_and_the_room_carries_on(store: MemoryStore) -> None:
    room = await open_room(store)
    ada, bob = Client("ada"), Client("bob")
    joined(room, ada, bob)

    with pytest.raises(ProtocolError) as bad_frame:
        room.receive(ada.member, b"\x00\x09")
    assert bad_frame.value.code is CloseCode.UNKNOWN_TYPE
    with pytest.raises(ProtocolError) as bad_update:
        room.receive(ada.member, protocol.sync_update(b"\xff\xff\xff not an update"))
    assert bad_update.value.code is CloseCode.UPDATE_REJECTED

    bob.edit(room, lambda text: text.insert(0, "still fine"))
    room.send_outbox()
    ada.handle(room)
    assert str(ada.text) == "still fine" and room.pending and len(room.pending) == 1


async def test_a_local_change_is_broadcast_to_everyone_and_logged_with_its_origin(store: MemoryStore) -> None:
    node = Node()
    room = await open_room(store, node=node)
    ada = Client("ada")
    joined(room, ada)

    with room.local_change(LocalOrigin("restore")) as doc:
        doc.get("text", type=Text).insert(0, "restored")
    room.send_outbox()

    ada.handle(room)
    assert str(ada.text) == "restored"
    assert [u.origin for u in room.pending] == ["local:restore"]
    assert node.relayed == [room.pending[0].uid]  # the cluster would relay it under its uid


async def test_after_a_flush_a_fresh_room_on_the_store_loads_the_same_document(store: MemoryStore) -> None:
    room = await open_room(store)
    ada, bob = Client("ada"), Client("bob")
    joined(room, ada, bob)
    ada.edit(room, lambda text: text.insert(0, "hello world"))
    room.send_outbox()
    bob.handle(room)
    bob.edit(room, lambda text: text.insert(5, ","))
    room.send_outbox()
    ada.handle(room)
    ada.edit(room, lambda text: text.insert(len(str(text)), " ✓ ünïcödé"))

    assert await room.flush() == 3
    assert room.pending == [] and room.stored_seq == 3

    reloaded = await open_room(store)
    assert str(reloaded.doc.get("text", type=Text)) == "hello, world ✓ ünïcödé"
    assert same_document(reloaded.doc, room.doc)
    assert reloaded.stored_seq == 3

    assert await compact(store, "core") == 3  # and from a snapshot
    from_snapshot = await open_room(store)
    assert same_document(from_snapshot.doc, room.doc) and from_snapshot.snapshot_seq == 3


async def test_a_failed_flush_keeps_the_batch_and_the_next_one_stores_it(store: MemoryStore) -> None:
    room = await open_room(store)
    ada = Client("ada")
    joined(room, ada)
    ada.edit(room, lambda text: text.insert(0, "kept"))
    await store.close()  # storage goes away

    with pytest.raises(StoreError):
        await room.flush()
    ada.edit(room, lambda text: text.insert(4, " while down"))
    assert [u.origin for u in room.pending] == [ada.member.origin.label()] * 2

    await store.open()
    assert await room.flush() == 2
    assert str((await open_room(store)).doc.get("text", type=Text)) == "kept while down"


# -- Presence -------------------------------------------------------------------------------------------


async def test_presence_is_relayed_stamped_with_the_server_identity_and_greets_newcomers(store: MemoryStore) -> None:
    room = await open_room(store)
    ada, bob = Client("ada"), Client("bob")
    joined(room, ada, bob)

    ada.announce(room, {"user": {"id": "someone-else", "name": "Mallory"}, "file": "main.py", "cursor": 3})

    bob.handle(room)
    state = bob.presence[ada.awareness_id]
    assert state is not None
    user = state["user"]
    assert {k: user[k] for k in ("id", "name", "role")} == {"id": "user-ada", "name": "Ada", "role": "editor"}
    assert user["color"] in PALETTE  # the server's pick, distinct among those present, not the client's
    assert (state["file"], state["cursor"]) == ("main.py", 3)
    ada.handle(room)
    assert ada.presence[ada.awareness_id] == state  # the author sees its state as others do

    cy = Client("cy")
    room.join(cy.member)
    cy.handle(room)  # the greeting: step 1 and the states cy may see
    assert cy.presence[ada.awareness_id] == state


async def test_a_cursor_right_behind_an_edit_goes_out_with_it_in_one_write_per_member(store: MemoryStore) -> None:
    room = await open_room(store)
    ada, bob, cy = Client("ada"), Client("bob"), Client("cy")
    joined(room, ada, bob, cy)
    ada.announce(room, {"cursor": 0})  # a quiet room: relayed at once, on its own
    for client in (bob, cy):
        client.handle(room)
        assert client.wire.writes[-1] == 1

    # the editor sends the edit, then the cursor it moved: the edit waits for the room's send pass
    # (the end of this loop pass), and the cursor waits with it
    update = ada.edit(room, lambda text: text.insert(0, "hello"))
    ada.announce(room, {"cursor": 5})
    assert bob.unread() == [] and cy.unread() == []
    writes_before = {client: len(client.wire.writes) for client in (bob, cy)}
    await asyncio.sleep(0)  # the send pass
    for client in (bob, cy):
        assert client.wire.writes[writes_before[client] :] == [2]  # both frames in one write
        message_update, message_cursor = client.handle(room)  # the text first, then the cursor
        assert (message_update.step, message_update.payload) == (SyncStep.UPDATE, update)
        assert message_cursor.type is MessageType.AWARENESS
        assert client.presence[ada.awareness_id]["cursor"] == 5 and str(client.text) == "hello"
    assert not room.presence.deferred

    # a move on its own (nothing waiting to go out) still leaves at once
    ada.announce(room, {"cursor": 4})
    [moved] = bob.handle(room)
    assert moved.type is MessageType.AWARENESS and bob.presence[ada.awareness_id]["cursor"] == 4


async def test_a_member_cannot_take_over_another_live_members_presence(store: MemoryStore) -> None:
    room = await open_room(store)
    ada, bob = Client("ada"), Client("bob")
    joined(room, ada, bob)
    ada.announce(room, {"file": "a.py"})
    bob.handle(room)

    bob.announce(room, {"file": "hijacked.py"}, client_id=ada.awareness_id)
    bob.announce(room, None, client_id=ada.awareness_id)

    assert room.presence.owner[ada.awareness_id] is ada.member
    assert room.awareness.states[ada.awareness_id]["file"] == "a.py"
    ada.handle(room)
    bob.handle(room)
    assert ada.presence[ada.awareness_id]["file"] == bob.presence[ada.awareness_id]["file"] == "a.py"


async def test_a_leaving_member_s_presence_is_removed_for_everyone(store: MemoryStore) -> None:
    room = await open_room(store)
    ada, bob = Client("ada"), Client("bob")
    joined(room, ada, bob)
    ada.announce(room, {"file": "a.py"})
    bob.handle(room)
    assert bob.presence[ada.awareness_id] is not None

    assert room.leave(ada.member, now=0.0)

    bob.handle(room)
    assert bob.presence[ada.awareness_id] is None  # removed: a null state
    assert ada.awareness_id not in room.awareness.states and ada.awareness_id not in room.presence.owner
    assert not room.leave(ada.member, now=0.0)  # leaving twice is harmless


async def test_a_renewal_is_relayed_gathered_after_the_renew_tick_and_a_change_at_once(store: MemoryStore) -> None:
    room = await open_room(store)
    room.presence.renew_tick = 0.05
    ada, bob, cy = Client("ada"), Client("bob"), Client("cy")
    joined(room, ada, bob, cy)
    for client, file in ((ada, "a.py"), (cy, "c.py")):
        client.announce(room, {"file": file})
        client.handle(room)  # its state comes back stamped with its colour at a newer clock: it takes it
        client.awareness_clock += 1
    bob.handle(room)

    for client in (ada, cy):  # y-protocols' 15 s renewal: the same state at a newer clock
        client.announce(room, client.presence[client.awareness_id])
    assert not bob.handle(room), "a renewal does not go out at once"
    assert room.awareness.meta[ada.awareness_id]["clock"] == ada.awareness_clock  # but it is applied

    await eventually(lambda: len(bob.wire.frames) > bob.read, what="the renewals, after the renew tick")
    (message,) = bob.handle(room)  # both in one message
    entries = protocol.decode_awareness(message.payload)
    assert {(e.client_id, e.clock) for e in entries} == {(ada.awareness_id, 3), (cy.awareness_id, 3)}

    ada.announce(room, {"file": "b.py"})  # a change still goes out at once
    assert bob.handle(room) and bob.presence[ada.awareness_id]["file"] == "b.py"


async def test_viewers_see_participants_and_a_summary_not_each_other(store: MemoryStore) -> None:
    room = await open_room(store)
    ada, v1, v2 = Client("ada"), Client("v1", Role.VIEWER), Client("v2", Role.VIEWER)
    joined(room, ada, v1, v2)

    v1.announce(room, {"file": "a.py", "hand": True})
    ada.announce(room, {"file": "main.py"})
    for client in (ada, v1, v2):
        client.handle(room)

    assert ada.presence[v1.awareness_id] is not None  # participants see viewers
    assert v1.awareness_id not in v2.presence  # viewers do not see each other
    assert v2.presence[ada.awareness_id]["file"] == "main.py"
    summary = v2.presence[room.awareness.client_id]
    assert summary == {"pairroom": {"viewers": 2, "hands": [{"id": "user-v1", "name": "V1"}]}}


# -- Registry (with the cluster bridge on MemoryBroker) -----------------------------------------------------


FAST = RoomSettings(idle_unload_seconds=0.05, flush_interval=0.01, keepalive_seconds=60.0)


@asynccontextmanager
async def running_node(
    node_id: str, tables: MemoryTables, hub: MemoryHub, settings: RoomSettings = FAST
) -> AsyncIterator[RoomRegistry]:
    """A node as the server runs one: its store on the shared rows, its cluster on the shared hub,
    the cluster bridge and the registry's flusher running; stopped (rooms flushed) on exit."""
    store = MemoryStore(tables)
    await store.open()
    cluster = Cluster(MemoryBroker(node_id, hub), {}, heartbeat=0.05, dead_after=1.0, sync_timeout=1.0)
    registry = RoomRegistry(store, cluster, settings)
    tasks = []
    for runner in (cluster.run, registry.run):
        started = asyncio.Event()
        tasks.append(asyncio.create_task(runner(started)))
        await asyncio.wait_for(started.wait(), 5)
    try:
        yield registry
    finally:
        for task in reversed(tasks):
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await store.close()


def stored_text(tables: MemoryTables, room: str) -> str:
    """The room's text rebuilt from what the memory rows hold (snapshot, then the log after it)."""
    log = tables.log(room)
    doc = Doc()
    if log.snapshots:
        doc.apply_update(log.snapshots[-1].data)
    for update in log.updates_between(log.snapshots[-1].seq if log.snapshots else 0, None):
        doc.apply_update(update.data)
    return str(doc.get("text", type=Text))


async def test_the_registry_loads_on_first_join_flushes_and_unloads_an_idle_room() -> None:
    tables, hub = MemoryTables(), MemoryHub()
    async with running_node("n1", tables, hub) as registry:
        ada, bob = Client("ada"), Client("bob")
        room = await registry.join("lab", ada.member)
        assert room.state is RoomState.ACTIVE and registry.rooms["lab"] is room
        assert await registry.join("lab", bob.member) is room  # one load, one room
        for client in (ada, bob):
            client.sync(room)
            client.handle(room)

        ada.edit(room, lambda text: text.insert(0, "flushed by the registry"))
        await eventually(lambda: stored_text(tables, "lab") == "flushed by the registry", what="flushed")
        assert room.pending == [] and room.stored_seq == 1

        room.send_outbox()
        bob.handle(room)
        bob.edit(room, lambda text: text.insert(0, "> "))  # pending when the room empties
        registry.leave(room, ada.member)
        registry.leave(room, bob.member)
        await eventually(lambda: "lab" not in registry.rooms, what="unloaded when idle")
        assert room.state is RoomState.CLOSED
        assert stored_text(tables, "lab") == "> flushed by the registry"  # the final flush

        cy = Client("cy")
        again = await registry.join("lab", cy.member)
        assert again is not room
        cy.handle(again)
        cy.sync(again)
        cy.handle(again)
        assert str(cy.text) == "> flushed by the registry"
        assert same_document(again.doc, room.doc)


async def test_stopping_a_node_flushes_what_its_rooms_hold() -> None:
    tables, hub = MemoryTables(), MemoryHub()
    slow = RoomSettings(idle_unload_seconds=60.0, flush_interval=60.0, flush_max_updates=10_000)
    async with running_node("n1", tables, hub, slow) as registry:
        ada = Client("ada")
        room = await registry.join("stop", ada.member)
        ada.edit(room, lambda text: text.insert(0, "written at shutdown"))
        assert room.pending and tables.log("stop").updates == []
    assert stored_text(tables, "stop") == "written at shutdown"
    assert room.state is RoomState.CLOSED


async def test_two_nodes_share_edits_through_the_broker_and_store_each_once() -> None:
    tables, hub = MemoryTables(), MemoryHub()
    async with running_node("n1", tables, hub) as one, running_node("n2", tables, hub) as two:
        ada, bob = Client("ada"), Client("bob")
        room1 = await one.join("pair", ada.member)
        room2 = await two.join("pair", bob.member)
        for client, room in ((ada, room1), (bob, room2)):
            client.sync(room)
            client.handle(room)

        ada.edit(room1, lambda text: text.insert(0, "from one"))
        await eventually(lambda: (bob.handle(room2), str(bob.text))[1] == "from one", what="n1's edit at n2")
        bob.edit(room2, lambda text: text.insert(8, ", from two"))
        await eventually(lambda: (ada.handle(room1), str(ada.text))[1] == "from one, from two", what="n2's edit at n1")

        # Both nodes log both edits under the uid of the node that integrated each first: stored once.
        await eventually(
            lambda: len(tables.log("pair").updates) == 2 and not room1.pending and not room2.pending,
            what="both edits stored",
        )
        log = tables.log("pair").updates
        assert [u.seq for u in log] == [1, 2]
        assert sorted(u.uid.split(":")[0] for u in log) == ["n1", "n2"]
        assert stored_text(tables, "pair") == "from one, from two"
        assert same_document(room1.doc, room2.doc)


async def test_evicting_a_room_kicks_its_members_and_drops_what_was_not_flushed() -> None:
    tables, hub = MemoryTables(), MemoryHub()
    slow = RoomSettings(idle_unload_seconds=60.0, flush_interval=60.0, flush_max_updates=10_000)
    async with running_node("n1", tables, hub, slow) as registry:
        ada = Client("ada")
        room = await registry.join("gone", ada.member)
        ada.edit(room, lambda text: text.insert(0, "never stored"))

        await registry.evict("gone")

        assert "gone" not in registry.rooms and room.state is RoomState.CLOSED
        assert ada.member.close_code == CloseCode.ROOM_DELETED
        assert room.pending == []
    assert tables.log("gone").updates == []


async def test_a_room_keeps_one_wrapper_per_root_and_shares_its_owner_table(store: MemoryStore) -> None:
    """Every component that asks the room's document for a root gets the same wrapper (pycrdt builds
    a new one, about 1 KiB, per ``Doc.get``), it still sees clients' edits, and a root asked for
    as another type is cast as pycrdt casts it. The owner table is one per set of rows."""
    room = await open_room(store, "roots")
    other = await open_room(store, "other roots")
    try:
        files = room.doc.get("files", type=Map)
        assert room.doc.get("files", type=Map) is files
        assert room.guards.roots["files"] is files, "the guards watch the same wrapper"
        assert room.guards.table is other.guards.table
        alice = Client("alice")
        joined(room, alice)
        with alice.doc.transaction():
            alice.doc.get("files", type=Map)["main.py"] = Text("print(1)")
        room.receive(alice.member, protocol.sync_update(alice.doc.get_update(room.doc.get_state())))
        assert str(files["main.py"]) == "print(1)"
        as_text = room.doc.get("notes", type=Text)
        assert isinstance(as_text, Text) and room.doc.get("notes", type=Text) is as_text
    finally:
        for each in (room, other):
            each.transition(RoomState.CLOSED)
