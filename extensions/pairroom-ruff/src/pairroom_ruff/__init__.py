"""pairroom-ruff: live lint of a room's Python files with ruff, shown as editor marks."""

from .extension import Ruff, diagnostics_of

__all__ = ["Ruff", "diagnostics_of"]
