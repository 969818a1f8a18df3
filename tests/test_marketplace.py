"""The extension marketplace: the catalog and its checks, TUF verification of a catalog URL against
a real TUF repository served over real HTTP (and each attack it must refuse), the operator CLI with
the real webhook wheel, and per-room switches through the server."""

from __future__ import annotations

import asyncio
import copy
import functools
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from pycrdt import Map
from securesystemslib.signer import CryptoSigner, Signer
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, TargetFile, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer

from pairroom.extensions import Change, Extension
from pairroom.marketplace import catalog as catalogs
from pairroom.marketplace import wheels
from pairroom.marketplace.catalog import CatalogError
from pairroom.web.auth import mint

from .support.redis_server import redis_servers  # noqa: F401
from .yclient import YClient, eventually

ROLES = ("root", "timestamp", "snapshot", "targets")


def good_entry(**changes: object) -> dict[str, object]:
    entry: dict[str, object] = {
        "name": "webhook",
        "summary": "Signed room events as POSTs",
        "package": "pairroom-webhook",
        "version": "0.1.0",
        "files": [{"filename": "pairroom_webhook-0.1.0-py3-none-any.whl", "sha256": "a" * 64}],
        "capabilities": ["doc.read", "network"],
        "homepage": "https://example.org/pairroom-webhook",
    }
    entry.update(changes)
    return entry


def catalog_bytes(*entries: dict[str, object]) -> bytes:
    return json.dumps({"catalog": 1, "extensions": list(entries)}).encode()


# -- the schema -------------------------------------------------------------------------------------


def test_a_good_catalog_parses_every_field():
    publisher = {"kind": "GitHub", "repository": "org/pairroom-webhook", "workflow": "release.yml"}
    parsed = catalogs.parse(catalog_bytes(good_entry(publisher=publisher)))
    assert parsed.errors == ()
    entry = parsed.entries["webhook"]
    assert entry.package == "pairroom-webhook" and entry.version == "0.1.0"
    assert entry.capabilities == {"doc.read", "network"}
    assert entry.files[0].sha256 == "a" * 64
    assert entry.publisher == publisher
    assert catalogs.parse(catalogs.dump(parsed)).entries == parsed.entries  # round trip


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"files": []}, "files must be a non-empty list"),
        ({"files": [{"filename": "x-1.whl", "sha256": "XYZ"}]}, "files[0].sha256 must be 64 lower-case hex"),
        ({"files": [{"filename": "../evil.whl", "sha256": "a" * 64}]}, "is not a wheel or source archive"),
        ({"capabilities": ["doc.read", "root.shell"]}, "unknown capabilities ['root.shell']"),
        ({"version": ""}, "version must be a non-empty string"),
        ({"homepage": "javascript:alert(1)"}, "homepage must be an http(s) URL"),
        ({"publisher": {"kind": "Myspace"}}, "publisher.kind must be one of"),
        ({"name": "Bad Name"}, "name 'Bad Name' must be"),
    ],
)
def test_a_malformed_entry_is_left_out_with_an_error_naming_it(changes, says):
    other = good_entry(name="other")
    parsed = catalogs.parse(catalog_bytes(other, good_entry(**changes)), "cat.json")
    assert list(parsed.entries) == ["other"]  # the good entry is kept
    [message] = parsed.errors
    assert message.startswith("cat.json: entry 1")
    assert says in message


def test_a_name_listed_twice_keeps_the_first():
    parsed = catalogs.parse(catalog_bytes(good_entry(), good_entry(version="9.9")))
    assert parsed.entries["webhook"].version == "0.1.0"
    assert "listed twice" in parsed.errors[0]


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"{not json", "not JSON"),
        (b"[]", "must be a JSON object"),
        (b'{"catalog": 2, "extensions": []}', '"catalog" must be 1'),
        (b'{"catalog": 1, "extensions": {}}', '"extensions" must be a list'),
    ],
)
def test_a_document_that_is_not_a_catalog_is_refused(raw, says):
    with pytest.raises(CatalogError, match=says):
        catalogs.parse(raw, "cat.json")


def test_a_local_file_is_trusted_as_the_operators_own(tmp_path):
    path = tmp_path / "catalog.json"
    path.write_bytes(catalog_bytes(good_entry()))
    loaded = catalogs.load(str(path))
    assert loaded.verified_by == "local file" and "webhook" in loaded.entries
    with pytest.raises(CatalogError, match="cannot read"):
        catalogs.load(str(tmp_path / "missing.json"))


def test_a_url_without_a_pinned_root_is_refused():
    with pytest.raises(CatalogError, match="needs its pinned TUF root"):
        catalogs.load("http://127.0.0.1:9/repo")


# -- a real TUF repository over real HTTP -----------------------------------------------------------


