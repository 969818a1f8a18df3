"""Commits in the room's history (the timeline, a fork at a commit) and settling a pull's conflicts,
with real git against a real bare remote and real y-websocket clients (fixtures of ``test_git.py``)."""

from __future__ import annotations

import uuid
from pathlib import Path

from pycrdt import Map, Text

from tests.conftest import RunningServer
from tests.test_git import (  # noqa: F401
    api,
    files_of,
    git,
    joined,
    node,
    open_room,
    remote,
    room,
    server_text,
    token,
    upstream_commit,
)
from tests.yclient import eventually


async def test_a_commit_is_on_the_timeline_and_a_fork_at_it_has_its_files(
    room: tuple[RunningServer, str, Path],
) -> None:
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

        async def on_the_timeline() -> bool:
            marks = (await http.get(f"/api/rooms/{name}/timeline")).json()["marks"]
            return any(m["kind"] == "git" and m.get("head") == committed["head"] for m in marks)

        await eventually(on_the_timeline, what="the commit on the room's timeline")
        marks = (await http.get(f"/api/rooms/{name}/timeline")).json()["marks"]
        mark = next(m for m in marks if m["kind"] == "git")
        assert mark["action"] == "commit" and mark["seq"] == committed["seq"] and mark["user"] == "ada"

        seq = (await http.get(f"/api/rooms/{name}/git/log")).json()["commits"][0]["seq"]
        assert seq == committed["seq"]
        fork_name = name + "-at-c"
        forked = await http.post(f"/api/rooms/{name}/fork", json={"room": fork_name, "at": seq})
        assert forked.status_code == 201, forked.text
        # the fork is a repository too, at that commit, on a branch of its own
        assert forked.json()["git"]["head"] == committed["head"], forked.text
        assert forked.json()["git"]["branch"] == f"pairroom/{fork_name}"
    copy = await joined(server, fork_name, token(fork_name, "ada", "Ada"))
    await eventually(lambda: isinstance(files_of(copy).get("README.md"), Text))
    assert str(files_of(copy)["README.md"]) == "committed # demo\n"  # the commit's files, not later ones
    assert "extra.txt" not in files_of(copy)
    assert server_text(server, name, "README.md") == "later committed # demo\n"  # the room goes on
    async with api(server, token(fork_name, "ada", "Ada")) as http:
        status = (await http.get(f"/api/rooms/{fork_name}/git/status")).json()
        assert status["head"] == committed["head"] and status["changes"] == []  # exactly the commit
        log = (await http.get(f"/api/rooms/{fork_name}/git/log")).json()["commits"]
        assert log[0]["sha"] == committed["head"] and log[0]["seq"] is not None  # a point of the fork's own log
    await eventually(lambda: copy.doc.get("meta", type=Map)["git"].get("branch") == f"pairroom/{fork_name}")
    assert copy.doc.get("meta", type=Map)["git"]["forkedFrom"] == {
        "room": name,
        "seq": committed["seq"],
        "commit": committed["head"],
    }


