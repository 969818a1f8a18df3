"""The shipped extensions in a real Chromium: ``pairroom-ruff``'s browser module shows a diagnostic of
the server's ruff as an editor mark, and a ``pairroom-classroom`` poll is seen by two pages, voted
on and stored in the room's recording (its document log and its timeline).

Both are the packages in ``extensions/`` (installed by ``make install-dev``), loaded by their entry
points and checked against the catalog shipped in ``extensions/catalog.json``."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pairroom import extension_loader
from pairroom.config import Settings
from pairroom.web.auth import mint

from .support.browser import (  # noqa: F401
    ARTIFACTS,
    BROWSER_SECRET,
    WebServer,
    browser,
    ensure_build,
    open_page,
    room_name,
)

CATALOG = Path(__file__).resolve().parent.parent / "extensions" / "catalog.json"


@pytest.fixture(scope="module")
def web_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    static_dir = ensure_build()
    work = tmp_path_factory.mktemp("shipped-extensions")
    # the probe (tests/support/pairroom-readonly-probe) asks for doc.read only and tries to write on every join
    extensions = tuple(
        extension_loader.load(
            ["ruff", "classroom", "readonly-probe"], lambda name: {"debounce_ms": "100"} if name == "ruff" else {}
        )
    )
    settings = dataclasses.replace(
        Settings(),
        port=0,
        db=f"sqlite:///{work / 'pairroom.db'}",
        log_format="text",
        kernels=False,
        secret=BROWSER_SECRET,
        extension_catalog=str(CATALOG),
    )
    server = WebServer(settings, static_dir, extensions=extensions)
    server.start()
    yield server
    server.stop()


def token(room: str, role: str, name: str) -> str:
    return mint(BROWSER_SECRET, room, role, name, ttl_seconds=600, user_id=f"{name.lower()}-id")


def switch_on(server: WebServer, room: str, name: str) -> None:
    answer = httpx.put(
        server.url(f"/api/rooms/{room}/extensions"),
        json={name: True},
        headers={"Authorization": f"Bearer {token(room, 'owner', 'Ada')}"},
    )
    assert answer.status_code == 200, answer.text


def wait_room(page) -> None:  # type: ignore[no-untyped-def]
    page.wait_for_function("() => window.pairroom && window.pairroom.provider.synced")


def test_ruff_marks_a_diagnostic_in_the_editor(open_page, web_server, request):
    room = room_name(request)
    switch_on(web_server, room, "ruff")
    ada = open_page("ada-owner", f"/r/{room}?token={token(room, 'owner', 'Ada')}")
    wait_room(ada)
    ada.fill("#new-file-path", "lint_me.py")
    ada.press("#new-file-path", "Enter")
    ada.locator("#editor .cm-content").click()
    ada.keyboard.type("import os\n\nprint(undefined_name)\n")
    mark = ada.locator(".ext-gutter .ext-mark[data-severity='warning']")
    # ruff may have linted a half-typed line on the way: wait for the text as typed
    ada.locator(".ext-mark[title='ruff: F821 Undefined name `undefined_name`']").wait_for()
    titles = [mark.nth(i).get_attribute("title") for i in range(mark.count())]
    assert titles == ["ruff: F401 `os` imported but unused", "ruff: F821 Undefined name `undefined_name`"], titles
    lines = ada.locator(".cm-line")
    first_top, mark_top = lines.nth(0).bounding_box(), mark.first.bounding_box()
    assert first_top and mark_top and abs(first_top["y"] - mark_top["y"]) < 8, "F401 marks line 1"
    panel = ada.frame_locator(".ext-panel[data-extension='ruff'] iframe")
    panel.locator("li", has_text="lint_me.py:3:7 F821").wait_for()
    ada.locator(".ext-panel[data-extension='ruff']").scroll_into_view_if_needed()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    ada.screenshot(path=str(ARTIFACTS / "extension-ruff-marks.png"))

    # fixed code: the marks go
    ada.keyboard.press("Control+a")
    ada.keyboard.type("print('fine')\n")
    mark.first.wait_for(state="detached")
    panel.locator("text=0 findings").wait_for()


def test_a_classroom_poll_is_seen_by_two_pages_and_recorded(open_page, web_server, request):
    room = room_name(request)
    switch_on(web_server, room, "classroom")
    ada = open_page("ada-owner", f"/r/{room}?token={token(room, 'owner', 'Ada')}")
    bob = open_page("bob-viewer", f"/r/{room}?token={token(room, 'viewer', 'Bob')}")
    wait_room(ada)
    wait_room(bob)
    ada_panel = ada.frame_locator(".ext-panel[data-extension='classroom'] iframe")
    bob_panel = bob.frame_locator(".ext-panel[data-extension='classroom'] iframe")
    ada_panel.locator("#new-question").fill("Which is a mutable type?")
    ada_panel.locator("#new-options").fill("tuple, list, str")
    ada_panel.locator("#ask").click()
    for panel in (ada_panel, bob_panel):
        panel.locator("#question", has_text="Which is a mutable type?").wait_for()
    assert bob_panel.locator("#ask").count() == 0, "a viewer gets no owner controls"
    bob_panel.locator("button", has_text="list").click()
    ada_panel.locator(".count[data-option='1']", has_text="1").wait_for()
    ada_panel.locator("button[data-minutes='5']").click()
    bob_panel.locator("#clock", has_text="4:5").wait_for()  # the timer counts down in every page
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    bob.locator(".ext-panel[data-extension='classroom']").scroll_into_view_if_needed()
    bob.screenshot(path=str(ARTIFACTS / "extension-classroom-poll-viewer.png"))
    ada.locator(".ext-panel[data-extension='classroom']").scroll_into_view_if_needed()
    ada.screenshot(path=str(ARTIFACTS / "extension-classroom-poll-owner.png"))

    # a viewer may vote but not close; a vote for a poll that is not open is refused
    viewer = {"Authorization": f"Bearer {token(room, 'viewer', 'Bob')}"}
    refused = httpx.post(web_server.url(f"/ext/classroom/rooms/{room}/close"), json={}, headers=viewer)
    assert refused.status_code == 403, refused.text
    stale = httpx.post(
        web_server.url(f"/ext/classroom/rooms/{room}/vote"), json={"poll": "x", "choice": 0}, headers=viewer
    )
    assert stale.status_code == 409, stale.text

    off_room = f"{room}-off"
    off = httpx.post(
        web_server.url(f"/ext/classroom/rooms/{off_room}/poll"),
        json={"question": "q", "options": ["a", "b"]},
        headers={"Authorization": f"Bearer {token(off_room, 'owner', 'Ada')}"},
    )
    assert off.status_code == 409 and "off in this room" in off.json()["error"], off.text
    owner_headers = {"Authorization": f"Bearer {token(room, 'owner', 'Ada')}"}
    for body, says in (({"question": "q", "options": ["only one"]}, "2 to 6"), ({"options": ["a", "b"]}, "question")):
        bad = httpx.post(web_server.url(f"/ext/classroom/rooms/{room}/poll"), json=body, headers=owner_headers)
        assert bad.status_code == 400 and says in bad.json()["error"], bad.text
    assert httpx.post(web_server.url(f"/ext/classroom/rooms/{room}/vote"), json={}).status_code == 401

    ada_panel.locator("#close").click()
    for panel in (ada_panel, bob_panel):
        panel.locator(".result", has_text="tuple 0 · list 1 · str 0").wait_for()

    owner = {"Authorization": f"Bearer {token(room, 'owner', 'Ada')}"}
    deadline = time.monotonic() + 10
    marks: list[dict[str, object]] = []
    while time.monotonic() < deadline:  # events are written in batches (0.5 s)
        timeline = httpx.get(web_server.url(f"/api/rooms/{room}/timeline"), headers=owner)
        assert timeline.status_code == 200, timeline.text
        marks = [m for m in timeline.json()["marks"] if m["kind"] == "extension"]
        if any(m.get("action") == "poll.closed" for m in marks):
            break
        time.sleep(0.2)
    closed = next(m for m in marks if m.get("action") == "poll.closed")
    assert closed["extension"] == "classroom" and closed["counts"] == [0, 1, 0] and closed["user"] == "ada-id"
    # and in the document's log: the room's state as stored has the result
    files = httpx.get(web_server.url(f"/api/rooms/{room}/extensions"), headers=owner)
    assert files.status_code == 200
    shown = httpx.get(web_server.url(f"/ext/classroom/rooms/{room}"), headers=viewer).json()
    assert shown["poll"] is None and json.loads(json.dumps(shown["results"]))[0]["counts"] == [0, 1, 0]


def test_the_extensions_panel_for_an_owner_and_a_viewer(open_page, web_server, request):
    room = room_name(request)
    tall = {"viewport": {"width": 1280, "height": 1300}}
    ada = open_page("ada-owner", f"/r/{room}?token={token(room, 'owner', 'Ada')}", **tall)
    bob = open_page("bob-viewer", f"/r/{room}?token={token(room, 'viewer', 'Bob')}", **tall)
    for page in (ada, bob):
        wait_room(page)
        page.click("#extensions-details > summary")
        page.locator("#extension-list li[data-extension='readonly-probe'] .ext-last-error").wait_for()
    for page in (ada, bob):
        ruff = page.locator("#extension-list li[data-extension='ruff']")
        assert "✓ verified · local file" in ruff.inner_text(), "the shipped catalog pins the installed 0.1.0"
        assert "change the document" in ruff.inner_text() and "Handed the room itself" in ruff.inner_text()
        probe = page.locator("#extension-list li[data-extension='readonly-probe']")
        text = probe.inner_text()
        assert "unverified · not in catalog" in text and "Held to these" in text
        assert "Last error (on_join): CapabilityError" in text and "did not ask for 'doc.write'" in text
        assert "with its rights" in page.locator("#extensions .trust").inner_text()
        assert page.locator("#catalog-list li[data-catalog='webhook']").count() == 1
    assert ada.locator("input[data-extension='ruff']").is_enabled()
    assert bob.locator("input[data-extension='ruff']").is_disabled(), "read-only for a viewer"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    ada.locator("#extensions").screenshot(path=str(ARTIFACTS / "extensions-panel-owner.png"))
    bob.locator("#extensions").screenshot(path=str(ARTIFACTS / "extensions-panel-viewer.png"))


SQUEEZED = """(id) => { const s = document.getElementById(id); const r = s.getBoundingClientRect();
              return {height: r.height, scroll: s.scrollHeight, client: s.clientHeight} }"""


def test_the_side_column_keeps_people_threads_and_chat_with_panels_on(open_page, web_server, request):
    """Two extension panels on: people, review threads and chat keep their content (the column scrolls
    instead of squeezing them to their headings), each section folds to its heading and stays so after
    a reload, the chat says it is empty and how many messages came while folded, a thread on a blank
    line shows no empty code box; at 390 px wide the same, and long lines wrap."""
    room = room_name(request)
    switch_on(web_server, room, "classroom")
    switch_on(web_server, room, "ruff")
    ada = open_page("ada-owner", f"/r/{room}?token={token(room, 'owner', 'Ada')}")
    wait_room(ada)
    for name in ("classroom", "ruff"):
        ada.locator(f".ext-panel[data-extension='{name}'] iframe").wait_for()
    ada.wait_for_function("() => window.pairroom.currentPath === 'main.py'")

    def not_squeezed(page, least: dict[str, float]) -> None:  # type: ignore[no-untyped-def]
        for section, px in least.items():
            box = page.evaluate(SQUEEZED, section)
            assert box["scroll"] <= box["client"] + 1, f"#{section} is cut: {box}"
            assert box["height"] >= px, f"#{section} is squeezed: {box}"

    # people (one row and the buttons), the threads' empty note, the chat at 14rem
    not_squeezed(ada, {"people": 90, "threads": 60, "chat": 14 * 15 - 1})
    assert ada.is_visible("#people-list li[data-client] .person-name:text-is('Ada')")
    assert ada.inner_text("#chat-empty") == "No messages yet. Everyone here can write, viewers too."
    side = ada.evaluate("() => { const s = document.getElementById('side'); return [s.scrollHeight, s.clientHeight] }")
    assert side[0] > side[1], "the panels are below, in the column's scroll"
    ada.locator(".ext-panel[data-extension='ruff']").scroll_into_view_if_needed()
    assert ada.evaluate("() => document.scrollingElement.scrollHeight") <= 720, "the page itself does not scroll"
    ada.screenshot(path=str(ARTIFACTS / "side-column-panels-1280.png"))
    ada.evaluate("() => { document.getElementById('side').scrollTop = 0 }")

    # A thread on a blank line between two: listed without an empty code box.
    ada.evaluate(
        "() => { const v = window.pairroom.view; v.dispatch({changes: {from: 0, to: v.state.doc.length, insert: 'a = 1\\n\\nb = 2\\n'}});"
        " v.dispatch({selection: {anchor: v.state.doc.line(2).from}}) }"
    )
    ada.click("#comment-line")
    ada.fill("#review-new-comment", "Something goes here")
    ada.locator(".review-thread button", has_text="Comment").first.click()
    ada.locator("#thread-list li.thread-item").wait_for()
    assert ada.locator("#thread-list .thread-code").count() == 0
    assert "Something goes here" in ada.inner_text("#thread-list li.thread-item")
    assert ada.inner_text("#thread-list .thread-where") == "main.py:2"

    # Folding: the heading stays, the content goes, the choice survives a reload.
    ada.click("#people-fold")
    assert ada.get_attribute("#people-fold", "aria-expanded") == "false"
    assert ada.is_hidden("#people-list") and ada.is_visible("#people-title")
    ada.click("#chat-fold")
    ada.evaluate("() => window.pairroom.chat.push([{id: 'x1', text: 'while folded', name: 'Ada', at: Date.now()}])")
    ada.wait_for_selector("#chat-title .fold-summary:text-is('1 new')")
    ada.click(".ext-panel[data-extension='classroom'] .side-toggle")
    assert ada.is_hidden(".ext-panel[data-extension='classroom'] iframe")
    ada.screenshot(path=str(ARTIFACTS / "side-column-folded-1280.png"))
    ada.reload()
    wait_room(ada)
    ada.locator(".ext-panel[data-extension='ruff'] iframe").wait_for()
    assert ada.get_attribute("#people-fold", "aria-expanded") == "false" and ada.is_hidden("#people-list")
    assert ada.get_attribute("#chat-fold", "aria-expanded") == "false"
    assert ada.is_hidden(".ext-panel[data-extension='classroom'] iframe")
    for toggle in ("#people-fold", "#chat-fold", ".ext-panel[data-extension='classroom'] .side-toggle"):
        ada.click(toggle)
    ada.wait_for_selector("#chat-log li:has-text('while folded')")
    assert ada.is_hidden("#chat-empty") and ada.is_visible("#people-list")

    # A phone: one column that the page scrolls; the same sections keep their content; lines wrap.
    ada.set_viewport_size({"width": 390, "height": 844})
    ada.wait_for_function("() => document.querySelector('#editor .cm-content').classList.contains('cm-lineWrapping')")
    not_squeezed(ada, {"people": 90, "threads": 60, "chat": 14 * 15 - 1})
    assert ada.evaluate("() => document.scrollingElement.scrollWidth") <= 390, "nothing runs off the side"
    ada.locator("#side").screenshot(path=str(ARTIFACTS / "side-column-panels-390.png"))
