"""``pairroom extensions``: the operator's commands. Installing is an operator action, here and
nowhere else: no HTTP route installs anything.

- ``publish WHEEL --catalog FILE``: add or update a built wheel's entry (name, version, SHA-256, the
  capabilities its manifest asks for);
- ``list``: installed, enabled and in the catalog;
- ``search WORD`` and ``info NAME``: what the catalog says;
- ``install NAME``: pip-installs the exact file the catalog pins, ``--require-hashes``: a file whose
  SHA-256 differs is refused;
- ``verify NAME``: the installed version against the catalog's pin and the installed files against
  their wheel's RECORD; the attestation status where the catalog names a publisher.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from pairroom import extension_loader

from . import catalog as catalogs
from . import wheels
from .catalog import Catalog, CatalogError, Entry


@dataclass(frozen=True, slots=True)
class Context:
    """What the node's settings say: the enabled names and the catalog it is configured with."""

    enabled: Sequence[str] = ()
    catalog: str = ""
    catalog_root: str = ""
    catalog_cache: str = ""


def add_arguments(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "extensions", help="the extension catalog: publish, list, search, info, install, verify"
    )
    sub = parser.add_subparsers(dest="action", required=True)

    def with_catalog(p: argparse.ArgumentParser, required: bool = False) -> None:
        p.add_argument(
            "--catalog",
            required=required,
            metavar="FILE_OR_URL",
            help="the catalog (default PAIRROOM_EXTENSION_CATALOG); a URL needs --catalog-root",
        )
        p.add_argument("--catalog-root", metavar="ROOT_JSON", help="pinned TUF root of a catalog URL")

    publish = sub.add_parser("publish", help="add or update a built wheel's entry in a catalog file")
    publish.add_argument("wheel", type=Path)
    publish.add_argument("--catalog", required=True, type=Path, metavar="FILE", help="the catalog file to write")
    publish.add_argument("--summary", help="the entry's summary (default: the manifest's, then the wheel's)")
    publish.add_argument("--homepage", help="the entry's homepage (default: the wheel's)")
    listing = sub.add_parser("list", help="installed, enabled and in the catalog")
    with_catalog(listing)
    search = sub.add_parser("search", help="catalog entries whose name or summary has WORD")
    search.add_argument("word")
    with_catalog(search)
    info = sub.add_parser("info", help="one catalog entry and its install status")
    info.add_argument("name")
    with_catalog(info)
    install = sub.add_parser("install", help="pip-install the exact file the catalog pins (--require-hashes)")
    install.add_argument("name")
    with_catalog(install)
    install.add_argument("--find-links", type=Path, metavar="DIR", help="install from this wheel directory, offline")
    install.add_argument("--target", type=Path, metavar="DIR", help="pip --target: install into DIR")
    verify = sub.add_parser("verify", help="the installed extension against the catalog's pins")
    verify.add_argument("name")
    with_catalog(verify)
    verify.add_argument("--find-links", type=Path, metavar="DIR", help="also check the files in this directory")
    verify.add_argument("--offline", action="store_true", help="no network: the attestation is reported as not checked")
    verify.add_argument(
        "--provenance", type=Path, metavar="FILE", help="the PEP 740 provenance of the file, instead of asking PyPI"
    )
    verify.add_argument(
        "--integrity-url", default=INTEGRITY_URL, metavar="URL", help=f"PyPI's Integrity API (default {INTEGRITY_URL})"
    )


def run(args: argparse.Namespace, context: Context) -> int:
    try:
        if args.action == "publish":
            return publish(args.wheel, args.catalog, args.summary, args.homepage)
        if args.action == "list" and not (args.catalog or context.catalog):
            return list_(Catalog(), context)  # what is installed and enabled, with no catalog to compare
        catalog = open_catalog(args, context)
        if args.action == "list":
            return list_(catalog, context)
        if args.action == "search":
            return search(catalog, args.word)
        entry = catalog.entries.get(args.name)
        if entry is None:
            known = ", ".join(sorted(catalog.entries)) or "none"
            raise CatalogError(f"{args.name!r} is not in the catalog {catalog.source} (it lists: {known})")
        if args.action == "info":
            return info(catalog, entry)
        if args.action == "install":
            return install(entry, args.find_links, args.target)
        return verify(entry, args.find_links, args.offline, args.provenance, args.integrity_url)
    except (CatalogError, wheels.WheelError, InstallError) as exc:
        print(f"pairroom extensions: {exc}", file=sys.stderr)
        return 1


def open_catalog(args: argparse.Namespace, context: Context) -> Catalog:
    source = args.catalog or context.catalog
    if not source:
        raise CatalogError("no catalog: pass --catalog FILE_OR_URL or set PAIRROOM_EXTENSION_CATALOG")
    loaded = catalogs.load(str(source), args.catalog_root or context.catalog_root, context.catalog_cache)
    for problem in loaded.errors:
        print(f"warning: {problem}", file=sys.stderr)
    return loaded


# -- publish ----------------------------------------------------------------------------------------


