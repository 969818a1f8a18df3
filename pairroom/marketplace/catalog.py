"""The extension catalog: a JSON index of the extensions an operator trusts, checked on load.

Schema (``docs/extensions.md``, "The catalog")::

    {"catalog": 1,
     "extensions": [
       {"name": "webhook",                       # the entry-point name it is enabled by
        "summary": "Signed room events as POSTs",
        "package": "pairroom-webhook",           # the distribution
        "version": "0.1.0",                      # exact: installs pin it
        "files": [{"filename": "pairroom_webhook-0.1.0-py3-none-any.whl",
                   "sha256": "<64 hex digits>"}],
        "capabilities": ["doc.read", "network"],
        "homepage": "https://...",              # optional
        "publisher": {"kind": "GitHub", "repository": "org/repo", "workflow": "release.yml"}
       }]}                                       # optional: the PEP 740 identity attestations must carry

Parsing never raises for one bad entry: the entry is left out and an error naming it (its index and
name) is kept in ``Catalog.errors``, so the server starts with the good entries and shows the bad.
A document that is not a catalog at all raises ``CatalogError``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT = 1
CAPABILITIES = frozenset({"doc.read", "doc.write", "awareness", "routes", "frontend", "kernel", "network"})
NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
SHA256 = re.compile(r"[0-9a-f]{64}")
# the distribution file names pip takes: wheels and source archives, no directories
FILENAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*\.(whl|tar\.gz|zip)")
PUBLISHER_KINDS = frozenset({"GitHub", "GitLab", "Google"})


class CatalogError(Exception):
    """The catalog cannot be read or is not a catalog; the message says where."""


@dataclass(frozen=True, slots=True)
class DistFile:
    filename: str
    sha256: str


@dataclass(frozen=True, slots=True)
class Entry:
    name: str
    summary: str
    package: str
    version: str
    files: tuple[DistFile, ...]
    capabilities: frozenset[str]
    homepage: str | None = None
    publisher: Mapping[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "summary": self.summary,
            "package": self.package,
            "version": self.version,
            "files": [{"filename": f.filename, "sha256": f.sha256} for f in self.files],
            "capabilities": sorted(self.capabilities),
        }
        if self.homepage is not None:
            out["homepage"] = self.homepage
        if self.publisher is not None:
            out["publisher"] = dict(self.publisher)
        return out

    def file(self, filename: str) -> DistFile | None:
        return next((f for f in self.files if f.filename == filename), None)


@dataclass(frozen=True, slots=True)
class Catalog:
    entries: Mapping[str, Entry] = field(default_factory=dict)
    errors: tuple[str, ...] = ()
    source: str = ""
    verified_by: str = ""  # "local file" or "TUF"; empty for no catalog

    def to_json(self) -> dict[str, Any]:
        return {
            "catalog": FORMAT,
            "extensions": [e.to_json() for e in sorted(self.entries.values(), key=lambda e: e.name)],
        }


def parse(raw: bytes | str, source: str = "catalog") -> Catalog:
    """A catalog from its JSON text; raises ``CatalogError`` when it is not one at all."""
    try:
        document = json.loads(raw)
    except ValueError as exc:
        raise CatalogError(f"{source}: not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise CatalogError(f'{source}: must be a JSON object with "catalog" and "extensions"')
    if document.get("catalog") != FORMAT:
        raise CatalogError(f'{source}: "catalog" must be {FORMAT} (got {document.get("catalog")!r})')
    items = document.get("extensions")
    if not isinstance(items, list):
        raise CatalogError(f'{source}: "extensions" must be a list')
    entries: dict[str, Entry] = {}
    errors: list[str] = []
    for index, item in enumerate(items):
        label = f"entry {index}"
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            label += f" ({item['name']!r})"
        try:
            entry = parse_entry(item)
        except ValueError as exc:
            errors.append(f"{source}: {label}: {exc}")
            continue
        if entry.name in entries:
            errors.append(f"{source}: {label}: name {entry.name!r} is listed twice; the first is kept")
            continue
        entries[entry.name] = entry
    return Catalog(entries, tuple(errors), source)


def parse_entry(item: Any) -> Entry:
    """One entry, or ``ValueError`` saying which field is wrong and what it must be."""
    if not isinstance(item, dict):
        raise ValueError("must be an object")
    name = _text(item, "name")
    if not NAME.fullmatch(name):
        raise ValueError(f"name {name!r} must be 1 to 64 of a-z 0-9 . _ -, starting with a letter or digit")
    files = item.get("files")
    if not isinstance(files, list) or not files:
        raise ValueError("files must be a non-empty list of {filename, sha256}")
    parsed_files = []
    for position, file in enumerate(files):
        if not isinstance(file, dict):
            raise ValueError(f"files[{position}] must be an object")
        filename = _text(file, "filename", f"files[{position}].filename")
        if not FILENAME.fullmatch(filename):
            raise ValueError(f"files[{position}].filename {filename!r} is not a wheel or source archive name")
        digest = _text(file, "sha256", f"files[{position}].sha256")
        if not SHA256.fullmatch(digest):
            raise ValueError(f"files[{position}].sha256 must be 64 lower-case hex digits")
        parsed_files.append(DistFile(filename, digest))
    capabilities = item.get("capabilities", [])
    if not isinstance(capabilities, list) or not all(isinstance(c, str) for c in capabilities):
        raise ValueError("capabilities must be a list of strings")
    unknown = sorted(set(capabilities) - CAPABILITIES)
    if unknown:
        raise ValueError(f"unknown capabilities {unknown} (known: {sorted(CAPABILITIES)})")
    homepage = item.get("homepage")
    if homepage is not None and (not isinstance(homepage, str) or not homepage.startswith(("https://", "http://"))):
        raise ValueError("homepage must be an http(s) URL")
    publisher = item.get("publisher")
    if publisher is not None:
        if not isinstance(publisher, dict) or not all(isinstance(v, str) for v in publisher.values()):
            raise ValueError("publisher must be an object of strings")
        if publisher.get("kind") not in PUBLISHER_KINDS:
            raise ValueError(f"publisher.kind must be one of {sorted(PUBLISHER_KINDS)}")
    return Entry(
        name=name,
        summary=_text(item, "summary"),
        package=_text(item, "package"),
        version=_text(item, "version"),
        files=tuple(parsed_files),
        capabilities=frozenset(capabilities),
        homepage=homepage,
        publisher=publisher,
    )


def _text(item: Mapping[str, Any], key: str, label: str = "") -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{label or key} must be a non-empty string")
    return value


def load_file(path: str | Path) -> Catalog:
    """A local catalog: the operator's own file, trusted as it is."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    catalog = parse(raw, str(path))
    return Catalog(catalog.entries, catalog.errors, str(path), "local file")


def dump(catalog: Catalog) -> str:
    return json.dumps(catalog.to_json(), indent=2, sort_keys=False) + "\n"


def is_url(source: str) -> bool:
    return source.startswith(("https://", "http://"))


def load(source: str, root: str = "", cache: str | Path = "") -> Catalog:
    """The catalog the operator named: a URL is verified with TUF against the pinned ``root``; a
    path is read as the operator's own file. Raises ``CatalogError``."""
    if is_url(source):
        if not root:
            raise CatalogError(
                f"{source}: a catalog from a URL needs its pinned TUF root (--extension-catalog-root FILE)"
            )
        from . import trust  # python-tuf is imported only by nodes that fetch a catalog

        return trust.fetch(source, root, cache or default_cache())
    return load_file(source)


def default_cache() -> Path:
    """Where the TUF client keeps the metadata it trusts (rollback protection lives there)."""
    import os

    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pairroom" / "catalog"
