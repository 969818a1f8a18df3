"""The live role in real Chromium: an owner demotes an editor and the editor's page turns read-only at
once, without a reload (it follows its user's entry in ``meta.roles``); promoted back, it edits again."""

from __future__ import annotations

import pytest

from pairroom.web.auth import mint
from tests.support.browser import (  # noqa: F401  (fixtures)
    ARTIFACTS,
    BROWSER_SECRET,
    OpenPage,
    browser,
    open_page,
    room_name,
    secret_web_server,
    wait_connected,
    wait_file_text,
    web_server,
)

pytestmark = pytest.mark.slow

SET_ROLE = """async ([room, user, role, token]) => (await fetch(`/api/rooms/${room}/roles/${user}`, {
    method: 'PUT', headers: {'content-type': 'application/json', authorization: `Bearer ${token}`},
    body: JSON.stringify({role})})).status"""
EDITABLE = "() => document.querySelector('.cm-content')?.getAttribute('contenteditable') === 'true'"
READ_ONLY = "() => document.querySelector('.cm-content')?.getAttribute('contenteditable') === 'false'"


def test_an_editor_demoted_live_turns_read_only(open_page: OpenPage, secret_web_server, request) -> None:  # type: ignore[no-untyped-def]
    room = room_name(request)
    owner_token = mint(BROWSER_SECRET, room, "owner", "Mentor", user_id="mentor")
    owner = open_page("owner", f"/r/{room}?token={owner_token}", server=secret_web_server)
    wait_connected(owner)
    owner.fill("#new-file-path", "main.py")
    owner.press("#new-file-path", "Enter")
    owner.wait_for_function("() => window.pairroom.currentPath === 'main.py'")
    owner.evaluate("() => window.pairroom.files.get('main.py').insert(0, 'print(1)\\n')")

    editor = open_page(
        "editor",
        f"/r/{room}?token={mint(BROWSER_SECRET, room, 'editor', 'Ed', user_id='ed')}",
        server=secret_web_server,
    )
    wait_connected(editor)
    editor.wait_for_function("() => window.pairroom.currentPath === 'main.py'")
    editor.wait_for_function(EDITABLE)
    assert editor.inner_text("#role-badge") == "editor"
    assert editor.is_visible("#new-file-form") and editor.is_visible("#comment-line")
    editor.evaluate("() => { window.notReloaded = true }")
    editor.click(".cm-content")
    editor.keyboard.press("Control+End")
    editor.keyboard.type("x = 2")
    wait_file_text(owner, "main.py", "print(1)\nx = 2")

    assert owner.evaluate(SET_ROLE, [room, "ed", "viewer", owner_token]) == 200
    editor.wait_for_selector("#role-badge:text-is('Viewer · read-only')")
    editor.wait_for_function(READ_ONLY)
    assert editor.evaluate("() => window.notReloaded") is True, "the page changed without a reload"
    assert editor.evaluate("() => window.pairroom.role") == "viewer"
    assert editor.is_hidden("#new-file-form") and editor.is_hidden("#comment-line")
    assert editor.is_hidden("#file-tree button.icon"), "no rename or delete buttons"
    editor.click(".cm-content")
    editor.keyboard.type("typed after the demotion")
    owner.evaluate("() => window.pairroom.files.get('main.py').insert(0, '# owner\\n')")  # a barrier
    wait_file_text(editor, "main.py", "# owner\nprint(1)\nx = 2")
    editor.screenshot(path=str(ARTIFACTS / "live-role-demoted.png"))

    assert owner.evaluate(SET_ROLE, [room, "ed", "editor", owner_token]) == 200
    editor.wait_for_selector("#role-badge:text-is('editor')")
    editor.wait_for_function(EDITABLE)
    assert editor.is_visible("#new-file-form")
    editor.click(".cm-content")
    editor.keyboard.press("Control+End")
    editor.keyboard.type("!")
    wait_file_text(owner, "main.py", "# owner\nprint(1)\nx = 2!")
