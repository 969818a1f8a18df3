"""The shipped ``pairroom-ruff`` extension without a browser: its settings are checked at start-up,
and a real ``ruff`` run turns source into the marks the page shows."""

from __future__ import annotations

import pytest

from pairroom import extension_loader
from pairroom.extension_loader import ExtensionError


def ruff(settings: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    [loaded] = extension_loader.load(["ruff"], lambda name: settings or {})
    return loaded


async def test_ruff_lints_source_on_stdin_into_marks():
    ext = ruff({"select": "F,E9"})
    found = await ext.lint("pkg/mod.py", "import os\n\ndef f(:\n")
    assert found and {d["severity"] for d in found} == {"error"} and found[0]["line"] == 3, "syntax errors"
    found = await ext.lint("pkg/mod.py", "import os\nprint(missing)\n")
    assert [(d["line"], d["code"], d["severity"]) for d in found] == [(1, "F401", "warning"), (2, "F821", "warning")]
    assert found[1]["message"] == "F821 Undefined name `missing`"
    assert await ext.lint("ok.py", "print('fine')\n") == []


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({"select": "F;rm -rf"}, "select must be rule codes"),
        ({"debounce_ms": "soon"}, "whole milliseconds"),
        ({"timeout_ms": "0"}, "timeout_ms 1 to 120000"),
        ({"colour": "red"}, "unknown settings"),
    ],
)
def test_ruff_refuses_bad_settings_at_start_up(settings, says):
    with pytest.raises(ExtensionError, match=says):
        ruff(settings)
