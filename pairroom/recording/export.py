"""``pairroom export`` and ``pairroom import``: a room's whole recording as one file, and back.

The file (``.pairroom.jsonl.gz`` by convention) is gzip-compressed JSON Lines, one object a line::

    {"format": "pairroom-room", "version": 1, "room": "r", "exported_at": "2026-...Z"}
    {"type": "update",   "seq": 1, "uid": "n1:1", "at_us": 1779..., "origin": "client:c:u", "data": "<base64>"}
    {"type": "snapshot", "seq": 500, "at_us": 1779..., "data": "<base64>"}
    {"type": "event",    "at_us": 1779..., "kind": "join", "user": "u", "data": {...}}
    {"type": "version",  "name": "v1", "seq": 42, "at_us": 1779..., "by": "u", "auto": false}
    {"type": "end", "counts": {"update": n, "snapshot": n, "event": n, "version": n}}

Times are integer microseconds since the Unix epoch (UTC), exactly as stored; ``data`` of updates and
snapshots is the stored bytes in standard base64. Updates come in seq order, events in the order they
were written. The ``end`` line makes a truncated file fail to import instead of importing half a
room. An import writes every row in one transaction, so the log (seqs, uids, times, origins, bytes),
the snapshots, events and versions read back equal to the exported ones; it refuses a room that
already holds anything. Readers refuse a ``version`` they do not know.

``pairroom export ROOM --files DIR [--at T]`` writes the room's files as they are (or were at T) under
DIR; the root text (``/text`` in the API) goes to ``DIR/.root-text``. Paths that would leave DIR are
refused.

``pairroom export ROOM --casts DIR`` writes each terminal's recording (``casts.py``) as
``DIR/<terminal id>.cast``, an asciicast v2 file any asciicast player plays.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gzip
import json
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import IO, Any

from pycrdt import Doc

from pairroom.protocol.asciicast import CastError, TerminalCast
from pairroom.recording.casts import TERMINAL_ID, terminal_casts
from pairroom.recording.history import ROOT_TEXT_KEY, History, PointError, iso
from pairroom.recording.history_store import Event, Version, history_store_for
from pairroom.storage.memory import MemoryStore
from pairroom.storage.store import Snapshot, Store, StoredUpdate, StoreError, open_store

FORMAT = "pairroom-room"
VERSION = 1
ROOT_TEXT_FILE = ".root-text"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PAGE = 2000


def add_arguments(commands: argparse._SubParsersAction, default_db: str) -> None:  # type: ignore[type-arg]
    """Add ``export`` and ``import`` to the ``pairroom`` command's subparsers; ``--db`` defaults to
    ``default_db`` (the settings' database: ``PAIRROOM_DB`` or the built-in default)."""
    export = commands.add_parser("export", help="write a room's recording (or its files) out")
    export.add_argument("room")
    export.add_argument("-o", "--output", help="the export file to write (.pairroom.jsonl.gz)")
    export.add_argument("--files", metavar="DIR", help="write the room's files under DIR instead")
    export.add_argument("--casts", metavar="DIR", help="write each terminal's recording as DIR/<id>.cast instead")
    export.add_argument("--at", help="with --files: a seq or an ISO 8601 time (default: now)")
    export.add_argument("--db", default=default_db, help="database URL (PAIRROOM_DB, default sqlite:///./pairroom.db)")
    imp = commands.add_parser("import", help="bring a room back from an export file")
    imp.add_argument("file")
    imp.add_argument("--as", dest="as_room", help="import under this room name")
    imp.add_argument("--db", default=default_db, help="database URL (PAIRROOM_DB, default sqlite:///./pairroom.db)")


def export_command(args: argparse.Namespace) -> int:
    if sum(1 for choice in (args.output, args.files, args.casts) if choice) != 1:
        print("pairroom export: give one of -o FILE, --files DIR or --casts DIR", file=sys.stderr)
        return 2
    if args.at and not args.files:
        print("pairroom export: --at goes with --files", file=sys.stderr)
        return 2
    try:
        if args.casts:
            names = write_casts(args.room, asyncio.run(read_casts(args.db, args.room)), Path(args.casts))
            print(f"wrote {len(names)} terminal recording(s) to {args.casts}" + "".join(f"\n  {n}" for n in names))
        elif args.files:
            skipped: list[tuple[str, str]] = []
            written = asyncio.run(export_files(args.db, args.room, Path(args.files), args.at, skipped))
            for path, reason in skipped:
                print(f"pairroom export: skipped {path!r}: {reason}", file=sys.stderr)
            print(f"wrote {written} file(s) to {args.files}" + (f", skipped {len(skipped)}" if skipped else ""))
        else:
            counts = asyncio.run(export_room(args.db, args.room, Path(args.output)))
            print(f"exported {args.room}: " + ", ".join(f"{n} {k}(s)" for k, n in counts.items()))
    except (StoreError, ValueError, OSError) as exc:
        print(f"pairroom export: {exc}", file=sys.stderr)
        return 1
    return 0


def import_command(args: argparse.Namespace) -> int:
    try:
        room, counts = asyncio.run(import_room(args.db, Path(args.file), args.as_room))
    except (StoreError, ValueError, OSError) as exc:
        print(f"pairroom import: {exc}", file=sys.stderr)
        return 1
    print(f"imported {room}: " + ", ".join(f"{n} {k}(s)" for k, n in counts.items()))
    return 0


COMMANDS = {"export": export_command, "import": import_command}


# -- export ---------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _opened(db: str) -> AsyncIterator[Store]:
    """The store ``db`` names, open; a memory store holds nothing another process could read."""
    store = open_store(db)
    if isinstance(store, MemoryStore):
        raise ValueError("memory:// storage lives inside one server process; export from or import into a database")
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def _us(when: datetime) -> int:
    return (when - _EPOCH) // timedelta(microseconds=1)


def _time(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


async def export_room(db: str, room: str, output: Path) -> dict[str, int]:
    """Write ``room``'s recording to ``output``; return how many rows of each kind went in."""
    async with _opened(db) as store:
        history = history_store_for(store)
        if not await history.has_anything(room):
            raise ValueError(f"room {room!r} has nothing stored")
        counts = {"update": 0, "snapshot": 0, "event": 0, "version": 0}
        partial = output.with_name(output.name + ".partial")
        with gzip.open(partial, "wt", encoding="utf-8") as out:
            _line(out, {"format": FORMAT, "version": VERSION, "room": room, "exported_at": iso(datetime.now(UTC))})
            after = 0
            while page := await history.read_updates_page(room, after, _PAGE):
                for u in page:
                    _line(
                        out,
                        {
                            "type": "update",
                            "seq": u.seq,
                            "uid": u.uid,
                            "at_us": _us(u.at),
                            "origin": u.origin,
                            "data": _b64(u.data),
                        },
                    )
                counts["update"] += len(page)
                after = page[-1].seq
            for s in await history.snapshots(room):
                _line(out, {"type": "snapshot", "seq": s.seq, "at_us": _us(s.at), "data": _b64(s.data)})
                counts["snapshot"] += 1
            for e in await history.events(room):
                _line(out, {"type": "event", "at_us": _us(e.at), "kind": e.kind, "user": e.user, "data": e.data})
                counts["event"] += 1
            for v in await history.versions(room):
                _line(
                    out,
                    {"type": "version", "name": v.name, "seq": v.seq, "at_us": _us(v.at), "by": v.by, "auto": v.auto},
                )
                counts["version"] += 1
            _line(out, {"type": "end", "counts": counts})
        partial.replace(output)  # a crash mid-export never leaves a file that looks complete
        return counts


def _line(out: IO[str], obj: dict[str, Any]) -> None:
    out.write(json.dumps(obj, separators=(",", ":"), ensure_ascii=False))
    out.write("\n")


async def export_files(
    db: str, room: str, directory: Path, at: str | None, skipped: list[tuple[str, str]] | None = None
) -> int:
    """Write the room's files (now, or at ``at``) under ``directory``; return how many.

    A file the room's members named so it cannot be written (leaving the directory, a NUL, a name too
    long, a file where another is a folder) is skipped and listed in ``skipped`` with the reason; the
    rest of the room is exported."""
    async with _opened(db) as store:
        history = History(store)
        if not await history.db.has_anything(room):
            raise ValueError(f"room {room!r} has nothing stored")
        try:
            state = await history.state_at(room, at)
        except PointError as exc:
            raise ValueError(exc.reason) from exc
    files = state.files()
    written = 0
    for path in sorted(files):
        try:
            target = directory / _safe_relative(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(files[path], encoding="utf-8")
        except (ValueError, OSError, UnicodeError) as exc:
            if skipped is not None:
                skipped.append((path[:300], str(exc)[:300]))
            continue
        written += 1
    return written


async def read_casts(db: str, room: str) -> list[TerminalCast]:
    """Every terminal's recording of ``room``, as stored."""
    async with _opened(db) as store:
        history = history_store_for(store)
        if not await history.has_anything(room):
            raise ValueError(f"room {room!r} has nothing stored")
        try:
            return await terminal_casts(history, room)
        except CastError as exc:
            raise ValueError(f"a stored terminal recording is unreadable: {exc}") from exc


def write_casts(room: str, casts: list[TerminalCast], directory: Path) -> list[str]:
    """Write each recording as ``directory/<terminal id>.cast`` (whole or not at all); the names."""
    directory.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    for cast in casts:
        if not TERMINAL_ID.fullmatch(cast.terminal):
            raise ValueError(f"terminal id {cast.terminal[:80]!r} cannot be a file name")
        name = f"{cast.terminal}.cast"
        partial = directory / (name + ".partial")
        partial.write_text(cast.text(f"{room} / {cast.name}"), encoding="utf-8")
        partial.replace(directory / name)
        names.append(name)
    return names


def _safe_relative(path: str) -> Path:
    if path == ROOT_TEXT_KEY:
        return Path(ROOT_TEXT_FILE)
    parts = PurePosixPath(path).parts
    if not parts or path.startswith("/") or any(p in ("", ".", "..") for p in parts) or path == ROOT_TEXT_FILE:
        raise ValueError(f"refusing to write file path {path[:300]!r}: it would leave the directory")
    if "\0" in path:
        raise ValueError("a file path with a NUL byte")
    return Path(*parts)


# -- import ---------------------------------------------------------------------------------------------


def read_export(path: Path) -> tuple[str, list[StoredUpdate], list[Snapshot], list[Event], list[Version]]:
    """Parse and check an export file (format, version, the ``end`` line's counts)."""
    rows = _lines(path)
    try:
        header = next(rows)
    except StopIteration:
        raise ValueError(f"{path} is empty") from None
    if header.get("format") != FORMAT:
        raise ValueError(f"{path} is not a pairroom room export")
    if header.get("version") != VERSION:
        raise ValueError(f"{path} has export format version {header.get('version')!r}; this pairroom reads {VERSION}")
    room = str(header["room"])
    updates: list[StoredUpdate] = []
    snapshots: list[Snapshot] = []
    events: list[Event] = []
    versions: list[Version] = []
    end: dict[str, Any] | None = None
    try:
        for row in rows:
            kind = row.get("type")
            if end is not None:
                raise ValueError("lines after the end line")
            if kind == "update":
                updates.append(
                    StoredUpdate(
                        room,
                        int(row["seq"]),
                        _time(int(row["at_us"])),
                        str(row["origin"]),
                        base64.b64decode(row["data"], validate=True),
                        str(row["uid"]),
                    )
                )
            elif kind == "snapshot":
                snapshots.append(
                    Snapshot(
                        room, int(row["seq"]), _time(int(row["at_us"])), base64.b64decode(row["data"], validate=True)
                    )
                )
            elif kind == "event":
                events.append(
                    Event(room, _time(int(row["at_us"])), str(row["kind"]), str(row["user"]), dict(row["data"]))
                )
            elif kind == "version":
                versions.append(
                    Version(
                        room,
                        str(row["name"]),
                        int(row["seq"]),
                        _time(int(row["at_us"])),
                        str(row["by"]),
                        bool(row["auto"]),
                    )
                )
            elif kind == "end":
                end = row
            else:
                raise ValueError(f"unknown line type {kind!r}")
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path} is damaged: {exc}") from exc
    found = {"update": len(updates), "snapshot": len(snapshots), "event": len(events), "version": len(versions)}
    if end is None:
        raise ValueError(f"{path} is truncated (no end line)")
    if end.get("counts") != found:
        raise ValueError(f"{path} is damaged: the end line counts {end.get('counts')}, the file holds {found}")
    for what, items in (("update", updates), ("snapshot", snapshots)):
        for item in items:
            if not decodes(item.data):
                raise ValueError(f"{path} is damaged: {what} seq {item.seq} is not a Yjs update")
    return room, updates, snapshots, events, versions


def decodes(update: bytes) -> bool:
    """Whether ``update`` is a Yjs v1 update (applied to an empty document: missing dependencies are
    fine, bytes that do not decode are not)."""
    try:
        Doc().apply_update(update)
    except (ValueError, RuntimeError):
        return False
    return True


def _lines(path: Path) -> Iterator[dict[str, Any]]:
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                try:
                    obj = json.loads(line)
                except ValueError as exc:
                    raise ValueError(f"{path}:{number} is not JSON") from exc
                if not isinstance(obj, dict):
                    raise ValueError(f"{path}:{number} is not a JSON object")
                yield obj
    except (gzip.BadGzipFile, EOFError) as exc:
        raise ValueError(f"{path} is not a complete gzip file: {exc}") from exc


async def import_room(db: str, path: Path, as_room: str | None = None) -> tuple[str, dict[str, int]]:
    room, updates, snapshots, events, versions = read_export(path)
    target = as_room or room
    async with _opened(db) as store:
        await history_store_for(store).import_room(target, updates, snapshots, events, versions)
    return target, {"update": len(updates), "snapshot": len(snapshots), "event": len(events), "version": len(versions)}
