"""The people list in real Chromium: raised hands in the order raised, follow mode, and an owner who
asks everyone to follow them (on a server with a secret, so presence carries server-stamped roles)."""

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
    web_server,
)

pytestmark = pytest.mark.slow

LONG = "".join(f"line_{n} = {n}\n" for n in range(1, 201))
SCROLL = """(n) => { const v = window.pairroom.view;
                      v.dispatch({effects: v.constructor.scrollIntoView(v.state.doc.line(n).from, {y: 'start'})}) }"""


def names_in_order(page) -> list[str]:  # type: ignore[no-untyped-def]
    return page.eval_on_selector_all("#people-list li .person-name", "(els) => els.map((e) => e.textContent)")  # type: ignore[no-any-return]


def visible(page) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """The lines at least half on screen in ``page``'s editor."""
    return page.evaluate(  # type: ignore[no-any-return]
        """() => { const v = window.pairroom.view; const r = v.scrollDOM.getBoundingClientRect(), half = v.defaultLineHeight / 2;
                   const top = v.lineBlockAtHeight(r.top - v.documentTop + half), end = v.lineBlockAtHeight(r.bottom - v.documentTop - half);
                   return {from: v.state.doc.lineAt(top.from).number, to: v.state.doc.lineAt(end.from).number} }"""
    )


ON_SCREEN = """(text) => { const scroller = window.pairroom.view.scrollDOM.getBoundingClientRect();
                          const line = [...document.querySelectorAll('.cm-line')].find((l) => l.textContent === text);
                          const r = line?.getBoundingClientRect();
                          return !!r && r.top >= scroller.top - 1 && r.bottom <= scroller.bottom + 1 }"""


def on_screen(page, text: str) -> bool:  # type: ignore[no-untyped-def]
    """A line with exactly ``text`` is inside the editor's visible area."""
    return page.evaluate(ON_SCREEN, text)  # type: ignore[no-any-return]


def new_file(page, path: str, content: str = "") -> None:  # type: ignore[no-untyped-def]
    page.fill("#new-file-path", path)
    page.press("#new-file-path", "Enter")
    page.wait_for_function("(p) => window.pairroom.currentPath === p", arg=path)
    if content:
        page.evaluate("([p, c]) => window.pairroom.files.get(p).insert(0, c)", [path, content])


def test_hands_in_the_order_raised_and_following_someone(open_page: OpenPage, request) -> None:  # type: ignore[no-untyped-def]
    room = room_name(request)
    ada = open_page("ada", f"/r/{room}", name="Ada")
    bob = open_page("bob", f"/r/{room}", name="Bob")
    cy = open_page("cy", f"/r/{room}", name="Cy")
    for page in (ada, bob, cy):
        wait_connected(page)
    new_file(ada, "main.py", "print('hi')\n")
    new_file(ada, "long.py", LONG)
    ada.click("#file-tree button.open:text-is('main.py')")
    for page in (bob, cy):
        page.wait_for_selector("#people-list li:has-text('Ada') .person-file:text-is('main.py')")

    # Bob raises his hand first, then Ada: Cy sees both hands, Bob's first.
    bob.click("#raise-hand")
    cy.wait_for_selector("#people-list li.hand-up:has-text('Bob') .hand")
    ada.click("#raise-hand")
    cy.wait_for_selector("#people-list li.hand-up:has-text('Ada') .hand")
    assert names_in_order(cy) == ["Cy", "Bob", "Ada"]
    assert ada.get_attribute("#raise-hand", "aria-pressed") == "true" and ada.inner_text("#raise-hand") == "Lower hand"
    bob.click("#raise-hand")  # lowered: Bob goes back among the others, by name
    cy.wait_for_selector("#people-list li:not(.hand-up):has-text('Bob')")
    assert names_in_order(cy) == ["Cy", "Ada", "Bob"]
    cy.screenshot(path=str(ARTIFACTS / "people-hands.png"))

    # Bob follows Ada: her file, then wherever she scrolls in it.
    bob.click("#people-list button[aria-label='Follow Ada']")
    bob.wait_for_selector("#follow-banner:not([hidden]):has-text('Following Ada')")
    ada_client = ada.evaluate("() => window.pairroom.awareness.clientID")
    ada.wait_for_function(
        "(want) => [...window.pairroom.awareness.getStates().values()].some((s) => s.following === want)",
        arg=f"client:{ada_client}",
    )
    ada.click("#file-tree button.open:text-is('long.py')")
    bob.wait_for_function("() => window.pairroom.currentPath === 'long.py'")
    ada.evaluate(SCROLL, 120)
    ada.wait_for_function("() => window.pairroom.awareness.getLocalState().viewport?.from >= 115")
    theirs = ada.evaluate("() => window.pairroom.awareness.getLocalState().viewport")
    bob.wait_for_function(
        """(want) => { const v = window.pairroom.view; const r = v.scrollDOM.getBoundingClientRect();
                       const top = v.lineBlockAtHeight(r.top - v.documentTop + v.defaultLineHeight / 2);
                       return v.state.doc.lineAt(top.from).number === want }""",
        arg=theirs["from"],
    )
    # Ada's first line is Bob's first; the banner above Bob's editor may cost him a line or two at the end.
    mine = visible(bob)
    assert mine["from"] == theirs["from"] and theirs["to"] - 3 <= mine["to"] <= theirs["to"], (mine, theirs)
    assert on_screen(bob, f"line_{theirs['from'] + 2} = {theirs['from'] + 2}")
    bob.screenshot(path=str(ARTIFACTS / "people-following.png"))

    # Bob types: the follow ends. Following again, *Stop following* ends it too.
    bob.click(".cm-content")
    bob.keyboard.type("# mine")
    bob.wait_for_selector("#follow-banner", state="hidden")
    assert bob.evaluate("() => window.pairroom.awareness.getLocalState().following") is None
    bob.click("#people-list button[aria-label='Follow Ada']")
    bob.wait_for_selector("#follow-banner:not([hidden])")
    assert bob.get_attribute("#people-list button[aria-label='Stop following Ada']", "aria-pressed") == "true"
    bob.click("#follow-stop")
    bob.wait_for_selector("#follow-banner", state="hidden")
    ada.click("#file-tree button.open:text-is('main.py')")
    ada.wait_for_function("() => window.pairroom.currentPath === 'main.py'")
    cy.wait_for_selector("#people-list li:has-text('Ada') .person-file:text-is('main.py')")  # a barrier for Bob
    bob.wait_for_selector("#people-list li:has-text('Ada') .person-file:text-is('main.py')")
    assert bob.evaluate("() => window.pairroom.currentPath") == "long.py"  # no longer following


