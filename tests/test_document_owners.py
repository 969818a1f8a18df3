"""The document's owner table: every row, tried by a real y-websocket client of each role; hostile
values; client ids taken from another connection; reviewers' writes checked in work bounded by the
update.

Real server on port 0 with a secret and a SQLite file; real npm Yjs clients (y-websocket v2, through
``tests/support/yjs_node.py``), which send whatever update they are given exactly as the browser
would; raw pycrdt clients where a write must be crafted byte by byte. "Unchanged" is checked on the
server that took the writes and again after a restart on the same database.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pycrdt import Array, Doc, Map, Text

from pairroom.protocol import sync as protocol
from pairroom.protocol.origins import LocalOrigin
from pairroom.rooms.identity import Role
from pairroom.rooms.owners import BUILTIN_ROWS, OwnerTable
from pairroom.rooms.partial_writes import REVIEWER_ROOTS, ReviewerWrites, StructIndex
from pairroom.web.auth import mint

from .conftest import RunningServer, StartServer
from .support.redis_server import redis_servers  # noqa: F401
from .support.yjs_node import NodeClients, NodeYClient, node_clients  # noqa: F401
from .yclient import YClient, eventually

SECRET = "owner-table-secret-of-at-least-32-bytes"
ROLES = (Role.OWNER, Role.EDITOR, Role.REVIEWER, Role.VIEWER)
SCHEMA = Path(__file__).resolve().parent.parent / "docs" / "doc-schema.md"


def room_name() -> str:
    return "own-" + uuid.uuid4().hex[:10]


def user_of(role: Role) -> str:
    return f"u-{role.value}"


def token(room: str, role: Role) -> str:
    return mint(SECRET, room, role, role.value.title(), user_id=user_of(role))


# -- one case per row: what the server holds, what a client writes, how to read it back -------------


@dataclass(frozen=True)
class Case:
    root: str
    key: str | None
    seed: Callable[[Doc], None]  # the server's value before the client writes
    write: Callable[[Doc], None]  # the client's write, as a client would make it
    read: Callable[[Doc], Any]
    written: Callable[[Role], Any]  # what ``read`` gives once the write stood


def _meta(doc: Doc) -> Map:
    return doc.get("meta", type=Map)


def _thread() -> Map:
    return Map(
        {
            "path": "a.py",
            "start": b"\x01",
            "end": b"\x02",
            "status": "open",
            "by": "u-owner",
            "createdAt": 1_700_000_000_000,
            "messages": Array([]),
            "suggestion": None,
        }
    )


def _chat(doc: Doc) -> list[tuple[str, str]]:
    return [(e["text"], e["author"]) for e in doc.get("chat", type=Array).to_py() or []]


CASES = [
    Case(
        "files",
        "*",
        lambda d: d.get("files", type=Map).__setitem__("a.py", Text("base")),
        lambda d: d.get("files", type=Map)["a.py"].insert(0, "X"),
        lambda d: str(d.get("files", type=Map)["a.py"]),
        lambda role: "Xbase",
    ),
    Case(
        "text",
        None,
        lambda d: d.get("text", type=Text).insert(0, "base"),
        lambda d: d.get("text", type=Text).insert(0, "X"),
        lambda d: str(d.get("text", type=Text)),
        lambda role: "Xbase",
    ),
    Case(
        "meta",
        "title",
        lambda d: _meta(d).__setitem__("title", "Base"),
        lambda d: _meta(d).__setitem__("title", "New"),
        lambda d: _meta(d).get("title"),
        lambda role: "New",
    ),
    Case(
        "meta",
        "createdAt",
        lambda d: _meta(d).__setitem__("createdAt", 1000),
        lambda d: _meta(d).__setitem__("createdAt", 5),
        lambda d: _meta(d).get("createdAt"),
        lambda role: 5,
    ),
    Case(
        "meta",
        "roles",
        lambda d: _meta(d).__setitem__("roles", Map({"u-editor": "editor"})),
        lambda d: _meta(d)["roles"].__setitem__("u-editor", "owner"),
        lambda d: _meta(d)["roles"].to_py(),
        lambda role: {"u-editor": "owner"},
    ),
    Case(
        "meta",
        "policy",
        lambda d: _meta(d).__setitem__("policy", Map({"run": "editors", "recording": True})),
        lambda d: _meta(d)["policy"].__setitem__("recording", False),
        lambda d: _meta(d)["policy"].to_py(),
        lambda role: {"run": "editors", "recording": False},
    ),
    Case(
        "meta",
        "kernel",
        lambda d: _meta(d).__setitem__("kernel", Map({"status": "idle"})),
        lambda d: _meta(d)["kernel"].__setitem__("status", "dead"),
        lambda d: _meta(d)["kernel"].to_py(),
        lambda role: {"status": "dead"},
    ),
    Case(
        "meta",
        "invented",  # a key no row claims: the server's
        lambda d: None,
        lambda d: _meta(d).__setitem__("invented", "x"),
        lambda d: _meta(d).get("invented"),
        lambda role: "x",
    ),
    Case(
        "chat",
        None,
        lambda d: None,
        lambda d: d.get("chat", type=Array).append({"id": "c1", "text": "hi", "author": "u-owner"}),
        _chat,
        lambda role: [("hi", user_of(role))],
    ),
    Case(
        "runs",
        "*",
        lambda d: d.get("runs", type=Map).__setitem__(
            "r1",
            Map(
                {
                    "code": "1",
                    "status": "ok",
                    "order": 1,
                    "outputs": Array([{"output_type": "stream", "name": "stdout", "text": "1\n"}]),
                }
            ),
        ),
        lambda d: (
            d.get("runs", type=Map)["r1"]["outputs"].append(
                {"output_type": "stream", "name": "stdout", "text": "forged\n"}
            ),
            d.get("runs", type=Map)["r1"].__setitem__("order", 99),
        ),
        lambda d: d.get("runs", type=Map)["r1"].to_py(),
        lambda role: {
            "code": "1",
            "status": "ok",
            "order": 99,
            "outputs": [
                {"output_type": "stream", "name": "stdout", "text": "1\n"},
                {"output_type": "stream", "name": "stdout", "text": "forged\n"},
            ],
        },
    ),
    Case(
        "reviews",
        "*",
        lambda d: d.get("reviews", type=Map).__setitem__("t1", _thread()),
        lambda d: d.get("reviews", type=Map)["t1"].__setitem__("status", "resolved"),
        lambda d: d.get("reviews", type=Map)["t1"]["status"],
        lambda role: "resolved",
    ),
    Case(
        "reviewPasses",
        "*",
        lambda d: d.get("reviewPasses", type=Map).__setitem__("p1", Map({"seq": 1, "by": "u-owner"})),
        lambda d: d.get("reviewPasses", type=Map)["p1"].__setitem__("seq", 99),
        lambda d: d.get("reviewPasses", type=Map)["p1"].to_py(),
        lambda role: {"seq": 99, "by": "u-owner"},
    ),
]


def allowed(case: Case, role: Role) -> bool:
    row = OwnerTable.default().row(case.root, "k" if case.key == "*" else case.key)
    return row is not None and row.allows(role)


def normal(value: Any) -> Any:
    """Numbers come back from the document as floats."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: normal(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(normal(v) for v in value)
    return value