class TufRepository:
    """A TUF repository on disk, signed with fresh ed25519 keys, the way a catalog publisher keeps one
    (python-tuf's metadata API; no consistent snapshots, so the files keep their plain names)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        (directory / "metadata").mkdir(parents=True)
        (directory / "targets").mkdir()
        self.signers: dict[str, Signer] = {role: CryptoSigner.generate_ed25519() for role in ROLES}
        self.root = Metadata(Root(expires=self.later()))
        for role, signer in self.signers.items():
            self.root.signed.add_key(signer.public_key, role)
        self.root.signed.consistent_snapshot = False
        self.targets = Metadata(Targets(expires=self.later()))
        self.snapshot = Metadata(Snapshot(expires=self.later()))
        self.timestamp = Metadata(Timestamp(expires=self.later()))
        self.published = False
        self.write("root", self.root)
        shutil.copy(self.dir / "metadata" / "root.json", self.dir / "metadata" / "1.root.json")

    @staticmethod
    def later(days: int = 7) -> datetime:
        return datetime.now(UTC).replace(microsecond=0) + timedelta(days=days)

    @property
    def root_file(self) -> Path:
        return self.dir / "metadata" / "1.root.json"

    def write(self, role: str, metadata: Metadata, signer: Signer | None = None) -> None:
        metadata.sign(signer or self.signers[role], append=False)
        metadata.to_file(str(self.dir / "metadata" / f"{role}.json"), JSONSerializer(compact=False))

    def publish(self, data: bytes, timestamp_expires: datetime | None = None) -> None:
        """A new catalog: the target, then targets, snapshot and timestamp, each one version up."""
        (self.dir / "targets" / "catalog.json").write_bytes(data)
        self.targets.signed.targets["catalog.json"] = TargetFile.from_data("catalog.json", data)
        if self.published:
            for metadata in (self.targets, self.snapshot, self.timestamp):
                metadata.signed.version += 1
        self.published = True
        self.snapshot.signed.meta["targets.json"] = MetaFile(version=self.targets.signed.version)
        self.timestamp.signed.snapshot_meta = MetaFile(version=self.snapshot.signed.version)
        self.timestamp.signed.expires = timestamp_expires or self.later()
        self.write("targets", self.targets)
        self.write("snapshot", self.snapshot)
        self.write("timestamp", self.timestamp)

    def files(self) -> dict[str, bytes]:
        return {str(p.relative_to(self.dir)): p.read_bytes() for p in self.dir.rglob("*") if p.is_file()}

    def restore(self, files: dict[str, bytes]) -> None:
        for name, data in files.items():
            (self.dir / name).write_bytes(data)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def tuf_repo(tmp_path: Path) -> Iterator[tuple[TufRepository, str]]:
    """A TUF repository served by a real HTTP server on a free port."""
    repo = TufRepository(tmp_path / "repo")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(repo.dir)))
    thread = threading.Thread(target=httpd.serve_forever, name="tuf-http")
    thread.start()
    try:
        yield repo, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def fetch(repo: TufRepository, url: str, cache: Path) -> catalogs.Catalog:
    return catalogs.load(url, str(repo.root_file), cache)


def test_a_catalog_url_is_verified_with_tuf(tuf_repo, tmp_path):
    repo, url = tuf_repo
    repo.publish(catalog_bytes(good_entry()))
    loaded = fetch(repo, url, tmp_path / "cache")
    assert loaded.verified_by == "TUF" and loaded.entries["webhook"].version == "0.1.0"
    repo.publish(catalog_bytes(good_entry(version="0.2.0")))
    assert fetch(repo, url, tmp_path / "cache").entries["webhook"].version == "0.2.0"


def test_a_rolled_back_repository_is_refused(tuf_repo, tmp_path):
    repo, url = tuf_repo
    repo.publish(catalog_bytes(good_entry()))
    old = repo.files()  # validly signed, and older than what the client will have seen
    repo.publish(catalog_bytes(good_entry(version="0.2.0")))
    assert fetch(repo, url, tmp_path / "cache").entries["webhook"].version == "0.2.0"
    repo.restore(old)
    with pytest.raises(CatalogError, match="refused by TUF: BadVersionNumberError"):
        fetch(repo, url, tmp_path / "cache")


def test_a_frozen_repository_is_refused(tuf_repo, tmp_path):
    repo, url = tuf_repo
    # what a mirror that stopped updating serves once the timestamp's short life is over
    repo.publish(catalog_bytes(good_entry()), timestamp_expires=datetime.now(UTC) - timedelta(hours=1))
    with pytest.raises(CatalogError, match="refused by TUF: ExpiredMetadataError"):
        fetch(repo, url, tmp_path / "cache")


def test_metadata_re_signed_by_another_key_is_refused(tuf_repo, tmp_path):
    repo, url = tuf_repo
    repo.publish(catalog_bytes(good_entry()))
    assert fetch(repo, url, tmp_path / "cache").entries
    # an attacker with the files but not the keys: a new catalog, signed with keys of their own
    evil = catalog_bytes(
        good_entry(files=[{"filename": "pairroom_webhook-0.1.0-py3-none-any.whl", "sha256": "b" * 64}])
    )
    repo.signers = {role: CryptoSigner.generate_ed25519() for role in ROLES}
    repo.publish(evil)
    with pytest.raises(CatalogError, match="refused by TUF: UnsignedMetadataError"):
        fetch(repo, url, tmp_path / "cache")


def test_a_tampered_catalog_is_refused(tuf_repo, tmp_path):
    repo, url = tuf_repo
    repo.publish(catalog_bytes(good_entry()))
    target = repo.dir / "targets" / "catalog.json"
    # the same length, another pin: only the signed hash can tell
    target.write_bytes(target.read_bytes().replace(b'"a' + b"a" * 63, b'"c' + b"c" * 63))
    with pytest.raises(CatalogError, match="refused by TUF: LengthOrHashMismatchError"):
        fetch(repo, url, tmp_path / "cache")
    target.write_bytes(target.read_bytes() + b" ")  # longer than signed
    with pytest.raises(CatalogError, match="refused by TUF: DownloadLengthMismatchError"):
        fetch(repo, url, tmp_path / "cache")


def test_tampered_metadata_is_refused(tuf_repo, tmp_path):
    repo, url = tuf_repo
    repo.publish(catalog_bytes(good_entry()))
    path = repo.dir / "metadata" / "targets.json"
    signed = json.loads(path.read_bytes())
    forged = copy.deepcopy(signed)
    forged["signed"]["targets"]["catalog.json"]["hashes"]["sha256"] = hashlib.sha256(b"other").hexdigest()
    path.write_text(json.dumps(forged))
    with pytest.raises(CatalogError, match="refused by TUF: UnsignedMetadataError"):
        fetch(repo, url, tmp_path / "cache")


def test_a_pinned_root_of_another_repository_is_refused(tuf_repo, tmp_path):
    repo, url = tuf_repo
    repo.publish(catalog_bytes(good_entry()))
    other = TufRepository(tmp_path / "other")
    with pytest.raises(CatalogError, match="refused by TUF"):
        catalogs.load(url, str(other.root_file), tmp_path / "cache")


# -- the operator's commands, with the real webhook wheel -------------------------------------------

REPO = Path(__file__).resolve().parent.parent
PAIRROOM = str(Path(sys.executable).parent / "pairroom")
WEBHOOK_WHEEL = "pairroom_webhook-0.1.0-py3-none-any.whl"


def build_wheel(project: Path, out: Path) -> Path:
    """``pip wheel`` of a copy of ``project`` (the build leaves nothing in the source tree)."""
    source = out.parent / f"src-{project.name}"
    shutil.copytree(project, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", str(source), "-w", str(out)],
        check=True,
        capture_output=True,
    )
    [wheel] = out.glob("*.whl")
    return wheel


@pytest.fixture(scope="module")
def webhook_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(REPO / "extensions" / "pairroom-webhook", tmp_path_factory.mktemp("webhook") / "dist")


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PAIRROOM_")}
    return subprocess.run(
        [PAIRROOM, "extensions", *args], env={**full_env, **(env or {})}, capture_output=True, text=True, timeout=120
    )


def published(webhook_wheel: Path, tmp_path: Path) -> tuple[Path, Path]:
    """The wheel in a directory of its own and a catalog that pins it."""
    wheel_dir = tmp_path / "wheels"
    wheel_dir.mkdir()
    shutil.copy(webhook_wheel, wheel_dir)
    catalog = tmp_path / "catalog.json"
    done = cli(
        "publish", str(wheel_dir / WEBHOOK_WHEEL), "--catalog", str(catalog), "--homepage", "https://example.org/wh"
    )
    assert done.returncode == 0, done.stderr
    return wheel_dir, catalog


def test_publish_pins_the_wheel_and_the_capabilities_of_its_manifest(webhook_wheel, tmp_path):
    wheel_dir, catalog = published(webhook_wheel, tmp_path)
    entry = catalogs.load_file(catalog).entries["webhook"]
    assert (entry.package, entry.version) == ("pairroom-webhook", "0.1.0")
    assert entry.files[0].filename == WEBHOOK_WHEEL
    assert entry.files[0].sha256 == hashlib.sha256((wheel_dir / WEBHOOK_WHEEL).read_bytes()).hexdigest()
    assert entry.capabilities == {"doc.read", "network"}  # from pairroom-extension.json in the wheel
    assert entry.summary.startswith("POSTs signed room events")
    assert entry.homepage == "https://example.org/wh"
    # publishing the same file again changes nothing; the entry keeps one file
    before = catalog.read_bytes()
    assert (
        cli(
            "publish", str(wheel_dir / WEBHOOK_WHEEL), "--catalog", str(catalog), "--homepage", "https://example.org/wh"
        ).returncode
        == 0
    )
    assert catalog.read_bytes() == before


def test_publish_refuses_a_wheel_that_is_no_extension(tmp_path):
    wheel = tmp_path / "plain-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("plain-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: plain\nVersion: 1.0\n")
    done = cli("publish", str(wheel), "--catalog", str(tmp_path / "c.json"))
    assert done.returncode == 1
    assert "declares no 'pairroom.extensions' entry point" in done.stderr
    assert not (tmp_path / "c.json").exists()
    with pytest.raises(wheels.WheelError, match="not a wheel"):
        wheels.read(tmp_path / "c.json")


def test_list_search_and_info_read_the_catalog(webhook_wheel, tmp_path):
    _, catalog = published(webhook_wheel, tmp_path)
    listing = cli("list", "--catalog", str(catalog), env={"PAIRROOM_EXTENSIONS": "webhook"})
    assert listing.returncode == 0, listing.stderr
    [row] = [line.split() for line in listing.stdout.splitlines() if line.startswith("webhook")]
    assert row == ["webhook", "0.1.0", "yes", "0.1.0", "doc.read,network"]
    assert f"catalog: {catalog} (local file)" in listing.stdout
    assert "webhook" in cli("search", "signed", "--catalog", str(catalog)).stdout
    assert cli("search", "no-such-word", "--catalog", str(catalog)).returncode == 1
    shown = json.loads(cli("info", "webhook", env={"PAIRROOM_EXTENSION_CATALOG": str(catalog)}).stdout)
    assert shown["files"][0]["filename"] == WEBHOOK_WHEEL and shown["installed"] == "0.1.0"
    missing = cli("info", "nope", "--catalog", str(catalog))
    assert missing.returncode == 1 and "'nope' is not in the catalog" in missing.stderr and "webhook" in missing.stderr
    bare = cli("list", env={"PAIRROOM_EXTENSIONS": "webhook"})
    assert bare.returncode == 0 and "catalog: none" in bare.stdout
    assert [line.split() for line in bare.stdout.splitlines() if line.startswith("webhook")] == [
        ["webhook", "0.1.0", "yes", "-"]
    ]
    assert "no catalog" in cli("search", "x").stderr


def test_install_pip_installs_the_pinned_file_and_it_loads_by_entry_point(webhook_wheel, tmp_path):
    wheel_dir, catalog = published(webhook_wheel, tmp_path)
    site = tmp_path / "site"
    done = cli("install", "webhook", "--catalog", str(catalog), "--find-links", str(wheel_dir), "--target", str(site))
    assert done.returncode == 0, done.stderr
    assert (site / "pairroom_webhook-0.1.0.dist-info" / "entry_points.txt").exists()
    # a fresh interpreter finds it through its entry point, imports it from where it was installed
    probe = textwrap.dedent(
        """
        import pairroom_webhook, sys
        from pairroom import extension_loader
        [ext] = extension_loader.load(["webhook"], lambda n: {"url": "http://127.0.0.1:9/", "secret": "s"})
        print(type(ext).__name__, pairroom_webhook.__file__)
        """
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe],
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert loaded.returncode == 0, loaded.stderr
    name, module_file = loaded.stdout.split()
    assert name == "Webhook" and Path(module_file).is_relative_to(site)

    verified = cli(
        "verify", "webhook", "--catalog", str(catalog), "--find-links", str(wheel_dir), env={"PYTHONPATH": str(site)}
    )
    assert verified.returncode == 0, verified.stdout
    assert "sha256 ok" in verified.stdout and "as pinned" in verified.stdout
    assert "every installed file matches its RECORD hash" in verified.stdout
    (site / "pairroom_webhook" / "signing.py").write_text("# changed after install\n")
    changed = cli("verify", "webhook", "--catalog", str(catalog), env={"PYTHONPATH": str(site)})
    assert changed.returncode == 1 and "changed since install: pairroom_webhook/signing.py" in changed.stdout


def test_a_tampered_wheel_is_refused_with_both_hashes(webhook_wheel, tmp_path):
    wheel_dir, catalog = published(webhook_wheel, tmp_path)
    wheel = wheel_dir / WEBHOOK_WHEEL
    pinned = hashlib.sha256(wheel.read_bytes()).hexdigest()
    with zipfile.ZipFile(wheel, "a") as archive:  # a swapped file: same name, other bytes
        archive.writestr("pairroom_webhook/backdoor.py", "import os\n")
    actual = hashlib.sha256(wheel.read_bytes()).hexdigest()
    site = tmp_path / "site"
    done = cli("install", "webhook", "--catalog", str(catalog), "--find-links", str(wheel_dir), "--target", str(site))
    assert done.returncode == 1
    assert "SHA-256 mismatch, refused" in done.stderr and pinned in done.stderr and actual in done.stderr
    assert not site.exists()
    # and pip, given the same pins, refuses the swapped file by itself
    from pairroom.marketplace.commands import pinned_requirement

    requirements = tmp_path / "req.txt"
    requirements.write_text(pinned_requirement(catalogs.load_file(catalog).entries["webhook"]))
    pip = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--require-hashes",
            "--no-deps",
            "--no-index",
            "--find-links",
            str(wheel_dir),
            "--target",
            str(site),
            "-r",
            str(requirements),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert pip.returncode != 0 and "DO NOT MATCH THE HASHES" in pip.stderr
    assert pinned in pip.stderr and actual in pip.stderr


def test_install_without_the_pinned_file_is_refused(webhook_wheel, tmp_path):
    _, catalog = published(webhook_wheel, tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    done = cli(
        "install", "webhook", "--catalog", str(catalog), "--find-links", str(empty), "--target", str(tmp_path / "site")
    )
    assert done.returncode == 1 and "none of the catalog's files for webhook" in done.stderr


# -- per-room switches, against real servers --------------------------------------------------------

SECRET = "marketplace-test-secret-of-32-bytes-at-least"


class Tally(Extension):
    """A per-room extension that counts, per room, the hooks it was called with."""

    name = "tally"
    per_room = True

    def __init__(self) -> None:
        self.seen: dict[str, list[str]] = {}

    def _saw(self, room_name: str, hook: str) -> None:
        self.seen.setdefault(room_name, []).append(hook)

    def on_change(self, change: Change) -> None:
        self._saw(change.room.name, "on_change")

    def on_join(self, room, member) -> None:  # type: ignore[no-untyped-def]
        self._saw(room.name, "on_join")

    def count(self, room_name: str, hook: str = "on_change") -> int:
        return self.seen.get(room_name, []).count(hook)


def token(room: str, role: str, name: str = "") -> str:
    return mint(SECRET, room, role, name or role.capitalize(), ttl_seconds=600, user_id=f"{role}-{name or 'x'}")


async def switch(http: httpx.AsyncClient, base: str, room: str, role: str, body: object) -> httpx.Response:
    return await http.put(
        f"{base}/api/rooms/{room}/extensions", json=body, headers={"Authorization": f"Bearer {token(room, role)}"}
    )


async def editor(server, room: str) -> YClient:  # type: ignore[no-untyped-def]
    client = await YClient.connect(f"{server.ws(room)}?token={token(room, 'editor')}")
    await asyncio.wait_for(client.synced.wait(), 5)
    return client


async def test_a_per_room_extension_runs_only_where_an_owner_switched_it_on(start_server):
    tally = Tally()
    server = await start_server(secret=SECRET, extensions=[tally])
    a, b = await editor(server, "room-a"), await editor(server, "room-b")
    try:
        a.insert(0, "off ")
        await eventually(lambda: server.hub.registry.rooms["room-a"].integrated >= 1, what="the edit arrived")
        assert tally.count("room-a") == 0 and tally.count("room-a", "on_join") == 0, "off until switched on"
        async with httpx.AsyncClient() as http:
            answer = await switch(http, server.http, "room-a", "owner", {"tally": True})
            assert answer.status_code == 200, answer.text
            listed = {e["name"]: e for e in answer.json()["extensions"]}
            assert listed["tally"]["on"] is True and listed["tally"]["per_room"] is True
            assert listed["recording"]["on"] is True  # not per room: on everywhere
        a.insert(0, "on ")
        b.insert(0, "elsewhere ")
        await eventually(lambda: tally.count("room-a") >= 1, what="the hook ran in room-a")
        await eventually(lambda: server.hub.registry.rooms["room-b"].integrated >= 1, what="room-b's edit arrived")
        assert tally.count("room-b") == 0, "still off in the other room"
        meta = server.hub.registry.rooms["room-a"].doc.get("meta", type=Map)
        assert dict(meta["extensions"]) == {"tally": True}, "stored in the document's meta.extensions"
        await eventually(lambda: a.doc.get("meta", type=Map).get("extensions") is not None, what="members see it")

        async with httpx.AsyncClient() as http:
            assert (await switch(http, server.http, "room-a", "owner", {"tally": False})).status_code == 200
            seen = tally.count("room-a")
            shown = await http.get(
                f"{server.http}/api/rooms/room-a/extensions",
                headers={"Authorization": f"Bearer {token('room-a', 'viewer')}"},
            )
        assert {e["name"]: e for e in shown.json()["extensions"]}["tally"]["on"] is False
        assert shown.json()["can_switch"] is False
        a.insert(0, "off again ")
        await eventually(lambda: server.hub.registry.rooms["room-a"].integrated >= 4, what="the last edit arrived")
        assert tally.count("room-a") == seen
    finally:
        await a.close()
        await b.close()


async def test_switching_refuses_non_owners_unknown_names_and_bad_bodies(start_server):
    server = await start_server(secret=SECRET, extensions=[Tally()])
    async with httpx.AsyncClient() as http:
        refused = await switch(http, server.http, "r", "editor", {"tally": True})
        assert refused.status_code == 403 and "only an owner" in refused.json()["error"]
        missing = await switch(http, server.http, "r", "owner", {"no-such": True})
        assert missing.status_code == 404 and "'no-such' is not enabled on this server" in missing.json()["error"]
        everywhere = await switch(http, server.http, "r", "owner", {"recording": False})
        assert everywhere.status_code == 409 and "not switched per room" in everywhere.json()["error"]
        assert (await switch(http, server.http, "r", "owner", {"tally": "yes"})).status_code == 400
        assert (await switch(http, server.http, "r", "owner", {})).status_code == 400
        assert (await switch(http, server.http, "r", "owner", ["tally"])).status_code == 400
        anonymous = await http.put(f"{server.http}/api/rooms/r/extensions", json={"tally": True})
        assert anonymous.status_code == 401
        # nothing was switched by any of them
        shown = await http.get(
            f"{server.http}/api/rooms/r/extensions", headers={"Authorization": f"Bearer {token('r', 'owner')}"}
        )
        assert {e["name"]: e for e in shown.json()["extensions"]}["tally"]["on"] is False


async def test_a_client_writing_the_switches_itself_is_reverted(start_server):
    tally = Tally()
    server = await start_server(secret=SECRET, extensions=[tally])
    client = await editor(server, "r")
    try:
        with client.doc.transaction():
            client.doc.get("meta", type=Map)["extensions"] = Map({"tally": True})
        room = server.hub.registry.rooms["r"]
        # the server had no switches: the client's are removed, here and in the client's copy
        await eventually(
            lambda: "extensions" not in client.doc.get("meta", type=Map),
            what="the server's copy came back to the client",
        )
        assert "extensions" not in room.guards.meta
        marketplace = next(e for e in server.hub.extensions.extensions if e.name == "marketplace")
        assert not marketplace.is_on(room, "tally")
        client.insert(0, "x")
        await eventually(lambda: room.integrated >= 3, what="the edit arrived")
        assert tally.count("r") == 0, "the client's own switch did not turn the extension on"

        async with httpx.AsyncClient() as http:
            assert (await switch(http, server.http, "r", "owner", {"tally": True})).status_code == 200
        switches = lambda: client.doc.get("meta", type=Map).get("extensions")
        await eventually(
            lambda: isinstance(switches(), Map) and switches().get("tally") is True, what="on for the client"
        )
        with client.doc.transaction():
            del switches()["tally"]  # switching it off behind the owners' back
        assert switches().get("tally") is None  # gone in the client's copy at once...
        await eventually(lambda: switches().get("tally") is True, what="the server's copy came back")  # ...and back
        assert marketplace.is_on(room, "tally")
        seen = tally.count("r")
        client.insert(0, "y")
        await eventually(lambda: tally.count("r") > seen, what="still on")
    finally:
        await client.close()


async def test_a_switch_on_one_node_applies_on_the_other(start_server, redis_servers):
    (redis,) = await redis_servers(1)
    first, second = Tally(), Tally()
    one = await start_server(secret=SECRET, extensions=[first], redis=redis.url, node_id="one")
    two = await start_server(secret=SECRET, extensions=[second], redis=redis.url, node_id="two")
    on_one, on_two = await editor(one, "shared"), await editor(two, "shared")
    try:
        async with httpx.AsyncClient() as http:
            assert (await switch(http, one.http, "shared", "owner", {"tally": True})).status_code == 200
        marketplace = next(e for e in two.hub.extensions.extensions if e.name == "marketplace")
        room_two = two.hub.registry.rooms["shared"]
        await eventually(lambda: marketplace.is_on(room_two, "tally"), what="node two follows node one's switch")
        on_two.insert(0, "typed on two ")
        await eventually(lambda: second.count("shared") >= 1, what="node two runs the hook")
        async with httpx.AsyncClient() as http:
            assert (await switch(http, two.http, "shared", "owner", {"tally": False})).status_code == 200
        room_one = one.hub.registry.rooms["shared"]
        await eventually(lambda: not marketplace.is_on(room_two, "tally"), what="off on two")
        mp_one = next(e for e in one.hub.extensions.extensions if e.name == "marketplace")
        await eventually(lambda: not mp_one.is_on(room_one, "tally"), what="and off on one")
    finally:
        await on_one.close()
        await on_two.close()


async def test_a_malformed_catalog_is_reported_and_the_server_starts(start_server, tmp_path):
    path = tmp_path / "catalog.json"
    path.write_bytes(catalog_bytes(good_entry(name="tally"), good_entry(files=[])))
    server = await start_server(secret=SECRET, extensions=[Tally()], extension_catalog=str(path))
    async with httpx.AsyncClient() as http:
        shown = (
            await http.get(
                f"{server.http}/api/rooms/r/extensions", headers={"Authorization": f"Bearer {token('r', 'owner')}"}
            )
        ).json()
        assert (await http.get(f"{server.http}/readyz")).status_code == 200
    assert shown["catalog"]["verified_by"] == "local file"
    [problem] = shown["catalog"]["errors"]
    assert "entry 1 ('webhook'): files must be a non-empty list" in problem
    assert [e["name"] for e in shown["catalog"]["entries"]] == ["tally"]
    tally = {e["name"]: e for e in shown["extensions"]}["tally"]
    assert tally["catalog"] == "not in catalog" or tally["catalog"].startswith("catalog pins")

    path.write_text("{broken")
    again = await start_server(
        secret=SECRET, extensions=[Tally()], extension_catalog=str(path), db=f"sqlite:///{tmp_path / 'two.db'}"
    )
    async with httpx.AsyncClient() as http:
        shown = (
            await http.get(
                f"{again.http}/api/rooms/r/extensions", headers={"Authorization": f"Bearer {token('r', 'owner')}"}
            )
        ).json()
    assert "not JSON" in shown["catalog"]["errors"][0] and shown["catalog"]["entries"] == []


class Switches:
    """The runner's view of which per-room extensions are on, as a plain set of (room, name)."""

    def __init__(self) -> None:
        self.on: set[tuple[str, str]] = set()
        self.asked = 0

    def is_on(self, room, extension: str) -> bool:  # type: ignore[no-untyped-def]
        self.asked += 1
        return (room.name, extension) in self.on