def publish(wheel_path: Path, catalog_path: Path, summary: str | None, homepage: str | None) -> int:
    wheel = wheels.read(wheel_path)
    existing = catalogs.load_file(catalog_path) if catalog_path.exists() else Catalog()
    if existing.errors:
        raise CatalogError(f"{catalog_path}: fix it first: " + "; ".join(existing.errors))
    entries = dict(existing.entries)
    for name in wheel.extensions:
        new = wheel.entry(name, summary, homepage)
        old = entries.get(name)
        if old is not None and old.package == new.package and old.version == new.version:
            # another file of the same release (a second wheel, the sdist): keep the others
            files = tuple(f for f in old.files if f.filename != wheel.path.name) + new.files
            new = replace(new, files=files, publisher=old.publisher, homepage=new.homepage or old.homepage)
        elif old is not None:
            new = replace(new, publisher=old.publisher)
        entries[name] = new
        print(f"{name}: {new.package} {new.version} {wheel.path.name} sha256:{wheel.sha256}")
    write_atomically(catalog_path, catalogs.dump(Catalog(entries)))
    return 0


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as file:
        file.write(text)
    os.replace(file.name, path)


# -- reading ----------------------------------------------------------------------------------------


def list_(catalog: Catalog, context: Context) -> int:
    available = extension_loader.installed()
    names = sorted({*available, *catalog.entries, *context.enabled})
    print(f"{'NAME':<20} {'INSTALLED':<12} {'ENABLED':<8} {'CATALOG':<12} CAPABILITIES")
    for name in names:
        item = available.get(name)
        entry = catalog.entries.get(name)
        print(
            f"{name:<20} {(item.version or '?') if item else '-':<12} "
            f"{'yes' if name in context.enabled else 'no':<8} {entry.version if entry else '-':<12} "
            f"{','.join(sorted(entry.capabilities)) if entry else ''}"
        )
    print(
        f"catalog: {catalog.source} ({catalog.verified_by})"
        if catalog.source
        else "catalog: none (--catalog or PAIRROOM_EXTENSION_CATALOG)"
    )
    return 0


def search(catalog: Catalog, word: str) -> int:
    word = word.lower()
    found = [
        e
        for e in sorted(catalog.entries.values(), key=lambda e: e.name)
        if word in e.name.lower() or word in e.summary.lower() or word in e.package.lower()
    ]
    for entry in found:
        print(f"{entry.name:<20} {entry.version:<10} {entry.summary}")
    return 0 if found else 1


def info(catalog: Catalog, entry: Entry) -> int:
    shown = entry.to_json()
    item = extension_loader.installed().get(entry.name)
    shown["installed"] = item.version if item else None
    shown["catalog"] = f"{catalog.source} ({catalog.verified_by})"
    print(json.dumps(shown, indent=2))
    return 0


# -- install and verify -----------------------------------------------------------------------------


class InstallError(Exception):
    pass


def pinned_requirement(entry: Entry) -> str:
    hashes = " ".join(f"--hash=sha256:{f.sha256}" for f in entry.files)
    return f"{entry.package}=={entry.version} {hashes}\n"


def check_local_files(entry: Entry, directory: Path) -> list[str]:
    """The catalog's files found in ``directory``, each hashed; a mismatch refuses with both hashes."""
    found = []
    for file in entry.files:
        path = directory / file.filename
        if not path.exists():
            continue
        actual = wheels.sha256_of(path)
        if actual != file.sha256:
            raise InstallError(
                f"{path}: SHA-256 mismatch, refused: the catalog pins {file.sha256}, the file is {actual}"
            )
        found.append(file.filename)
    return found


def install(entry: Entry, find_links: Path | None, target: Path | None) -> int:
    """pip, ``--require-hashes`` with the catalog's pins and ``--no-deps``: the only file pip may
    install is one whose SHA-256 the catalog lists (its dependencies are the operator's to provide,
    as pip cannot hash-pin what the catalog does not list)."""
    if find_links is not None and not check_local_files(entry, find_links):
        raise InstallError(
            f"{find_links}: none of the catalog's files for {entry.name} ({', '.join(f.filename for f in entry.files)})"
        )
    with tempfile.TemporaryDirectory(prefix="pairroom-install-") as scratch:
        requirements = Path(scratch) / "requirements.txt"
        requirements.write_text(pinned_requirement(entry))
        command = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--require-hashes",
            "--no-deps",
            "--disable-pip-version-check",
            "--no-input",
            "-r",
            str(requirements),
        ]
        if find_links is not None:
            command += ["--no-index", "--find-links", str(find_links)]
        if target is not None:
            command += ["--target", str(target)]
        print(f"installing {entry.package}=={entry.version} (sha256 pinned by the catalog)")
        result = subprocess.run(command, check=False, capture_output=True, text=True)
    if result.returncode != 0:
        raise InstallError(f"pip refused {entry.package}=={entry.version}:\n{result.stderr.strip()}")
    print(f"installed {entry.name}: enable it with --extension {entry.name}")
    return 0


INTEGRITY_URL = "https://pypi.org/integrity"


