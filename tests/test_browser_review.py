"""Review threads in the editor, in real Chromium: the gutter, the thread, suggestions, resolving.

Two people in one room (open mode: both are editors). Threads are written into the document by one
browser and read from it by the other; applying a suggestion goes through the server's HTTP API.
"""

from __future__ import annotations

import pytest

from tests.support.browser import (  # noqa: F401  (fixtures)
    ARTIFACTS,
    OpenPage,
    browser,
    editor_text,
    open_page,
    room_name,
    two_people,
    wait_connected,
    wait_file_text,
    web_server,
)

pytestmark = pytest.mark.slow

CODE = "import math\n\ndef area(r):\n    return 3.14 * r * r\n\nprint(area(2))\n"


def share_code(ada, bob) -> None:  # type: ignore[no-untyped-def]
    """Ada creates main.py holding CODE; Bob's editor shows it."""
    ada.fill("#new-file-path", "main.py")
    ada.press("#new-file-path", "Enter")
    ada.wait_for_function("() => window.pairroom.currentPath === 'main.py'")
    ada.evaluate("(code) => window.pairroom.files.get('main.py').insert(0, code)", CODE)
    wait_file_text(bob, "main.py", CODE)
    bob.wait_for_function("(code) => window.pairroom.view.state.doc.toString() === code", arg=CODE)


def put_cursor(page, line: int) -> None:  # type: ignore[no-untyped-def]
    page.evaluate(
        "(n) => { const v = window.pairroom.view; v.focus(); v.dispatch({selection: {anchor: v.state.doc.line(n).from}}) }",
        line,
    )


def test_a_comment_and_a_suggestion_reach_the_other_browser_and_apply_in_both(open_page: OpenPage, request) -> None:  # type: ignore[no-untyped-def]
    room, ada, bob = two_people(open_page, request)
    share_code(ada, bob)

    # Ada comments on line 4 with the button, suggesting a replacement for the line.
    put_cursor(ada, 4)
    ada.click("#comment-line")
    ada.wait_for_selector(".review-draft:has-text('New comment on line 4')")
    ada.fill("#review-new-comment", "Use math.pi here.")
    ada.check("#review-suggest")
    assert ada.input_value("#review-new-suggestion") == "    return 3.14 * r * r"  # starts from the code
    ada.fill("#review-new-suggestion", "    return math.pi * r * r")
    ada.click(".review-draft button[type=submit]")
    ada.wait_for_selector(".review-thread[data-status='open']:has-text('Use math.pi here.')")
    assert ada.query_selector(".review-draft") is None

    # Bob sees the marker in his gutter on line 4, opens the thread: the comment, by Ada, and the suggestion.
    marker = ".review-marker[data-line='4']"
    bob.wait_for_selector(marker)
    assert bob.get_attribute(marker, "aria-label") == "Show 1 review thread on line 4"
    bob.click(marker)
    thread = bob.locator(".review-thread[data-status='open']")
    thread.wait_for()
    assert thread.locator(".review-title").inner_text() == "Review · line 4"
    assert thread.locator(".review-messages li").first.inner_text().startswith("Ada")
    assert "Use math.pi here." in thread.inner_text()
    assert thread.locator(".review-suggestion-text").inner_text() == "    return math.pi * r * r"
    assert bob.get_attribute(marker, "aria-expanded") == "true"
    bob.screenshot(path=str(ARTIFACTS / "review-thread-open.png"))

    # Bob answers; Ada's open thread shows it.
    bob.fill(".review-thread textarea[aria-label='Reply']", "Good catch.")
    bob.press(".review-thread textarea[aria-label='Reply']", "Control+Enter")
    ada.wait_for_selector(".review-thread .review-messages li:has-text('Good catch.')")

    # Someone types above the thread meanwhile: the anchors move with the code.
    ada.evaluate("() => window.pairroom.files.get('main.py').insert(0, '# area of a circle\\n')")
    bob.wait_for_selector(".review-marker[data-line='5']")
    bob.wait_for_selector(".review-thread .review-title:text-is('Review · line 5')")

    # Bob applies the suggestion: the line changes in both browsers, the thread is resolved and closes.
    bob.click(".review-thread button:has-text('Apply suggestion')")
    applied = "# area of a circle\n" + CODE.replace("3.14", "math.pi")
    wait_file_text(ada, "main.py", applied)
    wait_file_text(bob, "main.py", applied)
    for page in (ada, bob):
        page.wait_for_function("(want) => window.pairroom.view.state.doc.toString() === want", arg=applied)
        page.wait_for_selector(".review-marker.resolved[data-line='5']")
        page.wait_for_selector(".review-thread", state="detached")
    # Opened again, the resolved thread says so and carries the server's message.
    ada.click(".review-marker[data-line='5']")
    resolved = ada.locator(".review-thread[data-status='resolved']")
    resolved.wait_for()
    assert resolved.locator(".review-messages li").last.inner_text().startswith("Bob")  # who applied it
    assert "Applied the suggestion." in resolved.inner_text()
    assert resolved.locator(".review-actions button").all_inner_texts() == ["Reopen", "Close"]
    assert resolved.locator(".review-suggestion").is_hidden()  # applied: nothing left to suggest


def test_a_thread_started_from_the_keyboard_is_resolved_for_everyone(open_page: OpenPage, request) -> None:  # type: ignore[no-untyped-def]
    room, ada, bob = two_people(open_page, request)
    share_code(ada, bob)

    # Lines 3-4 selected, Ctrl+Alt+M, type, Ctrl+Enter: no mouse.
    ada.evaluate("""() => { const v = window.pairroom.view; v.focus();
                     v.dispatch({selection: {anchor: v.state.doc.line(3).from + 2, head: v.state.doc.line(4).from + 5}}) }""")
    ada.keyboard.press("Control+Alt+m")
    ada.wait_for_selector(".review-draft:has-text('New comment on lines 3–4')")
    ada.wait_for_function("() => document.activeElement?.id === 'review-new-comment'")
    ada.keyboard.type("Name this function after what it returns.")
    ada.keyboard.press("Control+Enter")
    ada.wait_for_selector(".review-thread[data-status='open'] .review-title:text-is('Review · lines 3–4')")
    thread_id = ada.evaluate("() => [...window.pairroom.doc.getMap('reviews').keys()][0]")
    stored = ada.evaluate("(id) => window.pairroom.doc.getMap('reviews').get(id).toJSON()", thread_id)
    assert stored["path"] == "main.py" and stored["status"] == "open" and stored["suggestion"] is None

    # Bob opens it from the gutter with the keyboard and resolves it: both gutters mark it resolved.
    bob.focus(".review-marker[data-line='3']")
    bob.keyboard.press("Enter")
    bob.locator(".review-thread[data-status='open']").wait_for()
    bob.click(".review-thread button:has-text('Resolve')")
    for page in (ada, bob):
        page.wait_for_selector(".review-marker.resolved[data-line='3']")
        page.wait_for_selector(".review-thread", state="detached")
    assert ada.get_attribute(".review-marker[data-line='3']", "aria-label") == "Show 1 resolved review thread on line 3"
    # Reopened, it is open again everywhere.
    ada.click(".review-marker[data-line='3']")
    ada.click(".review-thread button:has-text('Reopen')")
    bob.wait_for_selector(".review-marker:not(.resolved)[data-line='3']")
    assert editor_text(bob) == CODE  # comments never touch the code