class Failing(Tally):
    name = "failing"

    def on_change(self, change: Change) -> None:
        raise RuntimeError("the failing extension fails")


async def test_a_per_room_extension_that_raises_is_isolated_and_its_errors_are_shown(start_server):
    tally = Tally()
    server = await start_server(secret=SECRET, extensions=[Failing(), tally])
    client = await editor(server, "r")
    try:
        async with httpx.AsyncClient() as http:
            assert (await switch(http, server.http, "r", "owner", {"failing": True, "tally": True})).status_code == 200
        client.insert(0, "boom")
        await eventually(lambda: tally.count("r") >= 1, what="the next extension still ran")
        async with httpx.AsyncClient() as http:
            shown = await http.get(
                f"{server.http}/api/rooms/r/extensions", headers={"Authorization": f"Bearer {token('r', 'viewer')}"}
            )
        listed = {e["name"]: e for e in shown.json()["extensions"]}
        assert listed["failing"]["errors"]["on_change"] >= 1
        assert listed["tally"]["errors"] == {}
    finally:
        await client.close()


class Everywhere(Extension):
    name = "everywhere"

    def __init__(self) -> None:
        self.rooms: list[str] = []

    def on_join(self, room, member) -> None:  # type: ignore[no-untyped-def]
        self.rooms.append(room.name)


