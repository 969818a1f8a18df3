"""Capabilities enforced at the surface an extension gets: the pip-installed ``pairroom-readonly-probe``
(``tests/support/pairroom-readonly-probe``, installed by ``make install-dev``) asks for ``doc.read`` only and
tries to write; the runner hands it a room handle, the write is refused, logged and shown in
``GET /api/extensions``, and the document is unchanged. Also: no ``on_awareness`` without
``awareness``, no routes without ``routes``, no update bytes without ``doc.read``, and the
``?room=`` view of ``GET /api/extensions``."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import pytest
from pycrdt import Doc, Map, Text
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from pairroom import extension_loader
from pairroom.app import BUILTIN_CAPABILITIES, builtin_extensions, create_app
from pairroom.config import Settings
from pairroom.extensions import CapabilityError, Change, Extension, ReadOnlyMap, RoomHandle
from pairroom.rooms.extension import ExtensionRunner, hooks_of
from pairroom.web.auth import mint

from .yclient import YClient, eventually

SECRET = "capabilities-secret-of-32-bytes-or-more"


def token(room: str, role: str) -> str:
    return mint(SECRET, room, role, role.capitalize(), ttl_seconds=600, user_id=f"{role}-1")


def probe() -> Any:
    [loaded] = extension_loader.load(["readonly-probe"], lambda name: {})  # by its entry point, as `serve` does
    return loaded


async def test_an_installed_extension_without_doc_write_cannot_change_the_document(start_server, caplog):
    ext = probe()
    assert ext.capabilities == frozenset({"doc.read"}), "the loader hands the manifest's capabilities on"
    server = await start_server(secret=SECRET, extensions=[ext])
    caplog.set_level(logging.ERROR, logger="pairroom.extensions")
    client = await YClient.connect(f"{server.ws('lab')}?token={token('lab', 'editor')}")
    try:
        await asyncio.wait_for(client.synced.wait(), 5)
        await eventually(lambda: any(s.startswith("join") for s in ext.seen), what="the probe's on_join ran")
        await asyncio.sleep(0.2)  # anything planted would have reached the member by now
        room = server.hub.registry.rooms["lab"]
        assert "planted.py" not in room.doc.get("files", type=Map), "the document is unchanged"
        assert "planted.py" not in client.doc.get("files", type=Map)
        assert ext.seen[0] == "join RoomHandle MemberView", "a handle, not the room or the connection"
        assert ext.seen[1] == "read []", "doc.read: it reads the document"
        assert ext.seen[2].startswith("refused extension 'readonly-probe' did not ask for 'doc.write'")
        assert "wrote" not in ext.seen, "local_change raised out of the hook"
        assert "awareness" not in ext.seen, "no on_awareness without the awareness capability"
        refusals = [r for r in caplog.records if r.getMessage() == "extension capability refused"]
        assert len(refusals) == 2 and refusals[0].capability == "doc.write"  # type: ignore[attr-defined]

        client.insert(0, "hello")
        await eventually(lambda: any(s.startswith("change") for s in ext.seen), what="on_change with doc.read")
        assert "change 0" not in ext.seen, "doc.read: the update's bytes are given"

        async with httpx.AsyncClient() as http:
            shown = (await http.get(f"{server.http}/api/extensions")).json()
        listed = {e["name"]: e for e in shown["extensions"]}
        assert (
            listed["readonly-probe"]["capabilities"] == ["doc.read"] and listed["readonly-probe"]["restricted"] is True
        )
        assert listed["readonly-probe"]["hooks"] == ["on_change", "on_join"], "on_awareness is not called"
        error = listed["readonly-probe"]["last_error"]
        assert error["hook"] == "on_join" and "CapabilityError" in error["error"] and "doc.write" in error["error"]
        assert listed["readonly-probe"]["errors"]["capability:doc.write"] == 2
        assert "with its rights" in shown["trust"], "in-process Python is trusted: the API says so"
        assert listed["recording"]["capabilities"] == sorted(BUILTIN_CAPABILITIES["recording"])
        assert listed["recording"]["restricted"] is False
    finally:
        await client.close()


class Blind(Extension):
    """Asks for nothing: its hooks get the room without its contents."""

    name = "blind"
    capabilities = frozenset[str]()

    def __init__(self) -> None:
        self.updates: list[int] = []
        self.errors: list[str] = []

    def on_change(self, change: Change) -> None:
        self.updates.append(len(change.update))
        try:
            change.room.doc  # noqa: B018 - the read is the test
        except CapabilityError as exc:
            self.errors.append(str(exc))

    def routes(self) -> list[Route]:
        return [Route("/hi", lambda request: PlainTextResponse("hi"))]


async def test_without_doc_read_hooks_get_no_contents_and_without_routes_none_are_mounted(start_server):
    blind = Blind()
    server = await start_server(extensions=[blind])
    client = await YClient.connect(server.ws("dark"))
    try:
        await asyncio.wait_for(client.synced.wait(), 5)
        client.insert(0, "secret text")
        await eventually(lambda: blind.updates, what="on_change ran")
        assert set(blind.updates) == {0}, "no update bytes without doc.read"
        assert blind.errors and "did not ask for 'doc.read'" in blind.errors[0]
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{server.http}/ext/blind/hi")).status_code == 404, "routes not mounted"
    finally:
        await client.close()


def test_the_read_only_view_reads_and_refuses_every_write():
    doc: Doc[Any] = Doc()
    files = doc.get("files", type=Map)
    files["a.py"] = Text("x = 1\n")
    files["nested"] = Map({"k": 1})
    refused: list[str] = []

    def refuse(capability: str, what: str) -> Exception:
        refused.append(f"{capability} {what}")
        return CapabilityError(what)

    view = ReadOnlyMap(files, refuse)
    assert str(view["a.py"]) == "x = 1\n" and view.get("nested").get("k") == 1 and sorted(view) == ["a.py", "nested"]
    for attempt in (
        lambda: view.__setitem__("b.py", "y"),
        lambda: view.pop("a.py"),
        lambda: view["a.py"].insert(0, "z"),
        lambda: view.get("nested").clear(),
        lambda: view.doc,
    ):
        with pytest.raises(CapabilityError):
            attempt()
    assert len(refused) == 5 and all(r.startswith("doc.write") for r in refused)
    assert files.to_py() == {"a.py": "x = 1\n", "nested": {"k": 1}}, "nothing changed"


def test_a_runner_with_no_restricted_extension_keeps_its_fast_path():
    """Built-ins declare what they use; none is restricted, so no hook takes the handle path, and every
    built-in hook is still called (a declaration that forgot ``awareness`` or ``routes`` would drop one)."""
    extensions = builtin_extensions(Settings())
    runner = ExtensionRunner(extensions)
    assert not runner._handled and not runner._rooms
    for extension in extensions:
        assert extension.capabilities == BUILTIN_CAPABILITIES[extension.name]
        assert all(extension in runner.implementing(h) for h in hooks_of(extension)), extension.name
    assert RoomHandle.__slots__  # the handle holds no dict: cheap per room


async def test_the_listing_for_a_room_shows_what_is_on_there(start_server):
    ext = probe()
    server = await start_server(secret=SECRET, extensions=[ext])
    async with httpx.AsyncClient() as http:
        shown = await http.get(
            f"{server.http}/api/extensions?room=lab", headers={"Authorization": f"Bearer {token('lab', 'viewer')}"}
        )
        assert shown.status_code == 200, shown.text
        body = shown.json()
        assert body["room"] == "lab" and body["can_switch"] is False
        listed = {e["name"]: e for e in body["extensions"]}
        assert listed["readonly-probe"]["on"] is True and listed["readonly-probe"]["per_room"] is False
        assert listed["readonly-probe"]["catalog"] == "not in catalog" and listed["readonly-probe"]["verified"] is False
        assert listed["recording"]["verified"] is True and listed["recording"]["catalog"] == "builtin"
        assert "on" not in listed.get("webhook", {"on": None}) or not listed["webhook"].get("enabled")
        unauthenticated = await http.get(f"{server.http}/api/extensions?room=lab")
        assert unauthenticated.status_code == 401
        bad = await http.get(f"{server.http}/api/extensions?room=", headers={"Authorization": "Bearer x"})
        assert bad.status_code == 400 and "room" in bad.json()["error"]


def test_create_app_accepts_a_restricted_extension():
    app = create_app(Settings(), extensions=[Blind()])
    paths = {getattr(route, "path", "") for route in app.routes}
    assert "/ext/blind" not in paths


def test_the_shipped_catalog_lists_the_shipped_packages_as_they_are():
    """``extensions/catalog.json`` (written by ``make extensions``) names each package in
    ``extensions/`` at its version, with its manifest's capabilities and its wheel's file name. That
    the hashes match a rebuild is ``make extensions-check`` (the wheels are reproducible; building
    three takes longer than this suite's budget)."""
    import json
    import tomllib
    from pathlib import Path

    from pairroom.marketplace import catalog as catalogs

    repo = Path(__file__).resolve().parent.parent
    shipped = catalogs.load_file(repo / "extensions" / "catalog.json")
    assert not shipped.errors and sorted(shipped.entries) == ["classroom", "ruff", "webhook"]
    for project in sorted((repo / "extensions").glob("pairroom-*/pyproject.toml")):
        meta = tomllib.loads(project.read_text())["project"]
        [(name, target)] = meta["entry-points"]["pairroom.extensions"].items()
        package = target.split(":")[0]
        manifest = json.loads((project.parent / "src" / package / "pairroom-extension.json").read_text())
        entry = shipped.entries[name]
        assert (entry.package, entry.version) == (meta["name"], meta["version"])
        assert entry.capabilities == frozenset(manifest["capabilities"])
        assert [f.filename for f in entry.files] == [f"{package}-{meta['version']}-py3-none-any.whl"]


class Hangs(Extension):
    """Its on_load never answers."""

    name = "hangs"
    hook_timeout = 0.2

    async def on_load(self, room: Any) -> None:
        await asyncio.sleep(60)


class Quiet(Extension):
    name = "quiet"
    per_room = True

    def on_join(self, room: Any, member: Any) -> None:
        pass


async def test_a_hook_that_hangs_is_cut_and_shown_and_the_listing_says_what_is_on(start_server):
    server = await start_server(secret=SECRET, extensions=[Hangs(), Quiet()])
    owner = {"Authorization": f"Bearer {token('slow', 'owner')}"}
    async with httpx.AsyncClient() as http:
        started = asyncio.get_running_loop().time()
        before = (await http.get(f"{server.http}/api/extensions?room=slow", headers=owner)).json()
        assert asyncio.get_running_loop().time() - started < 5, "the room loaded without waiting for the hook"
        listed = {e["name"]: e for e in before["extensions"]}
        assert listed["quiet"]["on"] is False and listed["hangs"]["on"] is True, "per room: off until switched"
        assert listed["hangs"]["last_error"]["hook"] == "on_load"
        assert listed["hangs"]["last_error"]["error"] == "TimeoutError: no answer in 0.2 s"
        assert listed["hangs"]["errors"] == {"on_load": 1}
        switched = await http.put(f"{server.http}/api/rooms/slow/extensions", json={"quiet": True}, headers=owner)
        assert switched.status_code == 200, switched.text
        after = (await http.get(f"{server.http}/api/extensions?room=slow", headers=owner)).json()
        viewer = {"Authorization": f"Bearer {token('slow', 'viewer')}"}
        seen = (await http.get(f"{server.http}/api/extensions?room=slow", headers=viewer)).json()
    assert {e["name"]: e for e in after["extensions"]}["quiet"]["on"] is True and after["can_switch"] is True
    assert {e["name"]: e for e in seen["extensions"]}["quiet"]["on"] is True and seen["can_switch"] is False


def test_the_node_handle_gives_the_rooms_and_kernels_only_to_who_asked():
    from types import SimpleNamespace

    from pairroom.rooms.handles import NodeHandle

    node = SimpleNamespace(node_id="n1", metrics="m", supervisor="s", registry="rooms", state="kernels", store="db")
    refused: list[str] = []

    def refuse(capability: str, what: str) -> Exception:
        refused.append(capability)
        return CapabilityError(what)

    reader = NodeHandle(node, frozenset({"doc.read"}), refuse)
    assert (reader.node_id, reader.metrics, reader.supervisor) == ("n1", "m", "s")
    for name in ("registry", "store", "state"):
        with pytest.raises(CapabilityError):
            getattr(reader, name)
    assert refused == ["doc.write", "doc.write", "kernel"]
    writer = NodeHandle(node, frozenset({"doc.read", "doc.write"}), refuse)
    assert writer.registry == "rooms"
    with pytest.raises(CapabilityError):
        writer.state  # noqa: B018 - the kernels need "kernel"
    assert NodeHandle(node, frozenset({"kernel"}), refuse).state == "kernels"
    runner = ExtensionRunner([])
    full = Extension()
    full.capabilities = frozenset({"doc.read", "doc.write", "kernel"})
    assert runner.node_for(full, node) is node, "asked for everything: the node itself"
