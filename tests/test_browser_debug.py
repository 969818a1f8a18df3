"""Debugging together in real browsers: two people, a real pairroom with a sandboxed kernel.

Ada clicks the gutter to set a breakpoint and Bob sees it; Ada starts the debugger; both pages show
the stop banner, the highlighted line and a local variable, read from the document the server wrote
once. Each page is photographed into ``tests/artifacts/``.
"""

from __future__ import annotations

import httpx
import pytest

from tests.support.browser import (  # noqa: F401  (fixtures)
    ARTIFACTS,
    OpenPage,
    browser,
    kernel_web_server,
    open_page,
    room_name,
    wait_connected,
    wait_file_text,
    web_server,
)
from tests.test_browser import new_file, wait_same_text, wait_until

pytestmark = pytest.mark.slow

CODE = "x = 40\ny = x + 2\nprint(y)\n"


def click_gutter(page, line: int, button: str = "left") -> None:  # type: ignore[no-untyped-def]
    """Click the breakpoint gutter beside ``line`` (1-based) of the open file."""
    gutter = page.locator(".cm-debug-gutter").bounding_box()
    row = page.locator(".cm-line").nth(line - 1).bounding_box()
    assert gutter is not None and row is not None
    page.mouse.click(gutter["x"] + gutter["width"] / 2, row["y"] + row["height"] / 2, button=button)


def test_a_gutter_breakpoint_and_the_stop_are_seen_in_both_browsers(
    kernel_web_server, open_page: OpenPage, request
) -> None:  # type: ignore[no-untyped-def]
    room = room_name(request)
    ada = open_page("ada", f"/r/{room}", name="Ada", server=kernel_web_server)
    bob = open_page("bob", f"/r/{room}", name="Bob", server=kernel_web_server)
    wait_connected(ada)
    wait_connected(bob)
    new_file(ada, "main.py")
    ada.click(".cm-content")
    ada.keyboard.insert_text(CODE)
    wait_same_text(ada, bob, "main.py")

    click_gutter(ada, 2)
    for page in (ada, bob):  # the breakpoint is in the document: both gutters show it, with its author
        marker = page.wait_for_selector(".debug-breakpoint[data-line='2']")
        assert marker is not None
        page.wait_for_function(
            "() => document.querySelector(\".debug-breakpoint[data-line='2']\").title.includes('Breakpoint by Ada')"
        )
    assert bob.locator("#debug-follow").is_checked() is False  # watchers are not dragged to the stop

    ada.click("#debug-start:enabled")
    for page in (ada, bob):
        page.wait_for_selector("#debug-banner:has-text('Stopped at main.py:2 (Ada')", timeout=60_000)
        page.wait_for_selector(".cm-debug-stopped")
        variable = page.wait_for_selector("#debug-variables .debug-var:has-text('x = 40')")
        assert variable is not None
        assert page.locator("#debug-stack .debug-frame").first.inner_text().endswith("main.py:2")
    assert ada.is_visible("#debug-stop")  # the starter may stop the session
    ada.screenshot(path=str(ARTIFACTS / "test_browser_debug-ada-stopped.png"))
    bob.screenshot(path=str(ARTIFACTS / "test_browser_debug-bob-stopped.png"))

    # Bob steps over: both see line 3 and y
    bob.click("#debug-next:enabled")
    for page in (ada, bob):
        page.wait_for_selector("#debug-banner:has-text('Stopped at main.py:3')", timeout=30_000)
        page.wait_for_selector("#debug-variables .debug-var:has-text('y = 42')")
    ada.fill("#debug-eval-input", "y * 2")
    ada.press("#debug-eval-input", "Enter")
    ada.wait_for_selector("#debug-eval-result:has-text('y * 2 = 84')")
    ada.click("#debug-continue:enabled")
    for page in (ada, bob):
        page.wait_for_selector("#debug-status:has-text('Debug session ended')", timeout=30_000)
        page.wait_for_selector(".debug-breakpoint[data-line='2']")  # the breakpoint stays


def test_a_stop_in_another_file_shows_a_banner_with_jump_and_follow_moves_only_who_asked(
    kernel_web_server, open_page: OpenPage, request
) -> None:  # type: ignore[no-untyped-def]
    room = room_name(request)
    ada = open_page("ada", f"/r/{room}", name="Ada", server=kernel_web_server)
    bob = open_page("bob", f"/r/{room}", name="Bob", server=kernel_web_server)
    wait_connected(ada)
    wait_connected(bob)
    new_file(ada, "helper.py")
    ada.click(".cm-content")
    ada.keyboard.insert_text("def add(a, b):\n    total = a + b\n    return total\n")
    new_file(ada, "main.py")
    ada.click(".cm-content")
    ada.keyboard.insert_text("import helper\nprint(helper.add(2, 3))\n")
    wait_file_text(bob, "main.py", "import helper\nprint(helper.add(2, 3))\n")
    wait_file_text(bob, "helper.py", "def add(a, b):\n    total = a + b\n    return total\n")
    bob.evaluate("window.pairroom.openFile('helper.py')")
    bob.wait_for_function("() => window.pairroom.currentPath === 'helper.py'")
    click_gutter(bob, 2)
    bob.wait_for_selector(".debug-breakpoint[data-line='2']")
    bob.check("#debug-follow")  # Bob follows the debugger; Ada does not
    bob.evaluate("window.pairroom.openFile('main.py')")

    ada.click("#debug-start:enabled")
    for page in (ada, bob):
        page.wait_for_selector('#debug-banner:has-text("Stopped at helper.py:2 (Bob\'s breakpoint)")', timeout=60_000)
    # the follower was taken to the stop; the other page stays where it was, with a Jump button
    bob.wait_for_function("() => window.pairroom.currentPath === 'helper.py'")
    bob.wait_for_selector(".cm-debug-stopped")
    assert ada.evaluate("window.pairroom.currentPath") == "main.py"
    ada.wait_for_selector("#debug-variables .debug-var:has-text('a = 2')")
    ada.click("#debug-jump")
    ada.wait_for_function("() => window.pairroom.currentPath === 'helper.py'")
    ada.wait_for_selector(".cm-debug-stopped")
    ada.screenshot(path=str(ARTIFACTS / "test_browser_debug-ada-jumped.png"))
    ada.click("#debug-continue:enabled")
    for page in (ada, bob):
        page.wait_for_selector("#debug-status:has-text('Debug session ended')", timeout=30_000)