class FakeRoom:
    def __init__(self, name: str) -> None:
        self.name = name


def test_the_runner_asks_the_switches_only_for_hooks_a_per_room_extension_has():
    from pairroom.rooms.extension import ExtensionRunner

    switches = Switches()
    plain = ExtensionRunner([Everywhere()], switches=switches)
    plain.notify("on_join", FakeRoom("a"), None)
    assert switches.asked == 0, "no per-room extension: no question asked"

    everywhere, tally = Everywhere(), Tally()
    runner = ExtensionRunner([everywhere, tally], switches=switches)
    runner.notify("on_join", FakeRoom("a"), None)
    assert everywhere.rooms == ["a"] and tally.count("a", "on_join") == 0
    switches.on.add(("a", "tally"))
    runner.notify("on_join", FakeRoom("a"), None)
    runner.notify("on_join", FakeRoom("b"), None)
    assert tally.count("a", "on_join") == 1 and tally.count("b", "on_join") == 0
    asked = switches.asked
    runner.notify("on_leave", FakeRoom("a"), None)  # nobody per-room implements it
    assert switches.asked == asked
    runner.switches = None  # no marketplace: per-room extensions are off everywhere
    runner.notify("on_join", FakeRoom("a"), None)
    assert tally.count("a", "on_join") == 1 and everywhere.rooms == ["a", "a", "b", "a"]