def verify(
    entry: Entry,
    find_links: Path | None,
    offline: bool = False,
    provenance: Path | None = None,
    integrity_url: str = INTEGRITY_URL,
) -> int:
    ok = True
    checked: list[str] = []
    if find_links is not None:
        try:
            checked = check_local_files(entry, find_links)
            print(f"files: {', '.join(checked) or 'none found'}: " + ("sha256 ok" if checked else "not checked"))
            ok = ok and bool(checked)
        except InstallError as exc:
            print(f"files: {exc}")
            ok = False
    try:
        dist = distribution(entry.package)
    except PackageNotFoundError:
        print(f"installed: no ({entry.package} is not installed)")
        return 1
    if dist.version != entry.version:
        print(f"installed: {dist.version}, but the catalog pins {entry.version}: MISMATCH")
        ok = False
    else:
        print(f"installed: {dist.version}, as pinned")
    changed = changed_files(dist)
    print(
        "record: every installed file matches its RECORD hash"
        if not changed
        else f"record: changed since install: {', '.join(changed)}"
    )
    ok = ok and not changed
    wheel = find_links / checked[0] if find_links is not None and checked else None
    line, attested = attestation(entry, wheel, offline, provenance, integrity_url)
    print(line)
    return 0 if ok and attested else 1


def attestation(
    entry: Entry, wheel: Path | None, offline: bool, provenance: Path | None, integrity_url: str
) -> tuple[str, bool]:
    """The PEP 740 status of ``wheel`` against the publisher the catalog names, with
    ``pypi-attestations``: ``verified`` only after a signature was checked against that identity;
    ``not checked`` (never ``verified``) whenever it could not be; ``FAILED`` (exit 1) when PyPI has
    no attestation for the file or none verifies."""
    if entry.publisher is None:
        return "attestation: none required by the catalog", True
    who = ", ".join(f"{k}={v}" for k, v in sorted(entry.publisher.items()))
    if offline:
        return f"attestation: not checked (offline; the catalog requires publisher {who})", True
    if wheel is None:
        return (
            f"attestation: not checked (no distribution file: --find-links DIR with the catalog's file; publisher {who})",
            True,
        )
    try:
        import pypi_attestations as attestations  # only the operator's verify needs sigstore
    except ImportError:
        return (
            "attestation: not checked (pypi-attestations is not installed: pip install 'pairroom[attestations]')",
            True,
        )
    from pydantic import TypeAdapter

    try:
        publisher = TypeAdapter(attestations.Publisher).validate_python(dict(entry.publisher))
    except ValueError as exc:
        return f"attestation: FAILED (the catalog's publisher is not a PEP 740 publisher: {exc})", False
    if provenance is not None:
        try:
            raw = provenance.read_bytes()
        except OSError as exc:
            return f"attestation: not checked (cannot read {provenance}: {exc.strerror or exc})", True
    else:
        url = f"{integrity_url.rstrip('/')}/{entry.package}/{entry.version}/{wheel.name}/provenance"
        try:
            raw = fetch_provenance(url)
        except FileNotFoundError:
            return f"attestation: FAILED (PyPI has no attestation for {wheel.name}; publisher {who} required)", False
        except OSError as exc:
            return f"attestation: not checked (PyPI could not be reached: {exc}; publisher {who})", True
    try:
        found = attestations.Provenance.model_validate_json(raw)
    except ValueError as exc:
        return f"attestation: FAILED (not PEP 740 provenance: {str(exc).splitlines()[0]})", False
    dist = attestations.Distribution.from_file(wheel)
    errors = []
    for bundle in found.attestation_bundles:
        for item in bundle.attestations:
            try:
                item.verify(publisher, dist)
            except attestations.VerificationError as exc:
                errors.append(str(exc))
                continue
            return f"attestation: verified (PEP 740, publisher {who})", True
    return f"attestation: FAILED (no attestation verifies for publisher {who}: {'; '.join(errors) or 'none'})", False


def fetch_provenance(url: str) -> bytes:
    """PyPI's Integrity API answer; ``FileNotFoundError`` for a 404, ``OSError`` for the rest."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"Accept": "application/vnd.pypi.integrity.v1+json"})
    try:
        with urllib.request.urlopen(request, timeout=15) as answer:
            return bytes(answer.read(4 * 1024 * 1024))
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise FileNotFoundError(url) from exc
        raise OSError(f"HTTP {exc.code} from {url}") from exc
    except urllib.error.URLError as exc:
        raise OSError(f"{url}: {exc.reason}") from exc


def changed_files(dist: object) -> list[str]:
    """Installed files whose bytes differ from the RECORD pip wrote at install time."""
    changed = []
    for file in getattr(dist, "files", None) or []:
        if file.hash is None or file.hash.mode != "sha256":
            continue
        path = Path(str(file.locate()))
        try:
            digest = base64.urlsafe_b64encode(hashlib.sha256(path.read_bytes()).digest()).rstrip(b"=").decode()
        except OSError:
            changed.append(str(file))
            continue
        if digest != file.hash.value:
            changed.append(str(file))
    return changed
