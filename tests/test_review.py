"""Pair review: threads anchored to code, suggestions, run evidence, reviewer writes, review passes.

Real servers on port 0, real clients: pycrdt (``YClient``) and npm Yjs (``node/review_client.mjs``,
y-websocket v2), through the websocket path and the HTTP API.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest_asyncio
from pycrdt import Array, Doc, Map, Text

from pairroom.review.guard import ReviewGuard
from pairroom.web.auth import mint

from .support.yjs_node import NODE_DIR, NodeYClient, _node_binary, ensure_node_modules
from .yclient import YClient, eventually

SECRET = "review-secret-of-at-least-32-bytes!"
SCRIPT = NODE_DIR / "review_client.mjs"

CODE = "import math\n# helpers\ndef area(r):\n    return 3.14 * r * r\nprint(area(2))\n"


def room_name() -> str:
    return "rv-" + uuid.uuid4().hex[:10]


def install_review(server: Any) -> None:
    """The app runs review as an extension; its outdated check is made quick for the tests."""
    review = next(e for e in server.hub.extensions.extensions if isinstance(e, ReviewGuard))
    review.outdated_delay = 0.02


def bearer(room: str, role: str, name: str, user: str) -> dict[str, str]:
    return {"authorization": "Bearer " + mint(SECRET, room, role, name, user_id=user)}


class NodeReviewers:
    """Starts ``review_client.mjs`` processes; closes them all at teardown."""

    def __init__(self) -> None:
        self.clients: list[NodeYClient] = []

    async def start(self, url: str, room: str, token: str | None = None) -> NodeYClient:
        await asyncio.to_thread(ensure_node_modules)
        argv = [str(SCRIPT), "--url", url, "--room", room] + (["--params", f"token={token}"] if token else [])
        process = await asyncio.create_subprocess_exec(
            _node_binary(),
            *argv,
            cwd=NODE_DIR,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        client = NodeYClient(process, url=url, room=room, version="v2")
        self.clients.append(client)
        await asyncio.wait_for(asyncio.shield(client._ready), 15)
        await client.call("waitSynced")
        return client


@pytest_asyncio.fixture
async def reviewers() -> AsyncIterator[NodeReviewers]:
    clients = NodeReviewers()
    yield clients
    await asyncio.gather(*(c.close() for c in clients.clients), return_exceptions=True)
    uncaught = [m for c in clients.clients for m in c.uncaught]
    assert not uncaught, uncaught


@pytest_asyncio.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


def files(client: YClient) -> Map:
    return client.doc.get("files", type=Map)


def thread_in(client: YClient, thread_id: str) -> dict[str, Any] | None:
    thread = client.doc.get("reviews", type=Map).get(thread_id)
    return thread.to_py() if isinstance(thread, Map) else None


async def threads(http: httpx.AsyncClient, base: str, room: str, **kw: Any) -> dict[str, dict[str, Any]]:
    response = await http.get(f"{base}/api/rooms/{room}/reviews", **kw)
    assert response.status_code == 200, response.text
    return {t["id"]: t for t in response.json()["threads"]}


async def new_file(client: YClient, path: str, content: str) -> None:
    files(client)[path] = Text(content)


# -- anchors ----------------------------------------------------------------------------------------


async def test_anchors_survive_concurrent_edits_before_inside_and_after(start_server, reviewers, http) -> None:
    server = await start_server()
    install_review(server)
    room = room_name()
    py = await YClient.connect(server.ws(room))
    await py.synced.wait()
    await new_file(py, "main.py", CODE)
    node = await reviewers.start(server.ws_base, room)
    await eventually(lambda: _equal(node.call("fileText", path="main.py"), CODE), what="node has the file")

    response = await http.post(
        f"{server.http}/api/rooms/{room}/reviews",
        json={"path": "main.py", "line": 3, "endLine": 4, "text": "use math.pi"},
    )
    assert response.status_code == 201, response.text
    made = response.json()
    assert made["range"]["code"] == "def area(r):\n    return 3.14 * r * r"
    assert (made["range"]["line"], made["range"]["endLine"]) == (3, 4)
    tid = made["id"]
    await eventually(lambda: thread_in(py, tid) is not None, what="the thread reached the client")

    # The Python client goes offline and edits before and inside the range ...
    await py.close()
    text = files(py)["main.py"]
    text.insert(0, "# header\n")
    inside = str(text).index("3.14")
    del text[inside : inside + 4]
    text.insert(inside, "math.pi")
    # ... while the Node client edits before, at both edges, inside and after it.
    start = CODE.index("def area")
    end = CODE.index("r * r\n") + len("r * r")
    await node.call("fileInsert", path="main.py", index=end, text="  # tail")  # right after the range
    await node.call("fileInsert", path="main.py", index=start + len("def area(r):\n"), text='    """Area."""\n')
    await node.call("fileInsert", path="main.py", index=start, text="@cache\n")  # right before the range
    await node.call("fileDelete", path="main.py", index=CODE.index("# helpers"), length=len("# helpers\n"))
    await node.call("fileInsert", path="main.py", index=0, text="from functools import cache\n")

    py = await YClient.connect(server.ws(room), doc=py.doc)
    body = 'import math\n@cache\ndef area(r):\n    """Area."""\n    return math.pi * r * r  # tail\nprint(area(2))\n'
    # The two inserts at 0 are concurrent: Yjs orders them by client id, either way round.
    either = {"# header\nfrom functools import cache\n" + body, "from functools import cache\n# header\n" + body}

    async def converged() -> bool:
        ours = str(files(py)["main.py"])
        return ours in either and await node.call("fileText", path="main.py") == ours

    await eventually(converged, what="both clients converge")
    expected = str(files(py)["main.py"])
    anchored = 'def area(r):\n    """Area."""\n    return math.pi * r * r'
    view = (await threads(http, server.http, room))[tid]
    assert view["status"] == "open"
    assert view["range"]["code"] == anchored
    assert (view["range"]["line"], view["range"]["endLine"]) == (5, 7)
    # The npm client decodes the same bytes to the same place (ASCII: UTF-16 and characters agree).
    where = await node.call("resolve", thread=tid)
    assert expected[where["start"] : where["end"]] == anchored
    await py.close()


async def test_deleting_the_anchored_code_marks_the_thread_outdated(start_server, reviewers, http) -> None:
    server = await start_server()
    install_review(server)
    room = room_name()
    py = await YClient.connect(server.ws(room))
    await py.synced.wait()
    await new_file(py, "main.py", CODE)
    node = await reviewers.start(server.ws_base, room)
    await eventually(lambda: _equal(node.call("fileText", path="main.py"), CODE))
    url = f"{server.http}/api/rooms/{room}/reviews"
    doomed = (await http.post(url, json={"path": "main.py", "line": 4, "text": "magic number"})).json()["id"]
    kept = (await http.post(url, json={"path": "main.py", "line": 5, "text": "print?"})).json()["id"]

    # Delete the function, and more around it, from the npm client.
    first = CODE.index("# helpers")
    await node.call("fileDelete", path="main.py", index=first, length=CODE.index("print") - first)
    await eventually(
        lambda: (thread_in(py, doomed) or {}).get("status") == "outdated",
        what="the thread is marked outdated for every member",
    )
    views = await threads(http, server.http, room)
    assert views[doomed]["range"] is None  # not pointing at whatever code sits there now
    assert views[kept]["status"] == "open" and views[kept]["range"]["code"] == "print(area(2))"
    reopened = await http.post(f"{url}/{doomed}/reopen")
    assert reopened.status_code == 409, reopened.text

    # Deleting the whole file outdates the rest.
    del files(py)["main.py"]
    await eventually(lambda: (thread_in(py, kept) or {}).get("status") == "outdated")
    await py.close()


# -- suggestions ------------------------------------------------------------------------------------


async def test_an_editor_applies_a_suggestion_a_reviewer_may_not(start_server, http) -> None:
    server = await start_server(secret=SECRET)
    install_review(server)
    room = room_name()
    owner = bearer(room, "owner", "Ada", "u-ada")
    mentor = bearer(room, "reviewer", "Grace", "u-grace")
    py = await YClient.connect(server.ws(room) + "?token=" + owner["authorization"][7:])
    await py.synced.wait()
    await new_file(py, "main.py", CODE)
    url = f"{server.http}/api/rooms/{room}/reviews"
    await eventually(lambda: _created(http, url, mentor))
    response = await http.post(
        url,
        headers=mentor,
        json={
            "path": "main.py",
            "line": 4,
            "text": "use math.pi",
            "suggestion": "    return math.pi * r ** 2",
        },
    )
    assert response.status_code == 201, response.text
    tid = response.json()["id"]
    assert response.json()["messages"][0]["name"] == "Grace"

    refused = await http.post(f"{url}/{tid}/apply", headers=mentor)
    assert refused.status_code == 403, refused.text
    files(py)["main.py"].insert(0, "# edited meanwhile\n")  # the range moved; apply follows it
    moved = CODE.index("    return") + len("# edited meanwhile\n")
    await eventually(lambda: _equal(_range_start(http, url, owner, tid), moved), what="the range moved")

    applied = await http.post(f"{url}/{tid}/apply", headers=owner)
    assert applied.status_code == 200, applied.text
    view = applied.json()
    assert view["status"] == "resolved" and view["suggestion"] is None
    assert view["range"]["code"] == "    return math.pi * r ** 2"
    assert view["messages"][-1]["name"] == "Ada"
    want = "# edited meanwhile\n" + CODE.replace("    return 3.14 * r * r", "    return math.pi * r ** 2")
    await eventually(lambda: str(files(py)["main.py"]) == want, what="the edit reached the editor")
    again = await http.post(f"{url}/{tid}/apply", headers=owner)
    assert again.status_code == 409
    assert (await http.post(f"{url}/{tid}/reopen", headers=mentor)).json()["status"] == "open"
    await py.close()


# -- reviewers --------------------------------------------------------------------------------------


async def test_a_reviewer_comments_but_its_file_edits_reach_nobody(start_server, reviewers, http) -> None:
    server = await start_server(secret=SECRET)
    install_review(server)  # before the room loads: rooms take the write check when they load
    room = room_name()
    owner_token = mint(SECRET, room, "owner", "Ada", user_id="u-ada")
    mentor_token = mint(SECRET, room, "reviewer", "Grace", user_id="u-grace")
    editor = await YClient.connect(server.ws(room) + "?token=" + owner_token)
    await editor.synced.wait()
    await new_file(editor, "main.py", CODE)
    url = f"{server.http}/api/rooms/{room}/reviews"
    await eventually(lambda: _created(http, url, {"authorization": "Bearer " + owner_token}))
    tid = (
        await http.post(
            url,
            headers={"authorization": "Bearer " + owner_token},
            json={"path": "main.py", "line": 1, "text": "unused import?"},
        )
    ).json()["id"]

    mentor = await YClient.connect(server.ws(room) + "?token=" + mentor_token)
    await mentor.synced.wait()
    await eventually(lambda: thread_in(mentor, tid) is not None)
    # A comment written straight into the document, with a forged author and time.
    messages = mentor.doc.get("reviews", type=Map)[tid]["messages"]
    messages.append({"id": "m1", "text": "it is used below", "author": "u-ada", "name": "Ada", "at": 1})
    mentor.doc.get("chat", type=Array).append({"id": "c1", "text": "looks good"})
    # A thread from the npm client, as the browser writes it, also forged.
    node = await reviewers.start(server.ws_base, room, token=mentor_token)
    await node.call(
        "createThread",
        thread="t-node",
        path="main.py",
        start=CODE.index("print"),
        end=len(CODE) - 1,
        text="print the area of 3 too",
        forge={"author": "u-ada", "name": "Ada"},
    )

    def stamped() -> bool:
        thread = thread_in(editor, tid) or {}
        node_thread = thread_in(editor, "t-node") or {}
        ours = [m for m in thread.get("messages", []) if m.get("id") == "m1"]
        theirs = node_thread.get("messages", [])
        chat = editor.doc.get("chat", type=Array).to_py()
        return (
            len(ours) == 1
            and ours[0]["author"] == "u-grace"
            and ours[0]["name"] == "Grace"
            and abs(ours[0]["at"] - time.time() * 1000) < 60_000
            and node_thread.get("by") == "u-grace"
            and len(theirs) == 1
            and theirs[0]["author"] == "u-grace"
            and [(c["text"], c["author"]) for c in chat] == [("looks good", "u-grace")]
        )

    await eventually(stamped, what="reviewer comments arrive stamped with the reviewer's identity")
    view = (await threads(http, server.http, room, headers={"authorization": "Bearer " + owner_token}))["t-node"]
    assert view["range"]["code"] == "print(area(2))"  # anchors made by Yjs, read by the server

    # Now the reviewer types into the file: its copy changes, nobody else's does.
    dropped_before = _dropped(server)
    files(mentor)["main.py"].insert(0, "EVIL\n")
    await node.call("fileInsert", path="main.py", index=0, text="EVIL2\n")
    await eventually(lambda: _dropped(server) >= dropped_before + 2, what="both reviewer edits dropped")
    resolved = await http.post(f"{url}/{tid}/resolve", headers={"authorization": "Bearer " + mentor_token})
    assert resolved.status_code == 200  # a later change through the server still reaches everyone
    await eventually(lambda: (thread_in(editor, tid) or {}).get("status") == "resolved")
    assert str(files(editor)["main.py"]) == CODE

    # ... and storage never saw the edits: rebuild the room from what is stored.
    async def stored() -> Doc:
        loaded = await server.hub.store.load(room)
        doc = Doc()
        for part in ([loaded.snapshot.data] if loaded.snapshot else []) + [u.data for u in loaded.updates]:
            doc.apply_update(part)
        return doc

    async def flushed() -> bool:
        doc = await stored()
        thread = doc.get("reviews", type=Map).get(tid)
        return isinstance(thread, Map) and thread.get("status") == "resolved"

    await eventually(flushed, what="the room was flushed")
    assert str((await stored()).get("files", type=Map)["main.py"]) == CODE
    await editor.close()
    await mentor.close()


async def test_open_mode_keeps_the_name_a_client_gives_its_comment(start_server) -> None:
    server = await start_server()
    install_review(server)
    room = room_name()
    ada = await YClient.connect(server.ws(room))
    await ada.synced.wait()
    await new_file(ada, "main.py", CODE)
    messages = Array(
        [
            {"id": "m1", "text": "why 3.14?", "name": "Ada", "author": "someone", "at": 1},
            {"id": "m2", "text": "and this?"},
        ]
    )
    ada.doc.get("reviews", type=Map)["t1"] = Map({"path": "main.py", "status": "open", "messages": messages})

    def stamped() -> bool:
        thread = thread_in(ada, "t1") or {}
        got = {m["id"]: m for m in thread.get("messages", [])}
        return (
            got.get("m1", {}).get("author", "someone") != "someone"
            and got["m1"]["name"] == "Ada"
            and abs(got["m1"]["at"] - time.time() * 1000) < 60_000
            and got.get("m2", {}).get("name") == "Guest"
        )

    await eventually(stamped, what=f"author and time stamped, the client's name kept: {thread_in(ada, 't1')}")
    # Over HTTP too: the body's name, in open mode only.
    async with httpx.AsyncClient(base_url=server.http) as http:
        made = await http.post(
            f"/api/rooms/{room}/reviews",
            json={
                "path": "main.py",
                "line": 4,
                "text": "math.pi?",
                "suggestion": "    return math.pi * r * r",
                "name": "Ada",
            },
        )
        assert made.status_code == 201 and made.json()["messages"][0]["name"] == "Ada"
        applied = await http.post(f"/api/rooms/{room}/reviews/{made.json()['id']}/apply", json={"name": "Bob"})
        assert applied.status_code == 200
        assert [m["name"] for m in applied.json()["messages"]] == ["Ada", "Bob"]
    await ada.close()


# -- evidence, passes and export --------------------------------------------------------------------


async def test_a_review_pass_with_diff_run_evidence_and_markdown_export(start_server, http) -> None:
    server = await start_server(kernels=True, kernel_pool_size=1)
    install_review(server)
    kernels = server.server.config.app.state.kernels
    room = room_name()
    api = f"{server.http}/api/rooms/{room}"
    py = await YClient.connect(server.ws(room))
    await py.synced.wait()
    await new_file(py, "main.py", CODE)
    await eventually(lambda: _created(http, f"{api}/reviews", {}))

    first = await http.post(f"{api}/review-passes", json={"title": "Week 1"})
    assert first.status_code == 201, first.text
    assert [c["kind"] for c in first.json()["changes"]] == ["added"]
    files(py)["main.py"].insert(len(CODE), "print(area(3))\n")
    await new_file(py, "test_main.py", "from main import area\nassert area(1) > 3\n")
    await eventually(lambda: _has_file(http, api, "test_main.py"))
    live = server.hub.registry.rooms[room].doc.get("files", type=Map)
    await eventually(lambda: str(live.get("test_main.py", "")).endswith("> 3\n"), what="the file's text arrived")

    second = await http.post(f"{api}/review-passes", json={"title": "Week 2"})
    assert second.status_code == 201, second.text
    pass_id = second.json()["id"]
    changes = {c["path"]: c for c in second.json()["changes"]}
    assert changes["test_main.py"]["kind"] == "added"
    assert "+print(area(3))\n" in changes["main.py"]["diff"]  # only the new work, not the whole file
    assert "+import math" not in changes["main.py"]["diff"]

    run_id = await real_or_recorded_run(server, http, api, kernels, room)
    made = await http.post(f"{api}/reviews", json={"path": "main.py", "line": 6, "text": "and 3?"})
    assert made.status_code == 201, made.text
    tid = made.json()["id"]
    assert made.json()["pass"] == pass_id
    evidence = await http.post(f"{api}/reviews/{tid}/messages", json={"text": "tests pass", "run": run_id})
    assert evidence.status_code == 201, evidence.text
    assert evidence.json()["evidence"]["output"] == "42\n"
    bad = await http.post(f"{api}/reviews/{tid}/messages", json={"text": "x", "run": "no-such-run"})
    assert bad.status_code == 400
    other = await http.post(f"{api}/reviews", json={"path": "test_main.py", "line": 2, "text": "nice"})
    await http.post(f"{api}/reviews/{other.json()['id']}/resolve")

    finished = await http.post(f"{api}/review-passes/{pass_id}/finish")
    assert finished.status_code == 200, finished.text
    assert finished.json()["summary"] == {"open": 1, "resolved": 1, "outdated": 0}

    exported = await http.get(f"{api}/reviews/{pass_id}.md")
    assert exported.status_code == 200, exported.text
    assert exported.headers["content-type"].startswith("text/markdown")
    md = exported.text
    assert md.startswith("# Week 2\n")
    assert "1 open, 1 resolved, 0 outdated" in md
    assert "+print(area(3))" in md and "### `test_main.py` (added)" in md
    assert "### `main.py` lines 6-6 · open" in md and "```python\nprint(area(3))\n```" in md
    assert "tests pass" in md and f"Evidence: run `{run_id}`" in md and "42" in md
    assert (await http.get(f"{api}/reviews/nope.md")).status_code == 404
    await py.close()


async def real_or_recorded_run(server: Any, http: httpx.AsyncClient, api: str, kernels: Any, room: str) -> str:
    """A run of ``print(6 * 7)``: by the room's real kernel when this server has one (sandbox present),
    else written into ``runs`` the way the kernel service writes it."""
    if kernels is not None:
        response = await http.post(f"{api}/runs", json={"code": "print(6 * 7)"})
        assert response.status_code == 201, response.text
        run_id = response.json()["id"]

        async def ended() -> bool:
            run = (await http.get(f"{api}/runs/{run_id}")).json()
            return run["status"] not in ("queued", "running")

        await eventually(ended, timeout=45, what="the run ended")
        return run_id  # type: ignore[no-any-return]
    from pairroom.kernels import rundoc

    async with server.hub.registry.hold(room) as held:
        rundoc.create_run(held, "run-1", code="print(6 * 7)", path=None, by="u")
        rundoc.update_run(held, "run-1", status="ok")
        from pairroom.protocol.origins import KernelOrigin

        with held.local_change(KernelOrigin("run-1")) as doc:
            doc.get("runs", type=Map)["run-1"]["outputs"].append(
                {"output_type": "stream", "name": "stdout", "text": "42\n"}
            )
    return "run-1"


# -- helpers ----------------------------------------------------------------------------------------


async def _equal(value: Any, expected: Any) -> bool:
    return await value == expected


async def _created(http: httpx.AsyncClient, url: str, headers: dict[str, str]) -> bool:
    """The file the test client wrote has reached the server (a thread can be put on it)."""
    response = await http.get(url, headers=headers)
    if response.status_code != 200:
        return False
    probe = await http.post(url, headers=headers, json={"path": "main.py", "start": 0, "end": 0, "text": "x"})
    return probe.status_code == 400 and "non-empty range" in probe.text


async def _has_file(http: httpx.AsyncClient, api: str, path: str) -> bool:
    probe = await http.post(f"{api}/reviews", json={"path": path, "start": 0, "end": 0, "text": "x"})
    return "non-empty range" in probe.text


async def _range_start(http: httpx.AsyncClient, url: str, headers: dict[str, str], tid: str) -> int:
    response = await http.get(url, headers=headers)
    return {t["id"]: t for t in response.json()["threads"]}[tid]["range"]["start"]  # type: ignore[no-any-return]


def _dropped(server: Any) -> float:
    for line in server.hub.metrics.render().decode().splitlines():
        if line.startswith("pairroom_updates_dropped_total"):
            return float(line.split()[-1])
    return 0.0


def test_the_reviewer_check_refuses_what_observers_cannot_see() -> None:
    """Sans I/O: new root types, structs waiting for a dependency and deletions ahead of their items."""
    from pairroom.rooms.partial_writes import REVIEWER_ROOTS, touches_only

    room = Doc()
    room.get("files", type=Map)["a.py"] = Text("hello")
    room.get("reviews", type=Map)["t"] = Map({"path": "a.py", "messages": Array([])})

    def client() -> tuple[Doc, bytes]:
        doc = Doc()
        doc.apply_update(room.get_update())
        return doc, doc.get_state()

    def update(change: Any) -> bytes:
        doc, state = client()
        change(doc)
        return doc.get_update(state)

    assert touches_only(
        room, update(lambda d: d.get("reviews", type=Map)["t"]["messages"].append({"text": "hi"})), REVIEWER_ROOTS
    )
    assert touches_only(room, update(lambda d: d.get("chat", type=Array).append({"text": "hi"})), REVIEWER_ROOTS)
    assert not touches_only(room, update(lambda d: d.get("files", type=Map)["a.py"].insert(0, "x")), REVIEWER_ROOTS)
    assert not touches_only(room, update(lambda d: d.get("meta", type=Map).__setitem__("k", 1)), REVIEWER_ROOTS)
    assert not touches_only(room, update(lambda d: d.get("other", type=Text).insert(0, "x")), REVIEWER_ROOTS)
    # A file edit sent without the comment it builds on: it would integrate once the comment arrives.
    doc, state = client()
    doc.get("chat", type=Array).append({"text": "a"})
    later = doc.get_state()
    doc.get("files", type=Map)["a.py"].insert(0, "x")
    assert not touches_only(room, doc.get_update(later), REVIEWER_ROOTS)
    # A deletion of an editor's character the room has not received yet: Yjs would apply it on arrival.
    editor, state = client()
    editor.get("files", type=Map)["a.py"].insert(0, "Q")
    ahead = Doc()
    ahead.apply_update(room.get_update())
    ahead.apply_update(editor.get_update(state))
    before = ahead.get_state()
    del ahead.get("files", type=Map)["a.py"][0:1]
    assert not touches_only(room, ahead.get_update(before), REVIEWER_ROOTS)
