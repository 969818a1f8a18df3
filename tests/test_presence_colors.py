"""Colours in presence: the server gives every member present a colour of its own from the palette,
tells the member (its stamped state comes back at a newer clock) and frees the colour when it leaves."""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path

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


# Machado, Oliveira and Fernandes (2009), severity 1, on linear RGB.
CVD = {
    "protanopia": ((0.152286, 1.052583, -0.204868), (0.114503, 0.786281, 0.099216), (-0.003882, -0.048116, 1.051998)),
    "deuteranopia": ((0.367322, 0.860646, -0.227968), (0.280085, 0.672501, 0.047413), (-0.011820, 0.042940, 0.968881)),
    "tritanopia": ((1.255528, -0.076749, -0.178779), (-0.078411, 0.930809, 0.147602), (0.004733, 0.691367, 0.303900)),
}


def lab(hex_color: str, matrix=None) -> tuple[float, float, float]:  # type: ignore[no-untyped-def]
    """CIELAB (D65) of ``hex_color``, as someone with the deficiency ``matrix`` simulates sees it."""
    rgb = [int(hex_color[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    r, g, b = (c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb)
    if matrix is not None:
        r, g, b = (max(0.0, min(1.0, row[0] * r + row[1] * g + row[2] * b)) for row in matrix)
    x = (0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047
    y = 0.2126 * r + 0.7152 * g + 0.0722 * b
    z = (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883
    f = lambda t: t ** (1 / 3) if t > 0.008856 else 7.787 * t + 16 / 116
    return 116 * f(y) - 16, 500 * (f(x) - f(y)), 200 * (f(y) - f(z))


def test_the_palette_stays_apart_for_colour_blind_eyes_and_matches_the_front_end() -> None:
    for a, b in itertools.combinations(PALETTE, 2):
        for vision, matrix in [("normal", None), *CVD.items()]:
            distance = math.dist(lab(a, matrix), lab(b, matrix))
            assert distance >= 12, f"{a} and {b} are {distance:.1f} apart in {vision}"
    shared = (Path(__file__).resolve().parents[1] / "frontend" / "src" / "shared.js").read_text()
    block = re.search(r"export const PALETTE = \[(.*?)\]", shared, re.S)
    assert block is not None and re.findall(r"'(#[0-9a-f]{6})'", block.group(1)) == list(PALETTE)


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
        await eventually(
            lambda p=person, n=n: (p.awareness.get_local_state() or {}).get("user", {}).get("color") == seen[f"P{n}"],
            what=f"P{n} knows its colour",
        )

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
        return next(
            (cid for cid, s in editor.awareness.states.items() if isinstance(s, dict) and "pairroom" in s), None
        )

    await eventually(lambda: summary_id() is not None, what="the viewers' summary")
    cid = summary_id()
    assert cid is not None
    # y-websocket relays every state it receives, the server's summary included.
    await editor.send_raw(protocol.awareness_message(editor.awareness.encode_awareness_update([cid])))
    await editor.set_awareness({"user": {"name": "Ed"}, "cursor": {"anchor": 1}})  # a barrier: relayed after it
    await eventually(
        lambda: (viewer.awareness.states.get(editor.awareness.client_id) or {}).get("cursor") == {"anchor": 1},
        what="the barrier",
    )
    room_state = server.hub.registry.rooms[room]
    state = room_state.awareness.states[cid]
    assert "user" not in state and "pairroom" in state
    # The editor leaves: the summary, which it never controlled, stays.
    await editor.close()
    await eventually(lambda: len(room_state.members) == 1, what="the editor gone")
    assert "pairroom" in room_state.awareness.states.get(cid, {})
    await viewer.close()


async def test_a_change_crossing_the_colour_news_is_kept_on_both_sides(start_server) -> None:
    server = await start_server(awareness_tick_ms=20)
    witness = await YClient.connect(server.ws("crossing"))
    ada = await YClient.connect(server.ws("crossing"))
    # Two changes in a row, the second sent before the server's stamped state (a newer clock) arrives.
    await ada.set_awareness({"user": {"name": "Ada", "color": "#000000"}, "file": None})
    await ada.set_awareness({"user": {"name": "Ada", "color": "#000000"}, "file": "main.py"})
    cid = ada.awareness.client_id

    def seen(client: YClient) -> dict:
        return client.awareness.states.get(cid) or {}

    await eventually(lambda: seen(witness).get("file") == "main.py", what="the witness has Ada's later change")
    assert seen(witness)["user"]["color"] in PALETTE
    await eventually(
        lambda: (
            (ada.awareness.get_local_state() or {}).get("file") == "main.py"
            and ada.awareness.get_local_state()["user"]["color"] == seen(witness)["user"]["color"]
        ),
        what="Ada's own state: her change and her colour",
    )
    for c in (witness, ada):
        await c.close()


async def test_a_viewer_learns_the_colour_the_others_see(start_server) -> None:
    """Viewers are relayed only the participants' states; their own stamped state still comes back."""
    server = await start_server(secret=SECRET, awareness_tick_ms=20)
    room = "viewer-colour"
    editor = await YClient.connect(server.ws(room) + "?token=" + mint(SECRET, room, "editor", "Ed"))
    viewer = await YClient.connect(server.ws(room) + "?token=" + mint(SECRET, room, "viewer", "Vi"))
    await editor.set_awareness({"user": {"name": "Ed", "color": "#000000"}})
    await viewer.set_awareness({"user": {"name": "Vi", "color": "#000000"}})
    await eventually(lambda: "Vi" in colours(editor), what="the editor sees the viewer")
    seen = colours(editor)["Vi"]
    assert seen in PALETTE
    await eventually(
        lambda: (viewer.awareness.get_local_state() or {}).get("user", {}).get("color") == seen,
        what="the viewer knows the colour the editor sees",
    )
    await editor.close()
    await viewer.close()
