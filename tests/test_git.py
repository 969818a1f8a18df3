"""Version control of a room, with real git against a real bare remote made in the test.

A real server on port 0 (``git_allow_local``: the remote is a ``file://`` bare repository and a
``git daemon`` on loopback), real y-websocket clients over real websockets holding tokens of
different people, and the remote checked with the ``git`` command line as anyone would.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC
from pathlib import Path

import httpx
import jwt
import pytest
from pycrdt import Map, Text

from pairroom.vcs.gitcli import GitError, check_remote
from tests.conftest import RunningServer, StartServer
from tests.support.nodes import serve_processes  # noqa: F401
from tests.support.redis_server import redis_servers  # noqa: F401
from tests.yclient import YClient, eventually

SECRET = "git-tests-secret-of-at-least-32-bytes-long"
# the lobby is open (rate-limited per address) so these tests create rooms without creator tokens
OPEN_LOBBY = {"open_lobby": True, "lobby_rooms_per_minute": 10_000}
ENV = {
    **os.environ,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "HOME": "/nonexistent",
    "GIT_AUTHOR_NAME": "Upstream",
    "GIT_AUTHOR_EMAIL": "up@example.org",
    "GIT_COMMITTER_NAME": "Upstream",
    "GIT_COMMITTER_EMAIL": "up@example.org",
}


def git(*args: str, cwd: Path | None = None, input: bytes | None = None) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, env=ENV, input=input, capture_output=True, check=False)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


def token(room: str, user: str, name: str, role: str = "editor", email: str | None = None) -> str:
    claims = {
        "sub": user,
        "room": room,
        "role": role,
        "name": name,
        "iat": int(time.time()),
        "exp": int(time.time()) + 3600,
    }
    if email:
        claims["email"] = email
    return jwt.encode(claims, SECRET, algorithm="HS256")


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    """A bare repository on ``main`` with a text file, a binary, a big file and a symlink."""
    bare = tmp_path / "remote.git"
    git("init", "--bare", "-b", "main", str(bare))
    work = tmp_path / "seed"
    git("clone", str(bare), str(work))
    (work / "main.py").write_text("def one():\n    return 1\n\n\ndef two():\n    return 2\n")
    (work / "README.md").write_text("# demo\n")
    (work / "win.txt").write_bytes(b"line one\r\nline two\r\n")
    (work / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0binary")
    (work / "big.txt").write_text("x" * (1024 * 1024 + 10))
    os.symlink("/etc/passwd", work / "passwd")
    git("add", "-A", cwd=work)
    git("commit", "-m", "seed", cwd=work)
    git("push", "origin", "main", cwd=work)
    return bare


@pytest.fixture
async def node(start_server: StartServer, tmp_path: Path) -> RunningServer:
    return await start_server(secret=SECRET, **OPEN_LOBBY, git_allow_local=True, git_root=str(tmp_path / "git"))


async def open_room(server: RunningServer, url: str, room: str | None = None, **git: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=server.http, timeout=60) as http:
        body: dict[str, object] = {"git": {"url": url, **git}}
        if room:
            body["room"] = room
        return await http.post("/api/rooms", json=body)


def api(server: RunningServer, tok: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.http, headers={"authorization": f"Bearer {tok}"}, timeout=60)


def files_of(client: YClient) -> Map:
    return client.doc.get("files", type=Map)


async def joined(server: RunningServer, room: str, tok: str) -> YClient:
    client = await YClient.connect(server.ws(room) + f"?token={tok}")
    await asyncio.wait_for(client.synced.wait(), 10)
    return client


def server_text(server: RunningServer, room: str, path: str) -> str | None:
    text = server.hub.registry.rooms[room].doc.get("files", type=Map).get(path)
    return str(text) if isinstance(text, Text) else None


@pytest.fixture
async def room(node: RunningServer, remote: Path) -> AsyncIterator[tuple[RunningServer, str, Path]]:
    name = "g" + uuid.uuid4().hex[:8]
    answer = await open_room(node, f"file://{remote}", name)
    assert answer.status_code == 201, answer.text
    yield node, name, remote


# -- opening -------------------------------------------------------------------------------------


async def test_opening_a_repository_imports_text_lists_the_rest_and_keeps_base(
    room: tuple[RunningServer, str, Path],
) -> None:
    server, name, remote = room
    ada = await joined(server, name, token(name, "ada", "Ada"))
    files = files_of(ada)
    assert set(files.keys()) == {"main.py", "README.md", "win.txt"}
    assert str(files["win.txt"]) == "line one\r\nline two\r\n"  # line endings kept byte for byte
    assert str(files["main.py"]).startswith("def one():")
    listing = ada.doc.get("workspace", type=Map)
    assert {k: v["kind"] for k, v in listing.items()} == {"logo.png": "binary", "big.txt": "large"}
    meta_git = ada.doc.get("meta", type=Map)["git"]
    assert meta_git["base"] == git("rev-parse", "main", cwd=remote).strip()
    assert meta_git["remote"] == f"file://{remote}"
    assert {"path": "passwd", "reason": "symlink"} in list(meta_git["skipped"])
    # the read-only entries are on disk in the room's workspace; the symlink is nowhere
    workspaces = server.hub.state.git.workspaces
    path = workspaces.get(name).path
    assert (path / "logo.png").read_bytes().startswith(b"\x89PNG")
    assert not (path / "passwd").exists() and not (path / "passwd").is_symlink()
    # read-only: a member cannot remove or rewrite the listing (the server's), the guard puts it back
    listing["big.txt"] = Map({"size": 1, "kind": "binary"})
    del listing["logo.png"]
    await eventually(lambda: "logo.png" in listing and listing["big.txt"]["kind"] == "large", what="reverted")
    server_listing = server.hub.registry.rooms[name].doc.get("workspace", type=Map)
    assert {k: v["kind"] for k, v in server_listing.items()} == {"logo.png": "binary", "big.txt": "large"}


async def test_refused_urls_leave_no_room(start_server: StartServer, remote: Path, tmp_path: Path) -> None:
    strict = await start_server(secret=SECRET, **OPEN_LOBBY, db=f"sqlite:///{tmp_path / 'strict.db'}")
    for url, reason in [
        (f"file://{remote}", "file:// remotes are refused"),
        ("http://127.0.0.1:9/x.git", "http:// remotes are refused"),
        ("git://127.0.0.1/x.git", "git:// remotes are refused"),
        ("https://127.0.0.1/x.git", "loopback or private"),
        ("ssh://git@10.1.2.3/x.git", "loopback or private"),
        ("https://user:pw@example.org/x.git", "must not carry a credential"),
        ("--upload-pack=touch /tmp/x", "character a URL cannot have"),
        ("ftp://example.org/x", "not supported"),
    ]:
        answer = await open_room(strict, url, "refused")
        assert answer.status_code == 400, (url, answer.text)
        assert reason in answer.json()["error"], (url, answer.text)
    # nothing was made: the name is still free
    async with httpx.AsyncClient(base_url=strict.http) as http:
        assert (await http.post("/api/rooms", json={"room": "refused"})).status_code == 201


async def test_url_policy_without_a_server() -> None:
    with pytest.raises(GitError, match="loopback"):
        await check_remote("https://localhost/x.git", allow_local=False)
    with pytest.raises(GitError, match="loopback"):
        await check_remote("git@127.0.0.1:x.git", allow_local=False)
    assert (await check_remote("file:///srv/x.git", allow_local=True)).scheme == "file"


async def test_not_a_repository_is_422_and_leaves_no_room(node: RunningServer, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    answer = await open_room(node, f"file://{tmp_path / 'empty'}", "nothing")
    assert answer.status_code == 422, answer.text
    assert "could not clone" in answer.json()["error"]
    answer = await open_room(node, f"file://{tmp_path / 'missing'}", "nothing", ref="main")
    assert answer.status_code == 422
    # unreachable: nothing listens on that port
    answer = await open_room(node, f"git://127.0.0.1:{free_port()}/x.git", "nothing")
    assert answer.status_code == 422 and "could not clone" in answer.json()["error"], answer.text
    async with httpx.AsyncClient(base_url=node.http) as http:
        assert (await http.post("/api/rooms", json={"room": "nothing"})).status_code == 201


async def test_a_repository_over_the_cap_is_413(start_server: StartServer, remote: Path, tmp_path: Path) -> None:
    from pairroom.vcs.settings import VcsSettings

    server = await start_server(
        secret=SECRET, **OPEN_LOBBY, git_allow_local=True, db=f"sqlite:///{tmp_path / 'cap.db'}"
    )
    server.hub.state.git.settings = VcsSettings(allow_local=True, max_repo_bytes=1024)
    answer = await open_room(server, f"file://{remote}", "toobig")
    assert answer.status_code == 413, answer.text


# -- committing ----------------------------------------------------------------------------------


async def test_commit_credits_the_author_and_every_coauthor_and_push_lands_it(
    room: tuple[RunningServer, str, Path], tmp_path: Path
) -> None:
    server, name, remote = room
    ada_token = token(name, "ada", "Ada Lovelace", email="ada@example.org")
    bob_token = token(name, "bob", "Bob", email=None)
    ada = await joined(server, name, ada_token)
    bob = await joined(server, name, bob_token)
    files_of(ada)["main.py"].insert(0, "# by ada\n")
    await eventually(lambda: (server_text(server, name, "main.py") or "").startswith("# by ada"))
    await eventually(lambda: str(files_of(bob)["main.py"]).startswith("# by ada"))
    files_of(bob)["notes.md"] = Text("bob was here\n")
    await eventually(lambda: server_text(server, name, "notes.md") == "bob was here\n")
    async with api(server, ada_token) as http:
        status = (await http.get(f"/api/rooms/{name}/git/status")).json()
        assert {c["path"]: c["status"] for c in status["changes"]} == {"main.py": "modified", "notes.md": "added"}
        assert [b["id"] for b in next(c for c in status["changes"] if c["path"] == "notes.md")["by"]] == ["bob"]
        assert status["coauthors"] == [{"name": "Bob", "email": "bob@users.noreply.pairroom"}]
        diff = (await http.get(f"/api/rooms/{name}/git/diff", params={"path": "main.py"})).text
        assert "+# by ada" in diff
        answer = await http.post(f"/api/rooms/{name}/git/commit", json={"message": "Two people at work"})
        assert answer.status_code == 201, answer.text
        again = await http.post(f"/api/rooms/{name}/git/commit", json={"message": "nothing"})
        assert again.status_code == 409
        pushed = await http.post(f"/api/rooms/{name}/git/push")
        assert pushed.status_code == 200, pushed.text
        log = (await http.get(f"/api/rooms/{name}/git/log")).json()["commits"]
        assert log[0]["coauthors"] == ["Bob <bob@users.noreply.pairroom>"]
    # the commit and the push are on the room's recorded timeline, by Ada
    recorder = server.hub.state.recorder
    await recorder.flush()
    recorded = [(e.user, e.data["action"]) for e in await recorder.db.events(name, kinds=("git",))]
    assert recorded == [("ada", "commit"), ("ada", "push")]
    branch = f"pairroom/{name}"
    clone = tmp_path / "check"
    git("clone", "-b", branch, f"file://{remote}", str(clone))
    assert git("log", "-1", "--format=%an <%ae>", cwd=clone).strip() == "Ada Lovelace <ada@example.org>"
    assert git("log", "-1", "--format=%(trailers:key=Co-authored-by,valueonly)", cwd=clone).strip() == (
        "Bob <bob@users.noreply.pairroom>"
    )
    assert git("log", "-1", "--format=%B", cwd=clone).startswith("Two people at work\n\nCo-authored-by: Bob")
    assert (clone / "main.py").read_text() == server_text(server, name, "main.py")
    assert (clone / "notes.md").read_text() == "bob was here\n"
    assert (clone / "logo.png").read_bytes().startswith(b"\x89PNG")  # kept from the base tree
    assert (clone / "win.txt").read_bytes() == b"line one\r\nline two\r\n"
    assert git("show", "--name-only", "--format=", "HEAD", cwd=clone).split() == ["main.py", "notes.md"]
    git("fsck", "--strict", cwd=clone)


async def test_series_writes_one_commit_per_run_in_time_order(
    room: tuple[RunningServer, str, Path], tmp_path: Path
) -> None:
    server, name, remote = room
    ada_token = token(name, "ada", "Ada", email="ada@example.org")
    ada = await joined(server, name, ada_token)
    bob = await joined(server, name, token(name, "bob", "Bob", email="bob@example.org"))
    files_of(ada)["a.txt"] = Text("first\n")
    await eventually(lambda: server_text(server, name, "a.txt") == "first\n")
    await eventually(lambda: files_of(bob).get("a.txt") is not None)
    files_of(bob)["b.txt"] = Text("second\n")
    await eventually(lambda: server_text(server, name, "b.txt") == "second\n")
    async with api(server, ada_token) as http:
        answer = await http.post(f"/api/rooms/{name}/git/commit", json={"message": "Pairing", "series": True})
        assert answer.status_code == 201, answer.text
        assert (await http.post(f"/api/rooms/{name}/git/push")).status_code == 200
    clone = tmp_path / "series"
    git("clone", "-b", f"pairroom/{name}", f"file://{remote}", str(clone))
    authors = git("log", "--format=%an %s", "-2", cwd=clone).splitlines()
    assert authors == ["Bob Pairing (Bob)", "Ada Pairing (Ada)"]
    assert git("show", "--name-only", "--format=", "HEAD", cwd=clone).split() == ["b.txt"]
    assert git("show", "--name-only", "--format=", "HEAD~1", cwd=clone).split() == ["a.txt"]


async def test_roles_and_bad_paths_are_checked_on_the_server(room: tuple[RunningServer, str, Path]) -> None:
    server, name, _ = room
    ada_token = token(name, "ada", "Ada")
    ada = await joined(server, name, ada_token)
    files_of(ada)["x.txt"] = Text("x\n")
    await eventually(lambda: server_text(server, name, "x.txt") == "x\n")
    async with api(server, token(name, "vic", "Vic", role="viewer")) as http:
        assert (await http.post(f"/api/rooms/{name}/git/commit", json={"message": "m"})).status_code == 403
        assert (await http.post(f"/api/rooms/{name}/git/push")).status_code == 403
        assert (await http.get(f"/api/rooms/{name}/git/status")).status_code == 200
    async with api(server, ada_token) as http:
        assert (await http.post(f"/api/rooms/{name}/git/push", json={"force": True})).status_code == 403
        assert (await http.put(f"/api/rooms/{name}/git/remote", json={"branch": "x"})).status_code == 403
        bad = await http.post(f"/api/rooms/{name}/git/commit", json={"message": "m", "paths": ["../etc/passwd"]})
        assert bad.status_code == 400
        # encoded, so no client or proxy folds the dots away before the server sees them
        for traversal in ("a/%2e%2e/%2e%2e/b", "%2e%2e%2fetc%2fpasswd"):
            bad_blame = await http.get(f"/api/rooms/{name}/files/{traversal}/blame")
            assert bad_blame.status_code == 400 and "not a room file path" in bad_blame.json()["error"], traversal
        # "paths" commits those files only; the others stay changed
        files_of(ada)["README.md"].insert(0, "not yet ")
        await eventually(lambda: (server_text(server, name, "README.md") or "").startswith("not yet"))
        only = await http.post(f"/api/rooms/{name}/git/commit", json={"message": "x only", "paths": ["x.txt"]})
        assert only.status_code == 201 and only.json()["commits"][0]["paths"] == ["x.txt"], only.text
        left = (await http.get(f"/api/rooms/{name}/git/status")).json()["changes"]
        assert [c["path"] for c in left] == ["README.md"]
        assert (await http.get(f"/api/rooms/{name}/git/diff", params={"path": "/etc/passwd"})).status_code == 400
        assert (await http.post(f"/api/rooms/{name}/git/commit", json={"message": ""})).status_code == 400
    async with httpx.AsyncClient(base_url=server.http) as http:
        assert (await http.get(f"/api/rooms/{name}/git/status")).status_code == 401


# -- push, pull ----------------------------------------------------------------------------------


def upstream_commit(remote: Path, work: Path, branch: str, path: str, edit: "callable[[str], str]") -> str:  # type: ignore[valid-type]
    if not work.exists():
        git("clone", "-b", branch, f"file://{remote}", str(work))
    else:
        git("pull", "--ff-only", "origin", branch, cwd=work)
    target = work / path
    target.write_text(edit(target.read_text()))
    git("commit", "-am", f"upstream edit of {path}", cwd=work)
    git("push", "origin", f"HEAD:{branch}", cwd=work)
    return git("rev-parse", "HEAD", cwd=work).strip()


async def test_a_pull_merges_live_with_what_people_type_and_push_refuses_non_fast_forward(
    room: tuple[RunningServer, str, Path], tmp_path: Path
) -> None:
    server, name, remote = room
    ada_token = token(name, "ada", "Ada", email="ada@example.org")
    ada = await joined(server, name, ada_token)
    # someone else changes two() upstream on main
    upstream_commit(remote, tmp_path / "other", "main", "main.py", lambda t: t.replace("return 2", "return 22"))
    # meanwhile Ada types in one(), in the same file, without committing
    text = files_of(ada)["main.py"]
    text.insert(len("def one():\n"), "    # typed live\n")
    await eventually(lambda: "# typed live" in (server_text(server, name, "main.py") or ""))
    async with api(server, ada_token) as http:
        pulled = await http.post(f"/api/rooms/{name}/git/pull", json={"ref": "main"})
        assert pulled.status_code == 200, pulled.text
        assert pulled.json()["changed"] == ["main.py"] and pulled.json()["conflicts"] == []
    expected = "def one():\n    # typed live\n    return 1\n\n\ndef two():\n    return 22\n"
    await eventually(lambda: str(files_of(ada)["main.py"]) == expected, what="both edits in Ada's editor")
    # the pulled lines are git's, Ada's line is hers
    async with api(server, ada_token) as http:
        blame = (await http.get(f"/api/rooms/{name}/files/main.py/blame")).json()["lines"]
        assert blame[1]["user"] == "ada" and blame[1]["text"] == "    # typed live"
        assert blame[6]["user"] is None and blame[6]["origin"].startswith("local:git:pull")
        # the room commits only Ada's change over the pulled commit
        assert (await http.post(f"/api/rooms/{name}/git/commit", json={"message": "comment"})).status_code == 201
        status = (await http.get(f"/api/rooms/{name}/git/status")).json()
        assert status["changes"] == []
        # upstream moves the room's branch meanwhile: the push is refused, with a hint to pull
        assert (await http.post(f"/api/rooms/{name}/git/push")).status_code == 200
        upstream_commit(remote, tmp_path / "other2", f"pairroom/{name}", "main.py", lambda t: t + "# more\n")
        files_of(ada)["README.md"].insert(0, "x")
        await eventually(lambda: (server_text(server, name, "README.md") or "").startswith("x"))
        assert (await http.post(f"/api/rooms/{name}/git/commit", json={"message": "x"})).status_code == 201
        refused = await http.post(f"/api/rooms/{name}/git/push")
        assert refused.status_code == 409, refused.text
        assert "pull" in refused.json()["error"]
        merged = await http.post(f"/api/rooms/{name}/git/pull")
        assert merged.status_code == 200, merged.text
        await eventually(lambda: server_text(server, name, "main.py") == expected + "# more\n")
        assert (await http.post(f"/api/rooms/{name}/git/push")).status_code == 200
    clone = tmp_path / "after"
    git("clone", "-b", f"pairroom/{name}", f"file://{remote}", str(clone))
    assert (clone / "README.md").read_text() == "x# demo\n"
    assert (clone / "main.py").read_text() == expected + "# more\n"
    assert git("log", "-1", "--format=%p", cwd=clone).count(" ") == 1  # a merge of the room's and upstream's


async def test_a_conflicting_pull_keeps_both_and_opens_a_thread(
    room: tuple[RunningServer, str, Path], tmp_path: Path
) -> None:
    server, name, remote = room
    ada_token = token(name, "ada", "Ada")
    ada = await joined(server, name, ada_token)
    upstream_commit(remote, tmp_path / "other", "main", "README.md", lambda t: "# upstream title\n")
    text = files_of(ada)["README.md"]
    del text[0 : len("# demo")]
    text.insert(0, "# room title")
    await eventually(lambda: server_text(server, name, "README.md") == "# room title\n")
    async with api(server, ada_token) as http:
        pulled = await http.post(f"/api/rooms/{name}/git/pull", json={"ref": "main"})
        assert pulled.status_code == 200, pulled.text
        assert pulled.json()["conflicts"] == [
            {"path": "README.md", "ours": "# room title\n", "theirs": "# upstream title\n"}
        ]
    assert server_text(server, name, "README.md") == "# room title\n"  # the room's text stays
    reviews = server.hub.registry.rooms[name].doc.get("reviews", type=Map)
    threads = [t for t in reviews.values() if t["path"] == "README.md"]
    assert len(threads) == 1 and threads[0]["status"] == "open"
    assert "upstream title" in threads[0]["messages"][0]["text"]


async def test_the_credential_never_leaves_the_server(room: tuple[RunningServer, str, Path], tmp_path: Path) -> None:
    server, name, remote = room
    secret = "ghp_" + uuid.uuid4().hex
    owner = token(name, "own", "Owner", role="owner")
    async with api(server, owner) as http:
        answer = await http.put(f"/api/rooms/{name}/git/remote", json={"credential": secret, "branch": "feature/x"})
        assert answer.status_code == 200
        assert secret not in answer.text and answer.json()["credential"] is True
        for path in ("git/status", "git/log"):
            assert secret not in (await http.get(f"/api/rooms/{name}/{path}")).text
    room_obj = server.hub.registry.rooms[name]
    await room_obj.flush()
    assert secret.encode() not in room_obj.doc.get_update()
    for update in await server.hub.store.read_updates(name, 0):
        assert secret.encode() not in update.data
    for root, _, names in os.walk(server.hub.state.git.root):
        for file in names:
            assert secret.encode() not in Path(root, file).read_bytes()
    assert secret.encode() not in b"".join(
        p.read_bytes() for p in server.hub.state.git.workspaces.root.rglob("*") if p.is_file()
    )


# -- a remote served over the git protocol ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_open_commit_and_push_over_git_daemon(node: RunningServer, remote: Path, tmp_path: Path) -> None:
    port = free_port()
    git("config", "daemon.receivepack", "true", cwd=remote)
    daemon = subprocess.Popen(
        [
            "git",
            "daemon",
            "--reuseaddr",
            "--listen=127.0.0.1",
            f"--port={port}",
            "--export-all",
            "--enable=receive-pack",
            f"--base-path={tmp_path}",
            str(tmp_path),
        ],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"git://127.0.0.1:{port}/remote.git"

        async def listening() -> bool:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                return True
            except OSError:
                return False

        await eventually(listening, what="git daemon listening")
        name = "d" + uuid.uuid4().hex[:8]
        answer = await open_room(node, url, name)
        assert answer.status_code == 201, answer.text
        ada_token = token(name, "ada", "Ada", email="ada@example.org")
        ada = await joined(node, name, ada_token)
        files_of(ada)["README.md"].insert(0, "daemon ")
        await eventually(lambda: (server_text(node, name, "README.md") or "").startswith("daemon"))
        async with api(node, ada_token) as http:
            assert (
                await http.post(f"/api/rooms/{name}/git/commit", json={"message": "over git://"})
            ).status_code == 201
            pushed = await http.post(f"/api/rooms/{name}/git/push")
            assert pushed.status_code == 200, pushed.text
        assert git("log", "-1", "--format=%an %s", f"pairroom/{name}", cwd=remote).strip() == "Ada over git://"
    finally:
        daemon.terminate()
        daemon.wait()


async def test_import_git_command_opens_a_room(node: RunningServer, remote: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        str(Path(".venv/bin/pairroom").resolve()),
        "import-git",
        f"file://{remote}",
        "--ref",
        "main",
        "--as",
        "fromcli",
        "--server",
        node.http,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert "room fromcli: 3 files" in out.decode()
    assert node.hub.state.git.rooms["fromcli"].ref == "main"
    assert "owner: http" in out.decode()
    proc = await asyncio.create_subprocess_exec(
        str(Path(".venv/bin/pairroom").resolve()),
        "import-git",
        f"file://{remote}",
        "--as",
        "fromcli",
        "--server",
        node.http,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode == 1 and "409" in err.decode()


async def test_blame_names_who_last_changed_each_line_including_uncommitted_work(
    room: tuple[RunningServer, str, Path],
) -> None:
    server, name, _ = room
    ada_token = token(name, "ada", "Ada")
    ada = await joined(server, name, ada_token)
    bob = await joined(server, name, token(name, "bob", "Bob"))
    files_of(ada)["main.py"].insert(0, "# ada's line\n")
    await eventually(lambda: str(files_of(bob)["main.py"]).startswith("# ada's line"))
    bob_text = files_of(bob)["main.py"]
    end = len(str(bob_text))
    bob_text.insert(end, "# bob's line\n")
    # Bob deletes a character inside the imported "return 1" line: that line is his now
    at = str(bob_text).index("return 1") + len("return ")
    del bob_text[at : at + 1]
    bob_text.insert(at, "9")
    await eventually(lambda: (server_text(server, name, "main.py") or "").endswith("# bob's line\n"))
    async with api(server, ada_token) as http:
        answer = await http.get(f"/api/rooms/{name}/files/main.py/blame")
        assert answer.status_code == 200, answer.text
        lines = {line["text"]: line for line in answer.json()["lines"]}
    assert lines["# ada's line"]["user"] == "ada" and lines["# ada's line"]["name"] == "Ada"
    assert lines["# bob's line"]["user"] == "bob"
    assert lines["    return 9"]["user"] == "bob"
    assert lines["def two():"]["user"] is None and lines["def two():"]["origin"].startswith("local:git:import")
    async with api(server, ada_token) as http:
        assert (await http.get(f"/api/rooms/{name}/files/nope.py/blame")).status_code == 404


# -- git kept to the server's side ---------------------------------------------------------------


async def test_no_hook_runs_and_the_repository_is_out_of_the_workspace(
    room: tuple[RunningServer, str, Path], tmp_path: Path
) -> None:
    server, name, remote = room
    service = server.hub.state.git
    repo = Path(service.room_git(name).repo.path)
    # the repository is the server's: not under the workspaces room code sees, and private
    workspaces_root = Path(service.workspaces.root)
    assert workspaces_root not in repo.parents and (os.stat(service.root).st_mode & 0o077) == 0
    assert not (service.workspaces.get(name).path / ".git").exists()
    # a hook put in the repository (as if it came from somewhere) never runs
    marker = tmp_path / "hook-ran"
    for hook in ("pre-push", "pre-commit", "post-update", "reference-transaction", "post-checkout"):
        script = repo / "hooks" / hook
        script.parent.mkdir(exist_ok=True)
        script.write_text(f"#!/bin/sh\ntouch {marker}\n")
        script.chmod(0o755)
    ada_token = token(name, "ada", "Ada")
    ada = await joined(server, name, ada_token)
    files_of(ada)["README.md"].insert(0, "hooked? ")
    await eventually(lambda: (server_text(server, name, "README.md") or "").startswith("hooked"))
    async with api(server, ada_token) as http:
        assert (await http.post(f"/api/rooms/{name}/git/commit", json={"message": "m"})).status_code == 201
        assert (await http.post(f"/api/rooms/{name}/git/push")).status_code == 200
        assert (await http.post(f"/api/rooms/{name}/git/pull")).status_code == 200
    assert not marker.exists()


def http_remote_app(project_root: Path, user: str, password: str):  # type: ignore[no-untyped-def]
    """A smart-HTTP git remote: ``git http-backend`` (CGI) behind HTTP Basic auth."""
    import base64

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    seen: list[str] = []

    async def backend(request: Request) -> Response:
        seen.append(request.headers.get("authorization", ""))
        if request.headers.get("authorization") != expected:
            return Response("no", 401, {"www-authenticate": 'Basic realm="git"'})
        body = await request.body()
        env = {
            **ENV,
            "GIT_PROJECT_ROOT": str(project_root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": "/" + request.path_params["path"],
            "REQUEST_METHOD": request.method,
            "QUERY_STRING": request.url.query,
            "CONTENT_TYPE": request.headers.get("content-type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_USER": user,
            "REMOTE_ADDR": "127.0.0.1",
            "GIT_PROTOCOL": request.headers.get("git-protocol", ""),
        }
        if request.headers.get("content-encoding") == "gzip":
            env["HTTP_CONTENT_ENCODING"] = "gzip"
        proc = await asyncio.create_subprocess_exec(
            "git", "http-backend", env=env, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await proc.communicate(body)
        head, _, payload = out.partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n") if ": " in line)
        status = int(headers.pop("Status", "200 OK").split()[0])
        return Response(payload, status, headers)

    app = Starlette(routes=[Route("/{path:path}", backend, methods=["GET", "POST"])])
    return app, seen


async def test_push_over_http_with_the_owners_credential_never_shown(
    room: tuple[RunningServer, str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import uvicorn

    server, name, remote = room
    password = "tok-" + uuid.uuid4().hex
    app, seen = http_remote_app(remote.parent, "x-access-token", password)
    http_server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    task = asyncio.create_task(http_server.serve())
    await eventually(lambda: http_server.started, what="remote started")
    port = http_server.servers[0].sockets[0].getsockname()[1]
    try:
        owner = token(name, "own", "Owner", role="owner", email="owner@example.org")
        ada = await joined(server, name, owner)
        files_of(ada)["README.md"].insert(0, "over http ")
        await eventually(lambda: (server_text(server, name, "README.md") or "").startswith("over http"))
        url = f"http://127.0.0.1:{port}/{remote.name}"
        async with api(server, owner) as http:
            wrong = await http.put(
                f"/api/rooms/{name}/git/remote", json={"url": url, "credential": "wrong-" + password}
            )
            assert wrong.status_code == 200
            assert (await http.post(f"/api/rooms/{name}/git/commit", json={"message": "http"})).status_code == 201
            refused = await http.post(f"/api/rooms/{name}/git/push")
            assert refused.status_code == 502, refused.text
            assert password not in refused.text
            right = await http.put(f"/api/rooms/{name}/git/remote", json={"credential": password})
            assert right.status_code == 200 and password not in right.text
            pushed = await http.post(f"/api/rooms/{name}/git/push")
            assert pushed.status_code == 200, pushed.text
            for path in ("git/status", "git/log"):
                assert password not in (await http.get(f"/api/rooms/{name}/{path}")).text
        assert git("log", "-1", "--format=%an %s", f"pairroom/{name}", cwd=remote).strip() == "Owner http"
        assert any(h.startswith("Basic ") for h in seen)
        assert password not in caplog.text
        room_obj = server.hub.registry.rooms[name]
        assert password.encode() not in room_obj.doc.get_update()
        assert all(password.encode() not in u.data for u in await server.hub.store.read_updates(name, 0))
    finally:
        http_server.should_exit = True
        await task


# -- the pieces alone ----------------------------------------------------------------------------


async def test_the_log_reader_reads_only_what_is_new_and_agrees_with_a_full_replay() -> None:
    from datetime import datetime

    from pycrdt import Doc

    from pairroom.storage.memory import MemoryStore
    from pairroom.storage.store import NewUpdate
    from pairroom.vcs.attribution import LogReader, touches_since

    store = MemoryStore()
    await store.open()
    doc = Doc()
    files = doc.get("files", type=Map)
    updates: list[bytes] = []
    subscription = doc.observe(lambda event: updates.append(event.update))

    async def store_as(label: str) -> None:
        await store.append("r", [NewUpdate(uuid.uuid4().hex, datetime.now(UTC), label, updates.pop())])

    files["x.py"] = Text("hi\n")
    await store_as("local:git:import:abc")
    files["x.py"].insert(0, "a")
    await store_as("client:c1:ada")
    reader = LogReader(store, "r")
    first = await reader.touches(0)
    assert first.by_path == {"x.py": {"ada": first.by_path["x.py"]["ada"]}}
    files["n.md"] = Text("bob\n")
    await store_as("client:c2:bob")
    files["x.py"].insert(0, "d")
    await store_as("local:disk:bob")
    again = await reader.touches(0)
    full = await touches_since(store, "r", 0)
    assert again.by_path == full.by_path
    assert set(again.by_path["x.py"]) == {"ada", "bob"} and set(again.by_path["n.md"]) == {"bob"}
    assert (await reader.touches(2)).by_path.keys() == {"x.py", "n.md"}
    assert set((await reader.touches(2)).by_path["x.py"]) == {"bob"}
    assert [run.user for run in full.runs] == ["ada", "bob"]
    del subscription


def test_a_pull_merges_lines_and_keeps_clashing_ones_out() -> None:
    from pairroom.vcs.pull import merge_lines

    def applied(text: str, edits: list) -> str:  # type: ignore[type-arg]
        for edit in sorted(edits, key=lambda e: e.start, reverse=True):
            text = text[: edit.start] + edit.insert + text[edit.end :]
        return text

    base = "a\nb\nc\nd\n"
    edits, conflicts = merge_lines(base, "A\nb\nc\nd\n", "a\nb\nc\nD\n")
    assert conflicts == [] and applied("A\nb\nc\nd\n", edits) == "A\nb\nc\nD\n"
    edits, conflicts = merge_lines(base, "a\nX\nc\nd\n", "a\nY\nc\nD\n")
    merged = applied("a\nX\nc\nd\n", edits)
    assert merged == "a\nX\nc\nD\n"  # the room's line stays, the clean change comes in
    assert [(c.ours, c.theirs) for c in conflicts] == [("X\n", "Y\n")]
    assert merged[conflicts[0].start : conflicts[0].end] == "X\n"


async def test_an_owner_limits_git_to_owners_live_and_nobody_else_writes_meta_git(
    room: tuple[RunningServer, str, Path],
) -> None:
    server, name, _ = room
    owner_token, editor_token = token(name, "own", "Owner", role="owner"), token(name, "ed", "Ed")
    owner = await joined(server, name, owner_token)
    editor = await joined(server, name, editor_token)
    files_of(editor)["e.txt"] = Text("e\n")
    await eventually(lambda: server_text(server, name, "e.txt") == "e\n")
    # an editor's client cannot touch meta.git: the server reverts it
    meta = editor.doc.get("meta", type=Map)
    head = meta["git"]["head"]
    meta["git"]["head"] = "0" * 40
    await eventually(lambda: editor.doc.get("meta", type=Map)["git"]["head"] == head, what="meta.git reverted")
    # the owner's client sets the policy: editors may no longer commit, at once
    owner.doc.get("meta", type=Map)["policy"] = Map({"git": "owners"})
    await eventually(lambda: isinstance(server.hub.registry.rooms[name].doc.get("meta", type=Map).get("policy"), Map))
    async with api(server, editor_token) as http:
        refused = await http.post(f"/api/rooms/{name}/git/commit", json={"message": "m"})
        assert refused.status_code == 403 and "owners" in refused.json()["error"]
        assert (await http.get(f"/api/rooms/{name}/git/status")).json()["canCommit"] is False
    async with api(server, owner_token) as http:
        assert (await http.post(f"/api/rooms/{name}/git/commit", json={"message": "m"})).status_code == 201


async def test_a_pull_lands_while_someone_keeps_typing_in_the_same_file(
    room: tuple[RunningServer, str, Path], tmp_path: Path
) -> None:
    server, name, remote = room
    ada_token = token(name, "ada", "Ada")
    ada = await joined(server, name, ada_token)
    upstream_commit(remote, tmp_path / "other", "main", "main.py", lambda t: t.replace("return 2", "return 22"))
    text = files_of(ada)["main.py"]
    async with api(server, ada_token) as http:
        pull = asyncio.create_task(http.post(f"/api/rooms/{name}/git/pull", json={"ref": "main"}))
        typed = 0
        while not pull.done() or typed < 5:  # keystrokes before, during and after the pull
            text.insert(0, "#")  # at the top, far from two()
            typed += 1
            await asyncio.sleep(0.002)  # a fast typist's pace
        pulled = await pull
    assert pulled.status_code == 200, pulled.text
    assert typed > 10
    expected = "#" * typed + "def one():\n    return 1\n\n\ndef two():\n    return 22\n"
    await eventually(lambda: server_text(server, name, "main.py") == expected, what="every keystroke and the pull")
    await eventually(lambda: str(files_of(ada)["main.py"]) == expected, what="Ada sees both")


def test_the_email_claim_is_read_when_it_is_an_address_and_ignored_otherwise() -> None:
    from pairroom.vcs.service import person_of
    from pairroom.web.auth import verify

    good = verify(SECRET, token("r", "ada", "Ada", email="ada@example.org"), "r")
    assert good.email == "ada@example.org" and person_of(good).email == "ada@example.org"
    for bad in ("not-an-address", "a@b>\nCo-authored-by: Eve <eve@x>", "x" * 300 + "@example.org"):
        principal = verify(SECRET, token("r", "eve", "Eve <x>", email=bad), "r")
        assert principal.email is None
        assert person_of(principal) == person_of(principal)  # stable
        assert person_of(principal).email == "eve@users.noreply.pairroom" and person_of(principal).name == "Eve x"


async def test_open_mode_opens_a_repository_once(start_server: StartServer, remote: Path, tmp_path: Path) -> None:
    server = await start_server(git_allow_local=True, db=f"sqlite:///{tmp_path / 'open.db'}")
    answer = await open_room(server, f"file://{remote}", "openroom")
    assert answer.status_code == 201, answer.text
    assert answer.json()["open"] is True and answer.json()["git"]["files"] == 3
    again = await open_room(server, f"file://{remote}", "openroom")
    assert again.status_code == 409
    async with httpx.AsyncClient(base_url=server.http) as http:
        status = (await http.get("/api/rooms/openroom/git/status")).json()
        assert status["changes"] == [] and status["canCommit"] is True
        # a room made without a repository has none
        assert (await http.post("/api/rooms", json={"room": "plain"})).status_code == 201
        assert (await http.get("/api/rooms/plain/git/status")).status_code == 409


async def test_with_a_git_root_the_repository_and_identities_survive_a_restart(
    start_server: StartServer, remote: Path, tmp_path: Path
) -> None:
    settings = {
        "secret": SECRET,
        **OPEN_LOBBY,
        "git_allow_local": True,
        "git_root": str(tmp_path / "kept"),
        "db": f"sqlite:///{tmp_path / 'kept.db'}",
    }
    first = await start_server(**settings)
    assert (await open_room(first, f"file://{remote}", "kept")).status_code == 201
    bob = await joined(first, "kept", token("kept", "bob", "Bob B", email="bob@example.org"))
    files_of(bob)["bob.txt"] = Text("b\n")
    await eventually(lambda: server_text(first, "kept", "bob.txt") == "b\n")
    await bob.ws.close()
    await first.stop()
    second = await start_server(**settings)
    ada_token = token("kept", "ada", "Ada", email="ada@example.org")
    async with api(second, ada_token) as http:
        status = (await http.get("/api/rooms/kept/git/status")).json()
        assert status["coauthors"] == [{"name": "Bob B", "email": "bob@example.org"}]
        assert (await http.post("/api/rooms/kept/git/commit", json={"message": "after a restart"})).status_code == 201
        log = (await http.get("/api/rooms/kept/git/log")).json()["commits"]
    assert log[0]["coauthors"] == ["Bob B <bob@example.org>"] and log[1]["subject"] == "seed"


async def test_only_an_owner_forces_a_push_over_a_diverged_branch(
    room: tuple[RunningServer, str, Path], tmp_path: Path
) -> None:
    server, name, remote = room
    owner_token = token(name, "own", "Owner", role="owner")
    owner = await joined(server, name, owner_token)
    async with api(server, owner_token) as http:
        files_of(owner)["README.md"].insert(0, "one ")
        await eventually(lambda: (server_text(server, name, "README.md") or "").startswith("one"))
        assert (await http.post(f"/api/rooms/{name}/git/commit", json={"message": "one"})).status_code == 201
        assert (await http.post(f"/api/rooms/{name}/git/push")).status_code == 200
        upstream_commit(remote, tmp_path / "other", f"pairroom/{name}", "main.py", lambda t: t + "# theirs\n")
        files_of(owner)["README.md"].insert(0, "two ")
        await eventually(lambda: (server_text(server, name, "README.md") or "").startswith("two"))
        assert (await http.post(f"/api/rooms/{name}/git/commit", json={"message": "two"})).status_code == 201
        assert (await http.post(f"/api/rooms/{name}/git/push")).status_code == 409
        forced = await http.post(f"/api/rooms/{name}/git/push", json={"force": True})
        assert forced.status_code == 200, forced.text
        head = forced.json()["head"]
    assert git("rev-parse", f"pairroom/{name}", cwd=remote).strip() == head
    assert "# theirs" not in git("show", f"pairroom/{name}:main.py", cwd=remote)


# -- across nodes ---------------------------------------------------------------------------------


async def test_an_identity_given_on_another_node_reaches_the_committing_node(
    serve_processes, redis_servers, remote: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Ada opens and commits on node 1; Bob joins and types on node 2 (shared PostgreSQL, real Redis).
    Node 2 writes Bob's name and email into ``meta.git.people``, so node 1 credits him by them; the
    bus carries each update's author, so whichever node stores Bob's edit first, the log names Bob
    and the commit made on node 1 has his trailer."""
    from tests.support.postgres import create_database, drop_database

    (redis,) = await redis_servers(1)
    pg = await create_database()
    try:
        env = {
            "PAIRROOM_DB": pg,
            "PAIRROOM_REDIS": redis.url,
            "PAIRROOM_SECRET": SECRET,
            "PAIRROOM_KERNELS": "false",
            "PAIRROOM_GIT_ALLOW_LOCAL": "true",
            "PAIRROOM_FLUSH_INTERVAL_MS": "50",
            "PAIRROOM_OPEN_LOBBY": "true",
            "PAIRROOM_LOBBY_ROOMS_PER_MINUTE": "1000",
        }
        one, two = await asyncio.gather(
            serve_processes({**env, "PAIRROOM_NODE_ID": "n1", "PAIRROOM_GIT_ROOT": str(tmp_path / "g1")}),
            serve_processes({**env, "PAIRROOM_NODE_ID": "n2", "PAIRROOM_GIT_ROOT": str(tmp_path / "g2")}),
        )
        async with httpx.AsyncClient(base_url=one.http, timeout=60) as http:
            opened = await http.post("/api/rooms", json={"room": "across", "git": {"url": f"file://{remote}"}})
            assert opened.status_code == 201, opened.text
        ada_token = token("across", "ada", "Ada", email="ada@example.org")
        bob_token = token("across", "bob", "Bob", email="bob@example.org")
        ada = await YClient.connect(f"{one.ws_base}/across?token={ada_token}")
        bob = await YClient.connect(f"{two.ws_base}/across?token={bob_token}")
        await asyncio.wait_for(asyncio.gather(ada.synced.wait(), bob.synced.wait()), 10)
        await eventually(lambda: isinstance(files_of(bob).get("main.py"), Text), timeout=10)
        files_of(bob)["main.py"].insert(0, "# bob on node 2\n")
        await eventually(lambda: str(files_of(ada)["main.py"]).startswith("# bob on node 2"), timeout=10)

        def bob_known() -> bool:
            git_meta = ada.doc.get("meta", type=Map).get("git")
            people = git_meta.get("people") if isinstance(git_meta, Map) else None
            return isinstance(people, Map) and people.get("bob") == {"name": "Bob", "email": "bob@example.org"}

        await eventually(bob_known, timeout=10, what="node 2 wrote Bob's identity; node 1's members see it")
        async with httpx.AsyncClient(
            base_url=one.http, timeout=60, headers={"authorization": f"Bearer {ada_token}"}
        ) as http:

            async def changed_on_node_one() -> bool:
                status = (await http.get("/api/rooms/across/git/status")).json()
                return [c["path"] for c in status["changes"]] == ["main.py"]

            await eventually(changed_on_node_one, timeout=10, what="node 1 sees Bob's change")
            committed = await http.post("/api/rooms/across/git/commit", json={"message": "across nodes"})
            assert committed.status_code == 201, committed.text
            # the bus carries the author, so whichever node stored Bob's edit, the log names him
            log = (await http.get("/api/rooms/across/git/log")).json()["commits"]
            assert log[0]["coauthors"] == ["Bob <bob@example.org>"], log[0]
        await ada.ws.close()
        await bob.ws.close()
    finally:
        await drop_database(pg)


