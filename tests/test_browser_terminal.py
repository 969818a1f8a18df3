"""The terminal panel in Chromium: a real shell in the real sandbox, typed into through xterm.js.

Ada (owner) opens a terminal and runs ``echo hi > x.txt``; ``x.txt`` appears in the file tree. Bob
(viewer) sees the output, cannot type (his keystrokes never leave the page, and a frame he sends
anyway is dropped by the server with a notice), and nothing he tried reaches the shell.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterator

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
        Settings(), port=0, db=f"sqlite:///{db}", log_format="text", kernels=True, kernel_pool_size=1,
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
    narrow = open_page("narrow", f"/r/{room}?token={bob_token}", server=terminal_web_server,
                       viewport={"width": 390, "height": 844})
    wait_connected(narrow)
    narrow.wait_for_function("() => window.pairroom.terminals.lines().some((l) => l.trim() === 'listed-2')")
    narrow.locator("#terminals").scroll_into_view_if_needed()
    narrow.screenshot(path=str(Path(ARTIFACTS) / "terminal-390.png"), full_page=True)
    box = narrow.locator("#term-screen").bounding_box()
    assert box is not None and box["width"] <= 390
