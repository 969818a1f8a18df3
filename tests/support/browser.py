"""Real headless Chromium (Debian's, never a downloaded one) against a real pairroom serving the web app.

Fixtures (import them into a test module)::

    from tests.support.browser import browser, web_server, open_page  # noqa: F401

- ``web_server`` (module): pairroom with the built web app, started in this process on a free port.
  Browser tests use Playwright's sync API, which cannot run inside an event loop, so the server runs
  its own loop in a thread; otherwise it starts exactly as ``tests/conftest.py``'s ``start_server``
  does (``create_app`` + ``uvicorn_config`` + ``Server``, ready when ``server.ready`` is set). The
  routes of :mod:`pairroom.web.static` are put in front of the app's own, as ``app.py`` will.
- ``secret_web_server`` (module): the same with a server secret (``BROWSER_SECRET``), so pages need
  tokens, presence carries server-stamped roles and the lobby hands out a link per role; pages open
  on it with ``open_page(..., server=secret_web_server)``.
- ``browser`` (module): one Chromium per module; each page gets its own context (its own storage,
  IndexedDB and network emulation), so two pages are two people. Not session-wide: while it is
  open, Playwright's sync API holds the main thread's event loop, and the async tests of the
  modules that follow need it.
- ``open_page(label, path, **context_options)`` (function): a page in a new context, at
  1280x720 unless told otherwise. Every page's console errors and uncaught exceptions fail the
  test, and each page is photographed into ``tests/artifacts/<test>-<label>.png`` at teardown.

Before the first browser test the web app is built if ``pairroom/static`` is missing or older than
``frontend/`` (``npm ci`` when ``node_modules`` is stale, then ``npm run build``), under a file lock so
that concurrent test runs in one tree do not build over each other.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import os
import re
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from starlette.applications import Starlette

from pairroom.app import create_app
from pairroom.config import Settings
from pairroom.extensions import Extension
from pairroom.web.runner import Server, uvicorn_config
from pairroom.web.static import STATIC_DIR, static_routes

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the browser tests need the playwright package (see pyproject's dev extra)"
)

ROOT = Path(__file__).resolve().parents[2]
FRONTEND = ROOT / "frontend"
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 15_000  # every wait is on a condition; this only bounds how long a broken run hangs

# -- the build -------------------------------------------------------------------------------------


def _newest_mtime(paths: list[Path]) -> float:
    newest = 0.0
    for path in paths:
        if path.is_dir():
            newest = max([newest, *(p.stat().st_mtime for p in path.rglob("*") if p.is_file())])
        elif path.exists():
            newest = max(newest, path.stat().st_mtime)
    return newest


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, cwd=FRONTEND, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed in {FRONTEND}:\n{done.stdout}\n{done.stderr}")


def ensure_build() -> Path:
    """Build the web app into ``pairroom/static`` unless the build there is newer than its sources."""
    sources = [FRONTEND / n for n in ("src", "index.html", "room.html", "vite.config.js", "package-lock.json")]
    built = STATIC_DIR / "room.html"
    lock_path = ROOT / ".cache" / "frontend-build.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run may be building right now: wait for it
        if built.exists() and built.stat().st_mtime >= _newest_mtime(sources):
            return STATIC_DIR
        stamp = FRONTEND / "node_modules" / ".package-lock.json"
        lockfile = FRONTEND / "package-lock.json"
        if not stamp.exists() or stamp.stat().st_mtime < lockfile.stat().st_mtime:
            _run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"])
        _run(["npm", "run", "build", "--silent"])
    return STATIC_DIR


def ensure_chromium() -> Path:
    if not CHROMIUM.exists():
        subprocess.run([str(ROOT / "scripts" / "ensure-chromium")], check=True, stdout=subprocess.DEVNULL)
    return CHROMIUM


# -- the server ------------------------------------------------------------------------------------


@dataclasses.dataclass
class WebServer:
    """pairroom on a free port, its own event loop in a thread."""

    settings: Settings
    static_dir: Path
    server: Server | None = None
    app: Starlette | None = None
    thread: threading.Thread | None = None
    error: BaseException | None = None
    extensions: tuple[Extension, ...] = ()  # third-party ones, as create_app takes them

    @property
    def http(self) -> str:
        assert self.server is not None and self.server.port is not None
        return f"http://127.0.0.1:{self.server.port}"

    def url(self, path: str) -> str:
        return self.http + path

    def start(self) -> None:
        started = threading.Event()
        self.thread = threading.Thread(target=self._thread, args=(started,), name="pairroom-web", daemon=True)
        self.thread.start()
        if not started.wait(60):
            raise RuntimeError("pairroom did not start within 60 s")
        if self.error is not None:
            raise RuntimeError("pairroom failed to start") from self.error

    def _thread(self, started: threading.Event) -> None:
        try:
            asyncio.run(self._serve(started))
        except BaseException as exc:  # reported to the test thread through start() / stop()
            self.error = exc
        finally:
            started.set()

    async def _serve(self, started: threading.Event) -> None:
        app = self.app = create_app(self.settings, extensions=self.extensions)
        app.router.routes[0:0] = static_routes(self.static_dir)  # what app.py will do
        self.server = Server(uvicorn_config(app, self.settings, signals=False))
        task = asyncio.create_task(self.server.serve())
        ready = asyncio.create_task(self.server.ready.wait())
        await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if task.done():
            task.result()
            raise RuntimeError("server exited during start-up")
        started.set()
        await task

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True  # uvicorn's main loop polls this flag
        if self.thread is not None:
            self.thread.join(30)
            if self.thread.is_alive():
                raise RuntimeError("pairroom did not stop within 30 s")
        if self.error is not None:
            raise RuntimeError("pairroom failed while serving") from self.error


@pytest.fixture(scope="module")
def web_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    static_dir = ensure_build()
    db = tmp_path_factory.mktemp("web") / "pairroom.db"
    settings = dataclasses.replace(Settings(), port=0, db=f"sqlite:///{db}", log_format="text", kernels=False)
    server = WebServer(settings, static_dir)
    server.start()
    yield server
    server.stop()


BROWSER_SECRET = "browser-test-secret-0123456789abcdef"


@pytest.fixture(scope="module")
def secret_web_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    """pairroom as ``web_server`` but with a secret (``BROWSER_SECRET``): every page needs a token, the
    server stamps identities and roles on presence, and the lobby hands out a link per role.
    ``open_page(..., server=secret_web_server)`` opens a page on it."""
    static_dir = ensure_build()
    db = tmp_path_factory.mktemp("web-secret") / "pairroom.db"
    settings = dataclasses.replace(
        Settings(),
        port=0,
        db=f"sqlite:///{db}",
        log_format="text",
        kernels=False,
        secret=BROWSER_SECRET,
        open_lobby=True,  # the lobby page creates rooms without a creator link (rate-limited per address)
    )
    server = WebServer(settings, static_dir)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def kernel_web_server(tmp_path: Path) -> Iterator[WebServer]:
    """pairroom as ``web_server`` plus sandboxed kernels (one pre-started), for the run panel's test only:
    starting the kernel service costs a second or two. Skips where the sandbox cannot work."""
    static_dir = ensure_build()
    settings = dataclasses.replace(
        Settings(),
        port=0,
        db=f"sqlite:///{tmp_path / 'pairroom.db'}",
        log_format="text",
        kernels=True,
        kernel_pool_size=1,
    )
    server = WebServer(settings, static_dir)
    server.start()
    try:
        if server.app is None or getattr(server.app.state, "kernels", None) is None:
            pytest.skip("kernels are not available here (scripts/ensure-bwrap, scripts/ensure-kernel-env)")
        yield server
    finally:
        server.stop()


# -- the browser -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    executable = ensure_chromium()
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(executable), args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@dataclasses.dataclass
class OpenedPage:
    label: str
    page: sync_api.Page
    context: sync_api.BrowserContext
    errors: list[str]


OpenPage = Callable[..., sync_api.Page]


@pytest.fixture
def open_page(browser: sync_api.Browser, web_server: WebServer, request: pytest.FixtureRequest) -> Iterator[OpenPage]:
    opened: list[OpenedPage] = []
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    def open_(
        label: str,
        path: str,
        *,
        name: str | None = None,
        server: WebServer | None = None,
        refusals_expected: bool = False,
        **context_options: object,
    ) -> sync_api.Page:
        """A new person: a fresh context at ``path`` (on ``server``, by default ``web_server``).
        ``name`` is their display name (localStorage). ``refusals_expected``: the test sends bad input
        on purpose, so the browser's own "Failed to load resource: ... 4xx" lines are not errors."""
        options: dict[str, object] = {"viewport": {"width": 1280, "height": 720}}
        options.update(context_options)
        context = browser.new_context(**options)  # type: ignore[arg-type]
        context.set_default_timeout(WAIT_MS)
        if name is not None:
            # Top frames only: a sandboxed output frame has no storage and would throw.
            context.add_init_script(f"if (window === window.top) localStorage.setItem('pairroom:name', {name!r})")
        page = context.new_page()
        errors: list[str] = []

        def on_console(msg: sync_api.ConsoleMessage) -> None:
            if msg.type != "error":
                return
            if refusals_expected and re.match(
                r"Failed to load resource: the server responded with a status of 4\d\d", msg.text
            ):
                return
            errors.append(f"console.{msg.type}: {msg.text}")

        page.on("console", on_console)
        page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
        opened.append(OpenedPage(label, page, context, errors))
        page.goto((server or web_server).url(path))
        return page

    yield open_

    test = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    problems = []
    try:
        for it in opened:  # every page while everyone is still in the room, then close them
            if not it.page.is_closed():
                it.page.screenshot(path=str(ARTIFACTS / f"{test}-{it.label}.png"))
            problems += [f"{it.label}: {e}" for e in it.errors]
    finally:
        for it in opened:
            it.context.close()
    assert not problems, "the pages reported errors:\n" + "\n".join(problems)