async def test_room_code_in_the_sandbox_sees_no_repository_and_no_credential(
    start_server: StartServer, remote: Path, tmp_path: Path
) -> None:
    server = await start_server(
        secret=SECRET,
        **OPEN_LOBBY,
        git_allow_local=True,
        kernels=True,
        kernel_pool_size=0,
        git_root=str(tmp_path / "private-git"),
        db=f"sqlite:///{tmp_path / 'box.db'}",
    )
    if getattr(server.hub.state, "kernels", None) is None:
        pytest.fail(f"the sandbox is needed here: {getattr(server.hub.state, 'kernels_error', '?')}")
    assert (await open_room(server, f"file://{remote}", "boxed")).status_code == 201
    secret = "ghp_" + uuid.uuid4().hex
    owner = token("boxed", "own", "Owner", role="owner")
    git_root = server.hub.state.git.root
    code = f"""
import os
found = []
for pid in os.listdir('/proc'):
    if pid.isdigit():
        for part in ('environ', 'cmdline'):
            try:
                if {secret!r}.encode() in open(f'/proc/{{pid}}/{{part}}', 'rb').read():
                    found.append(pid)
            except OSError:
                pass
print('credential seen in', found)
print('git root visible:', os.path.exists({git_root!r}))
print('workspace .git:', os.path.exists('/home/room/.git'), sorted(os.listdir('/home/room')))
"""
    async with api(server, owner) as http:
        assert (await http.put("/api/rooms/boxed/git/remote", json={"credential": secret})).status_code == 200
        push = asyncio.create_task(http.post("/api/rooms/boxed/git/push"))  # git holds it meanwhile
        started = await http.post("/api/rooms/boxed/runs", json={"code": code})
        assert started.status_code == 201, started.text
        run_id = started.json()["id"]

        async def finished() -> bool:
            run = (await http.get(f"/api/rooms/boxed/runs/{run_id}")).json()
            return run["status"] not in ("queued", "running")

        await eventually(finished, timeout=60, what="the run in the sandbox")
        run = (await http.get(f"/api/rooms/boxed/runs/{run_id}")).json()
        assert (await push).status_code == 200
    out = "".join(o.get("text", "") for o in run["outputs"] if o["output_type"] == "stream")
    assert "credential seen in []" in out, run
    assert "git root visible: False" in out
    assert "workspace .git: False" in out and "logo.png" in out  # the read-only entries are there


