"""The room's workspace on disk: document to disk and back, merged, bounded, and safe against room code.

A real server on port 0 with real y-websocket clients; the disk is changed the way a terminal or a
run would change it (plain writes, renames, links, FIFOs) and the document is watched through a
client. The safe file primitives are also tested alone against the attacks of issue 22.
"""

from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path
from typing import AsyncIterator

import httpx
import pytest
from pycrdt import Map, Text

from pairroom.workspace import LISTING_ROOT, Workspaces, WorkspaceSettings
from pairroom.workspace import merge, safe_fs
from pairroom.workspace.workspace import dir_name, ignore_rule
from tests.conftest import RunningServer, StartServer
from tests.yclient import YClient, eventually

# -- the safe primitives, alone ------------------------------------------------------------------


def deep_folder(root: Path, name: str, depth: int) -> None:
    """A folder ``depth`` levels deep, made with fds (its path is longer than PATH_MAX)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    os.mkdir(name, dir_fd=fd)
    child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
    os.close(fd)
    fd = child
    for _ in range(depth - 1):
        os.mkdir("d", dir_fd=fd)
        child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    os.close(fd)


def test_a_fifo_where_a_file_goes_is_replaced_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "main.py")
    written = safe_fs.write_atomic(str(tmp_path), "main.py", b"print(1)\n")
    assert written is not None
    assert stat.S_ISREG(os.lstat(tmp_path / "main.py").st_mode)
    assert (tmp_path / "main.py").read_bytes() == b"print(1)\n"


def test_reading_a_fifo_or_a_link_returns_nothing_and_does_not_block(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    secret = tmp_path.parent / f"secret-{uuid.uuid4().hex}"
    secret.write_text("server secret")
    os.symlink(secret, tmp_path / "link")
    assert safe_fs.read_path(str(tmp_path), "pipe", 100) is None
    assert safe_fs.read_path(str(tmp_path), "link", 100) is None
    secret.unlink()


def test_a_link_on_the_way_is_replaced_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    room = tmp_path / "room"
    room.mkdir()
    os.symlink(outside, room / "pkg")
    safe_fs.write_atomic(str(room), "pkg/mod.py", b"x = 1\n")
    assert list(outside.iterdir()) == []
    assert (room / "pkg").is_dir() and not (room / "pkg").is_symlink()
    assert (room / "pkg" / "mod.py").read_text() == "x = 1\n"


def test_a_folder_3000_deep_where_a_file_goes_is_removed(tmp_path: Path) -> None:
    deep_folder(tmp_path, "main.py", 3000)
    safe_fs.write_atomic(str(tmp_path), "main.py", b"ok\n")
    assert (tmp_path / "main.py").read_text() == "ok\n"


def test_a_scan_skips_links_fifos_and_depth_past_the_cap(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("a")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.py").write_text("b")
    os.symlink("/etc", tmp_path / "etc")
    os.symlink("/etc/hostname", tmp_path / "host")
    os.mkfifo(tmp_path / "pipe")
    deep_folder(tmp_path, "deep", 3000)
    listing = safe_fs.scan(str(tmp_path), ignore_rule(()), max_entries=10_000, max_depth=32)
    assert set(listing.files) == {"a.py", "sub/b.py"}
    assert listing.too_deep == 1
    safe_fs.remove_path(str(tmp_path), "deep")
    assert not (tmp_path / "deep").exists()


def test_ignore_rules() -> None:
    ignored = ignore_rule((".git/", "node_modules/", "*.pyc"))
    assert ignored(".git", True) and ignored("web/node_modules", True)
    assert ignored("pkg/mod.pyc", False)
    assert not ignored("src/git.py", False) and not ignored(".git", False)


def test_room_names_become_one_safe_folder_name() -> None:
    assert dir_name("abc-1_x") == "abc-1_x"
    assert "/" not in dir_name("../../etc") and dir_name("../../etc") != dir_name("..%2F..%2Fetc")


def test_disk_edits_rebase_onto_editor_edits_and_conflicts_keep_both() -> None:
    base = "one\ntwo\nthree\n"
    ours = "ONE\ntwo\nthree\n"
    theirs = "one\ntwo\nthree!\n"
    edits, conflicts = merge.rebase(base, ours, theirs)
    assert conflicts == 0
    assert _applied(ours, edits) == "ONE\ntwo\nthree!\n"
    edits, conflicts = merge.rebase("x\n", "editor\n", "disk\n")
    assert conflicts == 1
    merged = _applied("editor\n", edits)
    assert "editor" in merged and "disk" in merged


def _applied(text: str, edits: list[merge.Edit]) -> str:
    for edit in sorted(edits, key=lambda e: e.start, reverse=True):
        text = text[: edit.start] + edit.insert + text[edit.end:]
    return text


# -- the workspace of a real room ------------------------------------------------------------------


@pytest.fixture
async def node(start_server: StartServer, tmp_path: Path) -> AsyncIterator[tuple[RunningServer, Workspaces]]:
    server = await start_server()
    workspaces = Workspaces.attach(server.hub.registry, WorkspaceSettings(root=tmp_path / "ws", poll_seconds=0.05))
    yield server, workspaces
    await workspaces.detach()


def files_of(client: YClient) -> Map:
    return client.doc.get("files", type=Map)


def text_of(client: YClient, path: str) -> str | None:
    value = files_of(client).get(path)
    return str(value) if isinstance(value, Text) else None


async def origins(server: RunningServer, room: str) -> list[str]:
    await server.hub.registry.rooms[room].flush()
    loaded = await server.hub.store.load(room)
    return [u.origin for u in loaded.updates]


async def test_document_to_disk_and_back_attributed_to_the_actor(node: tuple[RunningServer, Workspaces]) -> None:
    server, workspaces = node
    room = "ws-" + uuid.uuid4().hex[:8]
    client = await YClient.connect(server.ws(room))
    async with workspaces.use(room) as workspace:
        await workspace.ensure_dir()
        files_of(client)["main.py"] = Text("print('hi')\n")
        files_of(client)["pkg/util.py"] = Text("X = 1\n")
        path = workspace.path
        await eventually(lambda: (path / "main.py").exists() and (path / "pkg" / "util.py").exists(), what="files on disk")
        assert (path / "main.py").read_text() == "print('hi')\n"

        workspace.note_actor("ada")
        (path / "made.txt").write_text("made in a shell\n")
        with open(path / "main.py", "a") as f:
            f.write("print('more')\n")
        await eventually(lambda: text_of(client, "made.txt") == "made in a shell\n", what="new file in the doc")
        await eventually(lambda: text_of(client, "main.py") == "print('hi')\nprint('more')\n", what="edit in the doc")
        assert "local:disk:ada" in await origins(server, room)

        (path / "made.txt").unlink()
        await eventually(lambda: text_of(client, "made.txt") is None, what="deleted on disk, gone from the doc")
        del files_of(client)["pkg/util.py"]
        await eventually(lambda: not (path / "pkg" / "util.py").exists(), what="deleted in the doc, gone from disk")
    await client.close()


async def test_a_disk_change_is_edits_not_a_replacement(node: tuple[RunningServer, Workspaces]) -> None:
    """Appending a line on disk to a 60 KB file stores an update of a few bytes, not the file again."""
    server, workspaces = node
    room = "ws-" + uuid.uuid4().hex[:8]
    client = await YClient.connect(server.ws(room))
    body = "".join(f"line {i} of a long file\n" for i in range(2500))
    files_of(client)["a.txt"] = Text(body)
    async with workspaces.use(room) as workspace:
        await workspace.ensure_dir()
        await eventually(lambda: (workspace.path / "a.txt").exists())
        await workspace.synced()
        workspace.note_actor("bob")
        (workspace.path / "a.txt").write_text(body.replace("line 1200 of", "line 1200 (edited) of") + "the end\n")
        want = body.replace("line 1200 of", "line 1200 (edited) of") + "the end\n"
        await eventually(lambda: text_of(client, "a.txt") == want)
        await server.hub.registry.rooms[room].flush()
        loaded = await server.hub.store.load(room)
        from_disk = [len(u.data) for u in loaded.updates if u.origin == "local:disk:bob"]
        assert from_disk and max(from_disk) < 200, from_disk
    await client.close()


async def test_editor_and_disk_edits_at_the_same_time_both_survive(node: tuple[RunningServer, Workspaces]) -> None:
    server, workspaces = node
    room = "ws-" + uuid.uuid4().hex[:8]
    client = await YClient.connect(server.ws(room))
    files_of(client)["m.py"] = Text("one\ntwo\nthree\n")
    async with workspaces.use(room) as workspace:
        await workspace.ensure_dir()
        await eventually(lambda: (workspace.path / "m.py").exists())
        await workspace.synced()
        # both sides change the file before the workspace looks at either
        async with workspace._lock:
            text = files_of(client)["m.py"]
            text.insert(0, "# editor\n")
            (workspace.path / "m.py").write_text("one\ntwo\nthree\nfour from disk\n")
            await eventually(lambda: str(server.hub.registry.rooms[room].doc.get("files", type=Map)["m.py"]).startswith("# editor"))
        want = "# editor\none\ntwo\nthree\nfour from disk\n"
        await eventually(lambda: text_of(client, "m.py") == want, what="merged in the doc")
        await eventually(lambda: (workspace.path / "m.py").read_text() == want, what="merged on disk")
    await client.close()


async def test_large_and_binary_files_are_listed_read_only(node: tuple[RunningServer, Workspaces], tmp_path: Path) -> None:
    server, workspaces = node
    room = "ws-" + uuid.uuid4().hex[:8]
    client = await YClient.connect(server.ws(room))
    async with workspaces.use(room) as workspace:
        await workspace.ensure_dir()
        (workspace.path / "big.txt").write_text("x" * (workspaces.settings.max_file_bytes + 1))
        (workspace.path / "img.png").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
        (workspace.path / ".git").mkdir()
        (workspace.path / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
        (workspace.path / "ok.txt").write_text("ok\n")
        await eventually(lambda: text_of(client, "ok.txt") == "ok\n")
        listing = client.doc.get(LISTING_ROOT, type=Map).to_py()
        assert listing["big.txt"] == {"size": workspaces.settings.max_file_bytes + 1, "kind": "large"}
        assert listing["img.png"]["kind"] == "binary"
        assert set(files_of(client).keys()) == {"ok.txt"}
    await client.close()


async def test_a_fifo_planted_at_a_room_file_freezes_nothing(node: tuple[RunningServer, Workspaces]) -> None:
    """Issue 22, item 1: the next write of that file replaces the FIFO; the server keeps answering."""
    server, workspaces = node
    room = "ws-" + uuid.uuid4().hex[:8]
    client = await YClient.connect(server.ws(room))
    files_of(client)["main.py"] = Text("v1\n")
    async with workspaces.use(room) as workspace:
        await workspace.ensure_dir()
        path = workspace.path / "main.py"
        await eventually(lambda: path.exists())
        await workspace.synced()
        async with workspace._lock:
            path.unlink()
            os.mkfifo(path)
            workspace.seen.pop("main.py", None)
        files_of(client)["main.py"].insert(0, "v2 ")
        await eventually(lambda: path.is_file() and path.read_text() == "v2 v1\n", what="FIFO replaced")
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{server.http}/healthz")).status_code == 200
    await client.close()


async def test_a_deep_folder_and_a_link_to_root_in_the_workspace_break_nothing(node: tuple[RunningServer, Workspaces]) -> None:
    server, workspaces = node
    room = "ws-" + uuid.uuid4().hex[:8]
    client = await YClient.connect(server.ws(room))
    files_of(client)["main.py"] = Text("ok\n")
    async with workspaces.use(room) as workspace:
        await workspace.ensure_dir()
        await eventually(lambda: (workspace.path / "main.py").exists())
        os.symlink("/", workspace.path / "root")
        deep_folder(workspace.path, "deep", 3000)
        scans = workspace.scans
        await eventually(lambda: workspace.scans > scans + 2, what="scans go on")
        assert set(files_of(client).keys()) == {"main.py"}
        files_of(client)["x.py"] = Text("x\n")
        await eventually(lambda: (workspace.path / "x.py").exists())
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{server.http}/healthz")).status_code == 200
    await client.close()


async def test_the_workspace_outlives_its_users(node: tuple[RunningServer, Workspaces]) -> None:
    """A kernel or shell ending does not take the files with it; the next one merges what changed."""
    server, workspaces = node
    room = "ws-" + uuid.uuid4().hex[:8]
    client = await YClient.connect(server.ws(room))
    files_of(client)["keep.txt"] = Text("kept\n")
    async with workspaces.use(room) as workspace:
        await workspace.ensure_dir()
        await eventually(lambda: (workspace.path / "keep.txt").exists())
        (workspace.path / "data.bin").write_bytes(b"\x00\x01")
    assert (workspace.path / "keep.txt").read_text() == "kept\n"
    files_of(client)["keep.txt"].insert(0, "still ")
    async with workspaces.use(room) as again:
        assert again is workspace
        await eventually(lambda: (workspace.path / "keep.txt").read_text() == "still kept\n")
        assert (workspace.path / "data.bin").read_bytes() == b"\x00\x01"
    await client.close()


# -- kernels work in the workspace ----------------------------------------------------------------


async def test_a_run_writes_files_into_the_document_and_they_outlive_the_kernel(tmp_path: Path) -> None:
    """A real sandboxed kernel: what a run writes comes back as the person who ran it, and the files
    stay on disk after the kernel's idle shutdown, where the next kernel finds them."""
    from tests.test_kernels import _PROBLEM, run_and_wait, start_kernel_server

    if _PROBLEM is not None:
        pytest.skip(f"kernel sandbox unavailable here ({_PROBLEM})")
    from pairroom.web.auth import Role, mint

    server = await start_kernel_server(tmp_path, secret="workspace-test-secret-of-32-bytes-or-more", pool_size=1, idle_shutdown_seconds=1.0)
    try:
        room = "wk-" + uuid.uuid4().hex[:8]
        token = mint("workspace-test-secret-of-32-bytes-or-more", room, Role.EDITOR, "Ada")
        headers = {"authorization": f"Bearer {token}"}
        client = await YClient.connect(server.ws(room) + f"?token={token}")
        code = "open('out.txt', 'w').write('from the kernel\\n')\nopen('blob.bin', 'wb').write(bytes(range(256)))"
        response = await server.http.post(f"/api/rooms/{room}/runs", json={"code": code}, headers=headers)
        run = await run_and_wait(server, room, response.json()["id"], headers=headers)
        assert run["status"] == "ok", run
        await eventually(lambda: text_of(client, "out.txt") == "from the kernel\n", what="the run's file in the doc")
        assert client.doc.get(LISTING_ROOT, type=Map).to_py()["blob.bin"] == {"size": 256, "kind": "binary"}
        user = run["by"]
        await server.hub.registry.rooms[room].flush()
        assert f"local:disk:{user}" in [u.origin for u in (await server.hub.store.load(room)).updates]

        await eventually(lambda: room not in server.service.rooms, timeout=15, what="the idle kernel stopped")
        code = "print(open('out.txt').read(), len(open('blob.bin', 'rb').read()))"
        response = await server.http.post(f"/api/rooms/{room}/runs", json={"code": code}, headers=headers)
        run = await run_and_wait(server, room, response.json()["id"], headers=headers, timeout=60)
        assert "".join(o.get("text", "") for o in run["outputs"]) == "from the kernel\n 256\n", run
        await client.close()
    finally:
        await server.stop()


async def test_a_client_cannot_forge_the_workspace_listing(node: tuple[RunningServer, Workspaces]) -> None:
    server, workspaces = node
    room = "ws-" + uuid.uuid4().hex[:8]
    client = await YClient.connect(server.ws(room))
    async with workspaces.use(room) as workspace:
        await workspace.ensure_dir()
        (workspace.path / "real.bin").write_bytes(b"\x00" * 10)
        await eventually(lambda: "real.bin" in client.doc.get(LISTING_ROOT, type=Map))
        listing = client.doc.get(LISTING_ROOT, type=Map)
        listing["fake.bin"] = Map({"size": 1, "kind": "binary"})
        del listing["real.bin"]
        await eventually(lambda: set(client.doc.get(LISTING_ROOT, type=Map).keys()) == {"real.bin"},
                         what="the client's writes to the listing are reverted")
    await client.close()