async def test_a_switch_is_logged_and_stored_with_the_document(start_server, db_url):
    first = await start_server(secret=SECRET, extensions=[Tally()])
    async with httpx.AsyncClient() as http:
        assert (await switch(http, first.http, "kept", "owner", {"tally": True})).status_code == 200
    await first.stop()
    # on the room's timeline: a server change of its own, with the time it was made
    from pairroom.storage.store import open_store

    store = open_store(db_url)
    await store.open()
    try:
        logged = [u for u in (await store.load("kept")).updates if u.origin == "local:extensions"]
    finally:
        await store.close()
    assert len(logged) == 1 and logged[0].at is not None
    tally = Tally()
    again = await start_server(secret=SECRET, extensions=[tally], db=db_url)
    async with httpx.AsyncClient() as http:
        shown = await http.get(
            f"{again.http}/api/rooms/kept/extensions", headers={"Authorization": f"Bearer {token('kept', 'owner')}"}
        )
    assert {e["name"]: e for e in shown.json()["extensions"]}["tally"]["on"] is True
    client = await editor(again, "kept")
    try:
        client.insert(0, "after a restart")
        await eventually(lambda: tally.count("kept") >= 1, what="the hook runs after a restart")
    finally:
        await client.close()


async def test_a_server_with_a_tuf_catalog_shows_it_verified_and_starts_without_a_refused_one(
    start_server, tuf_repo, tmp_path
):
    repo, url = tuf_repo
    repo.publish(catalog_bytes(good_entry(name="tally")))
    cache = tmp_path / "tuf-cache"
    server = await start_server(
        secret=SECRET,
        extensions=[Tally()],
        extension_catalog=url,
        extension_catalog_root=str(repo.root_file),
        extension_catalog_cache=str(cache),
    )
    headers = {"Authorization": f"Bearer {token('r', 'owner')}"}
    async with httpx.AsyncClient() as http:
        shown = (await http.get(f"{server.http}/api/rooms/r/extensions", headers=headers)).json()
    assert shown["catalog"]["verified_by"] == "TUF" and shown["catalog"]["errors"] == []
    assert [e["name"] for e in shown["catalog"]["entries"]] == ["tally"]
    await server.stop()

    # the repository is re-signed by someone else: the node starts, without the catalog, saying why
    repo.signers = {role: CryptoSigner.generate_ed25519() for role in ROLES}
    repo.publish(catalog_bytes(good_entry(name="tally", version="6.6.6")))
    again = await start_server(
        secret=SECRET,
        extensions=[Tally()],
        extension_catalog=url,
        extension_catalog_root=str(repo.root_file),
        extension_catalog_cache=str(cache),
        db=f"sqlite:///{tmp_path / 'again.db'}",
    )
    async with httpx.AsyncClient() as http:
        shown = (await http.get(f"{again.http}/api/rooms/r/extensions", headers=headers)).json()
        assert (await http.get(f"{again.http}/readyz")).status_code == 200
    assert shown["catalog"]["entries"] == [] and shown["catalog"]["verified_by"] is None
    assert "refused by TUF: UnsignedMetadataError" in shown["catalog"]["errors"][0]


