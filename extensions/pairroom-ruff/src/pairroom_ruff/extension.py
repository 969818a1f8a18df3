"""The ruff extension: lint a room's Python files on the server, as they are typed.

The hooks only note which room changed (``on_change`` runs inside the document's transaction and
must stay cheap); one loop per node, under the node's supervisor, waits ``debounce_ms`` after the
last edit, runs ``ruff check`` on every Python file whose text changed since its last run (the text
on stdin: nothing is written to disk) and stores the diagnostics in the document's ``ext.ruff`` map,
path -> ``[{line, column, code, message, severity}]``. Every page gets them with the document and
its browser module (``frontend/panel.js``) shows them as editor marks. Only edits made through this
node are linted here (a peer node lints its own), and the extension's own writes are skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import weakref
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pycrdt import Map, Text
from ruff.__main__ import find_ruff_bin

from pairroom.extensions import SERVER, Change, Extension, LocalOrigin, OwnerRow, PeerOrigin, plain_value

log = logging.getLogger("pairroom.ext.ruff")

ROOT = "ext.ruff"  # path -> diagnostics
ORIGIN = LocalOrigin("ruff")
MAX_DIAGNOSTICS = 200  # per file: the panel and the gutter have no use for more
MAX_SOURCE = 512 * 1024  # bytes: a larger file is not linted


@dataclass(frozen=True, slots=True)
class RuffSettings:
    select: tuple[str, ...] = ()
    debounce: float = 0.3
    timeout: float = 5.0

    @classmethod
    def parse(cls, raw: Mapping[str, str]) -> RuffSettings:
        unknown = set(raw) - {"select", "debounce_ms", "timeout_ms"}
        if unknown:
            raise ValueError(f"unknown settings {sorted(unknown)} (known: select, debounce_ms, timeout_ms)")
        select = tuple(code.strip().upper() for code in raw.get("select", "").split(",") if code.strip())
        if any(not code.isalnum() for code in select):
            raise ValueError(f"select must be rule codes separated by commas, got {raw['select']!r}")
        try:
            debounce = int(raw.get("debounce_ms", "300")) / 1000
            timeout = int(raw.get("timeout_ms", "5000")) / 1000
        except ValueError as exc:
            raise ValueError(f"debounce_ms and timeout_ms must be whole milliseconds: {exc}") from exc
        if not 0 <= debounce <= 60 or not 0 < timeout <= 120:
            raise ValueError("debounce_ms must be 0 to 60000 and timeout_ms 1 to 120000")
        return cls(select, debounce, timeout)


def severity_of(code: str | None) -> str:
    """Syntax errors are errors; what pyflakes finds (likely bugs) warnings; style is info."""
    if not code or code.startswith("E9") or code == "invalid-syntax":
        return "error"
    if code.startswith(("F", "B")):
        return "warning"
    return "info"


def diagnostics_of(ruff_json: str) -> list[dict[str, Any]]:
    """``ruff check --output-format json`` to the marks the page shows, sorted by line."""
    found = []
    for item in json.loads(ruff_json or "[]"):
        location = item.get("location") or {}
        code = item.get("code")
        found.append(
            {
                "line": int(location.get("row") or 1),
                "column": int(location.get("column") or 1),
                "code": code or "syntax",
                "message": f"{code} {item.get('message', '')}" if code else str(item.get("message", "")),
                "severity": severity_of(code),
            }
        )
    found.sort(key=lambda d: (d["line"], d["column"]))
    return found[:MAX_DIAGNOSTICS]


def diagnostics_map(value: Any) -> bool:
    return plain_value(value) and isinstance(value, list)


class Ruff(Extension):
    """Live lint of the room's Python files (see the module's docstring)."""

    name = "ruff"
    version = "0.1.0"
    per_room = True
    priority = 400  # after the features: it only reads what they wrote

    def __init__(self) -> None:
        self._settings = RuffSettings()
        self._raw: Mapping[str, str] = {}
        self._dirty: dict[str, weakref.ref[Any]] = {}
        self._linted: dict[tuple[str, str], str] = {}  # (room, path) -> sha256 of the text last linted
        self._wake = asyncio.Event()
        self._ruff = find_ruff_bin()
        self.runs = 0  # ruff processes started (for tests and the curious)

    @property  # type: ignore[override]
    def settings(self) -> Mapping[str, str]:
        return self._raw

    @settings.setter
    def settings(self, raw: Mapping[str, str]) -> None:
        self._settings = RuffSettings.parse(raw)
        self._raw = dict(raw)

    def document_rows(self) -> Sequence[OwnerRow]:
        return [OwnerRow(ROOT, "*", SERVER, diagnostics_map, "path to `[{line, column, code, message, severity}]`")]

    # -- the node -------------------------------------------------------------------------------

    def lifespan(self, node: Any) -> contextlib.AbstractAsyncContextManager[None]:
        return self._running(node)

    @contextlib.asynccontextmanager
    async def _running(self, node: Any) -> AsyncIterator[None]:
        self._wake = asyncio.Event()
        task = node.supervisor.spawn("ruff", self._lint_forever, restart=True)
        try:
            yield
        finally:
            await node.supervisor.stop(task, 2.0)

    # -- hooks: note, never work ------------------------------------------------------------------

    def _mark(self, room: Any) -> None:
        self._dirty[room.name] = weakref.ref(room)
        self._wake.set()

    def on_loaded(self, room: Any) -> None:
        self._mark(room)

    def on_join(self, room: Any, member: Any) -> None:
        self._mark(room)

    def on_change(self, change: Change) -> None:
        origin = change.origin
        if isinstance(origin, PeerOrigin) or origin == ORIGIN:
            return
        self._mark(change.room)

    def on_unload(self, room: Any) -> None:
        self._dirty.pop(room.name, None)
        for key in [key for key in self._linted if key[0] == room.name]:
            del self._linted[key]

    def on_deleted(self, room_name: str) -> None:
        self._dirty.pop(room_name, None)

    # -- the loop -------------------------------------------------------------------------------

    async def _lint_forever(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(self._settings.debounce)
            self._wake.clear()
            dirty, self._dirty = self._dirty, {}
            for ref in dirty.values():
                room = ref()
                if room is not None:
                    await self.lint_room(room)

    async def lint_room(self, room: Any) -> None:
        """Lint the files whose text changed since their last run; store what changed."""
        files = room.doc.get("files", type=Map)
        sources = {
            path: str(text)
            for path, text in files.items()
            if path.endswith((".py", ".pyi")) and isinstance(text, Text) and len(str(text)) <= MAX_SOURCE
        }
        stored = room.doc.get(ROOT, type=Map)
        changes: dict[str, list[dict[str, Any]] | None] = {}
        for path, source in sources.items():
            digest = hashlib.sha256(source.encode()).hexdigest()
            if self._linted.get((room.name, path)) == digest and path in stored:
                continue
            try:
                found = await self.lint(path, source)
            except (OSError, TimeoutError, ValueError) as exc:
                log.warning("ruff failed", extra={"room": room.name, "path": path, "error": str(exc)})
                continue
            self._linted[(room.name, path)] = digest
            if stored.get(path) != found:
                changes[path] = found
        for path in list(stored.keys()):
            if path not in sources:
                changes[path] = None
        if not changes:
            return
        try:
            with room.local_change(ORIGIN) as doc:
                target = doc.get(ROOT, type=Map)
                for path, found in changes.items():
                    if found is None:
                        target.pop(path, None)
                    else:
                        target[path] = found
        except RuntimeError as exc:  # the room unloaded while ruff ran
            log.info("ruff results dropped", extra={"room": room.name, "reason": str(exc)})

    async def lint(self, path: str, source: str) -> list[dict[str, Any]]:
        """One ``ruff check`` of ``source`` as if it were ``path``, isolated from any configuration."""
        command = [self._ruff, "check", "--isolated", "--no-cache", "--exit-zero", "--output-format", "json"]
        if self._settings.select:
            command += ["--select", ",".join(self._settings.select)]
        command += ["--stdin-filename", path, "-"]
        self.runs += 1
        process = await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        try:
            async with asyncio.timeout(self._settings.timeout):
                out, err = await process.communicate(source.encode())
        except TimeoutError:
            process.kill()
            await process.wait()
            raise
        if process.returncode != 0:
            raise ValueError(f"ruff exited {process.returncode}: {err.decode(errors='replace')[:300]}")
        return diagnostics_of(out.decode())
