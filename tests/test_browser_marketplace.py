"""The Extensions panel in a real Chromium: an owner switches a per-room extension on and its browser
panel appears in every page of the room, sandboxed away from the page; a module whose bytes do not
match its integrity hash is not run and its panel says so.

The extension is a real package built here (``pip wheel``), published into a catalog, installed from
it with ``pairroom extensions install`` (``--require-hashes``) and loaded by its entry point."""

from __future__ import annotations

import dataclasses
import importlib
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from pairroom import extension_loader
from pairroom.config import Settings
from pairroom.marketplace.extension import FrontendModule, Marketplace
from pairroom.web.auth import mint

from .support.browser import ARTIFACTS, BROWSER_SECRET, WebServer, browser, ensure_build, open_page, room_name  # noqa: F401

PAIRROOM = str(Path(sys.executable).parent / "pairroom")

PANEL_JS = """\
// A panel through the documented browser API: a greeting, a command, and proof of the sandbox.
const api = window.pairroom
const hello = document.createElement('p')
hello.id = 'hello'
api.root.append(hello)
let sandbox = 'open'
try { sandbox = parent.document.title ? 'open' : 'open' } catch { sandbox = 'blocked' }
let storage = 'open'
try { storage = localStorage.getItem('pairroom:name') === null ? 'open' : 'open' } catch { storage = 'blocked' }
hello.dataset.parent = sandbox
hello.dataset.storage = storage
let waves = 0
api.addCommand('Wave', () => { waves += 1; hello.dataset.waves = String(waves); hello.textContent = `${api.name} waved ${waves}` })
api.addCommand('Mark', () => api.setMarks('main.py', [{ line: 2, message: 'hello from the panel', severity: 'warning' }]))
api.onReady(({ room, name }) => { hello.textContent = `Hello ${name} in ${room}` })
"""


def write_package(root: Path) -> Path:
    project = root / "pairroom-hello-panel"
    package = project / "src" / "pairroom_hello_panel"
    package.mkdir(parents=True)
    (project / "pyproject.toml").write_text(
        textwrap.dedent(
            """\
            [build-system]
            requires = ["setuptools==84.2.1"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "pairroom-hello-panel"
            version = "1.0.0"
            description = "Says hello in a panel of the rooms it is switched on in."

            [project.entry-points."pairroom.extensions"]
            hello-panel = "pairroom_hello_panel:HelloPanel"

            [tool.setuptools.packages.find]
            where = ["src"]

            [tool.setuptools.package-data]
            pairroom_hello_panel = ["pairroom-extension.json", "panel.js"]
            """
        )
    )
    (package / "__init__.py").write_text(
        "from pairroom.extensions import Extension\n\n\n"
        "class HelloPanel(Extension):\n    name = 'hello-panel'\n    per_room = True\n"
    )
    (package / "pairroom-extension.json").write_text(
        '{"summary": "Says hello", "capabilities": ["frontend"], "frontend": {"module": "panel.js", "title": "Hello"}}'
    )
    (package / "panel.js").write_text(PANEL_JS)
    return project


def run(*command: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"{command}: {done.stdout}\n{done.stderr}"


@dataclasses.dataclass
class ExtensionWebServer(WebServer):
    @property
    def marketplace(self) -> Marketplace:
        assert self.app is not None
        return next(e for e in self.app.state.extensions.extensions if isinstance(e, Marketplace))


@pytest.fixture(scope="module")
def web_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExtensionWebServer]:
    """The room pages' server, running the hello-panel extension installed from a catalog."""
    static_dir = ensure_build()
    work = tmp_path_factory.mktemp("hello-panel")
    project = write_package(work)
    wheels, site, catalog = work / "wheels", work / "site", work / "catalog.json"
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", str(project), "-w", str(wheels))
    [wheel] = wheels.glob("*.whl")
    run(PAIRROOM, "extensions", "publish", str(wheel), "--catalog", str(catalog))
    run(
        PAIRROOM,
        "extensions",
        "install",
        "hello-panel",
        "--catalog",
        str(catalog),
        "--find-links",
        str(wheels),
        "--target",
        str(site),
    )
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    try:
        extensions = tuple(extension_loader.load(["hello-panel"], lambda name: {}))
        settings = dataclasses.replace(
            Settings(),
            port=0,
            db=f"sqlite:///{work / 'pairroom.db'}",
            log_format="text",
            kernels=False,
            secret=BROWSER_SECRET,
            extension_catalog=str(catalog),
        )
        server = ExtensionWebServer(settings, static_dir, extensions=extensions)
        server.start()
        yield server
        server.stop()
    finally:
        sys.path.remove(str(site))
        sys.modules.pop("pairroom_hello_panel", None)


def room_url(room: str, role: str, name: str) -> str:
    token = mint(BROWSER_SECRET, room, role, name, ttl_seconds=600, user_id=f"{name.lower()}-id")
    return f"/r/{room}?token={token}"