async def test_a_fork_later_than_a_commit_is_a_repository_at_it_without_the_credential(
    room: tuple[RunningServer, str, Path],
    tmp_path: Path,
) -> None:
    """A fork made after a commit and more typing: its head is that commit, its status the typing,
    its own branch, the same remote, no credential; it commits and pushes on its own."""
    server, name, remote = room
    owner_token = token(name, "own", "Owner", role="owner", email="own@example.org")
    own = await joined(server, name, owner_token)
    bob = await joined(server, name, token(name, "bob", "Bob", email="bob@example.org"))
    base = git("rev-parse", "main", cwd=remote).strip()
    secret = "ghp_" + uuid.uuid4().hex
    files_of(own)["README.md"].insert(0, "committed ")
    await eventually(lambda: (server_text(server, name, "README.md") or "").startswith("committed"))
    async with api(server, owner_token) as http:
        put = await http.put(f"/api/rooms/{name}/git/remote", json={"credential": secret})
        assert put.status_code == 200, put.text
        committed = (await http.post(f"/api/rooms/{name}/git/commit", json={"message": "c"})).json()
        files_of(bob)["notes.md"] = Text("typed after the commit\n")
        await eventually(lambda: server_text(server, name, "notes.md") is not None)
        forked = await http.post(f"/api/rooms/{name}/fork", json={"room": name + "-later"})
        assert forked.status_code == 201, forked.text
        made = forked.json()["git"]
        assert made["head"] == committed["head"] and made["seq"] == committed["seq"]
        assert made["credential"] is False and "credential is not copied" in made["note"]
        assert made["remote"] == f"file://{remote}" and secret not in forked.text
        # a fork at a point before that commit is at the commit before it: the one opened
        early = await http.post(f"/api/rooms/{name}/fork", json={"room": name + "-early", "at": committed["seq"] - 1})
        assert early.status_code == 201 and early.json()["git"]["head"] == base, early.text
        # a fork before the room had a repository has none, and its answer says why
        empty = await http.post(f"/api/rooms/{name}/fork", json={"room": name + "-empty", "at": 0})
        assert empty.status_code == 201, empty.text
        assert empty.json()["git"]["status"] == 409 and "no commit at or before seq 0" in empty.json()["git"]["error"]
    service = server.hub.state.git
    assert service.rooms[name].credential is not None and service.rooms[name + "-later"].credential is None
    fork = name + "-later"
    fork_owner = token(fork, "own", "Owner", role="owner", email="own@example.org")
    async with api(server, fork_owner) as http:
        status = (await http.get(f"/api/rooms/{fork}/git/status")).json()
        assert status["head"] == committed["head"] and status["branch"] == f"pairroom/{fork}"
        assert [(c["path"], c["status"]) for c in status["changes"]] == [("notes.md", "added")]
        # Bob typed it in the source before the fork: the fork still credits him
        assert [b["id"] for b in status["changes"][0]["by"]] == ["bob"]
        assert status["coauthors"] == [{"name": "Bob", "email": "bob@example.org"}]
        early_status = (await http.get(f"/api/rooms/{name}-early/git/status", headers={
            "authorization": f"Bearer {token(name + '-early', 'own', 'Owner', role='owner')}"})).json()  # fmt: skip
        assert early_status["head"] == base and [c["path"] for c in early_status["changes"]] == ["README.md"]
        assert (await http.get(f"/api/rooms/{name}-empty/git/status", headers={
            "authorization": f"Bearer {token(name + '-empty', 'own', 'Owner', role='owner')}"})).status_code == 409  # fmt: skip
        done = await http.post(f"/api/rooms/{fork}/git/commit", json={"message": "in the fork"})
        assert done.status_code == 201, done.text
        pushed = await http.post(f"/api/rooms/{fork}/git/push")
        assert pushed.status_code == 200, pushed.text
    check = tmp_path / "fork-check"
    git("clone", "-b", f"pairroom/{fork}", f"file://{remote}", str(check))
    assert git("log", "--format=%s", cwd=check).split("\n")[:3] == ["in the fork", "c", "seed"]
    assert (check / "notes.md").read_text() == "typed after the commit\n"
    assert git("log", "-1", "--format=%an|%(trailers:key=Co-authored-by,valueonly)", cwd=check).strip() == (
        "Owner|Bob <bob@example.org>"
    )
    assert (check / "README.md").read_text() == "committed # demo\n"
    assert (check / "logo.png").read_bytes().startswith(b"\x89PNG")  # the source's tree, kept
    # the source's branch and repository are untouched by the fork's commit
    async with api(server, owner_token) as http:
        assert (await http.get(f"/api/rooms/{name}/git/log")).json()["commits"][0]["sha"] == committed["head"]
    assert secret not in str(own.doc.get("meta", type=Map)["git"].to_py())


