"""Client mistakes against a real server: the offender alone is closed, with the documented code.

For every bad input the test checks that the connection that sent it is closed with the close code
from ``CloseCode`` and a reason; that two other members of the same room keep syncing both ways;
that neither the room's document nor its stored log changed; that the mistake was logged as exactly
one warning carrying the code and no traceback; and that the server still accepts new connections.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import pytest
import websockets
from pycrdt import Doc, Text, write_var_uint

from pairroom.protocol.sync import CloseCode, SyncStep, awareness_message, decode_message, sync_step1, sync_update
from pairroom.storage.store import LoadedRoom
from pairroom.web.hub import Hub
from tests.conftest import RunningServer, StartServer
from tests.yclient import YClient, eventually

LIMIT = 64 * 1024
ROOM = "bad-input"


def update_inserting(text: str) -> bytes:
    """A valid update, from an unrelated client, that would change the room's text if accepted."""
    doc = Doc()
    doc.get("text", type=Text).insert(0, text)
    return doc.get_update()


def update_frame_of_size(size: int) -> bytes:
    """A valid sync update message of exactly ``size`` bytes (one big insertion)."""
    chars = size
    for _ in range(10):
        frame = sync_update(update_inserting("x" * chars))
        if len(frame) == size:
            return frame
        chars += size - len(frame)
    raise AssertionError(f"could not build an update frame of {size} bytes")


def awareness_with_state(state: bytes) -> bytes:
    payload = write_var_uint(1) + write_var_uint(4242) + write_var_uint(1)
    payload += write_var_uint(len(state)) + state
    return awareness_message(payload)


EVIL = sync_update(update_inserting("EVIL"))


@dataclasses.dataclass(frozen=True)
class BadInput:
    id: str
    code: CloseCode
    reason: str  # a fragment of the close reason
    frame: bytes | str | None = None  # sent after joining ROOM
    path: str | None = None  # instead: connect to /yjs/<path>


M, U = CloseCode.MALFORMED, CloseCode.UNKNOWN_TYPE
BAD_INPUTS = [
    BadInput("empty-frame", M, "empty frame", frame=b""),
    BadInput("truncated", M, "truncated", frame=EVIL[:-1]),
    BadInput("varuint-over-8-bytes", M, "longer than 8 bytes", frame=b"\x00\x02" + b"\x80" * 8 + b"\x01x"),
    BadInput("trailing-bytes", M, "1 bytes after the message", frame=EVIL + b"\x00"),
    BadInput("two-messages-in-one-frame", M, "after the message", frame=EVIL + EVIL),
    BadInput("unknown-type", U, "unknown message type 7", frame=b"\x07\x00"),
    BadInput("unknown-sync-step", U, "unknown sync step 3", frame=b"\x00\x03" + EVIL[2:]),
    BadInput("auth-from-client", U, "auth", frame=b"\x02\x00\x06denied"),
    BadInput("garbage-update", CloseCode.UPDATE_REJECTED, "update rejected", frame=sync_update(b"\xff" * 4)),
    BadInput(
        "update-cut-short",
        CloseCode.UPDATE_REJECTED,
        "update rejected",
        frame=sync_update(update_inserting("EVIL")[:-1]),
    ),
    BadInput("invalid-state-vector", M, "invalid state vector", frame=sync_step1(b"\xff\xff")),
    BadInput("text-frame", CloseCode.UNSUPPORTED_DATA, "text frames", frame="\x00\x02hello"),
    BadInput(
        "over-the-size-limit",
        CloseCode.MESSAGE_TOO_BIG,
        f"{LIMIT + 1} bytes exceeds {LIMIT}",
        frame=update_frame_of_size(LIMIT + 1),
    ),
    BadInput("awareness-not-json", M, "not JSON", frame=awareness_with_state(b"{not json")),
    BadInput("awareness-not-utf8", M, "not JSON", frame=awareness_with_state(b'{"n":"\xff"}')),
    BadInput("room-empty", CloseCode.INVALID_ROOM, "empty", path=""),
    BadInput("room-300-chars", CloseCode.INVALID_ROOM, "longer than 255", path="r" * 300),
    BadInput("room-control-char", CloseCode.INVALID_ROOM, "unprintable", path="bad%01room"),
]


def stored_text(loaded: LoadedRoom) -> str:
    """The text of a room rebuilt from what storage holds (snapshot, then the log after it)."""
    doc = Doc()
    if loaded.snapshot is not None:
        doc.apply_update(loaded.snapshot.data)
    for stored in loaded.updates:
        doc.apply_update(stored.data)
    return str(doc.get("text", type=Text))


def client_errors(hub: Hub, code: int) -> float:
    value = hub.metrics.registry.get_sample_value("pairroom_client_errors_total", {"code": str(code)})
    return value or 0.0


def room_text(server: RunningServer) -> str:
    return str(server.hub.registry.rooms[ROOM].doc.get("text", type=Text))


async def two_members(server: RunningServer) -> tuple[YClient, YClient]:
    a = await YClient.connect(server.ws(ROOM))
    b = await YClient.connect(server.ws(ROOM))
    async with asyncio.timeout(5):
        await a.synced.wait()
        await b.synced.wait()
    return a, b


async def still_sync(a: YClient, b: YClient, tag: str) -> None:
    a.insert(len(a.text), f" {tag}-a")
    await eventually(lambda: str(b.text).endswith(f" {tag}-a"), what=f"b sees a's edit after {tag}")
    b.insert(len(b.text), f" {tag}-b")
    await eventually(lambda: str(a.text).endswith(f" {tag}-b"), what=f"a sees b's edit after {tag}")
    assert str(a.text) == str(b.text)


