"""The source-control panel in Chromium: two people type, one commits, the other is credited.

A room is opened from a real bare repository made in the test; Ada (owner) and Bob (editor) type in
the editor; Ada's panel lists the changed file with both names and Bob as the co-author before she
commits, the diff, and a blame gutter naming who wrote each line; she commits and pushes from the panel, and ``git log`` on the real remote shows her as the
author and Bob in the ``Co-authored-by`` trailer.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest

from pairroom.config import Settings
from tests.support.browser import (  # noqa: F401  (fixtures)
    ARTIFACTS,
    BROWSER_SECRET,
    OpenPage,
    WebServer,
    browser,
    ensure_build,
    open_page,
    room_name,
    wait_connected,
    web_server,
)

ENV = {
    **os.environ,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "HOME": "/nonexistent",
    "GIT_AUTHOR_NAME": "Seed",
    "GIT_AUTHOR_EMAIL": "seed@example.org",
    "GIT_COMMITTER_NAME": "Seed",
    "GIT_COMMITTER_EMAIL": "seed@example.org",
}


def git(*args: str, cwd: Path | None = None) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, env=ENV, capture_output=True, check=False)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


def _rgb(hex_color: str) -> str:
    """``#0072b2`` as the browser writes a style colour back: ``rgb(0,114,178)``."""
    value = hex_color.lstrip("#")
    return "rgb({},{},{})".format(*(int(value[i : i + 2], 16) for i in (0, 2, 4)))


def token(room: str, user: str, name: str, role: str, email: str) -> str:
    claims = {
        "sub": user,
        "room": room,
        "role": role,
        "name": name,
        "email": email,
        "iat": int(time.time()),
        "exp": int(time.time()) + 3600,
    }
    return jwt.encode(claims, BROWSER_SECRET, algorithm="HS256")


def seeded_remote(remote: Path, files: dict[str, str]) -> tuple[Path, Path]:
    """A bare repository at ``remote`` whose ``main`` holds ``files`` in one commit by Seed, and the
    working copy that pushed it (to push more as "upstream")."""
    git("init", "--bare", "-b", "main", str(remote))
    seed = remote.with_name(remote.name + "-seed")
    git("clone", str(remote), str(seed))
    for name, text in files.items():
        (seed / name).write_text(text)
    git("add", "-A", cwd=seed)
    git("commit", "-m", "seed", cwd=seed)
    git("push", "origin", "main", cwd=seed)
    return remote, seed


@pytest.fixture(scope="module")
def git_web_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    static_dir = ensure_build()
    db = tmp_path_factory.mktemp("web-git") / "pairroom.db"
    settings = dataclasses.replace(
        Settings(),
        port=0,
        db=f"sqlite:///{db}",
        log_format="text",
        kernels=True,
        kernel_pool_size=0,
        secret=BROWSER_SECRET,
        git_allow_local=True,
        open_lobby=True,
        lobby_rooms_per_minute=10_000,
    )  # kernels on: the room page's terminal panel finds its service (off, it answers 503)
    server = WebServer(settings, static_dir)
    server.start()
    yield server
    server.stop()


