"""A catalog from a URL, fetched and verified with TUF (``python-tuf``'s ``ngclient``).

The repository at ``URL`` is a TUF repository: ``URL/metadata/`` holds ``root``, ``timestamp``,
``snapshot`` and ``targets`` metadata, ``URL/targets/catalog.json`` is the catalog. The operator pins
the root of trust (``--extension-catalog-root root.json``: the first root metadata, whose keys sign
everything else). The client keeps what it last trusted under ``cache`` so that a later fetch can tell
a rolled-back repository from a current one.

What TUF refuses, and this module turns into a ``CatalogError`` naming the reason:

- a rollback (metadata older than what was already seen): ``BadVersionNumberError``;
- a freeze (expired timestamp, snapshot or targets): ``ExpiredMetadataError``;
- metadata re-signed by a key the root does not list: ``UnsignedMetadataError``;
- a catalog whose bytes differ from what the signed targets metadata says: ``LengthOrHashMismatchError``.

Why TUF and not a signature over the file: ``docs/extensions.md``, "Why TUF".
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from tuf.api.exceptions import DownloadError, RepositoryError
from tuf.ngclient import Updater

from .catalog import Catalog, CatalogError, parse

TARGET = "catalog.json"


def cache_dir_for(base: Path, url: str) -> Path:
    """One trusted-metadata directory per repository URL: repositories never share rollback state."""
    return base / hashlib.sha256(url.encode()).hexdigest()[:16]


def fetch(url: str, root: str | Path, cache: str | Path) -> Catalog:
    """Refresh the TUF metadata of ``url`` from the pinned ``root`` and return its verified catalog."""
    base = url.rstrip("/")
    try:
        pinned = Path(root).read_bytes()
    except OSError as exc:
        raise CatalogError(f"{url}: cannot read the pinned root {root}: {exc.strerror or exc}") from exc
    where = cache_dir_for(Path(cache), base)
    metadata_dir = where / "metadata"
    target_dir = where / "targets"
    metadata_dir.mkdir(parents=True, exist_ok=True)
    target_dir.mkdir(parents=True, exist_ok=True)
    try:
        updater = Updater(
            metadata_dir=str(metadata_dir),
            metadata_base_url=f"{base}/metadata/",
            target_dir=str(target_dir),
            target_base_url=f"{base}/targets/",
            bootstrap=pinned,
        )
        updater.refresh()
        info = updater.get_targetinfo(TARGET)
        if info is None:
            raise CatalogError(f"{url}: the signed targets metadata lists no {TARGET}")
        path = updater.download_target(info, filepath=str(target_dir / TARGET))
    except (RepositoryError, DownloadError) as exc:
        raise CatalogError(f"{url}: refused by TUF: {type(exc).__name__}: {exc}") from exc
    except ValueError as exc:  # a pinned root that is not root metadata
        raise CatalogError(f"{url}: the pinned root {root} is not TUF root metadata: {exc}") from exc
    catalog = parse(Path(path).read_bytes(), url)
    return Catalog(catalog.entries, catalog.errors, url, "TUF")
