"""The room as people use it, in real Chromium: who is who (a colour each, name flags on carets, real
names with token links), sharing and roles from inside the room, a refused connection explained, runs
that fit the file, and a replay that moves. One server and one browser serve the whole module."""

from __future__ import annotations

import time

import pytest

from tests.support.browser import (  # noqa: F401  (fixtures)
    ARTIFACTS,
    BROWSER_SECRET,
    OpenPage,
    browser,
    kernel_web_server,
    open_page,
    room_name,
    secret_web_server,
    wait_connected,
    web_server,
)

pytestmark = pytest.mark.slow


def wait_until(check, what: str, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    """Retry ``check`` (an HTTP look at the server) until it holds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.1)


NAMES = ["Ada", "Bob", "Cy", "Dee", "Eve", "Fay"]


def rgb(hex_color: str) -> str:
    """``#rrggbb`` as the browser's computed style writes it."""
    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgb({r}, {g}, {b})"


def colours_in_list(page) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Each person's name in the people list -> the computed colour of their swatch."""
    return page.evaluate(  # type: ignore[no-any-return]
        """() => Object.fromEntries([...document.querySelectorAll('#people-list li[data-client]')].map((li) =>
             [li.querySelector('.person-name').textContent, getComputedStyle(li.querySelector('.swatch')).backgroundColor]))"""
    )


FLAG = """(name) => { const flag = [...document.querySelectorAll('.cm-remoteFlag')].find((f) => f.textContent === name);
                     if (!flag) return null;
                     const r = flag.getBoundingClientRect(), s = window.pairroom.view.scrollDOM.getBoundingClientRect();
                     return {opacity: Number(getComputedStyle(flag).opacity), inside: r.top >= s.top && r.bottom <= s.bottom
                             && r.left >= s.left && r.right <= s.right, background: getComputedStyle(flag).backgroundColor,
                             caret: getComputedStyle(flag.parentElement).borderLeftColor, width: r.width} }"""


def test_six_people_each_have_their_own_colour_everywhere(open_page: OpenPage, request) -> None:  # type: ignore[no-untyped-def]
    room = room_name(request)
    pages = {name: open_page(name.lower(), f"/r/{room}", name=name) for name in NAMES}
    for page in pages.values():
        wait_connected(page)
    ada, bob = pages["Ada"], pages["Bob"]
    ada.fill("#new-file-path", "main.py")
    ada.press("#new-file-path", "Enter")
    for page in pages.values():
        page.wait_for_function("() => window.pairroom.currentPath === 'main.py'")
        page.wait_for_function("() => document.querySelectorAll('#people-list li[data-client]').length === 6")

    # Six different colours, the same ones on every page, and each page's own one is the one the others see.
    seen = colours_in_list(ada)
    assert sorted(seen) == sorted(NAMES)
    assert len(set(seen.values())) == 6, f"colours shared: {seen}"
    for name, page in pages.items():
        page.wait_for_function(
            "(want) => Object.entries(want).every(([n, c]) => [...document.querySelectorAll('#people-list li[data-client]')]"
            ".some((li) => li.querySelector('.person-name').textContent === n && getComputedStyle(li.querySelector('.swatch')).backgroundColor === c))",
            arg=seen,
        )
        own = page.evaluate("() => window.pairroom.awareness.getLocalState().user.color")
        assert rgb(own) == seen[name], f"{name} shows {own} for themself, the others {seen[name]}"

    # Bob types on the first line: on Ada's page his caret and its flag are in his colour, the flag is
    # shown while he types, inside the editor (below the caret on line 1), and it goes a few seconds later.
    bob.click(".cm-content")
    bob.keyboard.type("print('hello from Bob')")
    ada.wait_for_function(f"() => {{ const f = ({FLAG})('Bob'); return f && f.opacity === 1 }}")
    flag = ada.evaluate(FLAG, "Bob")
    assert flag["inside"], f"Bob's flag is clipped: {flag}"
    assert flag["background"] == seen["Bob"] and flag["caret"] == seen["Bob"]
    ada.screenshot(path=str(ARTIFACTS / "ux-colours-flag-while-typing.png"))
    ada.wait_for_function(f"() => ({FLAG})('Bob').opacity === 0")

    # His selection is tinted with his colour, and his chat line carries it too.
    bob.keyboard.press("Shift+Home")
    ada.wait_for_selector(".cm-remoteSelection", state="attached")
    tint = ada.evaluate("() => getComputedStyle(document.querySelector('.cm-remoteSelection')).backgroundColor")
    assert tint.startswith(seen["Bob"].replace("rgb(", "rgba(").rstrip(")")), tint
    bob.fill("#chat-input", "Colours look right")
    bob.press("#chat-input", "Enter")
    ada.wait_for_selector("#chat-log li:has-text('Colours look right')")
    chat_colour = ada.evaluate(
        "() => getComputedStyle(document.querySelector('#chat-log li:last-child .swatch')).backgroundColor"
    )
    assert chat_colour == seen["Bob"]


def people_names(page) -> list[str]:  # type: ignore[no-untyped-def]
    return page.eval_on_selector_all(
        "#people-list li[data-client] .person-name", "(els) => els.map((e) => e.textContent)"
    )  # type: ignore[no-any-return]


def test_links_for_a_role_ask_for_a_name_and_the_room_shows_it(  # type: ignore[no-untyped-def]
    open_page: OpenPage, secret_web_server, request
) -> None:
    room = room_name(request)[:60]
    # The lobby asks for your name first; it is kept in this browser and names the owner link.
    lobby = open_page("lobby", "/", server=secret_web_server)
    lobby.fill("#create-name", room)
    lobby.press("#create-name", "Enter")
    assert lobby.evaluate("() => document.querySelector('#your-name').validity.valueMissing")
    assert lobby.is_hidden("#created-invites")
    lobby.fill("#your-name", "Ada")
    lobby.press("#create-name", "Enter")
    lobby.wait_for_selector("#created-invites:not([hidden])")
    assert lobby.evaluate("() => localStorage.getItem('pairroom:name')") == "Ada"
    editor_link = lobby.input_value("#invite-editor").split(secret_web_server.http, 1)[1]
    lobby.click("#open-owner")
    wait_connected(lobby)

    # Two people open the one editor link: each is asked for their name before the room opens.
    bea = open_page("bea", editor_link, server=secret_web_server)
    cas = open_page("cas", editor_link, server=secret_web_server)
    for page, name in ((bea, "Bea"), (cas, "Cas")):
        page.wait_for_selector("#gate-name")
        assert page.is_hidden("#layout")
        assert page.inner_text("#gate-title") == f"Join {room}"
        assert "This link lets you in as an editor" in page.inner_text("#gate-body")
        if page is bea:
            page.screenshot(path=str(ARTIFACTS / "ux-name-asked.png"))
        page.fill("#gate-name", name)
        page.press("#gate-name", "Enter")
        wait_connected(page)
    lobby.wait_for_function("() => document.querySelectorAll('#people-list li[data-client]').length === 3")
    assert sorted(people_names(lobby)) == ["Ada", "Bea", "Cas"]

    # Their chat lines carry their names, and Bea may rename herself: everyone sees the new name.
    bea.fill("#chat-input", "hello")
    bea.press("#chat-input", "Enter")
    lobby.wait_for_selector("#chat-log li:has-text('hello') .chat-name:text-is('Bea')")
    bea.fill("#my-name", "Beatrice")
    bea.press("#my-name", "Enter")
    cas.wait_for_selector("#people-list li .person-name:text-is('Beatrice')")
    assert sorted(people_names(cas)) == ["Ada", "Beatrice", "Cas"]
    # Reloading does not ask again: the browser kept the name.
    cas.reload()
    wait_connected(cas)
    assert cas.is_hidden("#gate")


def test_share_links_get_in_with_their_role_and_the_owner_changes_roles_from_the_list(  # type: ignore[no-untyped-def]
    open_page: OpenPage, secret_web_server, request
) -> None:
    from pairroom.web.auth import mint

    room = room_name(request)[:60]
    owner = open_page(
        "owner",
        f"/r/{room}?token={mint(BROWSER_SECRET, room, 'owner', 'Mentor')}",
        server=secret_web_server,
        permissions=["clipboard-read", "clipboard-write"],
    )
    wait_connected(owner)
    owner.fill("#new-file-path", "main.py")
    owner.press("#new-file-path", "Enter")

    # The owner's Share gives a link per role; each copies, and each gets in with its role.
    owner.click("#share-button")
    owner.wait_for_selector("#share-editor")
    links = {role: owner.input_value(f"#share-{role}") for role in ("editor", "reviewer", "viewer")}
    owner.click("button[aria-label='Copy the editor link']")
    owner.wait_for_selector("#share .copy-status:text-is('Copied.')")
    assert owner.evaluate("() => navigator.clipboard.readText()") == links["editor"]
    owner.screenshot(path=str(ARTIFACTS / "ux-share-owner.png"))
    owner.keyboard.press("Escape")
    path = lambda link: link.split(secret_web_server.http, 1)[1]
    bea = open_page("bea", path(links["editor"]), name="Bea", server=secret_web_server)
    vic = open_page("vic", path(links["viewer"]), name="Vic", server=secret_web_server)
    wait_connected(bea)
    wait_connected(vic)
    assert vic.inner_text("#role-badge") == "Viewer · read-only"
    bea.click(".cm-content")
    bea.keyboard.type("x = 1")
    owner.wait_for_function("() => window.pairroom.files.get('main.py').toString() === 'x = 1'")

    # Bea, not an owner, is told whom to ask rather than handed a link that cannot get in.
    bea.click("#share-button")
    bea.wait_for_selector("#share-body:has-text('Only an owner hands out links to this room: ask Mentor for one.')")
    assert bea.eval_on_selector_all("#share-body input", "(els) => els.length") == 0
    bea.keyboard.press("Escape")

    # The owner makes Bea a reviewer from the people list: both pages show it.
    menu = "#people-list select[aria-label='Role of Bea']"
    owner.wait_for_selector(menu)
    assert owner.input_value(menu) == "editor"
    owner.select_option(menu, "reviewer")
    owner.wait_for_function(
        f'() => document.querySelector("{menu}")?.value === \'reviewer\' && !document.querySelector("{menu}").disabled'
    )
    bea.wait_for_selector("#people-list li:has-text('Bea') .badge:text-is('reviewer')")
    assert bea.eval_on_selector_all("#people-list select", "(els) => els.length") == 0  # only owners get menus

    # Who is in the call shows in the list (call.js publishes the call peer id as `call`; the call
    # itself is tested in test_browser_call.py).
    bea.evaluate("() => window.pairroom.awareness.setLocalStateField('call', 'peer-bea')")
    owner.wait_for_selector("#people-list li:has-text('Bea') .in-call:text-is('in call')")
    owner.screenshot(path=str(ARTIFACTS / "ux-people-roles.png"))


@pytest.mark.parametrize(
    "token, title",
    [
        (None, "This room needs an invitation link"),
        ("expired", "Your link has expired"),
        ("forged", "This link is not valid here"),
        ("other-room", "This link is for another room"),
    ],
)
def test_a_refused_link_gets_a_page_that_says_why_and_what_to_do(  # type: ignore[no-untyped-def]
    open_page: OpenPage, secret_web_server, request, token, title
) -> None:
    from pairroom.web.auth import mint

    room = room_name(request)[:60]
    tokens = {
        None: None,
        "expired": mint(BROWSER_SECRET, room, "editor", "Old", ttl_seconds=60, now=time.time() - 3600),
        "forged": mint("another-secret-" + "y" * 24, room, "editor", "Eve"),
        "other-room": mint(BROWSER_SECRET, room + "-x", "editor", "Eve"),
    }
    path = f"/r/{room}" + (f"?token={tokens[token]}" if token else "")
    page = open_page("refused", path, name="Ann", server=secret_web_server)
    page.wait_for_selector(f"#gate h1:text-is('{title}')")
    assert page.is_hidden("#layout") and page.is_hidden("#share-button")
    assert page.get_attribute("#gate", "data-code") == ("4403" if token == "other-room" else "4401")
    assert page.is_visible("#gate a:text-is('Go to the lobby')") and page.is_visible(
        "#gate button:text-is('Try again')"
    )
    if token is None:
        assert "ask the room’s owner" in page.inner_text("#gate-body")
        page.screenshot(path=str(ARTIFACTS / "ux-refused-missing-token.png"))


def test_a_deleted_room_says_so_to_the_people_in_it_and_forgets_its_copy(  # type: ignore[no-untyped-def]
    open_page: OpenPage, secret_web_server, request
) -> None:
    import httpx

    from pairroom.web.auth import mint

    room = room_name(request)[:60]
    owner_token = mint(BROWSER_SECRET, room, "owner", "Ada")
    bea = open_page("bea", f"/r/{room}?token={mint(BROWSER_SECRET, room, 'editor', 'Bea')}", server=secret_web_server)
    wait_connected(bea)
    bea.fill("#new-file-path", "main.py")
    bea.press("#new-file-path", "Enter")
    bea.click(".cm-content")
    bea.keyboard.type("print('soon gone')")
    bea.wait_for_selector("#connection[data-state='connected']")
    bea.wait_for_function("() => !document.querySelector('#connection-text').textContent.includes('unsynced')")
    answer = httpx.delete(
        secret_web_server.url(f"/api/rooms/{room}"), headers={"authorization": f"Bearer {owner_token}"}
    )
    assert answer.status_code == 200, answer.text
    bea.wait_for_selector("#gate h1:text-is('This room was deleted')")
    assert bea.is_hidden("#layout") and bea.is_hidden("#gate button:text-is('Try again')")
    bea.screenshot(path=str(ARTIFACTS / "ux-room-deleted.png"))
    # The browser's copy is gone: opening the room again does not bring the file back.
    bea.wait_for_function(f"async () => !(await indexedDB.databases()).some((d) => d.name === 'pairroom:{room}')")


MAIN = "from util import f\n\ndef double(n):\n    return 2 * n\n\nprint(double(21))\nprint(f(0))\n"


def runs_seen(page) -> int:  # type: ignore[no-untyped-def]
    return page.evaluate("() => document.querySelectorAll('#run-list li.run').length")  # type: ignore[no-any-return]


def test_runs_fit_the_file_use_the_keys_and_tell_tracebacks_in_the_rooms_terms(  # type: ignore[no-untyped-def]
    kernel_web_server, open_page: OpenPage, request
) -> None:
    room = room_name(request)
    ada = open_page("ada", f"/r/{room}", name="Ada", server=kernel_web_server)
    wait_connected(ada)

    # Python indents with 4 spaces.
    ada.fill("#new-file-path", "util.py")
    ada.press("#new-file-path", "Enter")
    ada.wait_for_function("() => window.pairroom.currentPath === 'util.py'")
    ada.click(".cm-content")
    ada.keyboard.type("def f(x):")
    ada.keyboard.press("Enter")
    ada.keyboard.type("return 1 / x")
    ada.wait_for_function("() => window.pairroom.files.get('util.py').toString() === 'def f(x):\\n    return 1 / x'")

    # Ctrl+Enter with nothing selected runs the file; the traceback names the room's files and lines.
    ada.fill("#new-file-path", "main.py")
    ada.press("#new-file-path", "Enter")
    ada.wait_for_function("() => window.pairroom.currentPath === 'main.py'")
    ada.evaluate("(text) => window.pairroom.files.get('main.py').insert(0, text)", MAIN)
    ada.click(".cm-content")
    ada.keyboard.press("Control+Enter")
    error = ada.wait_for_selector("#run-list li.run[data-status='error'] .out-error", timeout=60_000)
    assert ada.inner_text("#run-list li.run[data-status='error'] .run-title") == "Run of main.py"
    trace = error.inner_text()  # type: ignore[union-attr]
    assert "main.py, line 7" in trace and "util.py, line 2" in trace and "ZeroDivisionError" in trace, trace
    for server_side in (
        "Cell In",
        "/home/room",
        "/usr/lib",
        "site-packages",
        "/tmp/",
        str(kernel_web_server.static_dir.parent),
    ):
        assert server_side not in trace, (server_side, trace)
    ada.screenshot(path=str(ARTIFACTS / "ux-run-traceback.png"))

    # Shift+Enter inside the def runs the whole def and moves on; again runs the next line.
    ada.evaluate(
        "() => { const v = window.pairroom.view; v.dispatch({selection: {anchor: v.state.doc.line(4).from + 6}}) }"
    )
    before = runs_seen(ada)
    ada.keyboard.press("Shift+Enter")
    ada.wait_for_function("(n) => document.querySelectorAll('#run-list li.run').length === n + 1", arg=before)
    ada.wait_for_function(
        "() => window.pairroom.view.state.doc.lineAt(window.pairroom.view.state.selection.main.head).number === 6"
    )
    last = "#run-list li.run:last-child"
    ada.wait_for_selector(f"{last}[data-status='ok']")
    assert ada.inner_text(f"{last} .run-title") == "Selection: def double(n):"
    assert ada.evaluate("() => window.pairroom.files.get('main.py').toString()") == MAIN  # the keys typed nothing
    ada.keyboard.press("Shift+Enter")
    ada.wait_for_selector("#run-list li.run:last-child[data-status='ok'] .out-stream.stdout:text-is('42')")

    # A Markdown file is not run as Python: the buttons say why, and Ctrl+Enter runs nothing.
    ada.fill("#new-file-path", "notes.md")
    ada.press("#new-file-path", "Enter")
    ada.wait_for_function("() => window.pairroom.currentPath === 'notes.md'")
    assert ada.is_disabled("#run-file")
    assert (
        ada.inner_text("#run-note")
        == "notes.md is Markdown: Run works on .py files (the room’s Python kernel) and .js files (node)."
    )
    before = runs_seen(ada)
    ada.click(".cm-content")
    ada.keyboard.type("# Notes")
    ada.keyboard.press("Control+Enter")  # the editor's own meaning (a new line), not a run
    ada.wait_for_function("() => window.pairroom.files.get('notes.md').toString() === '# Notes\\n'")
    assert runs_seen(ada) == before


def test_the_replay_clock_moves_while_playing_and_shows_the_names_people_had(  # type: ignore[no-untyped-def]
    open_page: OpenPage, web_server, request
) -> None:
    import httpx

    room = room_name(request)
    ada = open_page("ada", f"/r/{room}", name="Ada")
    wait_connected(ada)
    # The room links to its replay.
    assert ada.get_attribute("#replay-link", "href") == f"/r/{room}/replay"
    ada.fill("#new-file-path", "main.py")
    ada.press("#new-file-path", "Enter")
    ada.click(".cm-content")
    api = web_server.url(f"/api/rooms/{room}")
    with httpx.Client(timeout=5) as http:
        # Three moments a second apart: the clock shows whole seconds, so a session of a second or less
        # could play through a phase below with no tick to see (its length depended on the machine's pace).
        for line in ("a = 1", "\nb = 2", "\nc = 3"):
            ada.keyboard.type(line)
            want = ada.evaluate("() => window.pairroom.files.get('main.py').toString()")
            wait_until(
                lambda: http.get(f"{api}/files").json()["files"].get("main.py") == want, "the server has the text"
            )
            time.sleep(1.0)
        ada.close()
        wait_until(
            lambda: [s["end"] is not None for s in http.get(f"{api}/sessions").json()["sessions"]] == [True],
            "the session has ended",
        )

    replay = open_page("replay", f"/r/{room}/replay")
    replay.wait_for_selector("#replay-play:enabled")
    assert replay.get_attribute("#replay-room-link", "href") == f"/r/{room}"  # and back to the room
    # At a quarter speed the clock and the scrubber move between the server's statuses.
    replay.select_option("#replay-speed", "0.25")
    replay.click("#replay-play")
    moving = """() => { const s = window.pairroom.replay.status, scrub = document.querySelector('#replay-scrubber');
                        if (!s || s.paused || s.ended) return false;
                        if (window.seen?.status !== s) { window.seen = {status: s, value: Number(scrub.value), text: document.querySelector('#replay-position').textContent}; return false }
                        return Number(scrub.value) > window.seen.value && document.querySelector('#replay-position').textContent !== window.seen.text }"""
    replay.wait_for_function(moving)
    assert "Playing at 0.25×" in replay.inner_text("#replay-position")
    # The names people had, on their carets and in the list of who was there.
    replay.wait_for_selector("#replay-people li .person-name:text-is('Ada')")
    replay.screenshot(path=str(ARTIFACTS / "ux-replay-playing.png"))

    # After a seek back to the start (a reconnect) it keeps moving (at half speed, so a busy machine
    # still sees two statuses before the end), then plays to the end at 1x.
    replay.select_option("#replay-speed", "0.5")
    replay.evaluate("() => { window.seen = null }")
    replay.eval_on_selector("#replay-scrubber", "(el) => { el.value = '0'; el.dispatchEvent(new Event('change')) }")
    replay.wait_for_function(moving)
    replay.select_option("#replay-speed", "1")
    replay.wait_for_selector("#replay[data-ended='true']")
    replay.wait_for_function("() => window.pairroom.view.state.doc.toString() === 'a = 1\\nb = 2\\nc = 3'")


CODE = "import math\n\ndef area(r):\n    return 3.14 * r * r\n\nprint(area(2))\n"


def comment_on_line(page, line: int, text: str, suggestion: str | None = None) -> None:  # type: ignore[no-untyped-def]
    page.evaluate(
        "(n) => { const v = window.pairroom.view; v.focus(); v.dispatch({selection: {anchor: v.state.doc.line(n).from}}) }",
        line,
    )
    page.click("#comment-line")
    page.fill("#review-new-comment", text)
    if suggestion is not None:
        page.check("#review-suggest")
        page.fill("#review-new-suggestion", suggestion)
    page.click(".review-draft button[type=submit]")
    page.wait_for_selector(f".review-thread[data-status='open']:has-text('{text}')")


def test_the_threads_panel_keeps_outdated_threads_in_view(open_page: OpenPage, request) -> None:  # type: ignore[no-untyped-def]
    room = room_name(request)
    ada = open_page("ada", f"/r/{room}", name="Ada")
    bob = open_page("bob", f"/r/{room}", name="Bob")
    wait_connected(ada)
    wait_connected(bob)
    ada.fill("#new-file-path", "main.py")
    ada.press("#new-file-path", "Enter")
    ada.evaluate("(code) => window.pairroom.files.get('main.py').insert(0, code)", CODE)
    bob.wait_for_function("(code) => window.pairroom.view.state.doc.toString() === code", arg=CODE)
    assert ada.inner_text("#threads-empty").startswith("No review threads yet")

    # Two threads on line 4: Ada suggests a change, Bob asks something else about the same line.
    comment_on_line(ada, 4, "Use math.pi here.", "    return math.pi * r * r")
    comment_on_line(bob, 4, "Should r be checked?")
    for page in (ada, bob):
        page.wait_for_selector("#thread-list li[data-status='open'] >> nth=1")
        assert page.text_content("#threads-count") == "(2 open of 2)"
        assert page.inner_text("#thread-list li:has-text('Should r be checked?') .thread-where") == "main.py:4"

    # Ada applies her suggestion: the line Bob's thread was on is replaced, so it is outdated; it stays
    # in the list with the code it was on, and Ada's is listed as resolved.
    ada.click(".review-thread:has-text('Use math.pi here.') button:has-text('Apply suggestion')")
    for page in (ada, bob):
        page.wait_for_selector("#thread-list li[data-status='resolved']:has-text('Use math.pi here.')")
        outdated = page.wait_for_selector("#thread-list li[data-status='outdated']:has-text('Should r be checked?')")
        assert outdated.query_selector(".thread-code").inner_text() == "    return 3.14 * r * r"  # type: ignore[union-attr]
        assert page.text_content("#threads-count") == "(0 open of 2)"
    bob.screenshot(path=str(ARTIFACTS / "ux-threads-outdated.png"))

    # The resolved one opens from the list, in the editor.
    bob.click("#thread-list button[aria-label='Show the thread on main.py:4']")
    bob.wait_for_selector(".review-thread[data-status='resolved']:has-text('Use math.pi here.')")


def test_restore_asks_first_and_tells_the_others(open_page: OpenPage, request) -> None:  # type: ignore[no-untyped-def]
    room = room_name(request)
    ada = open_page("ada", f"/r/{room}", name="Ada")
    bob = open_page("bob", f"/r/{room}", name="Bob")
    wait_connected(ada)
    wait_connected(bob)
    ada.fill("#new-file-path", "main.py")
    ada.press("#new-file-path", "Enter")
    ada.click(".cm-content")
    ada.keyboard.type("x = 1")
    bob.wait_for_function("() => window.pairroom.files.get('main.py')?.toString() === 'x = 1'")
    bob.wait_for_selector("#versions-empty:visible")

    # Ada saves a version: Bob's list shows it without a refresh.
    ada.fill("#version-name", "first draft")
    ada.press("#version-name", "Enter")
    bob.wait_for_selector("#version-list li[data-name='first draft']")

    # Bob types more, then asks to restore: it names the file and the version, and Cancel changes nothing.
    bob.click(".cm-content")
    bob.keyboard.press("Control+End")
    bob.keyboard.type("\ny = 2")
    ada.wait_for_function("() => window.pairroom.files.get('main.py').toString() === 'x = 1\\ny = 2'")
    row = "#version-list li[data-name='first draft']"
    bob.click(f"{row} button:text-is('Restore')")
    question = bob.inner_text(f"{row} .restore-confirm p")
    assert question.startswith("Restore main.py to “first draft” (") and "the edits since stay in History" in question
    bob.screenshot(path=str(ARTIFACTS / "ux-restore-confirm.png"))
    bob.click(f"{row} .restore-confirm button:text-is('Cancel')")
    assert bob.query_selector(".restore-confirm") is None
    assert bob.evaluate("() => window.pairroom.files.get('main.py').toString()") == "x = 1\ny = 2"

    # Confirmed: the text goes back for both, and Ada is told who did it and where her edits are.
    bob.click(f"{row} button:text-is('Restore')")
    bob.click(f"{row} .restore-confirm button:text-is('Restore main.py')")
    ada.wait_for_function("() => window.pairroom.files.get('main.py').toString() === 'x = 1'")
    ada.wait_for_selector("#room-notice:visible")
    notice = ada.inner_text("#room-notice-text")
    assert (
        notice.startswith("Bob restored main.py to “first draft” (") and "The edits before it are in History" in notice
    )
    ada.screenshot(path=str(ARTIFACTS / "ux-restore-notice.png"))
    ada.click("#room-notice-close")
    assert ada.is_hidden("#room-notice")


def test_a_reload_returns_to_the_file_and_the_place_in_it(open_page: OpenPage, request) -> None:  # type: ignore[no-untyped-def]
    room = room_name(request)
    ada = open_page("ada", f"/r/{room}", name="Ada")
    wait_connected(ada)
    for path in ("a.py", "long.py"):
        ada.fill("#new-file-path", path)
        ada.press("#new-file-path", "Enter")
        ada.wait_for_function("(p) => window.pairroom.currentPath === p", arg=path)
    ada.evaluate(
        "(t) => window.pairroom.files.get('long.py').insert(0, t)", "".join(f"line_{n} = {n}\n" for n in range(1, 201))
    )
    ada.evaluate("""() => { const v = window.pairroom.view;
                            v.dispatch({effects: v.constructor.scrollIntoView(v.state.doc.line(120).from, {y: 'start'})}) }""")
    ada.wait_for_function(
        "() => JSON.parse(localStorage.getItem('pairroom:place:' + decodeURIComponent(location.pathname.split('/')[2])) || '{}').line === 120"
    )
    # In open mode Share hands out the room link itself: it is all anyone needs.
    ada.click("#share-button")
    assert ada.input_value("#share-room") == ada.url.split("?")[0]
    ada.keyboard.press("Escape")
    ada.reload()
    wait_connected(ada)
    ada.wait_for_function("() => window.pairroom.currentPath === 'long.py'")  # not a.py, the first in the tree
    first_line = """() => { const v = window.pairroom.view, r = v.scrollDOM.getBoundingClientRect();
                            return v.state.doc.lineAt(v.lineBlockAtHeight(r.top - v.documentTop + v.defaultLineHeight / 2).from).number }"""
    ada.wait_for_function(f"() => ({first_line})() === 120")
    ada.screenshot(path=str(ARTIFACTS / "ux-reload-place.png"))


def test_panels_resize_by_mouse_and_keyboard_and_keep_their_size(open_page: OpenPage, request) -> None:  # type: ignore[no-untyped-def]
    room = room_name(request)
    ada = open_page("ada", f"/r/{room}", name="Ada")
    wait_connected(ada)
    width = lambda sel: ada.evaluate(f"() => document.querySelector('{sel}').getBoundingClientRect().width")
    height = lambda sel: ada.evaluate(f"() => document.querySelector('{sel}').getBoundingClientRect().height")

    def drag(handle: str, dx: float, dy: float) -> None:
        # hover waits until the handle is still and is what the pointer hits at its centre: the
        # layout may still settle from the previous drag (run buttons wrapping in a narrower centre)
        ada.locator(handle).hover()
        box = ada.locator(handle).bounding_box()
        assert box is not None
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        ada.mouse.move(x, y)
        ada.mouse.down()
        ada.mouse.move(x + dx / 2, y + dy / 2)
        ada.mouse.move(x + dx, y + dy)
        ada.mouse.up()

    files = width("#files")
    drag("#resize-files", 100, 0)
    assert abs(width("#files") - (files + 100)) <= 2
    runs, side = height("#runs"), width("#side")  # the narrower centre may wrap the run buttons
    drag("#resize-runs", 0, -120)
    assert abs(height("#runs") - (runs + 120)) <= 2
    ada.focus("#resize-side")
    ada.keyboard.press("ArrowLeft")  # the separator moves left: the column grows
    assert abs(width("#side") - (side + 24)) <= 2
    ada.screenshot(path=str(ARTIFACTS / "ux-panels-resized.png"))

    sizes = (width("#files"), height("#runs"), width("#side"))
    ada.reload()
    wait_connected(ada)
    after = (width("#files"), height("#runs"), width("#side"))
    assert all(abs(a - b) <= 2 for a, b in zip(sizes, after)), (sizes, after)


def test_folders_fold_and_open_files_have_tabs(open_page: OpenPage, request) -> None:  # type: ignore[no-untyped-def]
    room = room_name(request)
    ada = open_page("ada", f"/r/{room}", name="Ada")
    wait_connected(ada)
    for path in ("src/app.py", "src/util.py", "main.py"):
        ada.fill("#new-file-path", path)
        ada.press("#new-file-path", "Enter")
        ada.wait_for_function("(p) => window.pairroom.currentPath === p", arg=path)

    # A folder folds and unfolds.
    folder = "#file-tree button[aria-label='Fold the folder src']"
    assert ada.get_attribute(folder, "aria-expanded") == "true"
    ada.click(folder)
    ada.wait_for_selector("#file-tree li[data-path='src/app.py']", state="detached")
    assert ada.get_attribute("#file-tree li[data-dir='src'] .dir-name", "aria-expanded") == "false"
    ada.click("#file-tree button[aria-label='Unfold the folder src']")
    ada.wait_for_selector("#file-tree li[data-path='src/app.py']")

    # Each file opened has a tab; a tab switches, closing the active one opens its neighbour.
    tabs = lambda: ada.eval_on_selector_all("#tabs .tab", "(els) => els.map((e) => e.dataset.path)")
    assert tabs() == ["src/app.py", "src/util.py", "main.py"]
    ada.click("#tabs .tab[data-path='src/app.py'] .tab-open")
    ada.wait_for_function("() => window.pairroom.currentPath === 'src/app.py'")
    assert ada.get_attribute("#tabs .tab[data-path='src/app.py'] .tab-open", "aria-selected") == "true"
    ada.screenshot(path=str(ARTIFACTS / "ux-tabs-folders.png"))
    ada.click("button[aria-label='Close the tab of src/app.py']")
    ada.wait_for_function("() => window.pairroom.currentPath === 'src/util.py'")
    assert tabs() == ["src/util.py", "main.py"]
    ada.click("button[aria-label='Close the tab of main.py']")
    assert ada.is_hidden("#tabs")  # one file left open: its name is the header


JS = """import { readFile } from 'node:fs'

function greet(name) {
  if (!name) {
    return 'hello, nobody'
  } else {
    return `hello, ${name} {`
  }
}

const answer = [1, 2,
  3].map((n) => n * 2)
  .filter((n) => n > 2)
console.log(greet('Ada'), answer) // a } in a comment
const config = {
name: 'pairroom',
}
const page = `
<p>${config.name}</p>
`
"""


def test_shift_enter_picks_the_statement_by_the_files_language_and_the_page_never_scrolls(  # type: ignore[no-untyped-def]
    open_page: OpenPage, request
) -> None:
    """Shift+Enter's statement: in JavaScript the brace-balanced block or the line (not Python's
    indentation rules), in Python the indented block, elsewhere the line. And on a short window with
    the output open, the editor keeps its height and the center scrolls, not the page."""
    room = room_name(request)
    ada = open_page("ada", f"/r/{room}", name="Ada", viewport={"width": 1280, "height": 320})
    wait_connected(ada)
    ada.wait_for_function("() => window.pairroom.currentPath === 'main.py'")
    ada.click("#runs-fold")  # the output open, the debugger's panel below it
    assert ada.evaluate("() => document.scrollingElement.scrollHeight") <= 320, "the page does not scroll"
    center = ada.evaluate(
        "() => { const c = document.getElementById('center-body'); return [c.scrollHeight, c.clientHeight] }"
    )
    assert center[0] > center[1], f"the center scrolls: {center}"
    assert ada.evaluate("() => document.getElementById('editor').getBoundingClientRect().height") >= 150
    ada.screenshot(path=str(ARTIFACTS / "ux-short-window-center-scrolls.png"))

    def open_with(path: str, text: str) -> None:
        ada.fill("#new-file-path", path)
        ada.press("#new-file-path", "Enter")
        ada.wait_for_function("(p) => window.pairroom.currentPath === p", arg=path)
        ada.evaluate("(t) => window.pairroom.files.get(window.pairroom.currentPath).insert(0, t)", text)

    at = lambda line: ada.evaluate(
        "(l) => { const s = window.pairroom.statementAt(l); return s && [s.from, s.to] }", line
    )
    open_with("app.js", JS)
    assert at(1) == [1, 1]  # an import: its line
    assert at(2) is None  # a blank line: nothing
    assert at(3) == [3, 9] and at(5) == [3, 9] and at(6) == [3, 9]  # inside the function, its `else`: all of it
    assert at(11) == [11, 13] and at(13) == [11, 13]  # a call over two lines with a `.filter` chained below
    assert at(14) == [14, 14]  # a `}` in a comment opens nothing
    assert at(16) == [15, 17]  # by its braces, not its (missing) indentation
    assert at(19) == [18, 20]  # a template literal over three lines
    open_with("calc.py", "def f(x):\n    return x\n\nprint(f(1))\n")
    assert at(2) == [1, 2] and at(4) == [4, 4]
    open_with("notes.md", "# Title\n  indented\n")
    assert at(1) == [1, 1] and at(2) == [2, 2]