def test_committing_from_the_panel_credits_the_other_typist(
    open_page: OpenPage, git_web_server: WebServer, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    remote, seed = seeded_remote(tmp_path / "remote.git", {"main.py": "print('hello')\n"})

    room = room_name(request)
    answer = httpx.post(
        git_web_server.url("/api/rooms"), json={"room": room, "git": {"url": f"file://{remote}"}}, timeout=60
    )
    assert answer.status_code == 201, answer.text

    ada = open_page(
        "ada", f"/r/{room}?token={token(room, 'ada', 'Ada', 'owner', 'ada@example.org')}", server=git_web_server
    )
    bob = open_page(
        "bob", f"/r/{room}?token={token(room, 'bob', 'Bob', 'editor', 'bob@example.org')}", server=git_web_server
    )
    for page in (ada, bob):
        wait_connected(page)
        page.wait_for_selector("#source-control:not([hidden])")
        page.wait_for_function("() => window.pairroom.currentPath === 'main.py'")

    bob.click(".cm-content")
    bob.keyboard.press("Control+End")
    bob.keyboard.type("print('bob')\n")
    ada.wait_for_function("() => window.pairroom.files.get('main.py').toString().includes(\"print('bob')\")")
    ada.click(".cm-content")
    ada.keyboard.press("Control+Home")
    ada.keyboard.type("# ada\n")
    bob.wait_for_function("() => window.pairroom.files.get('main.py').toString().startsWith('# ada')")

    # before committing, Ada sees what changed, by whom, and who the commit will credit
    ada.click("#source-control >> text=Refresh")
    ada.wait_for_selector("#git-coauthors >> text=Bob <bob@example.org>")
    ada.wait_for_selector("#git-changes >> text=main.py")
    ada.wait_for_selector("#git-changes >> text=Bob, Ada")  # in the order they typed
    # the diff of a change, and the blame gutter: each line names who last changed it
    ada.click("#git-changes >> text=main.py")
    ada.wait_for_selector("#git-diff >> text=+print('bob')")
    ada.click("#git-blame")
    ada.wait_for_function("() => (window.pairroom.git.blame() || []).length >= 3")
    blame = ada.evaluate("() => window.pairroom.git.blame().map((l) => [l.text, l.name])")
    assert blame[:3] == [["# ada", "Ada"], ["print('hello')", None], ["print('bob')", "Bob"]]
    ada.wait_for_selector(".git-blame-gutter >> text=Bob")
    # in Bob's own colour, as his presence shows it
    bob_color = ada.evaluate(
        "() => [...window.pairroom.awareness.getStates().values()].find((s) => s.user?.id === 'bob').user.color"
    )
    mark_color = ada.evaluate(
        "() => [...document.querySelectorAll('.git-blame-mark')].find((m) => m.textContent === 'Bob').style.borderLeftColor"
    )
    assert mark_color and bob_color and mark_color.replace(" ", "") == _rgb(bob_color)
    ada.fill("#git-message", "Greet from both of us")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    ada.screenshot(path=str(Path(ARTIFACTS) / "git-panel-before-commit.png"))
    ada.click("#git-commit")
    ada.wait_for_selector("#git-note >> text=Committed")
    ada.wait_for_selector("#git-log >> text=Greet from both of us")
    ada.click("#git-push")
    ada.wait_for_selector("#git-note >> text=Pushed")
    ada.screenshot(path=str(Path(ARTIFACTS) / "git-panel-after-push.png"))

    branch = f"pairroom/{room}"
    assert git("log", "-1", "--format=%an <%ae>", branch, cwd=remote).strip() == "Ada <ada@example.org>"
    assert git("log", "-1", "--format=%(trailers:key=Co-authored-by,valueonly)", branch, cwd=remote).strip() == (
        "Bob <bob@example.org>"
    )
    assert git("show", f"{branch}:main.py", cwd=remote) == "# ada\nprint('hello')\nprint('bob')\n"
    # Bob, an editor, sees the commit too, and nothing left to commit
    bob.click("#source-control >> text=Refresh")
    bob.wait_for_selector("#git-log >> text=Greet from both of us")
    assert bob.is_visible("#source-control >> text=No changes since the last commit.")
    # Bob types more, then restores the commit from its log entry: the room is the commit again
    bob.click(".cm-content")
    bob.keyboard.press("Control+End")
    bob.keyboard.type("print('more')\n")
    ada.wait_for_function("() => window.pairroom.files.get('main.py').toString().includes('more')")
    bob.once("dialog", lambda dialog: dialog.accept())
    bob.click("#git-log li:first-child >> text=Restore")
    ada.wait_for_function(
        "() => window.pairroom.files.get('main.py').toString() === \"# ada\\nprint('hello')\\nprint('bob')\\n\""
    )
    bob.wait_for_selector("#git-note >> text=Restored")


def test_the_panel_forks_at_a_commit_and_settles_a_pull_conflict_side_by_side(
    open_page: OpenPage, git_web_server: WebServer, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Ada pulls an upstream change of a line she is editing: the merge view shows both versions and
    Take remote's writes the remote's line into everyone's editor; then she forks the room at the
    commit it was opened at, from the log, and the new room has that commit's files."""
    remote, seed = seeded_remote(tmp_path / "remote.git", {"main.py": "print('hello')\nprint('world')\n"})
    room = room_name(request)
    answer = httpx.post(
        git_web_server.url("/api/rooms"), json={"room": room, "git": {"url": f"file://{remote}"}}, timeout=60
    )
    assert answer.status_code == 201, answer.text
    ada = open_page(
        "ada", f"/r/{room}?token={token(room, 'ada', 'Ada', 'owner', 'ada@example.org')}", server=git_web_server
    )
    wait_connected(ada)
    ada.wait_for_selector("#source-control:not([hidden])")
    ada.wait_for_function("() => window.pairroom.currentPath === 'main.py'")
    # upstream changes the first line; Ada changes it too, without committing
    (seed / "main.py").write_text("print('hello from upstream')\nprint('world')\n")
    git("commit", "-am", "upstream greeting", cwd=seed)
    git("push", "origin", "main", cwd=seed)
    ada.click(".cm-content")
    ada.keyboard.press("Control+Home")
    ada.keyboard.press("End")
    ada.keyboard.type("  # ada's")
    ada.wait_for_function("() => window.pairroom.files.get('main.py').toString().includes(\"# ada's\")")
    ada.click("#git-pull")
    ada.wait_for_selector("#git-note >> text=1 conflict(s)")
    ada.wait_for_selector("#git-conflicts:not([hidden]) >> text=Conflicts from pull (1)")
    assert ada.inner_text("#git-conflicts .git-side.ours pre").strip() == "print('hello')  # ada's"
    assert ada.inner_text("#git-conflicts .git-side.theirs pre").strip() == "print('hello from upstream')"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    ada.locator("#source-control").screenshot(path=str(Path(ARTIFACTS) / "git-panel-merge-view.png"))
    ada.click("#git-conflicts >> text=Take remote's")
    ada.wait_for_function(
        "() => window.pairroom.files.get('main.py').toString() === \"print('hello from upstream')\\nprint('world')\\n\""
    )
    ada.wait_for_selector("#git-conflicts", state="hidden")
    ada.wait_for_selector(".cm-content >> text=hello from upstream")  # in the editor too
    ada.wait_for_selector("#git-note >> text=took the remote's lines")

    # fork at the commit the room was opened at, from its log entry
    ada.click("#source-control >> text=Refresh")
    seed_entry = "#git-log > li:last-child"  # the oldest: the pulled upstream commit has a point too
    ada.click(f"{seed_entry} >> .git-fork")
    ada.wait_for_selector("#git-fork-name")
    fork = room + "-seed"
    ada.fill("#git-fork-name", fork)
    ada.locator("#source-control").screenshot(path=str(Path(ARTIFACTS) / "git-panel-log-fork.png"))
    ada.click("#git-fork-go")
    ada.wait_for_selector(f"#git-note >> text=into {fork}", timeout=60_000)  # the fork copies a repository
    assert ada.get_attribute("#git-note a", "href") == f"/r/{fork}"
    files = httpx.get(
        git_web_server.url(f"/api/rooms/{fork}/files"),
        headers={"authorization": f"Bearer {token(fork, 'ada', 'Ada', 'owner', 'ada@example.org')}"},
        timeout=30,
    )
    assert files.status_code == 200, files.text
    assert files.json()["files"] == {"main.py": "print('hello')\nprint('world')\n"}  # the seed's, not the pull's
    # the fork is a repository at the seed commit; the note says its credential is its owners' to set
    ada.wait_for_selector("#git-note >> text=Its own repository")
    assert "push credential" in ada.inner_text("#git-note")
    assert ada.get_attribute("#git-note a", "title") == f"branch pairroom/{fork}"
    status = httpx.get(
        git_web_server.url(f"/api/rooms/{fork}/git/status"),
        headers={"authorization": f"Bearer {token(fork, 'ada', 'Ada', 'owner', 'ada@example.org')}"},
        timeout=30,
    )
    assert status.status_code == 200 and status.json()["changes"] == [], status.text
    ada.screenshot(path=str(Path(ARTIFACTS) / "git-panel-after-fork.png"))


def test_the_lobby_starts_a_room_from_a_repository_and_says_why_when_it_cannot(
    open_page: OpenPage, git_web_server: WebServer, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    remote, seed = seeded_remote(tmp_path / "lobby-remote.git", {"app.py": "print('from the repository')\n"})

    lobby = open_page("ada", "/", name="Ada", server=git_web_server, refusals_expected=True)
    lobby.fill("#create-git", str(tmp_path / "not-a-repository"))  # no scheme: refused with the reason
    lobby.click("button:has-text('Create room')")
    lobby.wait_for_selector("#create-error:has-text('The room was not created')")
    assert "url" in lobby.inner_text("#create-error").lower()
    assert lobby.inner_text("#create-status") == ""

    room = room_name(request)
    lobby.fill("#create-name", room)
    lobby.fill("#create-git", f"file://{remote}")
    lobby.click("button:has-text('Create room')")
    lobby.wait_for_selector("#created:not([hidden]), #created-invites:not([hidden])", timeout=60_000)
    assert lobby.inner_text("#create-error") == ""
    lobby.screenshot(path=str(Path(ARTIFACTS) / "lobby-from-repository.png"))
    lobby.click("#open-owner")  # a server with a secret: one link per role, the owner's opens it
    wait_connected(lobby)
    lobby.wait_for_selector("#source-control:not([hidden])")
    lobby.wait_for_function(
        "() => window.pairroom.files.get('app.py')?.toString() === \"print('from the repository')\\n\""
    )
    assert sorted(lobby.evaluate("() => [...window.pairroom.files.keys()]")) == ["app.py"]  # no starter file