def test_every_root_of_the_schema_has_a_row_and_every_row_a_case_and_a_line_in_the_docs() -> None:
    schema = SCHEMA.read_text()
    roots_table = schema.split("## `files`")[0]
    roots = set(re.findall(r"^\| `(\w+)` \|", roots_table, re.M))
    table = OwnerTable.default()
    assert roots and roots <= set(table.roots), roots - set(table.roots)
    covered = {(c.root, c.key) for c in CASES}
    for row in BUILTIN_ROWS:
        assert (row.root, row.key) in covered, f"no test case for {row.root}.{row.key}"
        key = f"`{row.key}`" if row.key else "(the root)"
        assert re.search(rf"^\| `{row.root}` \| {re.escape(key)} \|", schema, re.M), (
            f"docs/doc-schema.md's owner table has no line for {row.root} {key}"
        )


async def metric(server: RunningServer, name: str) -> float:
    total = 0.0
    for line in server.hub.metrics.render().decode().splitlines():
        if line.startswith((name + "{", name + " ")):
            total += float(line.split()[-1])
    return total


async def server_read(server: RunningServer, room: str, read: Callable[[Doc], Any]) -> Any:
    async with server.hub.registry.hold(room) as held:
        with held.local_change(LocalOrigin("test-read")) as doc:
            return normal(read(doc))


