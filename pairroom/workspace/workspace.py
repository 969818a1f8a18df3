"""The room's working directory on disk, kept in step with the ``files`` map both ways.

One ``Workspace`` per room on the node running its sandboxed processes. Kernels and terminals use
the same directory (``/home/room`` in their sandboxes); it outlives any one of them and is kept while
the node runs (removed when the last service using workspaces stops).

Document to disk: a change to ``files`` marks the workspace dirty; ``flush_delay`` later the changed
files are written with a temporary file and a rename (``safe_fs.write_atomic``), and files the
document deleted are removed. A file that changed on disk since it was last seen is not overwritten:
the disk change is merged into the document first, and the merged text written on the next flush.

Disk to document: the directory is scanned every ``poll_seconds`` while a kernel or terminal uses it,
and at once when one asks (``scan_now``: a terminal's Enter, the end of a run). A changed text file
becomes edits of its ``Y.Text`` (``merge.py``), attributed to the person whose terminal or run was
last active (``note_actor``), as ``LocalOrigin("disk:<user id>")``. Text files up to ``max_file_bytes``
sync; larger and binary files stay on disk and are listed read-only with their size in the
``workspace`` root map. Ignore rules skip folders such as ``.git/`` and ``node_modules/``.

Why polling and not inotify (``watchfiles``): room code owns this tree. watchfiles' recursive
watches follow symlinks (measured with 1.3.0: a write in a folder outside the tree was reported
through a link inside it), so ``ln -s / x`` would have the server watch the host's whole filesystem, and a folder 3,000 deep costs 3,000 watches from a per-user
budget shared with every other room. A scan with ``safe_fs.scan`` follows nothing, is bounded in
entries and depth, and runs in a worker thread; for the sizes a room has (hundreds of files) it costs
well under a millisecond of the loop per pass. Changes made by a terminal are picked up without
waiting for the poll, because the terminal asks for a scan when a command line is entered and when
its output goes quiet.

No file operation here runs on the event loop: each is a ``safe_fs`` call in a worker thread
(``safe_fs.run_off_loop``), bounded by ``io_timeout``; a call that times out is logged and retried on the
next pass, and the room carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import os
import re
import tempfile
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pycrdt import Map, Text

from pairroom.protocol.origins import LocalOrigin
from pairroom.rooms.room import Room, RoomState

from . import merge, safe_fs
from .safe_fs import FileStat, Listing

log = logging.getLogger("pairroom.workspace")

MiB = 1024 * 1024
DEFAULT_IGNORE = (".git/", "__pycache__/", "node_modules/", ".venv/")
LISTING_ROOT = "workspace"  # root map of files that stay on disk: path -> {"size", "kind"}

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class WorkspaceSettings:
    root: Path | None = None  # where room workspaces live; None: a fresh dir under the temp dir
    uid: int | None = None  # owner of what the server writes (the sandbox uid when the server is root)
    gid: int | None = None
    max_file_bytes: int = 1 * MiB  # text files up to this size sync; larger ones are listed read-only
    ignore: tuple[str, ...] = DEFAULT_IGNORE  # "name/" skips folders of that name; else a glob on the path or name
    flush_delay: float = 0.1  # document changes are written this long after the last one
    poll_seconds: float = 0.5  # the disk is scanned this often while a kernel or terminal uses it
    io_timeout: float = 10.0  # one batch of file operations; past it, it is retried later
    max_entries: int = 20_000  # entries a scan lists; past it the rest is not synced
    max_depth: int = 32  # folders deeper than this are not entered


def ignore_rule(patterns: tuple[str, ...]) -> Callable[[str, bool], bool]:
    folders = {p[:-1] for p in patterns if p.endswith("/")}
    globs = [p for p in patterns if not p.endswith("/")]

    def ignored(path: str, is_dir: bool) -> bool:
        name = path.rsplit("/", 1)[-1]
        if is_dir and name in folders:
            return True
        return any(fnmatch.fnmatchcase(path, g) or fnmatch.fnmatchcase(name, g) for g in globs)

    return ignored


def dir_name(room: str) -> str:
    """A room name as one safe folder name (any character outside [A-Za-z0-9_-] is escaped)."""
    return re.sub(r"[^A-Za-z0-9_-]", lambda m: "%%%02X" % ord(m.group()) if ord(m.group()) < 256 else "%%u%04X" % ord(m.group()), room)[:200] or "%"


@dataclass(slots=True)
class DiskChange:
    path: str
    stat: FileStat
    data: bytes | None  # None: larger than the cap


@dataclass(slots=True)
class ScanResult:
    listing: Listing
    changed: list[DiskChange]
    gone: list[str]  # deleted on disk: deleted in the document too (unless edited there meanwhile)
    blocked: list[str]  # a link, FIFO or folder now where a room file was: the file is written again


class Workspace:
    """One room's working directory and its sync with the document (see the module docstring)."""

    def __init__(self, workspaces: Workspaces, room_name: str) -> None:
        self.workspaces = workspaces
        self.settings = workspaces.settings
        self.room_name = room_name
        self.path = workspaces.root / dir_name(room_name)
        self.room: Room | None = None
        self.base: dict[str, str] = {}  # path -> the text document and disk last agreed on
        self.seen: dict[str, FileStat] = {}  # path -> the stat of the file when last read or written
        self.listed: dict[str, dict[str, Any]] = {}  # files kept on disk only: path -> {size, kind}
        self.blocked: set[str] = set()  # room files with something else in their place on disk
        self.actor: str | None = None
        self.users = 0
        self.conflicts = 0
        self.flushes = 0
        self.scans = 0
        self._dirty = asyncio.Event()
        self._scan_wanted = asyncio.Event()
        self._stopping = asyncio.Event()
        self._lock = asyncio.Lock()  # one flush or scan at a time
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._dir_ready = asyncio.Event()
        self._subscription: Any = None
        self._failure: BaseException | None = None

    # -- for kernels and terminals ---------------------------------------------------------------

    @property
    def exists(self) -> bool:
        return self.path.is_dir()

    def note_actor(self, user: str | None) -> None:
        """Who is acting in the sandbox now: disk changes found from here on are attributed to them."""
        self.actor = user

    def scan_now(self) -> None:
        """Ask for a scan of the disk at once (after a command line or a run)."""
        self._scan_wanted.set()

    async def flushed(self) -> None:
        """Until every document change made so far is on disk (before a run starts)."""
        await self._ready.wait()
        if self._failure is not None:
            raise RuntimeError(f"workspace of room {self.room_name!r} failed: {self._failure}")
        async with self._lock:
            await self._flush(barrier=True)

    async def synced(self) -> None:
        """Scan and flush now, and return when both are done (tests and the end of a run)."""
        await self._ready.wait()
        async with self._lock:
            await self._scan()
            await self._flush()

    async def ensure_dir(self, adopt: Path | None = None) -> None:
        """Create the directory, or make ``adopt`` (an empty dir a pooled kernel already binds) it."""
        if not self.exists:
            await self.workspaces.io(self._make_dir, adopt)
        self._dir_ready.set()

    def _make_dir(self, adopt: Path | None) -> None:
        if self.path.is_dir():
            return
        if adopt is not None:
            os.rename(adopt, self.path)  # the kernel's bind mount follows the directory, not its name
            adopt.symlink_to(self.path)  # a restart of that kernel binds the workspace again
            return
        self.path.mkdir(mode=0o700)
        os.chmod(self.path, 0o700)
        if self.settings.uid is not None:
            os.chown(self.path, self.settings.uid, self.settings.gid if self.settings.gid is not None else -1)

    # -- the life of the sync --------------------------------------------------------------------

    def _restart(self) -> None:
        self._stopping.clear()
        self._ready.clear()
        self._failure = None
        self.room = None

    async def _serve(self, room: Room) -> None:
        """Sync until no kernel or terminal uses the workspace, then flush a last time."""
        self.room = room
        files = room.doc.get("files", type=Map)
        self._subscription = files.observe_deep(lambda events: self._dirty.set())
        try:
            if self.exists:
                self._dir_ready.set()
            # made by the first kernel (adopting its dir) or terminal
            await _first(self._dir_ready.wait(), self._stopping.wait())
            if not self._dir_ready.is_set():
                return
            async with self._lock:
                await self._first_sync()
            self._ready.set()
            while not self._stopping.is_set():
                waiters = {
                    asyncio.ensure_future(self._dirty.wait()),
                    asyncio.ensure_future(self._scan_wanted.wait()),
                    asyncio.ensure_future(self._stopping.wait()),
                }
                try:
                    await asyncio.wait(waiters, timeout=self.settings.poll_seconds, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for waiter in waiters:
                        waiter.cancel()
                if room.state is RoomState.CLOSED:
                    return
                if self._dirty.is_set() and not self._stopping.is_set():
                    await asyncio.sleep(self.settings.flush_delay)  # debounce a burst of keystrokes
                async with self._lock:
                    await self._step()
            async with self._lock:
                await self._step()
        except BaseException as exc:
            self._failure = exc
            self._ready.set()
            raise
        finally:
            with contextlib.suppress(Exception):
                files.unobserve(self._subscription)

    async def _step(self) -> None:
        """One pass: scan the disk (merging what changed), then write what the document changed."""
        try:
            await self._scan()
            await self._flush()
        except TimeoutError:
            log.error("workspace file operations timed out, retrying", extra={"room": self.room_name})
        except OSError as exc:
            log.error("workspace file operation failed, retrying", extra={"room": self.room_name, "error": str(exc)})

    def _doc_files(self) -> dict[str, str]:
        room = self.room
        assert room is not None
        with room.local_change(LocalOrigin("workspace-read")) as doc:
            files = doc.get("files", type=Map)
            return {path: str(text) for path, text in files.items() if isinstance(text, Text) and safe_fs.valid_path(path)}

    async def _first_sync(self) -> None:
        """Files on disk the document does not have come in (a kernel wrote them before); then the
        document is written out."""
        result = await self._read_disk(full=True)
        self._import(result)
        await self._flush()

    # -- document to disk --------------------------------------------------------------------------

    async def _flush(self, barrier: bool = False) -> None:
        self._dirty.clear()
        room = self.room
        if room is None or room.state is not RoomState.ACTIVE:
            return
        if barrier:
            for path in self.blocked:
                self.seen.pop(path, None)
                self.base.pop(path, None)
            self.blocked.clear()
        files = self._doc_files()
        writes = {p: t for p, t in files.items() if self.base.get(p) != t and p not in self.blocked}
        deletes = [p for p in self.base if p not in files]
        if not writes and not deletes:
            return
        owner = self.workspaces.owner

        def work() -> tuple[dict[str, FileStat | None], list[str]]:
            written: dict[str, FileStat | None] = {}
            for path, content in writes.items():
                expect = self.seen.get(path)
                written[path] = safe_fs.write_atomic(
                    str(self.path), path, content.encode(), expect=expect, check_expect=True, owner=owner,
                )
            removed = []
            for path in deletes:
                opened = safe_fs.read_path(str(self.path), path, 0)
                now = opened[1] if opened is not None else None
                if now is not None and now != self.seen.get(path):
                    continue  # changed on disk since: the scan brings it back instead
                safe_fs.remove_path(str(self.path), path)
                removed.append(path)
            return written, removed

        written, removed = await self.workspaces.io(work)
        for path, stat in written.items():
            self.blocked.discard(path)
            if stat is None:
                self._scan_wanted.set()  # changed on disk meanwhile: merge first, write next pass
                continue
            self.base[path] = writes[path]
            self.seen[path] = stat
        for path in removed:
            self.base.pop(path, None)
            self.seen.pop(path, None)
        self.flushes += 1

    # -- disk to document --------------------------------------------------------------------------

    async def _read_disk(self, full: bool = False) -> ScanResult:
        settings = self.settings
        seen = dict(self.seen)
        listed = {p: v.get("size") for p, v in self.listed.items()}

        def work() -> ScanResult:
            listing = safe_fs.scan(
                str(self.path), self.workspaces.ignored,
                max_entries=settings.max_entries, max_depth=settings.max_depth,
            )
            changed = []
            for path, stat in listing.files.items():
                if not safe_fs.valid_path(path):
                    continue
                if not full and seen.get(path) == stat:
                    continue
                if path in listed and listed[path] == stat.size and path not in seen:
                    continue
                read = safe_fs.read_path(str(self.path), path, settings.max_file_bytes)
                if read is None:
                    continue
                data, now = read
                changed.append(DiskChange(path, now, data))
            missing = [p for p in seen if p not in listing.files and not listing.truncated]
            blocked = [p for p in missing if p in listing.others]
            gone = [p for p in missing if p not in listing.others]
            return ScanResult(listing, changed, gone, blocked)

        return await self.workspaces.io(work)

    async def _scan(self) -> None:
        self._scan_wanted.clear()
        if self.room is None or self.room.state is not RoomState.ACTIVE:
            return
        result = await self._read_disk()
        self._import(result)
        self.scans += 1

    def _import(self, result: ScanResult) -> None:
        room = self.room
        assert room is not None
        if result.listing.truncated:
            log.warning("workspace has too many entries; the rest is not synced",
                        extra={"room": self.room_name, "max_entries": self.settings.max_entries})
        # Not a deletion: room code put something the server never reads (a link, a FIFO, a folder)
        # in a room file's place. The document's text is written over it at the next barrier
        # (``flushed``: before a run or a command line), not while a program may be using it.
        self.blocked.update(result.blocked)
        listed_now = {p for p in self.listed if p in result.listing.files}
        if not result.changed and not result.gone and listed_now == set(self.listed):
            return
        origin = LocalOrigin(f"disk:{self.actor}" if self.actor else "disk")
        with room.local_change(origin) as doc:
            files = doc.get("files", type=Map)
            listing = doc.get(LISTING_ROOT, type=Map)
            for change in result.changed:
                self._import_one(files, listing, change)
            for path in result.gone:
                self.seen.pop(path, None)
                base = self.base.pop(path, None)
                text = files.get(path)
                if isinstance(text, Text) and str(text) == base:
                    del files[path]  # deleted on disk and untouched in the editor
                if path in self.listed:
                    del self.listed[path]
                    if path in listing:
                        del listing[path]
            for path in list(self.listed):
                if path not in result.listing.files and not result.listing.truncated:
                    del self.listed[path]
                    if path in listing:
                        del listing[path]

    def _import_one(self, files: Map, listing: Map, change: DiskChange) -> None:
        path = change.path
        text_content: str | None = None
        kind = "large"
        if change.data is not None:
            try:
                text_content = change.data.decode("utf-8")
                kind = "text"
            except UnicodeDecodeError:
                kind = "binary"
            if text_content is not None and "\0" in text_content:
                text_content, kind = None, "binary"
        self.seen[path] = change.stat
        if text_content is None:
            entry = {"size": change.stat.size, "kind": kind}
            self.listed[path] = entry
            listing[path] = Map(entry)
            current = files.get(path)
            if isinstance(current, Text) and str(current) == self.base.get(path):
                del files[path]  # became binary or too large on disk: listed instead
            self.base.pop(path, None)
            return
        if path in self.listed:
            del self.listed[path]
            if path in listing:
                del listing[path]
        current = files.get(path)
        if not isinstance(current, Text):
            files[path] = Text(text_content)
            self.base[path] = text_content
            return
        ours = str(current)
        # Never agreed before (both made it): merge against nothing, which keeps both texts.
        base = self.base.get(path, "")
        edits, conflicts = merge.rebase(base, ours, text_content)
        if conflicts:
            self.conflicts += conflicts
            log.info("disk and editor changed the same lines; both kept", extra={"room": self.room_name, "path": path})
        merge.apply(current, ours, edits)
        self.base[path] = text_content  # what the disk holds; the merged text is written next flush


async def _first(*waits: Any) -> None:
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


class Workspaces:
    """The workspaces of this node, one per room, shared by kernels and terminals.

    Found through the room registry (``Workspaces.attach(registry, settings)``), so features that
    never import each other use the same directory for a room. Each service that uses workspaces
    attaches once and detaches when it stops; the last to detach removes the directories."""

    _by_registry: weakref.WeakKeyDictionary[Any, Workspaces] = weakref.WeakKeyDictionary()

    def __init__(self, registry: Any, settings: WorkspaceSettings) -> None:
        self.registry = registry
        self.settings = settings
        if settings.root is not None:
            settings.root.mkdir(parents=True, exist_ok=True)
            self.root = Path(tempfile.mkdtemp(prefix="pairroom-workspaces-", dir=settings.root))
        else:
            self.root = Path(tempfile.mkdtemp(prefix="pairroom-workspaces-"))
        os.chmod(self.root, 0o711)  # the sandbox uid traverses it to reach its room's dir
        self.ignored = ignore_rule(settings.ignore)
        self.rooms: dict[str, Workspace] = {}
        self.attached = 0
        self.owner = (settings.uid, settings.gid if settings.gid is not None else -1) if settings.uid is not None else None

    @classmethod
    def attach(cls, registry: Any, settings: WorkspaceSettings | None = None) -> Workspaces:
        """The registry's workspaces, created by the first service to attach (its settings win)."""
        found = cls._by_registry.get(registry)
        if found is None:
            found = cls(registry, settings or WorkspaceSettings())
            cls._by_registry[registry] = found
        found.attached += 1
        return found

    async def detach(self) -> None:
        self.attached -= 1
        if self.attached > 0:
            return
        for workspace in list(self.rooms.values()):
            workspace._stopping.set()
        tasks = [w._task for w in self.rooms.values() if w._task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=self.settings.io_timeout)
        self._by_registry.pop(self.registry, None)
        try:
            await self.io(self._remove_all)
        except OSError as exc:
            log.error("workspaces not removed", extra={"root": str(self.root), "error": str(exc)})

    def _remove_all(self) -> None:
        """Remove every room's directory (room code made them: no recursion, no link followed)."""
        fd = safe_fs.open_dir(str(self.root))
        try:
            for name in os.listdir(fd):
                safe_fs.remove(fd, name)
        finally:
            os.close(fd)
        os.rmdir(self.root)

    async def io(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking file work off the loop, bounded by ``io_timeout`` (``safe_fs.FsTimeout``, an
        OSError, past it: the thread is left behind, the room goes on and retries next pass)."""
        return await safe_fs.run_off_loop(fn, *args, timeout=self.settings.io_timeout, what="workspace")

    def get(self, room_name: str) -> Workspace:
        workspace = self.rooms.get(room_name)
        if workspace is None:
            workspace = self.rooms[room_name] = Workspace(self, room_name)
        return workspace

    @contextlib.asynccontextmanager
    async def use(self, room_name: str) -> AsyncIterator[Workspace]:
        """Keep the room's workspace syncing while the block runs (a kernel's or terminal's life).
        The first user starts the sync (holding the room loaded); the last one's exit ends it. What
        the document and the disk last agreed on is kept between uses, so the next sync merges."""
        workspace = self.get(room_name)
        workspace.users += 1
        if workspace._task is None or workspace._task.done():
            workspace._restart()
            workspace._task = asyncio.create_task(self._run(workspace), name=f"pairroom-workspace-{room_name}")
        try:
            yield workspace
        finally:
            workspace.users -= 1
            task = workspace._task
            if workspace.users == 0 and task is not None:
                workspace._stopping.set()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(asyncio.shield(task), self.settings.io_timeout)

    async def _run(self, workspace: Workspace) -> None:
        """The sync of one room, holding it loaded; a failure is logged and ends that room's sync only."""
        try:
            async with self.registry.hold(workspace.room_name) as room:
                await workspace._serve(room)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("workspace sync stopped", extra={"room": workspace.room_name})