def install_routed(site: Path, capabilities: list[str]) -> None:
    """A distribution whose extension defines routes, with a manifest asking for ``capabilities``."""
    dist = site / "pairroom_routed-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: pairroom-routed\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[pairroom.extensions]\nrouted = pairroom_routed:Routed\n")
    package = site / "pairroom_routed"
    package.mkdir()
    (package / "__init__.py").write_text(
        "from starlette.responses import PlainTextResponse\nfrom starlette.routing import Route\n"
        "from pairroom.extensions import Extension\n\n\nclass Routed(Extension):\n    name = 'routed'\n\n"
        "    def routes(self):\n        return [Route('/hi', lambda request: PlainTextResponse('hi'))]\n"
    )
    (package / "pairroom-extension.json").write_text(json.dumps({"capabilities": capabilities}))


@pytest.mark.parametrize(("capabilities", "refused"), [(["doc.read"], True), (["routes"], False)])
def test_routes_without_the_routes_capability_are_refused_at_start_up(tmp_path, monkeypatch, capabilities, refused):
    from pairroom import extension_loader

    site = tmp_path / "site"
    install_routed(site, capabilities)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, "pairroom_routed", raising=False)
    try:
        if refused:
            with pytest.raises(extension_loader.ExtensionError, match='does not ask for the "routes" capability'):
                extension_loader.load(["routed"], lambda name: {})
        else:
            [routed] = extension_loader.load(["routed"], lambda name: {})
            assert routed.name == "routed"
    finally:
        sys.modules.pop("pairroom_routed", None)