async def test_a_pulled_commit_has_a_point_to_restore_and_fork_at(
    room: tuple[RunningServer, str, Path],
    tmp_path: Path,
) -> None:
    server, name, remote = room
    ada_token = token(name, "ada", "Ada")
    ada = await joined(server, name, ada_token)
    upstream = upstream_commit(remote, tmp_path / "up", "main", "main.py", lambda t: t + "# from upstream\n")
    async with api(server, ada_token) as http:
        pulled = await http.post(f"/api/rooms/{name}/git/pull", json={"ref": "main"})
        assert pulled.status_code == 200, pulled.text
        seq = pulled.json()["seq"]
        assert pulled.json()["head"] == upstream and pulled.json()["uncommitted"] == []
        log = (await http.get(f"/api/rooms/{name}/git/log")).json()["commits"]
        assert log[0]["sha"] == upstream and log[0]["seq"] == seq

        async def on_the_timeline() -> bool:
            marks = (await http.get(f"/api/rooms/{name}/timeline")).json()["marks"]
            return any(m["kind"] == "git" and m["action"] == "pull" and m.get("seq") == seq for m in marks)

        await eventually(on_the_timeline, what="the pull on the timeline at its seq")
        files_of(ada)["main.py"].insert(0, "# later\n")
        await eventually(lambda: (server_text(server, name, "main.py") or "").startswith("# later"))
        restored = await http.post(f"/api/rooms/{name}/restore", json={"at": seq})
        assert restored.status_code == 200, restored.text
        await eventually(lambda: not (server_text(server, name, "main.py") or "").startswith("# later"))
        assert (await http.get(f"/api/rooms/{name}/git/status")).json()["changes"] == []  # the pulled commit
        forked = await http.post(f"/api/rooms/{name}/fork", json={"room": name + "-pulled", "at": seq})
        assert forked.status_code == 201 and forked.json()["git"]["head"] == upstream, forked.text
    fork = name + "-pulled"
    async with api(server, token(fork, "ada", "Ada")) as http:
        status = (await http.get(f"/api/rooms/{fork}/git/status")).json()
        assert status["head"] == upstream and status["changes"] == []
    # opened now, without a name: the remote has two commits, the clone only the newest (shallow)
    unnamed = await open_room(server, f"file://{remote}")
    assert unnamed.status_code == 201, unnamed.text
    path = server.hub.state.git.room_git(unnamed.json()["room"]).repo.path
    assert git("rev-parse", "--is-shallow-repository", cwd=Path(path)).strip() == "true"
    assert git("rev-list", "--count", "refs/pairroom/head", cwd=Path(path)).strip() == "1"