def wait_room(page) -> None:  # type: ignore[no-untyped-def]
    page.wait_for_function("() => window.pairroom && window.pairroom.provider.synced")
    page.wait_for_selector("#extension-list li[data-extension='hello-panel']", state="attached")


def test_an_owner_switches_an_extension_on_and_its_panel_appears_for_everyone(open_page, request):
    room = room_name(request)
    ada = open_page("ada-owner", room_url(room, "owner", "Ada"))
    bob = open_page("bob-editor", room_url(room, "editor", "Bob"))
    wait_room(ada)
    wait_room(bob)
    for page in (ada, bob):
        page.click("#extensions-details > summary")
        assert page.locator(".ext-panel").count() == 0, "off until an owner switches it on"
        item = page.locator("#extension-list li[data-extension='hello-panel']")
        assert "unverified" not in item.inner_text() and "verified" in item.inner_text()
        assert "show a panel in your page" in item.inner_text()  # its capability, in words
        assert page.locator("#catalog-list li[data-catalog='hello-panel']").count() == 1
    assert bob.locator("input[data-extension='hello-panel']").is_disabled(), "read-only for a non-owner"

    ada.locator("input[data-extension='hello-panel']").check()
    for page, name in ((ada, "Ada"), (bob, "Bob")):
        hello = page.frame_locator(".ext-panel[data-extension='hello-panel'] iframe").locator("#hello")
        hello.filter(has_text=f"Hello {name} in {room}").wait_for()
        # the frame has an opaque origin: neither the page nor its storage (where tokens could be)
        assert hello.get_attribute("data-parent") == "blocked"
        assert hello.get_attribute("data-storage") == "blocked"
    assert bob.locator("input[data-extension='hello-panel']").is_checked(), "the switch shows in every page"

    bob.locator(".ext-panel[data-extension='hello-panel'] button", has_text="Wave").click()
    bob.frame_locator(".ext-panel[data-extension='hello-panel'] iframe").locator("#hello[data-waves='1']").wait_for()

    # gutter marks: the panel marks line 2 of main.py in the page's editor
    ada.fill("#new-file-path", "main.py")
    ada.press("#new-file-path", "Enter")
    ada.locator("#editor .cm-content").click()
    ada.keyboard.type("import os\nprint(os.name)\n")
    bob.wait_for_function("() => window.pairroom.files.get('main.py')?.toString().includes('print')")
    bob.locator("#file-tree", has_text="main.py").locator("text=main.py").first.click()
    bob.locator(".ext-panel[data-extension='hello-panel'] button", has_text="Mark").click()
    mark = bob.locator(".ext-gutter .ext-mark[data-severity='warning']")
    mark.wait_for()
    assert mark.get_attribute("title") == "hello-panel: hello from the panel"
    line_top = bob.locator(".cm-line").nth(1).bounding_box()
    mark_top = mark.bounding_box()
    assert line_top is not None and mark_top is not None and abs(line_top["y"] - mark_top["y"]) < 8, "on line 2"
    bob.screenshot(path=str(ARTIFACTS / "marketplace-panel-marks.png"))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    ada.screenshot(path=str(ARTIFACTS / "marketplace-owner-switched-on.png"), full_page=True)

    ada.locator("input[data-extension='hello-panel']").uncheck()
    bob.locator(".ext-panel").wait_for(state="detached")
    ada.locator(".ext-panel").wait_for(state="detached")
    mark.wait_for(state="detached")  # an extension switched off takes its marks with it


def test_a_module_whose_bytes_do_not_match_its_hash_is_not_run(browser, web_server, request):
    room = room_name(request)
    marketplace = web_server.marketplace
    real = marketplace._modules["hello-panel"]
    context = browser.new_context(viewport={"width": 1280, "height": 720})
    try:
        page = context.new_page()
        uncaught: list[str] = []
        page.on("pageerror", lambda exc: uncaught.append(str(exc)))
        page.goto(web_server.url(room_url(room, "owner", "Ada")))
        wait_room(page)
        # what a swapped file on the server or a tampering proxy would serve, under the listed hash
        marketplace._modules["hello-panel"] = FrontendModule(
            real.title, b"document.body.append('tampered')\n", real.integrity
        )
        page.click("#extensions-details > summary")
        page.locator("input[data-extension='hello-panel']").check()
        problem = page.locator(".ext-panel[data-extension='hello-panel'] .ext-error")
        problem.filter(has_text="integrity hash did not match").wait_for()
        frame = page.frame_locator(".ext-panel[data-extension='hello-panel'] iframe")
        assert frame.locator("#hello").count() == 0 and "tampered" not in frame.locator("body").inner_text()
        assert not uncaught, uncaught
        page.fill("#chat-input", "the room carries on")  # the page still works
        page.press("#chat-input", "Enter")
        page.locator("#chat-log", has_text="the room carries on").wait_for()
        page.screenshot(path=str(ARTIFACTS / "marketplace-integrity-refused.png"))
    finally:
        marketplace._modules["hello-panel"] = real
        context.close()