def test_the_debug_panel_is_one_line_while_nobody_debugs_and_opens_for_a_session(
    kernel_web_server, open_page: OpenPage, request
) -> None:  # type: ignore[no-untyped-def]
    """At 1280x720 with the output, the debug panel and the terminal stacked under the editor."""
    room = room_name(request)
    ada = open_page("ada", f"/r/{room}", name="Ada", server=kernel_web_server)
    wait_connected(ada)
    new_file(ada, "main.py")
    ada.click(".cm-content")
    ada.keyboard.insert_text(CODE)
    ada.wait_for_selector("#terminals:not([hidden])")
    ada.wait_for_selector("#debug-start:has-text('Debug main.py'):enabled")
    assert ada.get_attribute("#debug", "data-folded") == "true"
    assert ada.is_hidden("#debug-variables") and ada.is_hidden("#debug-continue")
    assert ada.is_visible("#debug-follow")
    folded = ada.locator("#debug").bounding_box()
    editor = ada.locator(".cm-editor").bounding_box()
    assert folded is not None and editor is not None
    assert folded["height"] < 48, folded  # one line
    assert editor["height"] > 200, editor  # the editor keeps its room
    ada.screenshot(path=str(ARTIFACTS / "test_browser_debug-folded-1280x720.png"))

    click_gutter(ada, 2)
    ada.wait_for_selector(".debug-breakpoint[data-line='2']")
    ada.click("#debug-start:enabled")
    ada.wait_for_selector("#debug-banner:has-text('Stopped at main.py:2')", timeout=60_000)
    assert ada.get_attribute("#debug", "data-folded") == "false"
    ada.wait_for_selector("#debug-variables .debug-var:has-text('x = 40')")
    assert ada.is_visible("#debug-continue")
    ada.screenshot(path=str(ARTIFACTS / "test_browser_debug-open-1280x720.png"))
    ada.click("#debug-fold")  # folded by hand while stopped: the banner and controls go, the line stays
    assert ada.get_attribute("#debug", "data-folded") == "true"
    ada.click("#debug-fold")
    ada.click("#debug-continue:enabled")
    ada.wait_for_selector("#debug-status:has-text('Debug session ended')", timeout=30_000)
    ada.wait_for_selector("#debug[data-folded='true']")

    # a logpoint, set with a right-click: its line is printed into the output, and nothing stops
    click_gutter(ada, 2)  # the breakpoint goes
    ada.wait_for_selector(".debug-breakpoint[data-line='2']", state="detached")
    ada.once("dialog", lambda dialog: dialog.accept("log: y is {y}, twice {y * 2}"))
    click_gutter(ada, 3, button="right")
    marker = ada.wait_for_selector(".debug-breakpoint.logpoint[data-line='3']")
    assert marker.inner_text() == "◆" and "Logpoint by Ada" in (marker.get_attribute("title") or "")
    ada.click("#debug-start:enabled")
    ada.wait_for_selector("#run-list :text('y is 42, twice 84')", timeout=60_000)
    ada.wait_for_selector("#debug-status:has-text('Debug session ended')", timeout=30_000)
    ada.screenshot(path=str(ARTIFACTS / "test_browser_debug-logpoint.png"))

    # the replay page shows where execution stopped then, and the variables at that moment
    ada.close()  # the recorded session ends at the last leave
    api = kernel_web_server.url(f"/api/rooms/{room}")
    with httpx.Client(timeout=5) as http:
        wait_until(
            lambda: [s["end"] is not None for s in http.get(f"{api}/sessions").json()["sessions"]] == [True],
            "the session has ended",
        )
    replay = open_page("replay", f"/r/{room}/replay", server=kernel_web_server)
    replay.wait_for_selector("#replay-play:enabled")
    replay.select_option("#replay-speed", "4")
    replay.click("#replay-play")
    replay.wait_for_function(  # one check of both: the stop passes by in half a second at 4x
        """() => document.querySelector('#replay-debug-where')?.textContent === "Stopped at main.py:2 (Ada's breakpoint)"
            && document.querySelector('#replay-debug-variables')?.textContent.includes('x = 40')""",
        timeout=60_000,
        polling=20,
    )
    replay.click("#replay-play")  # pause there for the photograph
    replay.screenshot(path=str(ARTIFACTS / "test_browser_debug-replay.png"))