async def test_a_pull_conflict_is_settled_by_keeping_ours_or_taking_theirs(
    room: tuple[RunningServer, str, Path],
    tmp_path: Path,
) -> None:
    server, name, remote = room
    ada_token = token(name, "ada", "Ada")
    ada = await joined(server, name, ada_token)
    upstream_commit(remote, tmp_path / "up", "main", "README.md", lambda t: "# upstream title\n")
    upstream_commit(remote, tmp_path / "up", "main", "main.py", lambda t: t.replace("return 2", "return 'up'"))
    readme, main = files_of(ada)["README.md"], files_of(ada)["main.py"]
    del readme[0 : len("# demo")]
    readme.insert(0, "# room title")
    body = str(main)
    at = body.index("return 2")
    del main[at : at + len("return 2")]
    main.insert(at, "return 'room'")
    await eventually(lambda: "return 'room'" in (server_text(server, name, "main.py") or ""))
    await eventually(lambda: server_text(server, name, "README.md") == "# room title\n")
    async with api(server, ada_token) as http:
        pulled = await http.post(f"/api/rooms/{name}/git/pull", json={"ref": "main"})
        assert pulled.status_code == 200, pulled.text
        assert len(pulled.json()["conflicts"]) == 2

        def conflicts() -> dict[str, dict]:
            found = ada.doc.get("meta", type=Map)["git"].get("conflicts")
            return {c["path"]: {**c, "id": k} for k, c in found.items()} if isinstance(found, Map) else {}

        await eventually(lambda: len(conflicts()) == 2, what="both conflicts in meta.git, for the merge view")
        first = conflicts()
        assert first["README.md"]["ours"] == "# room title\n"
        assert first["README.md"]["theirs"] == "# upstream title\n"
        assert first["main.py"]["theirs"] == "    return 'up'\n" and first["main.py"]["anchor"] == "lines"

        viewer = token(name, "vic", "Vic", role="viewer")
        async with api(server, viewer) as vic:
            refused = await vic.post(f"/api/rooms/{name}/git/resolve", json={"conflict": "x", "take": "ours"})
            assert refused.status_code == 403
        bad = await http.post(f"/api/rooms/{name}/git/resolve", json={"conflict": "x", "take": "mine"})
        assert bad.status_code == 400
        missing = await http.post(f"/api/rooms/{name}/git/resolve", json={"conflict": "nope", "take": "ours"})
        assert missing.status_code == 404

        # Ada types elsewhere in main.py meanwhile: taking the remote's lines replaces only the clash
        main.insert(0, "# typed meanwhile\n")
        await eventually(lambda: (server_text(server, name, "main.py") or "").startswith("# typed meanwhile"))
        took = await http.post(
            f"/api/rooms/{name}/git/resolve", json={"conflict": first["main.py"]["id"], "take": "theirs"}
        )
        assert took.status_code == 200, took.text
        assert took.json() == {"path": "main.py", "take": "theirs", "changed": True}
        expected = "# typed meanwhile\ndef one():\n    return 1\n\n\ndef two():\n    return 'up'\n"
        await eventually(lambda: str(files_of(ada)["main.py"]) == expected, what="the remote's lines, in the editor")
        kept = await http.post(
            f"/api/rooms/{name}/git/resolve", json={"conflict": first["README.md"]["id"], "take": "ours"}
        )
        assert kept.status_code == 200 and kept.json()["changed"] is False
        assert server_text(server, name, "README.md") == "# room title\n"
        await eventually(lambda: conflicts() == {}, what="no conflict left in meta.git")
        again = await http.post(
            f"/api/rooms/{name}/git/resolve", json={"conflict": first["README.md"]["id"], "take": "ours"}
        )
        assert again.status_code == 404
        # the review threads that held both versions are resolved, saying how
        reviews = server.hub.registry.rooms[name].doc.get("reviews", type=Map)
        threads = {t["path"]: t for t in reviews.values()}
        assert {p: t["status"] for p, t in threads.items()} == {"README.md": "resolved", "main.py": "resolved"}
        assert "remote's version" in threads["main.py"]["messages"][-1]["text"]
        assert "room's version" in threads["README.md"]["messages"][-1]["text"]
        # the settled text is git's, not Ada's: blame names no person on the taken line
        blame = (await http.get(f"/api/rooms/{name}/files/main.py/blame")).json()["lines"]
        assert blame[0]["user"] == "ada"
        assert blame[6]["user"] is None and blame[6]["origin"].startswith("local:git:resolve")


async def test_settling_a_conflict_in_a_room_without_any_is_404(node: RunningServer) -> None:
    name = "n" + uuid.uuid4().hex[:8]
    async with api(node, token(name, "ada", "Ada")) as http:
        answer = await http.post(f"/api/rooms/{name}/git/resolve", json={"conflict": "c", "take": "ours"})
        assert answer.status_code == 404  # no repository, no conflicts: nothing to settle


async def test_on_forked_answers_go_under_each_extensions_name_and_a_failure_is_isolated() -> None:
    """The core hook the fork route calls: each extension's answer under its name; one that raises
    is counted and left out, the others still answer."""
    from pairroom.rooms.extension import Extension, ExtensionRunner
    from pairroom.rooms.identity import Principal, Role

    class Says(Extension):
        name = "says"

        async def on_forked(self, source: str, fork: str, seq: int, by: Principal) -> dict[str, object]:
            return {"from": source, "to": fork, "at": seq, "by": by.user_id}

    class Breaks(Extension):
        name = "breaks"
        priority = 10

        async def on_forked(self, source: str, fork: str, seq: int, by: Principal) -> None:
            raise RuntimeError("no")

    class Silent(Extension):
        name = "silent"

        async def on_forked(self, source: str, fork: str, seq: int, by: Principal) -> None:
            return None

    counted: list[tuple[str, str]] = []

    class Counter:
        def extension_error(self, extension: str, hook: str) -> None:
            counted.append((extension, hook))

    runner = ExtensionRunner([Says(), Breaks(), Silent()], errors=Counter())
    answer = await runner.forked("a", "b", 7, Principal("ada", "Ada", "#000", Role.EDITOR, "a"))
    assert answer == {"says": {"from": "a", "to": "b", "at": 7, "by": "ada"}}
    assert counted == [("breaks", "on_forked")]
    assert runner.last_failure["breaks"].hook == "on_forked"
