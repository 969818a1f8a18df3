"""Third-party extensions: found through the ``pairroom.extensions`` entry-point group, loaded by name.

An installed distribution declares, in its ``pyproject.toml``::

    [project.entry-points."pairroom.extensions"]
    webhook = "pairroom_webhook:Webhook"

The object an entry point names is an ``Extension`` subclass or a zero-argument factory returning an
``Extension``. Listing what is installed reads only the distributions' metadata: an extension that
is installed but not enabled is never imported. Enabling a name that is not installed, or one whose
import fails, is an ``ExtensionError`` whose message lists what is installed; the CLI turns it into
a refusal to start.

What an extension asks for is in its manifest (``pairroom-extension.json``, see
``pairroom.marketplace.manifest``). The loader enforces the one capability it can see at start-up:
an extension that defines HTTP routes without asking for ``routes`` is refused, so an operator who
read the capabilities is not surprised by new endpoints; and it hands the declared capabilities to the
runner (``Extension.capabilities``), which enforces the others on the surface the extension gets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from importlib.metadata import EntryPoint, entry_points

from pairroom.extensions import GROUP, Extension
from pairroom.marketplace import manifest as manifests


class ExtensionError(Exception):
    """An enabled extension cannot be run; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Installed:
    """One entry point of the group, from metadata only."""

    name: str
    target: str  # "module:attribute"
    distribution: str | None
    version: str | None
    entry_point: EntryPoint
    also_in: str | None = None  # another distribution declaring the same name

    def describe(self) -> str:
        owner = f"{self.distribution} {self.version}" if self.distribution else "no distribution"
        return f"{self.name} ({owner})"


def installed() -> dict[str, Installed]:
    """Every extension installed in this environment, by name; nothing is imported."""
    found: dict[str, Installed] = {}
    for point in entry_points(group=GROUP):
        dist = point.dist
        item = Installed(
            point.name,
            point.value,
            dist.metadata["Name"] if dist is not None else None,
            dist.version if dist is not None else None,
            point,
        )
        previous = found.get(point.name)
        if previous is None:
            found[point.name] = item
        elif previous.distribution != item.distribution:
            # Two distributions claim one name: refused when it is enabled (see build).
            found[point.name] = replace(previous, also_in=item.distribution)
    return found


def listing(available: Mapping[str, Installed]) -> str:
    return ", ".join(item.describe() for item in sorted(available.values(), key=lambda i: i.name)) or "none"


def load(names: Iterable[str], settings_for: Callable[[str], Mapping[str, str]]) -> list[Extension]:
    """Import and build the enabled extensions, in the order given, each with its settings.

    Every problem is reported before anything is imported when it can be (names that are not
    installed), so an operator sees all the missing names at once."""
    names = list(names)
    available = installed()
    missing = [name for name in names if name not in available]
    if missing:
        raise ExtensionError(
            f"extension {', '.join(repr(n) for n in missing)} is not installed "
            f"(installed in {GROUP!r}: {listing(available)})"
        )
    return [build(available[name], settings_for(name)) for name in names]


def build(item: Installed, settings: Mapping[str, str]) -> Extension:
    """Import one entry point and make its ``Extension``."""
    if item.also_in is not None:
        raise ExtensionError(
            f"extension {item.name!r} is declared by both {item.distribution} and {item.also_in}: uninstall one"
        )
    try:
        target = item.entry_point.load()
    except Exception as exc:
        raise ExtensionError(
            f"extension {item.name!r} ({item.target}) could not be imported: {type(exc).__name__}: {exc}"
        ) from exc
    try:
        extension = target() if callable(target) else target
    except Exception as exc:
        raise ExtensionError(f"extension {item.name!r}: {item.target}() failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(extension, Extension):
        raise ExtensionError(
            f"extension {item.name!r}: {item.target} gave {type(extension).__name__}, not a "
            "pairroom.extensions.Extension (subclass or zero-argument factory)"
        )
    if extension.name != item.name:
        raise ExtensionError(
            f"extension {item.name!r}: {item.target} is named {extension.name!r}; the entry point's"
            " name and the extension's `name` must be the same (it is how it is enabled and mounted)"
        )
    check_capabilities(item, extension)
    try:
        extension.settings = dict(settings)
    except ValueError as exc:  # an extension checks its settings in a ``settings`` setter
        raise ExtensionError(f"extension {item.name!r}: {exc}") from exc
    return extension


def check_capabilities(item: Installed, extension: Extension) -> None:
    """Refuse what the extension does without having asked for it (the manifest's capabilities)."""
    try:
        declared = manifests.read_installed(item.target)
    except manifests.ManifestError as exc:
        raise ExtensionError(f"extension {item.name!r}: {exc}") from exc
    if type(extension).routes is not Extension.routes and "routes" not in declared.capabilities:
        raise ExtensionError(
            f"extension {item.name!r} defines HTTP routes but its manifest ({manifests.FILE}) does not ask for"
            ' the "routes" capability'
        )
    # what the runner enforces from now on: the room handle, the hooks it calls (rooms/handles.py)
    extension.capabilities = declared.capabilities
