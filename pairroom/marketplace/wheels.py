"""Reading a built wheel without installing or importing it: its name, version, summary, the
extensions its entry points declare and their manifests, and the file's SHA-256."""

from __future__ import annotations

import configparser
import hashlib
import zipfile
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path

from pairroom.extensions import GROUP

from . import manifest as manifests
from .catalog import DistFile, Entry


class WheelError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Wheel:
    path: Path
    package: str
    version: str
    summary: str
    homepage: str | None
    extensions: dict[str, manifests.Manifest]  # entry-point name -> its manifest
    sha256: str

    def entry(self, name: str, summary: str | None = None, homepage: str | None = None) -> Entry:
        found = self.extensions[name]
        return Entry(
            name=name,
            summary=summary or found.summary or self.summary or name,
            package=self.package,
            version=self.version,
            files=(DistFile(self.path.name, self.sha256),),
            capabilities=found.capabilities,
            homepage=homepage or self.homepage,
        )


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read(path: str | Path) -> Wheel:
    path = Path(path)
    if path.suffix != ".whl":
        raise WheelError(f"{path}: not a wheel (.whl); build one with `pip wheel PROJECT_DIR`")
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise WheelError(f"{path}: cannot open as a wheel: {exc}") from exc
    with archive:
        names = archive.namelist()
        info = next((n for n in names if n.count("/") == 1 and n.endswith(".dist-info/METADATA")), None)
        if info is None:
            raise WheelError(f"{path}: no .dist-info/METADATA inside")
        dist_info = info.rsplit("/", 1)[0]
        metadata = HeaderParser().parsestr(archive.read(info).decode("utf-8"))
        points = configparser.ConfigParser(delimiters=("=",), interpolation=None)
        points.optionxform = str  # type: ignore[assignment,method-assign]  # entry-point names keep their case
        if f"{dist_info}/entry_points.txt" in names:
            points.read_string(archive.read(f"{dist_info}/entry_points.txt").decode("utf-8"))
        if not points.has_section(GROUP):
            raise WheelError(f"{path}: declares no {GROUP!r} entry point: not a pairroom extension")
        extensions = {}
        for name, target in points.items(GROUP):
            package = manifests.package_of(target.strip())
            inside = f"{package}/{manifests.FILE}"
            found = (
                manifests.parse(archive.read(inside), f"{path.name}:{inside}")
                if inside in names
                else manifests.Manifest()
            )
            if found.frontend is not None and f"{package}/{found.frontend.module}" not in names:
                raise WheelError(f"{path}: {inside} names frontend module {found.frontend.module!r}, not in the wheel")
            extensions[name] = found
    homepage = metadata.get("Home-page")
    for url in metadata.get_all("Project-URL") or []:
        label, _, value = url.partition(",")
        if label.strip().lower() in {"homepage", "home", "source"} and not homepage:
            homepage = value.strip()
    return Wheel(
        path=path,
        package=str(metadata["Name"]),
        version=str(metadata["Version"]),
        summary=str(metadata.get("Summary") or ""),
        homepage=homepage if homepage and homepage.startswith(("https://", "http://")) else None,
        extensions=extensions,
        sha256=sha256_of(path),
    )