async def write_through(node: NodeYClient, change: Callable[[Doc], None]) -> None:
    """Make ``change`` on a copy of the client's document and hand the update to the npm client,
    whose y-websocket provider sends it as it sends any local edit."""
    mirror = Doc()
    mirror.apply_update(await node.encode_state())
    before = mirror.get_state()
    with mirror.transaction():
        change(mirror)
    await node.apply_update(mirror.get_update(before))


@pytest.mark.parametrize("role", ROLES, ids=[r.value for r in ROLES])
async def test_each_row_written_by_a_real_client_of_each_role(
    start_server: StartServer, node_clients: NodeClients, role: Role
) -> None:
    server = await start_server(secret=SECRET)
    room = room_name()
    async with server.hub.registry.hold(room) as held:
        with held.local_change(LocalOrigin("seed")) as doc:
            for case in CASES:
                case.seed(doc)
        seeded = {i: normal(case.read(held.doc)) for i, case in enumerate(CASES)}
    node = await node_clients.start(server.ws_base, room, "v2", params={"token": token(room, role)})
    await node.wait_synced()
    refused_before = await metric(server, "pairroom_guard_reverts_total") + await metric(
        server, "pairroom_updates_dropped_total"
    )
    for case in CASES:
        await write_through(node, case.write)
    expected = {i: normal(case.written(role)) if allowed(case, role) else seeded[i] for i, case in enumerate(CASES)}
    refusals = sum(not allowed(case, role) for case in CASES)

    async def all_refusals_counted() -> bool:
        now = await metric(server, "pairroom_guard_reverts_total") + await metric(
            server, "pairroom_updates_dropped_total"
        )
        return now - refused_before >= refusals

    await eventually(all_refusals_counted, timeout=10, what=f"{refusals} refused writes counted")

    async def as_expected(srv: RunningServer) -> dict[str, tuple[Any, Any]]:
        wrong = {}
        for i, case in enumerate(CASES):
            got = await server_read(srv, room, case.read)
            if got != expected[i]:
                wrong[f"{case.root}.{case.key}"] = (got, expected[i])
        return wrong

    async def settled() -> bool:
        return not await as_expected(server)

    await eventually(settled, timeout=10, what="every row as its writers allow")
    await node.close()
    await server.stop()
    restarted = await start_server(secret=SECRET)
    assert await as_expected(restarted) == {}, "after a restart on the same database"


# -- hostile values -----------------------------------------------------------------------------------


def deep(levels: int) -> Any:
    value: Any = "bottom"
    for _ in range(levels):
        value = {"d": value}
    return value


async def joined(server: RunningServer, room: str, role: Role) -> YClient:
    client = await YClient.connect(server.ws(room) + "?token=" + token(room, role))
    await client.synced.wait()
    return client


async def test_a_nan_in_chat_lets_neither_a_forged_line_nor_poisoned_roles_through(
    start_server: StartServer,
) -> None:
    server = await start_server(secret=SECRET)
    room = room_name()
    async with server.hub.registry.hold(room) as held:
        held.set_role("u-owner", Role.OWNER)
        held.set_role("u-editor", Role.EDITOR)
    editor = await joined(server, room, Role.EDITOR)
    with editor.doc.transaction():
        editor.doc.get("chat", type=Array).append(
            {"id": "x", "text": "transfer the room to u-editor", "author": "u-owner", "name": "Owner", "at": math.nan}
        )
        editor.doc.get("chat", type=Array).append({"text": "inf", "at": math.inf})
        roles = editor.doc.get("meta", type=Map)["roles"]
        roles["u-editor"] = "owner"
        roles["u-owner"] = "viewer"

    def server_state(doc: Doc) -> tuple[Any, Any]:
        return doc.get("chat", type=Array).to_py(), doc.get("meta", type=Map)["roles"].to_py()

    async def corrected(srv: RunningServer = server) -> bool:
        chat, roles = await server_read(srv, room, server_state)
        return (
            [(e["text"], e["author"]) for e in chat]
            == [("transfer the room to u-editor", "u-editor"), ("inf", "u-editor")]
            and all(math.isfinite(e["at"]) for e in chat)
            and roles == {"u-owner": "owner", "u-editor": "editor"}
        )

    await eventually(corrected, what="the chat lines stamped as the editor's, the roles restored")
    # The editor's own copy converges on the server's.
    await eventually(
        lambda: editor.doc.get("meta", type=Map)["roles"].to_py() == {"u-owner": "owner", "u-editor": "editor"}
    )
    await editor.close()
    await server.stop()
    again = await start_server(secret=SECRET)
    assert await corrected(again), "after a restart"
    async with again.hub.registry.hold(room) as held:
        assert held.roles == {"u-owner": Role.OWNER, "u-editor": Role.EDITOR}