# -- helpers ---------------------------------------------------------------------------------------


def wait_connected(page: sync_api.Page) -> None:
    """The room page is synced with the server."""
    page.wait_for_function("() => window.pairroom && window.pairroom.provider.synced")
    page.wait_for_selector("#connection[data-state='connected']")


def two_people(open_page: OpenPage, request: pytest.FixtureRequest) -> tuple[str, sync_api.Page, sync_api.Page]:
    """A fresh room with Ada and Bob in it, both synced: (room, ada, bob)."""
    room = room_name(request)
    ada = open_page("ada", f"/r/{room}", name="Ada")
    bob = open_page("bob", f"/r/{room}", name="Bob")
    wait_connected(ada)
    wait_connected(bob)
    return room, ada, bob


def editor_text(page: sync_api.Page) -> str:
    return page.evaluate("() => window.pairroom.view.state.doc.toString()")  # type: ignore[no-any-return]


def file_text(page: sync_api.Page, path: str) -> str | None:
    return page.evaluate(  # type: ignore[no-any-return]
        "(p) => { const t = window.pairroom.files.get(p); return t ? t.toString() : null }", path
    )


def wait_file_text(page: sync_api.Page, path: str, expected: str) -> None:
    page.wait_for_function(
        "([p, want]) => { const t = window.pairroom.files.get(p); return t && t.toString() === want }",
        arg=[path, expected],
    )


def room_name(request: pytest.FixtureRequest) -> str:
    """A room of its own for each test: the test's name plus a random suffix."""
    base = re.sub(r"[^A-Za-z0-9_-]+", "-", request.node.name)[:40]
    return f"{base}-{os.urandom(3).hex()}"
