"""The terminal panel in Chromium: a real shell in the real sandbox, typed into through xterm.js.

Ada (owner) opens a terminal and runs ``echo hi > x.txt``; ``x.txt`` appears in the file tree. Bob
(viewer) sees the output, cannot type (his keystrokes never leave the page, and a frame he sends
anyway is dropped by the server with a notice), and nothing he tried reaches the shell.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest

from pairroom.config import Settings
from pairroom.web.auth import Role, mint
from tests.support.browser import (  # noqa: F401  (fixtures)
    ARTIFACTS,
    BROWSER_SECRET,
    OpenPage,
    WebServer,
    browser,
    ensure_build,
    open_page,
    room_name,
    wait_connected,
    web_server,
)


@pytest.fixture(scope="module")
def terminal_web_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    """pairroom with a secret and the sandbox on (terminals follow the kernels' switch)."""
    static_dir = ensure_build()
    db = tmp_path_factory.mktemp("web-terminal") / "pairroom.db"
    settings = dataclasses.replace(
        Settings(),
        port=0,
        db=f"sqlite:///{db}",
        log_format="text",
        kernels=True,
        kernel_pool_size=1,
        secret=BROWSER_SECRET,
    )
    server = WebServer(settings, static_dir)
    server.start()
    try:
        if server.app is None or getattr(server.app.state, "terminals", None) is None:
            pytest.skip("the sandbox is not available here (scripts/ensure-bwrap, scripts/ensure-kernel-env)")
        yield server
    finally:
        server.stop()


def screen_text(page) -> str:  # type: ignore[no-untyped-def]
    return "\n".join(page.evaluate("() => window.pairroom.terminals.lines()"))


def test_a_terminal_in_the_room_runs_a_command_a_viewer_watches_and_cannot_type(
    open_page: OpenPage, terminal_web_server: WebServer, request: pytest.FixtureRequest
) -> None:
    room = room_name(request)
    ada_token = mint(BROWSER_SECRET, room, Role.OWNER, "Ada", user_id="ada")
    bob_token = mint(BROWSER_SECRET, room, Role.VIEWER, "Bob", user_id="bob")
    ada = open_page("ada", f"/r/{room}?token={ada_token}", server=terminal_web_server)
    wait_connected(ada)
    ada.wait_for_selector("#terminals:not([hidden])")
    ada.click("#term-new")
    ada.wait_for_function("() => window.pairroom.terminals.canWrite()")
    ada.wait_for_function("() => window.pairroom.terminals.lines().some((l) => l.includes('$'))")
    ada.click("#term-screen")
    ada.keyboard.type("echo hi > x.txt; cat x.txt")
    ada.keyboard.press("Enter")
    ada.wait_for_function("() => window.pairroom.terminals.lines().some((l) => l.trim() === 'hi')")
    ada.wait_for_selector("#file-tree >> text=x.txt")
    ada.wait_for_selector("#term-commands >> text=Ada ran")

    bob = open_page("bob", f"/r/{room}?token={bob_token}", server=terminal_web_server)
    wait_connected(bob)
    bob.wait_for_function("() => window.pairroom.terminals.lines().some((l) => l.trim() === 'hi')")
    assert bob.evaluate("() => window.pairroom.terminals.canWrite()") is False
    assert bob.is_visible("#term-readonly") and not bob.is_visible("#term-new")
    bob.wait_for_selector("#file-tree >> text=x.txt")

    # Bob types into his xterm: nothing leaves the page ...
    bob.click("#term-screen")
    bob.keyboard.type("touch typed-by-bob")
    bob.keyboard.press("Enter")
    # ... and a frame sent past the page is dropped by the server, with a notice
    terminal_id = bob.evaluate("() => window.pairroom.terminals.id()")
    notice = bob.evaluate(
        """([room, id, token]) => new Promise((resolve) => {
            const ws = new WebSocket(`ws://${location.host}/terminal/${room}/${id}?token=${token}`)
            ws.onopen = () => ws.send(JSON.stringify(['stdin', 'touch sent-by-bob\\r']))
            ws.onmessage = (event) => {
              const [kind, text] = JSON.parse(event.data)
              if (kind === 'notice') { resolve(text); ws.close() }
            }
        })""",
        [room, terminal_id, bob_token],
    )
    assert "read-only" in notice

    ada.click("#term-screen")
    ada.keyboard.type("ls; echo listed-$((1+1))")
    ada.keyboard.press("Enter")
    ada.wait_for_function("() => window.pairroom.terminals.lines().some((l) => l.trim() === 'listed-2')")
    bob.wait_for_function("() => window.pairroom.terminals.lines().some((l) => l.trim() === 'listed-2')")
    assert "typed-by-bob" not in screen_text(ada) and "sent-by-bob" not in screen_text(ada)
    assert "x.txt" in screen_text(bob)
    assert not bob.is_visible("#file-tree >> text=sent-by-bob")

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    bob.screenshot(path=str(Path(ARTIFACTS) / "terminal-viewer.png"))
    ada.screenshot(path=str(Path(ARTIFACTS) / "terminal-owner.png"))

    # the panel works at 390 px wide
    narrow = open_page(
        "narrow", f"/r/{room}?token={bob_token}", server=terminal_web_server, viewport={"width": 390, "height": 844}
    )
    wait_connected(narrow)
    narrow.wait_for_function("() => window.pairroom.terminals.lines().some((l) => l.trim() === 'listed-2')")
    narrow.locator("#terminals").scroll_into_view_if_needed()
    narrow.screenshot(path=str(Path(ARTIFACTS) / "terminal-390.png"), full_page=True)
    box = narrow.locator("#term-screen").bounding_box()
    assert box is not None and box["width"] <= 390

    # Bob proposes a command from his panel; Ada runs it from hers
    bob.fill("#term-propose-line", "echo proposed-$((2+3))")
    bob.click("#term-propose button[type=submit]")
    ada.click("#term-proposals button:has-text('Run')")
    ada.wait_for_function("() => window.pairroom.terminals.lines().some((l) => l.trim() === 'proposed-5')")
    ada.wait_for_selector("#term-commands >> text=approved by Ada")

    # Ada, an owner, lets Bob type, live, and stops him again; Bob's panel follows
    assert not bob.is_visible("#term-people"), "only owners grant"
    ada.click("#term-people button[aria-label='Let Bob type']")
    bob.wait_for_function("() => window.pairroom.terminals.canWrite()")
    ada.wait_for_selector("#term-people >> text=Bob · may type")
    assert not bob.is_visible("#term-readonly") and not bob.is_visible("#term-propose")
    bob.click("#term-screen")
    bob.keyboard.type("echo bob-$((4+4))")
    bob.keyboard.press("Enter")
    ada.wait_for_function("() => window.pairroom.terminals.lines().some((l) => l.trim() === 'bob-8')")
    ada.screenshot(path=str(Path(ARTIFACTS) / "terminal-owner-grants.png"))
    ada.click("#term-people button[aria-label='Stop Bob typing']")
    bob.wait_for_function("() => !window.pairroom.terminals.canWrite()")
    assert bob.is_visible("#term-readonly")

    # the shell exits: everyone is told, and Ada restarts it from the panel
    ada.click("#term-screen")
    ada.keyboard.type("exit 3")
    ada.keyboard.press("Enter")
    bob.wait_for_selector("#term-notice >> text=exited with code 3")
    ada.wait_for_selector("#term-restart", state="visible")
    assert not bob.is_visible("#term-restart"), "a viewer cannot restart"
    ada.click("#term-restart")
    ada.wait_for_function("() => window.pairroom.terminals.canWrite()")
    ada.click("#term-screen")
    ada.keyboard.type("echo again-$((5+5))")
    ada.keyboard.press("Enter")
    bob.wait_for_function("() => window.pairroom.terminals.lines().some((l) => l.trim() === 'again-10')")


def test_the_replay_page_shows_the_terminal_at_the_moment_sought(
    open_page: OpenPage, terminal_web_server: WebServer, request: pytest.FixtureRequest
) -> None:
    """A recorded session with an edit and a command, then another of each two seconds later: on the
    replay page a seek between them shows the first output and the first text only, a seek past the
    second shows both, and a seek back starts the terminal over (docs/terminals.md, "Recording")."""
    room = room_name(request)
    token = mint(BROWSER_SECRET, room, Role.OWNER, "Ada", user_id="ada")
    ada = open_page("ada", f"/r/{room}?token={token}", server=terminal_web_server)
    wait_connected(ada)
    ada.fill("#new-file-path", "main.py")
    ada.press("#new-file-path", "Enter")
    ada.click(".cm-content")
    ada.keyboard.type("one = 1")
    ada.click("#term-new")
    ada.wait_for_function("() => window.pairroom.terminals.lines().some((l) => l.includes('$'))")
    ada.click("#term-screen")
    ada.keyboard.type("echo first-$((1+1))")
    ada.keyboard.press("Enter")
    ada.wait_for_function("() => window.pairroom.terminals.lines().some((l) => l.trim() === 'first-2')")
    time.sleep(2.0)
    ada.click(".cm-content")
    ada.keyboard.press("Control+End")
    ada.keyboard.type("; two = 2")
    ada.click("#term-screen")
    ada.keyboard.type("echo second-$((2+2))")
    ada.keyboard.press("Enter")
    ada.wait_for_function("() => window.pairroom.terminals.lines().some((l) => l.trim() === 'second-4')")
    terminal_id = ada.evaluate("() => window.pairroom.terminals.id()")

    api = terminal_web_server.url(f"/api/rooms/{room}")
    headers = {"authorization": f"Bearer {token}"}
    with httpx.Client(timeout=5, headers=headers) as http:
        wait(lambda: http.get(f"{api}/files").json()["files"].get("main.py") == "one = 1; two = 2", "the text")
        ada.close()  # the session ends at the last leave
        wait(lambda: [s["end"] is not None for s in http.get(f"{api}/sessions").json()["sessions"]] == [True], "ended")
        wait(lambda: "second-4" in http.get(f"{api}/casts/{terminal_id}").text, "the terminal's recording is stored")
        marks = http.get(f"{api}/timeline").json()["marks"]
    ran = {m["line"]: datetime.fromisoformat(m["at"]) for m in marks if m["kind"] == "terminal" and "line" in m}
    between = ran["echo first-$((1+1))"] + (ran["echo second-$((2+2))"] - ran["echo first-$((1+1))"]) / 2
    after = ran["echo second-$((2+2))"] + timedelta(seconds=1)

    replay = open_page("replay", f"/r/{room}/replay?token={token}", server=terminal_web_server)
    replay.wait_for_selector("#replay-play:enabled")
    replay.wait_for_selector("#replay-terminals:not([hidden])")
    titles = replay.eval_on_selector_all(".replay-mark.mark-terminal", "(marks) => marks.map((m) => m.title)")
    assert any(t.startswith("Ada ran `echo second-$((2+2))` in Terminal 1 at ") for t in titles), titles

    def seek(at: datetime) -> None:
        replay.evaluate(
            """(at) => {
                const el = document.getElementById('replay-scrubber')
                el.value = String(Date.parse(at) - Date.parse(window.pairroom.replay.session.start))
                el.dispatchEvent(new Event('change'))
            }""",
            at.isoformat(),
        )

    def shows(text: str) -> str:
        return f"() => (window.pairroom.replay.terminal?.lines ?? []).some((l) => l.trim() === {text!r})"

    editor = "(want) => window.pairroom.view.state.doc.toString() === want"
    seek(between)
    replay.wait_for_function(shows("first-2"))
    replay.wait_for_function(editor, arg="one = 1")
    assert not replay.evaluate(shows("second-4"))
    seek(after)
    replay.wait_for_function(shows("second-4"))
    replay.wait_for_function(editor, arg="one = 1; two = 2")
    assert replay.evaluate(shows("first-2"))
    assert "Ada ran `echo second-$((2+2))`" in replay.inner_text("#replay-term-caption")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    replay.screenshot(path=str(Path(ARTIFACTS) / "replay-terminal.png"), full_page=True)
    seek(between)  # back: the page reconnects from there and the terminal starts over
    replay.wait_for_function(editor, arg="one = 1")
    replay.wait_for_function(f"() => window.pairroom.replay.terminal?.settled && !({shows('second-4')})()")
    assert replay.evaluate(shows("first-2"))
    assert replay.inner_text("#replay-error") == ""
    replay.set_viewport_size({"width": 390, "height": 844})  # the terminal scrolls sideways on a phone
    replay.locator("#replay-terminals").scroll_into_view_if_needed()
    replay.screenshot(path=str(Path(ARTIFACTS) / "replay-terminal-390.png"), full_page=True)
    box = replay.locator("#replay-term-screen").bounding_box()
    assert box is not None and box["width"] <= 390


def wait(check, what: str, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.1)