async def test_a_value_nested_too_deep_is_refused_before_it_touches_the_document(
    start_server: StartServer,
) -> None:
    """pycrdt builds a change's events recursively: a 3,000-deep value would keep every observer,
    the guards' included, from seeing the transaction. Such an update is refused whole."""
    server = await start_server(secret=SECRET)
    room = room_name()
    async with server.hub.registry.hold(room) as held:
        held.set_role("u-owner", Role.OWNER)
        with held.local_change(LocalOrigin("seed")) as doc:
            doc.get("chat", type=Array).append(
                {"id": "s", "text": "seen", "author": "u-owner", "name": "Owner", "at": 1}
            )
    editor = await joined(server, room, Role.EDITOR)
    with editor.doc.transaction():
        chat = editor.doc.get("chat", type=Array)
        chat.append({"text": "the owner says: make u-editor owner", "author": "u-owner", "name": "Owner"})
        chat.append({"text": "deep", "x": deep(3000)})
        editor.doc.get("meta", type=Map)["roles"]["u-editor"] = "owner"
    assert await editor.closed() == protocol.CloseCode.UPDATE_REJECTED
    assert "nested 3001 deep" in (editor.close_reason or "")
    want = (["seen"], {"u-owner": "owner"}, False)
    assert await server_read(server, room, _chat_roles_kernel) == want
    other = await joined(server, room, Role.EDITOR)  # the room carries on
    other.doc.get("chat", type=Array).append({"text": "still here"})
    await eventually(_equals(server, room, _chat_roles_kernel, (["seen", "still here"], {"u-owner": "owner"}, False)))
    await other.close()
    await server.stop()
    again = await start_server(secret=SECRET)
    assert await server_read(again, room, _chat_roles_kernel) == (["seen", "still here"], {"u-owner": "owner"}, False)


def _chat_roles_kernel(doc: Doc) -> tuple[Any, Any, Any]:
    meta = doc.get("meta", type=Map)
    return [e["text"] for e in doc.get("chat", type=Array).to_py()], meta["roles"].to_py(), "kernel" in meta


async def test_a_transaction_the_guards_did_not_see_is_undone_where_it_can_be(
    start_server: StartServer,
) -> None:
    """Fail closed: when a client's transaction reached the document but not the guards (an
    observer that could not be run), every kept key is restored and every chat entry the server
    has not seen is removed."""
    server = await start_server(secret=SECRET)
    room = room_name()
    async with server.hub.registry.hold(room) as held:
        held.set_role("u-owner", Role.OWNER)
        with held.local_change(LocalOrigin("seed")) as doc:
            doc.get("chat", type=Array).append(
                {"id": "s", "text": "seen", "author": "u-owner", "name": "Owner", "at": 1}
            )
    editor = await joined(server, room, Role.EDITOR)
    async with server.hub.registry.hold(room) as held:
        member = next(iter(held.members.values()))
        forged = Doc()
        forged.apply_update(held.doc.get_update())
        before = forged.get_state()
        with forged.transaction():
            forged.get("chat", type=Array).append(
                {
                    "text": "the owner says: make u-editor owner",
                    "author": "u-owner",
                    "name": "Owner",
                    "at": 1,
                    "extra": deep(10),
                }  # nested values are where pycrdt's events can fail
            )
            forged.get("meta", type=Map)["roles"]["u-editor"] = "owner"
            forged.get("meta", type=Map)["kernel"] = Map({"status": "idle"})
        guards = held.guards
        guards._collect = guards._follow_entries = lambda root, events: None  # type: ignore[method-assign]
        update = forged.get_update(before)
        try:
            guards.before_client_update(member, update)
            held.apply_update(update, member.origin, exclude=member)
        finally:
            del guards._collect, guards._follow_entries
        assert _chat_roles_kernel(held.doc)[0] == ["seen", "the owner says: make u-editor owner"]
        guards.after_client_update(member)
        assert _chat_roles_kernel(held.doc) == (["seen"], {"u-owner": "owner"}, False)
    await eventually(
        lambda: _chat_roles_kernel(editor.doc) == (["seen"], {"u-owner": "owner"}, False),
        what="members receive the correction",
    )
    await editor.close()
    await server.stop()
    again = await start_server(secret=SECRET)
    assert await server_read(again, room, _chat_roles_kernel) == (["seen"], {"u-owner": "owner"}, False)


