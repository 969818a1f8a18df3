"""Colours in presence: the server gives every member present a colour of its own from the palette,
tells the member (its stamped state comes back at a newer clock) and frees the colour when it leaves."""

from __future__ import annotations

import pytest

from pairroom.protocol import sync as protocol
from pairroom.rooms.identity import PALETTE, pick_color, preferred_color_index
from pairroom.web.auth import mint

from .yclient import YClient, eventually

SECRET = "test-secret-0123456789abcdef0123456789"


def test_the_pick_starts_where_the_user_id_says_and_skips_colours_taken() -> None:
    start = preferred_color_index("u-ada")
    assert pick_color("u-ada", set()) == PALETTE[start]
    assert pick_color("u-ada", {PALETTE[start]}) == PALETTE[(start + 1) % len(PALETTE)]
    assert pick_color("u-ada", set(PALETTE)) == PALETTE[start]  # more people than colours: shared
    assert len(set(PALETTE)) >= 12


def colours(client: YClient) -> dict[str, str]:
    return {
        s["user"]["name"]: s["user"]["color"]
        for s in client.awareness.states.values()
        if isinstance(s, dict) and isinstance(s.get("user"), dict) and "color" in s["user"]
    }


async def test_twelve_people_get_twelve_colours_and_each_learns_its_own(start_server) -> None:
    server = await start_server(awareness_tick_ms=20)
    people = [await YClient.connect(server.ws("colours")) for _ in range(12)]
    for n, person in enumerate(people):
        await person.set_awareness({"user": {"name": f"P{n}", "color": "#000000"}, "cursor": None})
    witness = people[0]
    await eventually(lambda: len(colours(witness)) == 12, what="all twelve seen")
    seen = colours(witness)
    assert len(set(seen.values())) == 12 and set(seen.values()) <= set(PALETTE), seen
    for n, person in enumerate(people):  # the stamped state came back at a newer clock: it is theirs now
        await eventually(lambda p=person, n=n: (p.awareness.get_local_state() or {}).get("user", {}).get("color") == seen[f"P{n}"],
                         what=f"P{n} knows its colour")

    # One leaves: the next person may get that colour, and nobody present shares one.
    gone = seen["P3"]
    await people[3].close()
    await eventually(lambda: "P3" not in colours(witness), what="P3 gone")
    late = await YClient.connect(server.ws("colours"))
    await late.set_awareness({"user": {"name": "Late"}, "cursor": None})
    await eventually(lambda: "Late" in colours(witness), what="Late seen")
    assert colours(witness)["Late"] == gone
    for person in [*people[:3], *people[4:], late]:
        await person.close()


async def test_the_servers_summary_sent_back_by_a_client_is_not_taken_over(start_server) -> None:
    server = await start_server(secret=SECRET, awareness_tick_ms=20)
    room = "summary"
    viewer = await YClient.connect(server.ws(room) + "?token=" + mint(SECRET, room, "viewer", "Vi"))
    editor = await YClient.connect(server.ws(room) + "?token=" + mint(SECRET, room, "editor", "Ed"))
    await editor.set_awareness({"user": {"name": "Ed"}})
    await viewer.set_awareness({"user": {"name": "Vi"}})

    def summary_id() -> int | None:
        return next((cid for cid, s in editor.awareness.states.items() if isinstance(s, dict) and "pairroom" in s), None)

    await eventually(lambda: summary_id() is not None, what="the viewers' summary")
    cid = summary_id()
    assert cid is not None
    # y-websocket relays every state it receives, the server's summary included.
    await editor.send_raw(protocol.awareness_message(editor.awareness.encode_awareness_update([cid])))
    await editor.set_awareness({"user": {"name": "Ed"}, "cursor": {"anchor": 1}})  # a barrier: relayed after it
    await eventually(lambda: (viewer.awareness.states.get(editor.awareness.client_id) or {}).get("cursor") == {"anchor": 1},
                     what="the barrier")
    room_state = server.hub.registry.rooms[room]
    state = room_state.awareness.states[cid]
    assert "user" not in state and "pairroom" in state
    # The editor leaves: the summary, which it never controlled, stays.
    await editor.close()
    await eventually(lambda: len(room_state.members) == 1, what="the editor gone")
    assert "pairroom" in room_state.awareness.states.get(cid, {})
    await viewer.close()