def test_an_owner_asks_everyone_to_follow_and_a_viewer_does(open_page: OpenPage, secret_web_server, request) -> None:  # type: ignore[no-untyped-def]
    room = room_name(request)
    owner = open_page(
        "owner", f"/r/{room}?token={mint(BROWSER_SECRET, room, 'owner', 'Mentor')}", server=secret_web_server
    )
    wait_connected(owner)
    new_file(owner, "main.py", "print('hi')\n")
    new_file(owner, "lesson.py", LONG)
    owner.click("#file-tree button.open:text-is('main.py')")
    viewer = open_page(
        "viewer", f"/r/{room}?token={mint(BROWSER_SECRET, room, 'viewer', 'Vi')}", server=secret_web_server
    )
    wait_connected(viewer)
    viewer.wait_for_selector("#people-list li:has-text('Mentor') .badge:text-is('owner')")
    assert viewer.is_hidden("#lead")  # only owners ask

    owner.click("#lead")
    assert owner.inner_text("#lead") == "Stop asking to follow"
    viewer.wait_for_selector("#follow-banner:not([hidden]):has-text('Mentor asked everyone to follow them')")
    # The viewer's presence says whom it follows (the owner sees viewers' presence).
    owner.wait_for_function(
        "() => [...window.pairroom.awareness.getStates().values()].some((s) => s.user?.name === 'Vi' && s.following && s.following.startsWith('u-'))"
    )
    owner.click("#file-tree button.open:text-is('lesson.py')")
    viewer.wait_for_function("() => window.pairroom.currentPath === 'lesson.py'")
    owner.evaluate(SCROLL, 150)
    viewer.wait_for_function(ON_SCREEN, arg="line_152 = 152")
    viewer.screenshot(path=str(ARTIFACTS / "people-asked-to-follow.png"))

    # The viewer stops; the owner's next move no longer carries it along.
    viewer.click("#follow-stop")
    viewer.wait_for_selector("#follow-banner", state="hidden")
    owner.click("#file-tree button.open:text-is('main.py')")
    viewer.wait_for_selector("#people-list li:has-text('Mentor') .person-file:text-is('main.py')")
    assert viewer.evaluate("() => window.pairroom.currentPath") == "lesson.py"
    # Asked again (a new request), the viewer follows again; when the owner stops asking, it ends.
    owner.click("#lead")
    owner.click("#lead")
    viewer.wait_for_function("() => window.pairroom.currentPath === 'main.py'")
    owner.click("#lead")
    viewer.wait_for_selector("#follow-banner", state="hidden")