HOSTILE_POLICIES = [
    pytest.param(lambda p: p.__setitem__("run", math.nan), id="nan"),
    pytest.param(lambda p: p.__setitem__("run", math.inf), id="infinity"),
    pytest.param(lambda p: p.__setitem__("recording", "no"), id="wrong-type"),
    pytest.param(lambda p: p.__setitem__("speak", deep(3000)), id="3000-deep"),
    pytest.param(lambda p: p.__setitem__("run", "x" * 3_000_000), id="huge-string"),
]


@pytest.mark.parametrize("hostile", HOSTILE_POLICIES)
async def test_an_owner_cannot_store_a_malformed_policy(
    start_server: StartServer, hostile: Any, request: pytest.FixtureRequest
) -> None:
    hostile_id = request.node.callspec.id
    server = await start_server(secret=SECRET)
    room = room_name()
    owner = await joined(server, room, Role.OWNER)
    owner.doc.get("meta", type=Map)["policy"] = Map({"run": "owners"})

    def policy(doc: Doc) -> Any:
        value = doc.get("meta", type=Map).get("policy")
        return value.to_py() if isinstance(value, Map) else value

    await eventually(_equals(server, room, policy, {"run": "owners"}), what="a valid policy stands")
    reverts = await metric(server, "pairroom_guard_reverts_total")
    hostile(owner.doc.get("meta", type=Map)["policy"])

    async def counted() -> bool:
        return await metric(server, "pairroom_guard_reverts_total") > reverts

    if hostile_id == "3000-deep":  # refused before integrating: too deep for pycrdt's events
        assert await owner.closed() == protocol.CloseCode.UPDATE_REJECTED
    else:
        await eventually(counted, what="the malformed policy reverted and counted")
        await eventually(lambda: policy(owner.doc) == {"run": "owners"}, what="the owner's copy converges")
    assert await server_read(server, room, policy) == {"run": "owners"}
    await owner.close()
    await server.stop()
    again = await start_server(secret=SECRET)
    assert await server_read(again, room, policy) == {"run": "owners"}


def _equals(server: RunningServer, room: str, read: Callable[[Doc], Any], want: Any) -> Callable[[], Any]:
    async def check() -> bool:
        return bool(await server_read(server, room, read) == want)

    return check


HOSTILE_THREADS = [
    pytest.param(lambda t: t.__setitem__("createdAt", math.nan), id="nan"),
    pytest.param(lambda t: t.__setitem__("createdAt", -math.inf), id="infinity"),
    pytest.param(lambda t: t.__setitem__("suggestion", deep(3000)), id="3000-deep"),
    pytest.param(lambda t: t.__setitem__("path", 42), id="wrong-type"),
    pytest.param(lambda t: t["messages"].append({"text": "x" * 3_000_000}), id="huge-string"),
    pytest.param(lambda t: t["messages"].append({"text": "hi", "at": math.nan}), id="nan-message"),
]


def harmless(view: dict[str, Any] | None) -> bool:
    """The malformed thread is gone, or the hostile write never reached it."""
    return view is None or (
        view["path"] == "a.py"
        and view["suggestion"] is None
        and not view["messages"]
        and math.isfinite(view["createdAt"])
    )