async def test_restoring_at_a_commit_gives_its_files(room: tuple[RunningServer, str, Path]) -> None:
    server, name, _ = room
    ada_token = token(name, "ada", "Ada")
    ada = await joined(server, name, ada_token)
    files_of(ada)["README.md"].insert(0, "committed ")
    await eventually(lambda: (server_text(server, name, "README.md") or "").startswith("committed"))
    async with api(server, ada_token) as http:
        committed = (await http.post(f"/api/rooms/{name}/git/commit", json={"message": "c"})).json()
        files_of(ada)["README.md"].insert(0, "later ")
        files_of(ada)["extra.txt"] = Text("later\n")
        await eventually(lambda: server_text(server, name, "extra.txt") == "later\n")
        log = (await http.get(f"/api/rooms/{name}/git/log")).json()["commits"]
        assert log[0]["sha"] == committed["head"] and log[0]["seq"] == committed["seq"]
        assert log[1]["seq"] is not None  # the commit the room was opened at
        restored = await http.post(f"/api/rooms/{name}/restore", json={"at": log[0]["seq"]})
        assert restored.status_code == 200, restored.text
        await eventually(lambda: server_text(server, name, "README.md") == "committed # demo\n")
        await eventually(lambda: server_text(server, name, "extra.txt") is None)
        status = (await http.get(f"/api/rooms/{name}/git/status")).json()
        assert status["changes"] == []  # the room is the commit again


async def test_a_server_without_git_says_so(
    start_server: StartServer, remote: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # a machine where git is not installed
    server = await start_server(git_allow_local=True, db=f"sqlite:///{tmp_path / 'nogit.db'}")
    answer = await open_room(server, f"file://{remote}", "nogit")
    assert answer.status_code == 503 and "not enabled" in answer.json()["error"]
    async with httpx.AsyncClient(base_url=server.http) as http:
        status = await http.get("/api/rooms/nogit/git/status")
        assert status.status_code == 503 and "git command" in status.json()["error"]
        assert (await http.post("/api/rooms", json={"room": "nogit"})).status_code == 201  # the rest works
