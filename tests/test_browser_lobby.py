"""The lobby on a server with a secret: a new room comes with an owner, an editor and a viewer link.

The open-mode lobby (one room link) is tested in ``test_browser.py``.
"""

from __future__ import annotations

import pytest

from pairroom.web.auth import verify
from tests.support.browser import (  # noqa: F401  (fixtures)
    ARTIFACTS,
    BROWSER_SECRET,
    OpenPage,
    browser,
    editor_text,
    open_page,
    room_name,
    secret_web_server,
    wait_connected,
    wait_file_text,
    web_server,
)

pytestmark = pytest.mark.slow


def test_a_secret_server_lobby_gives_owner_editor_and_viewer_links(  # type: ignore[no-untyped-def]
    open_page: OpenPage, secret_web_server, request
) -> None:
    room = room_name(request).replace(".", "-")[:60]
    lobby = open_page(
        "lobby", "/", name="Ada", server=secret_web_server, permissions=["clipboard-read", "clipboard-write"]
    )
    # the join field's example is a link to this server, not to a default port
    assert lobby.get_attribute("#join-link", "placeholder") == f"{secret_web_server.http}/r/…"
    lobby.fill("#create-name", room)
    lobby.press("#create-name", "Enter")
    lobby.wait_for_selector("#created-invites:not([hidden])")
    assert lobby.is_hidden("#created")  # the open-mode link would let nobody in here
    roles = lobby.eval_on_selector_all("#invite-list li", "(rows) => rows.map((r) => r.dataset.role)")
    assert roles == ["owner", "editor", "viewer"]
    links = {role: lobby.input_value(f"#invite-{role}") for role in roles}
    for role, link in links.items():
        assert link.startswith(f"{secret_web_server.http}/r/{room}?token="), link
        principal = verify(BROWSER_SECRET, link.split("?token=", 1)[1], room)
        assert principal.role.value == role
    assert verify(BROWSER_SECRET, links["owner"].split("?token=", 1)[1], room).name == "Ada"

    # Each link is copied by its own labelled button.
    lobby.click("button[aria-label='Copy the viewer link']")
    lobby.wait_for_selector("#invite-status:has-text('Viewer link copied.')")
    assert lobby.evaluate("() => navigator.clipboard.readText()") == links["viewer"]
    lobby.screenshot(path=str(ARTIFACTS / "lobby-invites.png"))

    # The owner opens the room (it starts with the starter main.py); the editor link can type over it.
    lobby.click("#open-owner")
    wait_connected(lobby)
    lobby.wait_for_function("() => window.pairroom.currentPath === 'main.py'")
    assert lobby.inner_text("#role-badge") == "owner"
    path = lambda link: link.split(secret_web_server.http, 1)[1]
    editor = open_page("editor", path(links["editor"]), name="Ed", server=secret_web_server)
    wait_connected(editor)
    editor.wait_for_function("() => window.pairroom.currentPath === 'main.py'")
    editor.click(".cm-content")
    editor.keyboard.press("Control+A")
    editor.keyboard.type("print('from the editor link')")
    wait_file_text(lobby, "main.py", "print('from the editor link')")

    # The viewer link opens a read-only room with the viewer badge: its keys change nothing.
    viewer = open_page("viewer", path(links["viewer"]), name="Vi", server=secret_web_server)
    wait_connected(viewer)
    wait_file_text(viewer, "main.py", "print('from the editor link')")
    assert viewer.inner_text("#role-badge") == "Viewer · read-only"
    assert viewer.get_attribute(".cm-content", "contenteditable") == "false"
    viewer.click(".cm-content")
    viewer.keyboard.type("typed by the viewer")
    editor.keyboard.type(" # done")  # a barrier: once this reaches the viewer, its own keys would have too
    wait_file_text(viewer, "main.py", "print('from the editor link') # done")
    assert "viewer" not in editor_text(viewer)
    assert "viewer" not in editor_text(lobby)