@pytest.mark.parametrize("role", [Role.REVIEWER, Role.EDITOR], ids=["reviewer", "editor"])
@pytest.mark.parametrize("hostile", HOSTILE_THREADS)
async def test_a_malformed_thread_cannot_make_the_reviews_api_fail(
    start_server: StartServer, hostile: Any, role: Role
) -> None:
    server = await start_server(secret=SECRET)
    room = room_name()
    async with server.hub.registry.hold(room) as held:
        with held.local_change(LocalOrigin("seed")) as doc:
            doc.get("files", type=Map)["a.py"] = Text("print(1)\n")
    headers = {"authorization": "Bearer " + token(room, Role.OWNER)}
    api = f"{server.http}/api/rooms/{room}/reviews"
    async with httpx.AsyncClient(timeout=30) as http:
        created = await http.post(api, headers=headers, json={"path": "a.py", "line": 1, "text": "why?"})
        assert created.status_code == 201, created.text
        kept = created.json()["id"]
        reviewer = await joined(server, room, role)
        await eventually(lambda: kept in reviewer.doc.get("reviews", type=Map))
        reviews = reviewer.doc.get("reviews", type=Map)
        with reviewer.doc.transaction():
            reviews["bad"] = Map({"path": "a.py", "status": "open", "messages": Array([])})
        with reviewer.doc.transaction():
            hostile(reviews["bad"])
        # A good write carries on (from another connection: a value too deep to read also closes
        # the offender's).
        other = await joined(server, room, Role.REVIEWER)
        await eventually(lambda: kept in other.doc.get("reviews", type=Map))
        other.doc.get("reviews", type=Map)[kept]["messages"].append({"text": "and a fine reply"})

        async def listed() -> bool:
            response = await http.get(api, headers=headers)
            assert response.status_code == 200, response.text
            threads = {t["id"]: t for t in response.json()["threads"]}
            return harmless(threads.get("bad")) and [m["text"] for m in threads[kept]["messages"]] == [
                "why?",
                "and a fine reply",
            ]

        await eventually(listed, what="the malformed thread removed, the good reply kept, no 500")
        await reviewer.close()
        await other.close()
        await server.stop()
        again = await start_server(secret=SECRET)
        api = f"{again.http}/api/rooms/{room}/reviews"
        assert await listed()


async def test_the_reviews_api_leaves_out_a_malformed_thread_already_stored(
    start_server: StartServer,
) -> None:
    """Stored before the guards checked shapes: the list still answers, without it."""
    server = await start_server(secret=SECRET)
    room = room_name()
    async with server.hub.registry.hold(room) as held:
        with held.local_change(LocalOrigin("seed")) as doc:
            doc.get("reviews", type=Map)["old"] = Map({"path": "a.py", "createdAt": math.nan, "x": deep(3000)})
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.get(
            f"{server.http}/api/rooms/{room}/reviews", headers={"authorization": "Bearer " + token(room, Role.VIEWER)}
        )
    assert response.status_code == 200, response.text
    assert response.json()["threads"] == []


# -- client ids -----------------------------------------------------------------------------------


async def test_an_update_under_another_connections_client_id_is_refused_and_copies_converge(
    start_server: StartServer, node_clients: NodeClients
) -> None:
    server = await start_server(secret=SECRET)
    room = room_name()
    victim = await node_clients.start(server.ws_base, room, "v2", params={"token": token(room, Role.EDITOR)})
    await victim.wait_synced()
    await victim.insert(0, "hello")
    attacker_token = mint(SECRET, room, Role.EDITOR, "Mallory", user_id="u-mallory")
    attacker = await YClient.connect(server.ws(room) + "?token=" + attacker_token)
    await attacker.synced.wait()
    await eventually(lambda: str(attacker.text) == "hello")
    # One clock ahead of the victim, under the victim's client id.
    forged = Doc(client_id=await victim.client_id())
    forged.apply_update(attacker.doc.get_update())
    before = forged.get_state()
    forged.get("text", type=Text).insert(5, " (forged)")
    await attacker.send_raw(protocol.sync_update(forged.get_update(before)))
    assert await attacker.closed() == protocol.CloseCode.UPDATE_REJECTED
    assert "client id" in (attacker.close_reason or "")
    # The victim carries on; everyone converges, the attacker too once it comes back as itself.
    await victim.insert(5, " world")
    back = await YClient.connect(server.ws(room) + "?token=" + attacker_token)
    await back.synced.wait()
    await eventually(lambda: str(back.text) == "hello world", what="the returning client converges")
    back.text.insert(0, ">")

    async def converged() -> bool:
        text = await server_read(server, room, lambda d: str(d.get("text", type=Text)))
        return text == ">hello world" and await victim.text() == text

    await eventually(converged, what="victim, returning client and server converge")
    await back.close()


