"""The room as people use it, in real Chromium, continued: ``input()`` answered from the page, files run
with the interpreter that fits them, a room that opens with a file and an editor at full height, an app
that opens and edits with the server down, and the replay beside what happened. One kernel server and one
browser serve the module."""

from __future__ import annotations

import dataclasses
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from pairroom.config import Settings
from pairroom.kernels.runners import Runners
from tests.support.browser import (  # noqa: F401  (fixtures)
    ARTIFACTS,
    OpenPage,
    WebServer,
    browser,
    ensure_build,
    open_page,
    room_name,
    wait_connected,
    web_server,
)

pytestmark = pytest.mark.slow


def wait_for_http(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """Retry ``check`` (an HTTP look at the server) until it holds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def kernels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    """pairroom with sandboxed kernels (one pre-started), shared by the module's run tests."""
    db = tmp_path_factory.mktemp("room-kernels") / "pairroom.db"
    settings = dataclasses.replace(
        Settings(), port=0, db=f"sqlite:///{db}", log_format="text", kernels=True, kernel_pool_size=1
    )
    server = WebServer(settings, ensure_build())
    server.start()
    try:
        if server.app is None or getattr(server.app.state, "kernels", None) is None:
            pytest.skip("kernels are not available here (scripts/ensure-bwrap, scripts/ensure-kernel-env)")
        yield server
    finally:
        server.stop()


def new_file(page, path: str, text: str) -> None:  # type: ignore[no-untyped-def]
    """Create ``path`` from the file list, put ``text`` in it, and wait until it is the open file."""
    page.fill("#new-file-path", path)
    page.press("#new-file-path", "Enter")
    page.wait_for_function("(p) => window.pairroom.currentPath === p", arg=path)
    page.evaluate(
        "([p, t]) => { const f = window.pairroom.files.get(p); f.delete(0, f.length); f.insert(0, t) }", [path, text]
    )


def test_input_asks_the_person_who_ran_the_code_and_the_others_see_it_wait(  # type: ignore[no-untyped-def]
    kernels, open_page: OpenPage, request
) -> None:
    room = room_name(request)
    ada = open_page("ada", f"/r/{room}", name="Ada", server=kernels)
    bob = open_page("bob", f"/r/{room}", name="Bob", server=kernels)
    wait_connected(ada)
    wait_connected(bob)
    new_file(ada, "main.py", 'print("start")\nname = input("Name? ")\nprint("hi", name)\n')
    ada.click("#run-file")

    # Ada ran it: the prompt is a field in her output, after what the code printed before asking.
    ada.wait_for_selector("#run-list li.run .run-input input", timeout=60_000)
    field = ada.locator("#run-list li.run .run-input input")
    assert ada.inner_text("#run-list li.run .run-input-prompt") == "Name? "
    assert ada.inner_text("#run-list li.run .out-stream") == "start\n"
    assert ada.evaluate("() => document.activeElement.classList.contains('run-input-field')")
    # Bob sees that it waits, and has no field to answer with.
    bob.wait_for_selector("#run-list li.run .run-input.waiting")
    assert "Waiting for input" in bob.inner_text("#run-list li.run .run-input.waiting")
    assert "Name?" in bob.inner_text("#run-list li.run .run-input.waiting")
    assert bob.query_selector("#run-list li.run .run-input input") is None
    ada.screenshot(path=str(ARTIFACTS / "room-input-asked.png"))
    bob.screenshot(path=str(ARTIFACTS / "room-input-waiting.png"))

    # Ada answers: both see the prompt with her answer, then what the code made of it.
    field.fill("Ad")
    # the run's record changes while she types (another output, a status): her field and text stay
    ada.evaluate(
        "() => { const p = window.pairroom.runs; for (const id of p.views.keys()) p.dirty.add(id); p.render() }"
    )
    ada.wait_for_timeout(200)
    assert field.input_value() == "Ad"
    assert ada.evaluate("() => document.activeElement.classList.contains('run-input-field')")
    field.press_sequentially("a")
    field.press("Enter")
    for page in (ada, bob):
        page.wait_for_selector("#run-list li.run[data-status='ok']")
        assert page.inner_text("#run-list li.run .out-stream") == "start\nName? Ada\nhi Ada\n"
        assert page.query_selector("#run-list li.run .run-input") is None

    # Bad answers get precise statuses: a run that waits for nothing (409), an unknown run (404), a
    # page that did not run it (403), and a value that is not a string (400).

    def post(run: str, body: dict[str, object]) -> list[object]:
        answer = ada.context.request.post(kernels.url(f"/api/rooms/{room}/runs/{run}/input"), data=body)
        return [answer.status, answer.json()["error"]]

    run_id = ada.get_attribute("#run-list li.run", "data-run")
    tab = ada.evaluate("() => sessionStorage.getItem('pairroom:tab')")
    assert post(run_id, {"value": "x", "client": tab}) == [409, f"run {run_id!r} is not waiting for input"]
    assert post("nope", {"value": "x", "client": tab})[0] == 404
    assert post(run_id, {"value": 1, "client": tab})[0] == 400
    ada.evaluate("() => window.pairroom.files.get('main.py').insert(0, 'input()\\n')")
    ada.click("#run-file")
    ada.wait_for_selector("#run-list li.run:last-child .run-input input", timeout=30_000)
    run_id = ada.get_attribute("#run-list li.run:last-child", "data-run")
    bob_tab = bob.evaluate("() => sessionStorage.getItem('pairroom:tab')")
    assert post(run_id, {"value": "x", "client": bob_tab}) == [
        403,
        "only the person who ran the code answers its input()",
    ]
    ada.click("#kernel-interrupt")  # an interrupted input() ends the run and its field
    ada.wait_for_selector("#run-list li.run:last-child[data-status='interrupted']")
    assert ada.query_selector("#run-list li.run:last-child .run-input") is None


def test_javascript_runs_with_node_and_other_files_say_why_they_do_not_run(  # type: ignore[no-untyped-def]
    kernels, open_page: OpenPage, request
) -> None:
    room = room_name(request)
    ada = open_page("ada", f"/r/{room}", name="Ada", server=kernels)
    wait_connected(ada)
    new_file(ada, "main.js", "const xs = [1, 2, 3]\nconsole.log('sum', xs.reduce((a, b) => a + b))\n")
    ada.wait_for_selector("#run-file:not([disabled])")
    assert "node v" in ada.get_attribute("#run-file", "title")  # type: ignore[operator]
    ada.click("#run-file")
    ada.wait_for_selector("#run-list li.run[data-status='ok']", timeout=60_000)
    assert ada.inner_text("#run-list li.run .run-title") == "Run of main.js"
    assert ada.inner_text("#run-list li.run .out-stream.stdout") == "sum 6\n"

    # A JavaScript error: node's message on stderr (the room's path, not the sandbox's), and the run failed.
    ada.evaluate("() => window.pairroom.files.get('main.js').insert(0, 'null.x\\n')")
    ada.click("#run-file")
    ada.wait_for_selector("#run-list li.run:last-child[data-status='error']")
    stderr = ada.inner_text("#run-list li.run:last-child .out-stream.stderr")
    assert "main.js:1" in stderr and "TypeError" in stderr and "/home/room" not in stderr, stderr
    assert ada.inner_text("#run-list li.run:last-child .out-error") == "node exited with status 1"
    ada.screenshot(path=str(ARTIFACTS / "room-run-node.png"))

    # A selection of a JavaScript file runs with node too (Ctrl+Enter).
    ada.evaluate(
        "() => { const v = window.pairroom.view; v.dispatch({selection: {anchor: v.state.doc.line(2).from, head: v.state.doc.line(2).to}}) }"
    )
    ada.click(".cm-content")
    ada.evaluate(
        "() => { const v = window.pairroom.view; v.dispatch({selection: {anchor: v.state.doc.line(2).from, head: v.state.doc.line(2).to}}) }"
    )
    ada.keyboard.press("Control+Enter")
    ada.wait_for_selector("#run-list li.run:last-child .run-title:text-is('Selection: const xs = [1, 2, 3]')")
    ada.wait_for_selector("#run-list li.run:last-child[data-status='ok']")

    # A CSV file is not a program: disabled, and the note says what runs.
    new_file(ada, "data.csv", "a,b\n")
    assert ada.is_disabled("#run-file")
    assert ada.inner_text("#run-note") == (
        "data.csv is not a program: Run works on .py files (the room’s Python kernel) and .js files (node)."
    )
    refused = ada.context.request.post(kernels.url(f"/api/rooms/{room}/runs"), data={"path": "data.csv"})
    assert refused.status == 422 and "data.csv is not a Python or JavaScript file" in refused.json()["error"]

    # On a server whose sandbox has no node, a .js file's Run is disabled and says so (a fresh page asks).
    service = kernels.app.state.kernels  # type: ignore[union-attr]
    had, service.runners = service.runners, Runners()
    try:
        bea = open_page("bea", f"/r/{room}", name="Bea", server=kernels)
        wait_connected(bea)
        bea.evaluate("() => window.pairroom.openFile('main.js')")
        bea.wait_for_selector(
            "#run-note:text-is('main.js is JavaScript: this server’s sandbox has no node, so only .py files run here.')"
        )
        assert bea.is_disabled("#run-file")
        bea.screenshot(path=str(ARTIFACTS / "room-run-no-node.png"))
        refused = bea.context.request.post(kernels.url(f"/api/rooms/{room}/runs"), data={"path": "main.js"})
        assert refused.status == 422 and "has no node" in refused.json()["error"]
    finally:
        service.runners = had


def test_an_empty_room_opens_with_a_starter_file_and_the_editor_keeps_its_height(  # type: ignore[no-untyped-def]
    open_page: OpenPage, request
) -> None:
    room = room_name(request)
    ada = open_page("ada", f"/r/{room}", name="Ada")
    wait_connected(ada)
    ada.wait_for_function("() => window.pairroom.currentPath === 'main.py'")
    starter = ada.evaluate("() => window.pairroom.files.get('main.py').toString()")
    assert starter.startswith("# main.py: the room’s first file"), starter
    assert "Ctrl+Enter runs it" in ada.inner_text(".cm-content")

    # At 1280x720 the output and the terminal are folded to their heads: the editor has most of the height.
    height = lambda page, sel: page.evaluate(f"() => document.querySelector('{sel}').getBoundingClientRect().height")
    assert ada.get_attribute("#runs-fold", "aria-expanded") == "false"
    assert ada.get_attribute("#terminals-fold", "aria-expanded") == "false"
    assert not ada.is_visible("#runs-empty") and ada.is_visible("#run-file")
    assert height(ada, "#editor") >= 360, height(ada, "#editor")
    ada.screenshot(path=str(ARTIFACTS / "room-starter-1280.png"))

    # A run opens the output by itself; the fold toggle folds it again and the choice outlives a reload.
    ada.click("#runs-fold")
    assert ada.is_visible("#runs-empty") and ada.get_attribute("#runs-fold", "aria-expanded") == "true"
    ada.reload()
    wait_connected(ada)
    assert ada.is_visible("#runs-empty")
    ada.click("#runs-fold")
    assert not ada.is_visible("#runs-empty")

    # Creating main.py from the list while it holds only the starter takes it over, empty.
    ada.fill("#new-file-path", "main.py")
    ada.press("#new-file-path", "Enter")
    ada.wait_for_function("() => window.pairroom.files.get('main.py').toString() === ''")
    assert ada.inner_text("#file-error") == ""

    # 390 px wide: one column, the editor still tall and nothing wider than the screen.
    bob = open_page("bob", f"/r/{room}", name="Bob", viewport={"width": 390, "height": 844})
    wait_connected(bob)
    bob.wait_for_function("() => window.pairroom.currentPath === 'main.py'")
    assert height(bob, "#editor") >= 300, height(bob, "#editor")
    assert bob.evaluate("() => document.documentElement.scrollWidth") <= 390
    bob.screenshot(path=str(ARTIFACTS / "room-starter-390.png"), full_page=True)


def test_with_the_server_down_a_reload_opens_the_room_offline_and_edits_reach_it_when_it_is_back(  # type: ignore[no-untyped-def]
    browser, tmp_path: Path, request
) -> None:
    settings = dataclasses.replace(
        Settings(), port=0, db=f"sqlite:///{tmp_path / 'p.db'}", log_format="text", kernels=False
    )
    server = WebServer(settings, ensure_build())
    server.start()
    room = room_name(request)
    files_url = lambda: f"{server.http}/api/rooms/{room}/files"
    context = browser.new_context(viewport={"width": 1280, "height": 720})
    context.add_init_script("if (window === window.top) localStorage.setItem('pairroom:name', 'Ada')")
    context.set_default_timeout(15_000)
    page = context.new_page()
    errors: list[str] = []
    down = {"now": False}  # while the server is down, failed requests and sockets are expected
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" and not down["now"] else None)
    page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
    try:
        page.goto(server.url(f"/r/{room}"))
        wait_connected(page)
        page.wait_for_function("() => window.pairroom.currentPath === 'main.py'")
        page.evaluate(
            "() => { const f = window.pairroom.files.get('main.py'); f.delete(0, f.length); f.insert(0, 'x = 1\\n') }"
        )
        wait_for_http(
            lambda: httpx.get(files_url()).json()["files"].get("main.py") == "x = 1\n", "the server has x = 1"
        )
        # The service worker runs the page and holds the shell, its scripts and the Python chunk.
        page.wait_for_function("() => navigator.serviceWorker.controller !== null")
        page.wait_for_function(
            """async () => { const name = (await caches.keys()).find((k) => k.startsWith('pairroom-shell-'));
                             if (!name) return false;
                             const keys = await (await caches.open(name)).keys();
                             return keys.some((r) => r.url.endsWith('/r/_offline-shell')) && keys.some((r) => r.url.includes('/lang-python-')) }"""
        )

        port = server.server.port  # type: ignore[union-attr]
        down["now"] = True
        server.stop()
        page.reload()
        page.wait_for_selector("#connection[data-state='offline']")
        assert page.inner_text("#connection-text") == "Offline · the server is out of reach"
        page.wait_for_function("() => window.pairroom.currentPath === 'main.py'")
        assert page.evaluate("() => window.pairroom.view.state.doc.toString()") == "x = 1\n"
        page.click(".cm-content")
        page.keyboard.press("Control+End")
        page.keyboard.type("y = 2")
        page.wait_for_selector("#connection-text:has-text('unsynced edits')")
        page.screenshot(path=str(ARTIFACTS / "room-offline.png"))

        server = WebServer(dataclasses.replace(settings, port=port), ensure_build())
        server.start()
        page.wait_for_selector("#connection[data-state='connected']", timeout=30_000)
        down["now"] = False
        wait_for_http(
            lambda: httpx.get(files_url()).json()["files"].get("main.py") == "x = 1\ny = 2", "the offline edit arrived"
        )
    finally:
        context.close()
        server.stop()
    assert not errors, errors


def test_the_replay_shows_the_chat_and_the_runs_beside_the_editor(  # type: ignore[no-untyped-def]
    kernels, open_page: OpenPage, request
) -> None:
    room = room_name(request)
    ada = open_page("ada", f"/r/{room}", name="Ada", server=kernels)
    wait_connected(ada)
    new_file(ada, "main.py", 'print("hi from the past")\n')
    ada.click("#run-file")
    ada.wait_for_selector("#run-list li.run[data-status='ok']", timeout=60_000)
    ada.fill("#chat-input", "it prints hi")
    ada.press("#chat-input", "Enter")
    ada.wait_for_selector("#chat-log li:has-text('it prints hi')")
    sessions = kernels.url(f"/api/rooms/{room}/sessions")
    wait_for_http(lambda: bool(httpx.get(sessions).json()["sessions"]), "a session is recorded")
    ada.close()
    wait_for_http(
        lambda: all(s["end"] is not None for s in httpx.get(sessions).json()["sessions"]), "the session has ended"
    )

    replay = open_page("replay", f"/r/{room}/replay", server=kernels)
    replay.wait_for_selector("#replay-play:enabled")
    assert replay.is_visible("#replay-runs-empty") and replay.is_visible("#replay-chat-empty")
    # The session is named after the people in it, by the names they had (not "Guest 1A2B").
    assert replay.inner_text("#replay-session option").endswith(" · Ada"), replay.inner_text("#replay-session option")
    replay.select_option("#replay-speed", "16")
    replay.click("#replay-play")
    replay.wait_for_selector("#replay[data-ended='true']", timeout=30_000)
    # Beside the editor: the run with its output and the chat line with the name Ada had.
    replay.wait_for_selector("#replay-runs li.run[data-status='ok'] .out-stream:text-is('hi from the past')")
    assert replay.inner_text("#replay-runs li.run .run-title") == "Run of main.py"
    line = replay.wait_for_selector("#replay-chat li:has-text('it prints hi')")
    assert line.query_selector(".chat-name").inner_text() == "Ada"  # type: ignore[union-attr]
    assert not replay.is_visible("#replay-runs-empty") and not replay.is_visible("#replay-chat-empty")
    replay.screenshot(path=str(ARTIFACTS / "room-replay-side.png"))
    # Back at the start (played slowly), nothing had run or been said yet.
    replay.select_option("#replay-speed", "0.25")
    replay.eval_on_selector("#replay-scrubber", "(el) => { el.value = '0'; el.dispatchEvent(new Event('change')) }")
    replay.wait_for_function(
        "() => !document.querySelector('#replay-runs li') && !document.querySelector('#replay-chat li')"
        " && !document.querySelector('#replay-runs-empty').hidden"
    )


SHELL_CACHES = "async () => (await caches.keys()).filter((k) => k.startsWith('pairroom-shell-')).sort()"


def test_a_new_builds_service_worker_drops_the_caches_of_earlier_builds(browser, tmp_path: Path, request) -> None:  # type: ignore[no-untyped-def]
    """The build stamps its id into sw.js; the worker keeps its files in a cache named after it, and a
    later build's worker, once active, deletes the earlier build's cache (old hashed assets do not pile
    up). The rebuild is played by rewriting the id in a copy of the built app."""
    static = tmp_path / "static"
    shutil.copytree(ensure_build(), static)
    worker = static / "sw.js"
    text = worker.read_text()
    stamped = re.search(r"const BUILD = '([0-9a-f]{12})'", text)
    assert stamped, "the build writes its id into sw.js"
    old = stamped.group(1)
    settings = dataclasses.replace(
        Settings(), port=0, db=f"sqlite:///{tmp_path / 'p.db'}", log_format="text", kernels=False
    )
    server = WebServer(settings, static)
    server.start()
    context = browser.new_context(viewport={"width": 1280, "height": 720})
    context.add_init_script("if (window === window.top) localStorage.setItem('pairroom:name', 'Ada')")
    context.set_default_timeout(15_000)
    try:
        page = context.new_page()
        page.goto(server.url(f"/r/{room_name(request)}"))
        wait_connected(page)
        page.wait_for_function("() => navigator.serviceWorker.controller !== null")
        page.wait_for_function(
            f"async () => (await (await caches.open('pairroom-shell-{old}')).keys()).some((r) => r.url.includes('/assets/room-'))"
        )
        assert page.evaluate(SHELL_CACHES) == [f"pairroom-shell-{old}"]

        worker.write_text(text.replace(f"const BUILD = '{old}'", "const BUILD = '0123456789ab'"))  # a rebuild
        page.evaluate("async () => (await navigator.serviceWorker.getRegistration()).update()")
        # Once the new worker is active: its cache alone, holding the shell again. (A write the old
        # worker had in flight can show the old name for a moment; Chrome drops it when that ends.)
        page.wait_for_function(
            f"""async () => {{ const names = await ({SHELL_CACHES})();
                if (names.join() !== 'pairroom-shell-0123456789ab') return false;
                const keys = await (await caches.open(names[0])).keys();
                return keys.some((r) => r.url.endsWith('/r/_offline-shell')) }}"""
        )
    finally:
        context.close()
        server.stop()