def test_the_commands_read_a_tuf_catalog_and_refuse_a_tampered_one(tuf_repo, tmp_path):
    repo, url = tuf_repo
    repo.publish(catalog_bytes(good_entry()))
    env = {"PAIRROOM_EXTENSION_CATALOG_CACHE": str(tmp_path / "cache")}
    found = cli("search", "signed", "--catalog", url, "--catalog-root", str(repo.root_file), env=env)
    assert found.returncode == 0, found.stderr
    assert found.stdout.split()[:2] == ["webhook", "0.1.0"]
    assert "needs its pinned TUF root" in cli("search", "signed", "--catalog", url, env=env).stderr
    target = repo.dir / "targets" / "catalog.json"
    target.write_bytes(target.read_bytes().replace(b"0.1.0", b"6.6.6"))
    refused = cli("info", "webhook", "--catalog", url, "--catalog-root", str(repo.root_file), env=env)
    assert refused.returncode == 1 and "refused by TUF: LengthOrHashMismatchError" in refused.stderr


def in_process(capsys: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess[str]:
    """``pairroom extensions ARGS`` run in this process (the commands' own code, without the start-up
    of a new interpreter on a busy machine)."""
    import argparse

    from pairroom.marketplace import commands

    parser = argparse.ArgumentParser(prog="pairroom")
    commands.add_arguments(parser.add_subparsers(dest="command"))
    capsys.readouterr()
    code = commands.run(parser.parse_args(["extensions", *args]), commands.Context())
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def test_verify_never_says_verified_without_checking_the_attestation(webhook_wheel, tmp_path, capsys):
    """A catalog naming a publisher: offline, unreachable PyPI or no file to check is "not checked";
    provenance that is not PEP 740 or a 404 from PyPI is FAILED (exit 1); never "verified"."""
    wheel_dir = tmp_path / "wheels"
    wheel_dir.mkdir()
    shutil.copy(webhook_wheel, wheel_dir)
    catalog = tmp_path / "catalog.json"
    assert in_process(capsys, "publish", str(wheel_dir / WEBHOOK_WHEEL), "--catalog", str(catalog)).returncode == 0
    document = json.loads(catalog.read_text())
    document["extensions"][0]["publisher"] = {"kind": "GitHub", "repository": "org/hooks", "workflow": "release.yml"}
    catalog.write_text(json.dumps(document))
    # the webhook as make install-dev installed it (0.1.0, as the catalog pins)
    base = ("verify", "webhook", "--catalog", str(catalog))

    def attestation_line(done: subprocess.CompletedProcess[str]) -> str:
        [line] = [line for line in done.stdout.splitlines() if line.startswith("attestation:")]
        return line

    offline = in_process(capsys, *base, "--find-links", str(wheel_dir), "--offline")
    assert offline.returncode == 0 and "sha256 ok" in offline.stdout
    assert attestation_line(offline).startswith("attestation: not checked (offline; the catalog requires publisher")
    unreachable = in_process(capsys, *base, "--find-links", str(wheel_dir), "--integrity-url", "http://127.0.0.1:9")
    assert attestation_line(unreachable).startswith("attestation: not checked (PyPI could not be reached")

    bogus = tmp_path / "provenance.json"
    bogus.write_text('{"version": 1, "attestation_bundles": "not a list"}')
    failed = in_process(capsys, *base, "--find-links", str(wheel_dir), "--provenance", str(bogus))
    assert failed.returncode == 1 and attestation_line(failed).startswith("attestation: FAILED (not PEP 740 provenance")

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_error(404)

        def log_message(self, *args: object) -> None:
            pass

    pypi = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=pypi.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{pypi.server_address[1]}/integrity"
        missing = in_process(capsys, *base, "--find-links", str(wheel_dir), "--integrity-url", url)
    finally:
        pypi.shutdown()
        pypi.server_close()
    assert missing.returncode == 1
    assert attestation_line(missing).startswith("attestation: FAILED (PyPI has no attestation for pairroom_webhook")
    for done in (offline, unreachable, failed, missing):
        assert "verified" not in attestation_line(done)