async def test_a_reconnect_of_the_same_person_keeps_its_client_id(start_server: StartServer) -> None:
    """The old connection may still be a member when the new one sends its first edit."""
    server = await start_server(secret=SECRET)
    room = room_name()
    url = server.ws(room) + "?token=" + token(room, Role.EDITOR)
    doc = Doc()
    first = await YClient.connect(url, doc)
    await first.synced.wait()
    first.insert(0, "a")
    await eventually(_equals(server, room, lambda d: str(d.get("text", type=Text)), "a"))
    second = await YClient.connect(url, Doc(client_id=doc.client_id))
    await second.synced.wait()
    second.insert(1, "b")
    await eventually(_equals(server, room, lambda d: str(d.get("text", type=Text)), "ab"))
    assert second.close_code is None
    await first.close()
    await second.close()


async def test_a_client_id_announced_on_another_node_is_protected_there_too(
    start_server: StartServer,
    redis_servers: Any,
) -> None:
    """The victim is on node A; node B knows its client id from the presence A relays. Another
    person's update under it is refused on B; the victim's own reconnect to B is not."""
    (redis,) = await redis_servers(1)
    node_a = await start_server(secret=SECRET, redis=redis.url, node_id="node-a")
    node_b = await start_server(secret=SECRET, redis=redis.url, node_id="node-b")
    room = room_name()
    victim_doc = Doc()
    victim = await YClient.connect(node_a.ws(room) + "?token=" + token(room, Role.EDITOR), victim_doc)
    await victim.synced.wait()
    victim.insert(0, "hello")
    await victim.set_awareness({"file": "main.py"})
    attacker_token = mint(SECRET, room, Role.EDITOR, "Mallory", user_id="u-mallory")
    attacker = await YClient.connect(node_b.ws(room) + "?token=" + attacker_token)
    await attacker.synced.wait()
    await eventually(lambda: str(attacker.text) == "hello", what="the edit crossed the nodes")
    b_room = node_b.hub.registry.rooms[room]
    await eventually(lambda: victim_doc.client_id in b_room.presence.remote_owner, what="presence crossed")
    forged = Doc(client_id=victim_doc.client_id)
    forged.apply_update(attacker.doc.get_update())
    before = forged.get_state()
    forged.get("text", type=Text).insert(5, "!")
    await attacker.send_raw(protocol.sync_update(forged.get_update(before)))
    assert await attacker.closed() == protocol.CloseCode.UPDATE_REJECTED
    # The victim's own new connection on B, with the same document, keeps writing.
    again = await YClient.connect(
        node_b.ws(room) + "?token=" + token(room, Role.EDITOR), Doc(client_id=victim_doc.client_id)
    )
    await again.synced.wait()
    again.insert(5, " world")
    await eventually(lambda: str(victim.text) == "hello world", what="the victim's copies converge")
    assert again.close_code is None
    await again.close()
    await victim.close()


# -- reviewers' writes: work bounded by the update ------------------------------------------------------


