"""The room in a real browser: two people in two Chromium contexts, against a real pairroom.

Each test opens its own room. Every wait is on a condition in the page (``window.pairroom`` exposes
the document and the provider); a page's console errors fail its test, and each page is photographed
into ``tests/artifacts/`` when the test ends.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gzip
import json
import re
import time
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from pairroom.web.auth import mint
from pairroom.web.static import static_routes
from tests.support.browser import (  # noqa: F401  (fixtures)
    ARTIFACTS,
    OpenPage,
    browser,
    editor_text,
    file_text,
    kernel_web_server,
    open_page,
    room_name,
    two_people,
    wait_connected,
    wait_file_text,
    web_server,
)

pytestmark = pytest.mark.slow


def wait_until(check, what: str, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.1)


def new_file(page, path: str) -> None:  # type: ignore[no-untyped-def]
    page.fill("#new-file-path", path)
    page.press("#new-file-path", "Enter")
    page.wait_for_function("(p) => window.pairroom.currentPath === p", arg=path)


def tree_has(page, path: str) -> None:  # type: ignore[no-untyped-def]
    page.wait_for_selector(f"#file-tree li[data-path='{path}']")


def tree_lacks(page, path: str) -> None:  # type: ignore[no-untyped-def]
    page.wait_for_selector(f"#file-tree li[data-path='{path}']", state="detached")


def wait_same_text(a, b, path: str) -> str:  # type: ignore[no-untyped-def]
    """Both pages hold the same content for ``path`` (and b's editor shows it)."""
    text = file_text(a, path)
    assert text is not None
    wait_file_text(b, path, text)
    b.wait_for_function("(want) => window.pairroom.view.state.doc.toString() === want", arg=text)
    return text


def test_typing_shows_in_the_other_browser_with_a_named_cursor(open_page: OpenPage, request) -> None:  # type: ignore[no-untyped-def]
    room, ada, bob = two_people(open_page, request)

    new_file(ada, "main.py")
    tree_has(bob, "main.py")
    bob.wait_for_function("() => window.pairroom.currentPath === 'main.py'")

    ada.click(".cm-content")
    ada.keyboard.type("def greet(name):")
    ada.keyboard.press("Enter")
    ada.keyboard.type("return 'hello ' + name")
    text = wait_same_text(ada, bob, "main.py")
    assert text.startswith("def greet(name):\n") and "return 'hello ' + name" in text

    # Ada's caret, labelled with her name, and then her selection, in Bob's editor.
    bob.wait_for_selector(".cm-remoteCaret", state="attached")
    assert bob.inner_text(".cm-remoteFlag").strip() == "Ada"
    ada.keyboard.press("Shift+Home")
    bob.wait_for_selector(".cm-remoteSelection", state="attached")

    # Python highlighting: `def` sits in a token span of its own.
    bob.wait_for_function("() => [...document.querySelectorAll('.cm-line span')].some((s) => s.textContent === 'def')")

    # And back the other way.
    bob.click(".cm-content")
    bob.keyboard.press("Control+End")
    bob.keyboard.press("Enter")
    bob.keyboard.press("Shift+Home")
    bob.keyboard.type("# Bob was here")
    text = wait_same_text(bob, ada, "main.py")
    assert text.endswith("\n# Bob was here")
    ada.wait_for_selector(".cm-remoteFlag:text-is('Bob')", state="attached")

    # The people list on each side names both.
    for page in (ada, bob):
        page.wait_for_selector("#people-list li:has-text('Ada')")
        page.wait_for_selector("#people-list li:has-text('Bob')")


def test_files_are_created_renamed_and_deleted_for_everyone(open_page: OpenPage, request) -> None:  # type: ignore[no-untyped-def]
    room, ada, bob = two_people(open_page, request)

    # A path the document schema refuses is refused in the form.
    ada.fill("#new-file-path", "src/../x.py")
    ada.press("#new-file-path", "Enter")
    ada.wait_for_selector("#file-error:has-text('..')")

    new_file(ada, "src/app.js")
    ada.click(".cm-content")
    ada.keyboard.type("const answer = 42")
    tree_has(bob, "src/app.js")
    bob.wait_for_function("() => window.pairroom.currentPath === 'src/app.js'")
    wait_same_text(ada, bob, "src/app.js")
    new_file(ada, "README.md")
    tree_has(bob, "README.md")
    bob.screenshot(path=str(ARTIFACTS / "files-tree.png"))

    # Rename inline: Bob, who has the file open, follows it to its new path with its content.
    ada.click("button[aria-label='Rename src/app.js']")
    ada.fill("input[aria-label='New path for src/app.js']", "src/main.ts")
    ada.press("input[aria-label='New path for src/app.js']", "Enter")
    tree_has(bob, "src/main.ts")
    tree_lacks(bob, "src/app.js")
    bob.wait_for_function("() => window.pairroom.currentPath === 'src/main.ts'")
    wait_file_text(bob, "src/main.ts", "const answer = 42")
    assert bob.evaluate("() => window.pairroom.files.has('src/app.js')") is False

    # Delete with an inline confirmation: Bob's editor moves to the file that is left.
    ada.click("button[aria-label='Delete src/main.ts']")
    ada.click("#file-tree li[data-path='src/main.ts'] button.danger")
    tree_lacks(bob, "src/main.ts")
    bob.wait_for_function("() => window.pairroom.currentPath === 'README.md'")
    assert sorted(bob.evaluate("() => [...window.pairroom.files.keys()]")) == ["README.md"]


def test_chat_reaches_the_other_browser(open_page: OpenPage, request) -> None:  # type: ignore[no-untyped-def]
    room, ada, bob = two_people(open_page, request)

    ada.fill("#chat-input", "hello from Ada")
    ada.press("#chat-input", "Enter")
    line = bob.wait_for_selector("#chat-log li:has-text('hello from Ada')")
    assert line is not None and line.query_selector(".chat-name").inner_text() == "Ada"  # type: ignore[union-attr]
    entry = bob.evaluate("() => window.pairroom.chat.toArray()[0]")
    assert entry["text"] == "hello from Ada" and entry["name"] == "Ada"
    assert isinstance(entry["at"], int) and re.fullmatch(r"[a-z0-9]{12}", entry["id"])
    assert ada.input_value("#chat-input") == ""


def test_a_run_shows_its_output_in_both_browsers(kernel_web_server, open_page: OpenPage, request) -> None:  # type: ignore[no-untyped-def]
    room = room_name(request)
    ada = open_page("ada", f"/r/{room}", name="Ada", server=kernel_web_server)
    bob = open_page("bob", f"/r/{room}", name="Bob", server=kernel_web_server)
    wait_connected(ada)
    wait_connected(bob)
    ada.wait_for_selector("#kernel-status:has-text('starts on the first run')")
    # the room's starter file is open: it may run, but nothing is selected and nothing runs yet
    assert ada.is_disabled("#run-selection") and ada.is_disabled("#kernel-interrupt")

    new_file(ada, "main.py")
    bob.wait_for_selector("#run-file:enabled")  # a file is open
    ada.click(".cm-content")
    ada.keyboard.insert_text(
        "from IPython.display import HTML, display\n"
        "print('hello from', 'ada')\n"
        "display(HTML('<b id=x>bold</b> &amp; <script>parent.document.title = 1</script>'))\n"
        "6 * 7"
    )
    wait_same_text(ada, bob, "main.py")
    ada.click("#run-file")
    for page in (ada, bob):  # every member sees the run, its stream, the HTML and the result
        run = page.wait_for_selector("#run-list li.run[data-status='ok']")
        assert run is not None
        assert run.query_selector(".run-title").inner_text() == "Run of main.py"  # type: ignore[union-attr]
        assert run.query_selector(".out-stream.stdout").inner_text().strip() == "hello from ada"  # type: ignore[union-attr]
        assert run.query_selector(".out-text").inner_text() == "42"  # type: ignore[union-attr]
        frame = run.query_selector("iframe.out-html")
        assert frame is not None and frame.get_attribute("sandbox") == ""
        assert frame.content_frame().inner_text("#x") == "bold"  # type: ignore[union-attr]
        assert run.query_selector(".out-html-note").inner_text() == "Scripts in this output were not run."  # type: ignore[union-attr]
        page.wait_for_selector("#kernel-status:has-text('Kernel idle')")
    assert "·" in ada.title()  # the output's script did not run
    ada.screenshot(path=str(ARTIFACTS / "test_a_run_shows_its_output_in_both_browsers-ada-first-run.png"))

    # Bob runs a selection that fails: both see the traceback.
    bob.click(".cm-content")
    bob.keyboard.press("Control+End")
    bob.keyboard.press("Enter")
    bob.keyboard.type("1 / 0")
    bob.keyboard.press("Shift+Home")
    bob.click("#run-selection")
    for page in (ada, bob):
        error = page.wait_for_selector("#run-list li.run[data-status='error'] .out-error")
        assert "ZeroDivisionError" in error.inner_text()  # type: ignore[union-attr]
        assert "\x1b[" not in error.inner_text()  # type: ignore[union-attr]
        assert page.inner_text("#run-list li.run[data-status='error'] .run-title") == "Selection: 1 / 0"

    # A long run, interrupted from the other browser.
    ada.click(".cm-content")
    ada.keyboard.press("Control+End")
    ada.keyboard.press("Enter")
    ada.keyboard.type("import time; time.sleep(60)")
    ada.keyboard.press("Shift+Home")
    ada.click("#run-selection")
    bob.wait_for_selector("#run-list li.run[data-status='running']")
    bob.wait_for_selector("#kernel-interrupt:enabled").click()
    for page in (ada, bob):
        page.wait_for_selector("#run-list li.run[data-status='interrupted'] .out-error:has-text('KeyboardInterrupt')")
        page.wait_for_selector("#kernel-status:has-text('Kernel idle')")
    assert ada.inner_text("#run-error") == "" and bob.inner_text("#run-error") == ""


def test_history_saves_diffs_and_restores_a_version(open_page: OpenPage, request) -> None:  # type: ignore[no-untyped-def]
    room, ada, bob = two_people(open_page, request)
    new_file(ada, "main.py")
    ada.click(".cm-content")
    ada.keyboard.type("x = 1")
    original = wait_same_text(ada, bob, "main.py")

    ada.fill("#version-name", "first draft")
    ada.press("#version-name", "Enter")
    ada.wait_for_selector("#version-list li[data-name='first draft']")
    ada.wait_for_selector("#history-status:has-text('Saved version')")
    bob.click("#versions-refresh")  # someone else's version shows on refresh
    bob.wait_for_selector("#version-list li[data-name='first draft']")

    ada.click(".cm-content")
    ada.keyboard.press("Control+End")
    ada.keyboard.press("Enter")
    ada.keyboard.type("y = 2  # changed")
    assert wait_same_text(ada, bob, "main.py") == "x = 1\ny = 2  # changed"
    bob.click("#version-list li[data-name='first draft'] button:text-is('Diff')")
    bob.wait_for_selector("#diff:visible")
    assert bob.inner_text("#diff-title") == "main.py: first draft → now"
    added = [el.inner_text().strip() for el in bob.query_selector_all("#diff-text .diff-add")]
    assert added[-1] == "+y = 2  # changed", added
    bob.screenshot(path=str(ARTIFACTS / "test_history_saves_diffs_and_restores_a_version-bob-diff.png"))

    bob.click("#version-list li[data-name='first draft'] button:text-is('Restore')")
    bob.click("#version-list .restore-confirm button:text-is('Restore main.py')")  # it asks first
    for page in (ada, bob):
        wait_file_text(page, "main.py", original)
        page.wait_for_function("(want) => window.pairroom.view.state.doc.toString() === want", arg=original)
    bob.wait_for_selector("#history-status:has-text('Restored main.py to “first draft”.')")
    assert bob.is_hidden("#diff")


def test_replay_plays_a_recorded_session(open_page: OpenPage, web_server, request) -> None:  # type: ignore[no-untyped-def]
    room = room_name(request)
    ada = open_page("ada", f"/r/{room}", name="Ada")
    wait_connected(ada)
    new_file(ada, "main.py")
    ada.click(".cm-content")
    ada.keyboard.type("print('first')")
    ada.keyboard.press("Enter")
    ada.keyboard.type("print('recorded')", delay=15)
    final = file_text(ada, "main.py")
    assert final == "print('first')\nprint('recorded')"

    # The session ends at the last leave (docs/recording.md): once the server has the text, Ada leaves.
    api = web_server.url(f"/api/rooms/{room}")
    with httpx.Client(timeout=5) as http:
        wait_until(lambda: http.get(f"{api}/files").json()["files"].get("main.py") == final, "the server has the text")
        ada.close()
        wait_until(
            lambda: [s["end"] is not None for s in http.get(f"{api}/sessions").json()["sessions"]] == [True],
            "the session has ended",
        )

    replay = open_page("replay", f"/r/{room}/replay")
    replay.wait_for_selector("#replay-play:enabled")
    assert replay.title() == f"{room} · replay · pairroom"
    assert len(replay.query_selector_all("#replay-session option")) == 1
    assert replay.inner_text("#replay-play") == "Play"
    replay.wait_for_selector(".replay-mark.mark-join", state="attached")
    replay.wait_for_selector(".replay-mark.mark-leave", state="attached")
    replay.select_option("#replay-speed", "16")
    replay.click("#replay-play")
    replay.wait_for_selector("#replay[data-ended='true']")
    replay.wait_for_function("(want) => window.pairroom.view.state.doc.toString() === want", arg=final)
    assert replay.inner_text("#replay-current") == "main.py"
    assert replay.inner_text("#replay-play") == "Play again"
    assert replay.get_attribute(".cm-content", "contenteditable") == "false"
    assert "Ended" in replay.inner_text("#replay-position")

    # Back to the start on the scrubber: the server closes (4410) and the page reconnects from there.
    replay.evaluate("() => { window.firstReplay = window.pairroom.replay.provider }")
    replay.eval_on_selector("#replay-scrubber", "(el) => { el.value = '0'; el.dispatchEvent(new Event('change')) }")
    replay.wait_for_function(
        "() => window.pairroom.replay.provider !== window.firstReplay && window.pairroom.replay.status"
    )
    replay.wait_for_selector("#replay[data-ended='true']")  # still playing at 16x: it ends again
    replay.wait_for_function("(want) => window.pairroom.view.state.doc.toString() === want", arg=final)
    assert replay.inner_text("#replay-error") == ""


def test_offline_edits_converge_after_reconnecting(open_page: OpenPage, request) -> None:  # type: ignore[no-untyped-def]
    room, ada, bob = two_people(open_page, request)
    new_file(ada, "notes.md")
    ada.click(".cm-content")
    ada.keyboard.type("# Notes")
    wait_same_text(ada, bob, "notes.md")

    ada.context.set_offline(True)
    ada.wait_for_selector("#connection[data-state='offline']")
    ada.keyboard.press("Control+End")
    ada.keyboard.press("Enter")
    ada.keyboard.type("written offline")
    ada.wait_for_selector("#connection:has-text('unsynced edits')")
    ada.screenshot(path=str(ARTIFACTS / "offline-unsynced.png"))

    bob.click(".cm-content")
    bob.keyboard.press("Control+Home")
    bob.keyboard.type("(online) ")
    bob.wait_for_function("() => window.pairroom.view.state.doc.toString().startsWith('(online) ')")
    assert "written offline" not in (file_text(bob, "notes.md") or "")
    assert "(online)" not in (file_text(ada, "notes.md") or "")

    ada.context.set_offline(False)
    wait_connected(ada)
    ada.wait_for_function("() => window.pairroom.files.get('notes.md').toString().includes('(online) ')")
    text = wait_same_text(ada, bob, "notes.md")
    assert text == "(online) # Notes\nwritten offline"
    assert "unsynced" not in ada.inner_text("#connection")


def test_a_viewer_gets_a_read_only_room(open_page: OpenPage, request) -> None:  # type: ignore[no-untyped-def]
    room = room_name(request)
    ada = open_page("ada", f"/r/{room}", name="Ada")
    wait_connected(ada)
    new_file(ada, "main.py")
    ada.click(".cm-content")
    ada.keyboard.type("print('hi')")

    token = mint("open-mode-ignores-tokens-" + "x" * 16, room, "viewer", "Vi")
    viewer = open_page("viewer", f"/r/{room}?token={token}")
    wait_connected(viewer)
    wait_same_text(ada, viewer, "main.py")
    assert viewer.inner_text("#role-badge") == "Viewer · read-only"
    assert viewer.get_attribute(".cm-content", "contenteditable") == "false"
    assert viewer.inner_text("#run-note") == "A viewer sees the runs but cannot run code."
    for hidden in ("#new-file-form", "#name-form", "#run-controls", "#version-form"):
        assert not viewer.is_visible(hidden)
    assert viewer.query_selector("button[aria-label^='Rename']") is None
    assert viewer.query_selector("button[aria-label^='Delete']") is None
    ada.wait_for_selector("#people-list li:has-text('Vi')")
    assert viewer.inner_text("#people-list").split() == ["Vi", "(you)", "main.py", "Ada", "Follow", "main.py"]
    # The token goes to the server as ?token= on the websocket.
    assert viewer.evaluate("() => window.pairroom.provider.url").endswith(f"/yjs/{room}?token={token}")

    viewer.click(".cm-content")
    viewer.keyboard.type("typed by the viewer")
    viewer.keyboard.press("Enter")
    # A barrier instead of a pause: once Ada's next edit has reached the viewer, anything the
    # viewer's keys had changed would have been in its document first.
    ada.keyboard.type(" # done")
    wait_file_text(viewer, "main.py", "print('hi') # done")
    assert "viewer" not in editor_text(viewer)
    assert file_text(ada, "main.py") == "print('hi') # done"

    # Viewers chat through the HTTP API (the server appends the line for them).
    viewer.fill("#chat-input", "hi from Vi")
    viewer.press("#chat-input", "Enter")
    line = ada.wait_for_selector("#chat-log li:has-text('hi from Vi')")
    assert line is not None and line.query_selector(".chat-name").inner_text() == "Vi"  # type: ignore[union-attr]
    viewer.wait_for_selector("#chat-log li:has-text('hi from Vi')")


def test_lobby_creates_a_room_that_works_wide_and_narrow(open_page: OpenPage, request) -> None:  # type: ignore[no-untyped-def]
    lobby = open_page("lobby", "/", name="Ada")
    lobby.click("button:has-text('Create room')")
    lobby.wait_for_function("() => document.getElementById('created-link').value !== ''")  # after the POST
    link = lobby.input_value("#created-link")
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/r/[a-z0-9]{10}", link), link
    lobby.screenshot(path=str(ARTIFACTS / "lobby-created.png"))
    lobby.click("#open-created")
    lobby.wait_for_url(link)
    wait_connected(lobby)
    lobby.wait_for_function("() => window.pairroom.currentPath === 'main.py'")  # seeded once

    # Time to interactive on loopback, from navigation start to "synced, a file in the editor":
    # cold (a new person: empty cache and IndexedDB) and warm (a reload).
    interactive = "() => performance.getEntriesByName('pairroom:interactive')[0].startTime"
    room_path = "/r/" + link.rsplit("/r/", 1)[1]
    cold = open_page("cold", room_path, name="Cy")
    wait_connected(cold)
    cold.wait_for_function("() => performance.getEntriesByName('pairroom:interactive').length > 0")
    cold_ms = cold.evaluate(interactive)
    scripts = cold.evaluate(
        """() => performance.getEntriesByType('resource')
                 .filter((r) => r.name.endsWith('.js'))
                 .map((r) => ({name: r.name.split('/').pop(), bytes: r.encodedBodySize}))"""
    )
    lobby.reload()
    wait_connected(lobby)
    lobby.wait_for_function("() => performance.getEntriesByName('pairroom:interactive').length > 0")
    warm_ms = lobby.evaluate(interactive)
    lobby.screenshot(path=str(ARTIFACTS / "room-wide.png"))

    # Every control has a name, and the keyboard reaches them all (Escape, Tab leaves the editor).
    unnamed = lobby.evaluate(
        """() => [...document.querySelectorAll('button, input, a')]
                 .filter((el) => el.offsetParent !== null)
                 .filter((el) => !(el.getAttribute('aria-label') || el.labels?.[0]?.textContent.trim()
                                   || el.textContent.trim() || el.title))
                 .map((el) => el.outerHTML)"""
    )
    assert unnamed == []
    reached: set[str] = set()
    lobby.evaluate("() => document.activeElement?.blur()")
    for _ in range(40):  # the side column's sections each have a fold toggle in the order too
        if lobby.evaluate("() => document.activeElement.classList.contains('cm-content')"):
            lobby.keyboard.press("Escape")
        lobby.keyboard.press("Tab")
        reached.add(
            lobby.evaluate(
                "() => { const el = document.activeElement; return el.id || el.getAttribute('aria-label') || el.className }"
            )
        )
    for wanted in ("share-button", "new-file-path", "Rename main.py", "Delete main.py", "my-name", "chat-input"):
        assert wanted in reached, (wanted, reached)
    assert "main.py (Python)" in reached  # the editor, labelled with its file and language

    lobby.set_viewport_size({"width": 390, "height": 844})
    lobby.wait_for_function("() => document.getElementById('layout').getBoundingClientRect().width <= 390")
    box = lobby.locator("#editor").bounding_box()
    assert box is not None and box["width"] > 300 and box["height"] > 200
    assert lobby.evaluate("() => document.documentElement.scrollWidth") <= 390
    lobby.screenshot(path=str(ARTIFACTS / "room-narrow.png"), full_page=True)

    # The lobby lists the room among the recent ones.
    lobby.goto(link.rsplit("/r/", 1)[0] + "/")
    lobby.wait_for_selector(f"#recent-list a[href='{room_path}']")

    (ARTIFACTS / "figures.json").write_text(
        json.dumps({"interactive_ms": {"cold": cold_ms, "warm": warm_ms}, "scripts": scripts}, indent=2)
    )


def fetch(directory: Path, *requests: tuple[str, dict[str, str]]) -> list[httpx.Response]:
    """GET each (path, headers) from the static routes alone, on an event loop of its own: while the
    browser is open, Playwright's sync API holds this thread's loop."""

    async def get_all() -> list[httpx.Response]:
        transport = httpx.ASGITransport(Starlette(routes=static_routes(directory)))
        async with httpx.AsyncClient(transport=transport, base_url="http://pairroom") as client:
            return [await client.get(path, headers=headers) for path, headers in requests]

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, get_all()).result()