async def send_bad_input(server: RunningServer, case: BadInput) -> websockets.ClientConnection:
    """Connect as a third client, commit the mistake, and return the connection once it is closed."""
    if case.path is not None:
        ws = await websockets.connect(f"{server.ws_base}/{case.path}", max_size=None)
    else:
        ws = await websockets.connect(server.ws(ROOM), max_size=None)
        # The server greets a member with sync step 1: from here on this connection is in the room.
        greeting = decode_message(await asyncio.wait_for(ws.recv(), 5))
        assert greeting.step is SyncStep.STEP1
        assert case.frame is not None
        await ws.send(case.frame)
    try:
        async with asyncio.timeout(5):
            await ws.wait_closed()
    finally:
        await ws.close()
    return ws


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[case.id for case in BAD_INPUTS])
async def test_bad_input_closes_only_the_offender(
    start_server: StartServer, case: BadInput, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    server = await start_server(max_message_bytes=LIMIT)
    hub = server.hub
    a, b = await two_members(server)
    try:
        a.insert(0, "before")
        await eventually(lambda: str(b.text) == "before")
        room = hub.registry.rooms[ROOM]
        await room.flush()
        stored_before = await hub.store.load(ROOM)
        assert stored_text(stored_before) == "before"
        errors_before = client_errors(hub, case.code)
        caplog.clear()

        bad = await send_bad_input(server, case)

        assert bad.close_code == case.code, (bad.close_code, bad.close_reason)
        assert case.reason in bad.close_reason
        await eventually(lambda: len(room.members) == 2, what="the offender left the room")
        assert set(hub.registry.rooms) == {ROOM}  # an invalid room name loads no room
        assert client_errors(hub, case.code) == errors_before + 1

        # Nothing of the bad input reached the document, in memory or in storage.
        assert room_text(server) == "before"
        assert str(a.text) == str(b.text) == "before"
        await room.flush()
        stored_after = await hub.store.load(ROOM)
        assert stored_after.last_seq == stored_before.last_seq
        assert stored_text(stored_after) == "before"

        # A client mistake is one warning line with its code, never a traceback.
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        assert warnings[0].levelno == logging.WARNING
        assert getattr(warnings[0], "code", None) == case.code
        assert getattr(warnings[0], "reason", "")
        assert not [r for r in caplog.records if r.exc_info], "a client mistake logged a traceback"

        # The other members are unaffected, and new members still get the whole document.
        await still_sync(a, b, "after")
        c = await YClient.connect(server.ws(ROOM))
        try:
            await eventually(lambda: c.synced.is_set() and str(c.text) == str(a.text))
        finally:
            await c.close()
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r is not warnings[0]]
    finally:
        await a.close()
        await b.close()


async def test_server_keeps_serving_after_every_bad_input_in_a_row(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    server = await start_server(max_message_bytes=LIMIT)
    hub = server.hub
    a, b = await two_members(server)
    try:
        for case in BAD_INPUTS:
            bad = await send_bad_input(server, case)
            assert (bad.close_code, case.id) == (case.code, case.id)
            await still_sync(a, b, case.id)
        expected: dict[int, int] = {}
        for case in BAD_INPUTS:
            expected[case.code] = expected.get(case.code, 0) + 1
        for code, count in expected.items():
            assert client_errors(hub, code) == count, code
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert [getattr(r, "code", None) for r in warnings] == [case.code for case in BAD_INPUTS]
        assert not [r for r in caplog.records if r.exc_info]
        await eventually(
            lambda: hub.metrics.registry.get_sample_value("pairroom_connections") == 2,
            what="only the two good connections remain",
        )

        # Fresh connections, in this room and a new one, are served normally.
        c = await YClient.connect(server.ws(ROOM))
        d = await YClient.connect(server.ws("another-room"))
        try:
            await eventually(lambda: c.synced.is_set() and str(c.text) == str(a.text))
            assert all(f" {case.id}-b" in str(c.text) for case in BAD_INPUTS)
            d.insert(0, "fresh")
            await eventually(lambda: room_text_of(server, "another-room") == "fresh")
        finally:
            await c.close()
            await d.close()
    finally:
        await a.close()
        await b.close()


def room_text_of(server: RunningServer, name: str) -> str:
    room = server.hub.registry.rooms.get(name)
    return "" if room is None else str(room.doc.get("text", type=Text))


async def test_message_of_exactly_the_limit_is_accepted(start_server: StartServer) -> None:
    server = await start_server(max_message_bytes=LIMIT)
    a, b = await two_members(server)
    try:
        big = update_frame_of_size(LIMIT)
        await a.send_raw(big)
        await eventually(lambda: len(str(b.text)) == len(str(room_text(server))) > LIMIT - 100)
        assert str(b.text) == room_text(server)
        assert len(server.hub.registry.rooms[ROOM].members) == 2
        assert a.close_code is None
        # The sender's own copy: the server does not echo an update to its sender. Re-sent as a
        # duplicate by a's observer, it changes nothing in the room.
        a.doc.apply_update(decode_message(big).payload)
        assert str(a.text) == str(b.text)
        await still_sync(a, b, "after-big")
    finally:
        await a.close()
        await b.close()


async def test_room_name_of_the_maximum_length_is_accepted(start_server: StartServer) -> None:
    server = await start_server(max_room_name=40)
    name = "n" * 40
    a = await YClient.connect(server.ws(name))
    try:
        await asyncio.wait_for(a.synced.wait(), 5)
        a.insert(0, "ok")
        await eventually(lambda: room_text_of(server, name) == "ok")
    finally:
        await a.close()
    too_long = await send_bad_input(server, BadInput("41", CloseCode.INVALID_ROOM, "", path="n" * 41))
    assert too_long.close_code == CloseCode.INVALID_ROOM
    assert "longer than 40" in too_long.close_reason