async def test_reviewer_updates_on_a_large_document_cost_work_proportional_to_them(
    start_server: StartServer,
) -> None:
    server = await start_server(secret=SECRET)
    room = room_name()
    editor = await joined(server, room, Role.EDITOR)
    files = editor.doc.get("files", type=Map)
    files["big.py"] = Text("")
    text = files["big.py"]
    with editor.doc.transaction():  # one message; many structs, as a long session leaves them
        for i in range(2000):
            text.insert(len(text) // 2, f"line {i} " + "x" * 1000 + "\n")
    async with server.hub.registry.hold(room) as held:

        def arrived() -> bool:
            big = held.doc.get("files", type=Map).get("big.py")
            return isinstance(big, Text) and len(big) > 2_000_000

        await eventually(arrived, timeout=30, what="the large document arrived")
        size = len(held.doc.get_update())
    assert size > 2_000_000
    reviewer = await joined(server, room, Role.REVIEWER)
    check = next(e for e in server.hub.registry.extensions.extensions if isinstance(e, ReviewerWrites))
    chat = reviewer.doc.get("chat", type=Array)
    chat.append({"text": "first"})
    await eventually(lambda: len(editor.doc.get("chat", type=Array)) == 1)
    async with server.hub.registry.hold(room) as held:
        index = check.index_of(held)
    after_first = index.decoded_bytes
    assert size <= after_first < size + 10_000  # the document was decoded once, to build the index
    sent = 0
    for i in range(300):
        before = reviewer.doc.get_state()
        chat.append({"text": f"comment {i}"})
        sent += len(reviewer.doc.get_update(before))
    await eventually(lambda: len(editor.doc.get("chat", type=Array)) == 301, timeout=20)
    # 300 updates, each decoded once to check it and once more to index it (plus the guard's
    # stamping corrections): nothing near the document's size.
    grown = index.decoded_bytes - after_first
    assert 0 < grown < 20 * sent < size, (grown, sent, size)
    await reviewer.close()
    await editor.close()


def test_the_struct_index_places_every_struct_of_random_edits() -> None:
    """Sans I/O: for random edits of every kind, the index built update by update agrees with the
    reviewer rule (reviews and chat only), and with an index built from the whole document."""
    import random

    rnd = random.Random(7)
    values = [None, True, 1.5, -123456789, "héllo😀", b"\x00\x01", [1, {"a": [None]}], {"x": {"y": 2}}]
    room = Doc()
    room.get("meta", type=Map)["seed"] = 1
    index = StructIndex.of(room)
    for _ in range(300):
        client = Doc()
        client.apply_update(room.get_update())
        state = client.get_state()
        root = rnd.choice(["files", "reviews", "chat", "meta", "text"])
        with client.transaction():
            if root == "files":
                f = client.get("files", type=Map)
                if "a" not in f or rnd.random() < 0.1:
                    f["a"] = Text("abc😀def")
                elif len(f["a"]) > 3 and rnd.random() < 0.4:
                    del f["a"][0:2]
                else:
                    f["a"].insert(0, "x😀y")
                    f["a"].format(0, 1, {"bold": True})
            elif root == "reviews":
                m = client.get("reviews", type=Map)
                key = rnd.choice("pqr")
                if key not in m or rnd.random() < 0.2:
                    m[key] = Map({"messages": Array([{"t": 1}]), "start": b"\x01"})
                else:
                    m[key]["messages"].append(rnd.choice(values))
                    if len(m[key]["messages"]) > 2 and rnd.random() < 0.3:
                        del m[key]["messages"][0]
            elif root == "chat":
                a = client.get("chat", type=Array)
                a.append(rnd.choice(values))
                if len(a) > 3 and rnd.random() < 0.3:
                    del a[1]
            elif root == "meta":
                client.get("meta", type=Map)[rnd.choice("xyz")] = rnd.choice(values)
            else:
                client.get("text", type=Text).insert(0, "hey")
        update = client.get_update(state)
        assert index.touches_only(update, REVIEWER_ROOTS) == (root in REVIEWER_ROOTS), root
        room.apply_update(update)
        index.add(update)
    fresh = StructIndex.of(room)
    for client_id, runs in fresh.runs.items():
        for start, end, root in runs:
            if root:  # collected content has no root left in a fresh index
                assert index.root_at(client_id, start) is not None
                assert index.root_at(client_id, start)[0] == root  # type: ignore[index]
                assert index.root_at(client_id, end - 1)[0] == root  # type: ignore[index]


def test_hostile_update_bytes_are_refused_not_raised() -> None:
    index = StructIndex.of(Doc())
    for update in (b"", b"\x01", b"\x01\x01\x05\x00\xff", b"\x00\x00\x00", bytes(range(256))):
        assert index.touches_only(update, REVIEWER_ROOTS) is False
    # A value nested 3,000 deep is read without recursion.
    doc = Doc()
    doc.get("chat", type=Array).append(deep(3000))
    assert index.touches_only(doc.get_update(), REVIEWER_ROOTS) is True
    doc.get("meta", type=Map)["x"] = deep(3000)
    assert index.touches_only(doc.get_update(), REVIEWER_ROOTS) is False


def test_extension_rows_join_the_table() -> None:
    from pairroom.extensions import Extension
    from pairroom.rooms.owners import OWNERS, OwnerRow

    class Terminals(Extension):
        name = "terminals"

        def document_rows(self) -> list[OwnerRow]:
            return [OwnerRow("terminals", "*", OWNERS, lambda v: isinstance(v, Map), "`Y.Map`")]

    assert Extension().document_rows() == ()
    table = OwnerTable.default(Terminals().document_rows())
    row = table.row("terminals", "t1")
    assert row is not None and row.allows(Role.OWNER) and not row.allows(Role.EDITOR)
    with pytest.raises(ValueError, match="two rows"):
        OwnerTable.default([OwnerRow("meta", "policy", OWNERS, bool, "")])
    with pytest.raises(ValueError, match="deep=False"):  # unwatched changes could not be reverted
        OwnerTable.default([OwnerRow("notes", "*", OWNERS, bool, "", deep=False)])
