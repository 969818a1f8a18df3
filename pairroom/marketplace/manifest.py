"""An extension's manifest: ``pairroom-extension.json`` in the package its entry point names.

It says what the extension asks for, before anything is imported::

    {"summary": "Signed room events as POSTs",           # optional: the distribution's Summary
     "capabilities": ["doc.read", "network", "frontend"],
     "frontend": {"module": "frontend/panel.js",           # an ES module inside the package
                  "title": "Webhook"}}                     # the panel's title

``pairroom extensions publish`` reads it from a wheel to fill the catalog entry; the server reads it
from the installed package to serve the browser module of an enabled extension.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from .catalog import CAPABILITIES

FILE = "pairroom-extension.json"
MODULE_PATH = re.compile(r"[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*\.m?js")


class ManifestError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Frontend:
    module: str  # a path inside the package, no "..", ending in .js or .mjs
    title: str


@dataclass(frozen=True, slots=True)
class Manifest:
    summary: str | None = None
    capabilities: frozenset[str] = frozenset()
    frontend: Frontend | None = None


def parse(raw: bytes | str, where: str) -> Manifest:
    try:
        data: Any = json.loads(raw)
    except ValueError as exc:
        raise ManifestError(f"{where}: not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ManifestError(f"{where}: must be a JSON object")
    capabilities = data.get("capabilities", [])
    if not isinstance(capabilities, list) or not all(isinstance(c, str) for c in capabilities):
        raise ManifestError(f"{where}: capabilities must be a list of strings")
    unknown = sorted(set(capabilities) - CAPABILITIES)
    if unknown:
        raise ManifestError(f"{where}: unknown capabilities {unknown} (known: {sorted(CAPABILITIES)})")
    summary = data.get("summary")
    if summary is not None and not isinstance(summary, str):
        raise ManifestError(f"{where}: summary must be a string")
    frontend = None
    if data.get("frontend") is not None:
        declared = data["frontend"]
        if not isinstance(declared, dict) or not isinstance(declared.get("module"), str):
            raise ManifestError(f'{where}: frontend must be {{"module": "path/in/package.js", "title": ...}}')
        if not MODULE_PATH.fullmatch(declared["module"]):
            raise ManifestError(
                f"{where}: frontend.module {declared['module']!r} must be a .js path inside the package"
            )
        if "frontend" not in capabilities:
            raise ManifestError(f'{where}: a frontend module needs the "frontend" capability')
        frontend = Frontend(declared["module"], str(declared.get("title") or ""))
    return Manifest(summary, frozenset(capabilities), frontend)


def package_of(target: str) -> str:
    """``"pairroom_webhook.extension:Webhook"`` -> ``"pairroom_webhook"``: where the manifest lives."""
    return target.split(":", 1)[0].split(".", 1)[0]


def read_installed(target: str) -> Manifest:
    """The manifest beside an installed entry point's package; no manifest asks for nothing."""
    from importlib import resources

    package = package_of(target)
    try:
        raw = resources.files(package).joinpath(FILE).read_bytes()
    except (OSError, ModuleNotFoundError, TypeError):  # none, or a single-module extension
        return Manifest()
    return parse(raw, f"{package}/{FILE}")