def test_pages_answer_503_until_the_app_is_built(tmp_path: Path) -> None:
    pages = fetch(tmp_path / "missing", ("/", {}), ("/r/some-room", {}), ("/r/some-room/replay", {}))
    for response in pages:
        assert response.status_code == 503
        assert "make run" in response.text and "npm run build" in response.text
    [asset] = fetch(tmp_path / "missing", ("/assets/room.js", {}))
    assert asset.status_code == 404


def test_built_pages_and_assets_are_served_with_cache_headers(tmp_path: Path) -> None:
    (tmp_path / "assets").mkdir()
    (tmp_path / "index.html").write_text("<!doctype html><title>lobby</title>")
    (tmp_path / "room.html").write_text("<!doctype html><title>room</title>")
    (tmp_path / "assets" / "room-abc.js").write_text("console.log('room')")
    (tmp_path / "assets" / "room-abc.js.gz").write_bytes(gzip.compress(b"console.log('room')"))
    lobby, room, replay, js, plain, outside = fetch(
        tmp_path,
        ("/", {}),
        ("/r/a-room", {}),
        ("/r/a-room/replay", {}),
        ("/assets/room-abc.js", {"accept-encoding": "gzip"}),
        ("/assets/room-abc.js", {"accept-encoding": "identity"}),
        ("/assets/../index.html", {}),
    )
    assert "lobby" in lobby.text and lobby.headers["cache-control"] == "no-cache"
    assert "room" in room.text and "room" in replay.text
    assert js.headers["content-encoding"] == "gzip" and js.text == "console.log('room')"
    assert js.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert "content-encoding" not in plain.headers and plain.text == "console.log('room')"
    assert outside.status_code == 404
