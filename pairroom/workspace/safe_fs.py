"""File operations on a directory that untrusted code can write, safe for the server to run.

A room's code owns its working directory: it can plant a symlink (``ln -s /etc helper``), a hard
link to a file it may not write, a named pipe where a room file goes (an ``open`` for writing then
blocks until someone reads, forever), or a folder 3,000 levels deep (a recursive walk raises
``RecursionError``). The server may be root, and its event loop serves every room. So everything here

- walks paths one component at a time from a directory fd, with ``O_NOFOLLOW``: a link is never
  followed, it is removed and replaced by what the server writes;
- opens with ``O_NONBLOCK`` and checks the type with ``fstat``: anything but a regular file or a
  directory is refused (and never read or written); an existing entry is never opened for writing
  at all, a new file is written beside it and renamed over it, so a hard link or a FIFO in its
  place is replaced, not written through;
- removes trees without recursion and with two fds open at most, bounded by ``max_entries``;
- runs off the event loop: ``run_off_loop`` runs a function in a daemon thread with a timeout, so a
  call that blocks anyway costs one thread, never the loop, and never holds up the process's exit.

It lives in the core (``pairroom.workspace``) because everything that touches a room's working
directory uses it: the workspace's sync both ways, kernels and terminals. Beside the primitives above
it has what the sync needs: a ``FileStat`` that tells a file changed, a read that returns it, a write
that refuses when the file changed since it was read (``write_atomic``), and a bounded ``scan``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import secrets
import stat
import threading
from dataclasses import dataclass
from typing import Callable, TypeVar

T = TypeVar("T")

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

MAX_TREE_ENTRIES = 200_000
"""How many entries ``remove_tree`` removes before it gives up (room code may keep adding)."""

TEMP_PREFIX = ".pairroom-"


class UnsafeEntry(OSError):
    """An entry is not what the server may touch (a FIFO, socket, device, or a link)."""


class FsTimeout(OSError):
    """A file operation did not finish in time; its thread is left behind, the loop goes on."""


async def run_off_loop(fn: Callable[..., T], *args: object, timeout: float, what: str = "file operation") -> T:
    """``fn(*args)`` in a daemon thread; raises ``FsTimeout`` after ``timeout`` seconds.

    Not ``asyncio.to_thread``: its executor's threads are joined at exit, so one stuck call would
    keep a stopping server alive."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def work() -> None:
        try:
            result: T | None = fn(*args)
            error: BaseException | None = None
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task, which raises it
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop closed while this ran past its timeout
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=work, name=f"pairroom-fs-{what[:20]}", daemon=True).start()
    try:
        async with asyncio.timeout(timeout):
            return await asyncio.shield(future)
    except TimeoutError:
        raise FsTimeout(errno.ETIMEDOUT, f"{what} did not finish in {timeout:g} s") from None


def open_dir(name: str, dir_fd: int | None = None) -> int:
    """An fd of the directory ``name`` (relative to ``dir_fd``); ELOOP/ENOTDIR for anything else."""
    fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    if not stat.S_ISDIR(os.fstat(fd).st_mode):  # O_DIRECTORY makes this impossible; checked anyway
        os.close(fd)
        raise UnsafeEntry(errno.ENOTDIR, "not a directory", name)
    return fd


def ensure_dir(name: str, dir_fd: int, *, owner: tuple[int, int] | None = None) -> int:
    """An fd of the folder ``name`` in ``dir_fd``, created if missing; whatever else is there (a link,
    a file, a FIFO) is removed first, never followed or opened."""
    try:
        return open_dir(name, dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            os.unlink(name, dir_fd=dir_fd)  # unlink never opens what it removes
        elif exc.errno != errno.ENOENT:
            raise
    os.mkdir(name, 0o755, dir_fd=dir_fd)
    if owner is not None:
        os.chown(name, owner[0], owner[1], dir_fd=dir_fd, follow_symlinks=False)
    return open_dir(name, dir_fd)


def open_parent(root: str, path: str, *, create: bool, owner: tuple[int, int] | None = None) -> tuple[int, str] | None:
    """The fd of the folder holding ``path`` under ``root`` and the last name; None if a folder on
    the way is missing (or not a folder) and ``create`` is False."""
    *folders, name = path.split("/")
    fd = open_dir(root)
    try:
        for folder in folders:
            if create:
                child = ensure_dir(folder, fd, owner=owner)
            else:
                try:
                    child = open_dir(folder, fd)
                except OSError as exc:
                    if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
                        return None
                    raise
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd, name


def write_file(dir_fd: int, name: str, data: bytes, *, mode: int = 0o644, owner: tuple[int, int] | None = None) -> None:
    """Make ``name`` in ``dir_fd`` a regular file holding ``data``.

    The bytes go to a new file (``O_CREAT | O_EXCL``) that is then renamed over ``name``: whatever was
    there (a file, a hard link to someone else's file, a symlink, a FIFO) is replaced, never opened.
    A folder in the way is removed with ``remove_tree``."""
    temp, fd = _new_temp(dir_fd, mode)
    try:
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise UnsafeEntry(errno.EINVAL, "not a regular file", temp)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if owner is not None:
                os.fchown(fd, owner[0], owner[1])
        finally:
            os.close(fd)
        try:
            os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno not in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                raise
            remove_tree(name, dir_fd)
            os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp, dir_fd=dir_fd)
        raise


def read_file(dir_fd: int, name: str, limit: int) -> bytes:
    """The bytes of the regular file ``name`` (at most ``limit``); ``UnsafeEntry`` for anything else."""
    fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafeEntry(errno.EINVAL, "not a regular file", name)
        chunks: list[bytes] = []
        left = limit
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def remove(dir_fd: int, name: str) -> None:
    """Remove the entry ``name`` (a file, link, FIFO: unlinked; a folder: its whole tree)."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno not in (errno.EISDIR, errno.EPERM):
            raise
        remove_tree(name, dir_fd)


def remove_tree(name: str, dir_fd: int, *, max_entries: int = MAX_TREE_ENTRIES) -> None:
    """Remove the folder ``name`` in ``dir_fd`` and everything under it, however deep.

    No recursion and no fd per level: each folder's sub-folders are renamed up into ``dir_fd`` under
    fresh temporary names and processed in turn, so a tree 100,000 levels deep costs two fds and a
    list of names. Links are unlinked, never followed. Raises OSError (E2BIG) past ``max_entries``."""
    pending = [name]
    seen = 0
    while pending:
        current = pending.pop()
        fd = open_dir(current, dir_fd)
        try:
            for entry in os.listdir(fd):
                seen += 1
                if seen > max_entries:
                    raise OSError(errno.E2BIG, f"more than {max_entries} entries to remove", name)
                info = os.stat(entry, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISDIR(info.st_mode):
                    flat = _temp_name()
                    os.rename(entry, flat, src_dir_fd=fd, dst_dir_fd=dir_fd)
                    pending.append(flat)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry, dir_fd=fd)
        finally:
            os.close(fd)
        try:
            os.rmdir(current, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno != errno.ENOTEMPTY:
                raise
            pending.append(current)  # something was added meanwhile: empty it again


def remove_path_tree(path: str, *, max_entries: int = MAX_TREE_ENTRIES) -> None:
    """``remove_tree`` for an absolute path (its parent is trusted: the server created it)."""
    parent, name = os.path.split(os.path.normpath(path))
    parent_fd = open_dir(parent)
    try:
        remove_tree(name, parent_fd, max_entries=max_entries)
    except FileNotFoundError:
        return
    finally:
        os.close(parent_fd)


def _temp_name() -> str:
    return f"{TEMP_PREFIX}{secrets.token_hex(8)}"


def _new_temp(dir_fd: int, mode: int) -> tuple[str, int]:
    for _ in range(16):  # room code may plant something under a name it guessed: take another
        temp = _temp_name()
        try:
            return temp, os.open(temp, NEW_FILE_FLAGS, mode, dir_fd=dir_fd)
        except FileExistsError:
            continue
    raise OSError(errno.EEXIST, "no free temporary name")


# -- what the workspace's sync needs ----------------------------------------------------------------

MAX_PATH = 255


def valid_path(path: str) -> bool:
    """A room file path as docs/doc-schema.md defines it: relative, ``/``-separated, no empty,
    ``.`` or ``..`` segment, at most 255 characters."""
    if not path or len(path) > MAX_PATH or path.startswith("/") or "\0" in path:
        return False
    return all(part not in ("", ".", "..") for part in path.split("/"))


@dataclass(frozen=True, slots=True)
class FileStat:
    """What tells that a file changed on disk without reading it."""

    size: int
    mtime_ns: int
    ino: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileStat:
        return cls(st.st_size, st.st_mtime_ns, st.st_ino)


def _stat_entry(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def read_path(root: str, path: str, limit: int) -> tuple[bytes | None, FileStat] | None:
    """The content of the regular file ``path`` under ``root`` (None when larger than ``limit``) and
    its stat; None when it does not exist or is anything but a regular file."""
    opened = open_parent(root, path, create=False)
    if opened is None:
        return None
    dir_fd, name = opened
    try:
        fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        os.close(dir_fd)
        if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENXIO, errno.EISDIR, errno.ENOTDIR):
            return None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        if st.st_size > limit:
            return None, FileStat.of(st)
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:  # it grew while being read
                return None, FileStat.of(os.fstat(fd))
        return b"".join(chunks), FileStat.of(os.fstat(fd))
    finally:
        os.close(fd)
        os.close(dir_fd)


def write_atomic(
    root: str,
    path: str,
    data: bytes,
    *,
    expect: FileStat | None = None,
    check_expect: bool = False,
    owner: tuple[int, int] | None = None,
) -> FileStat | None:
    """``write_file`` at ``path`` under ``root`` (missing folders made, anything in the way replaced).
    Returns the new file's stat; with ``check_expect``, writes nothing and returns None when the
    file on disk is no longer ``expect`` (it changed since it was read: merge first)."""
    opened = open_parent(root, path, create=True, owner=owner)
    if opened is None:
        raise OSError(errno.ENOENT, "no folder for the file", path)
    dir_fd, name = opened
    try:
        if check_expect:
            current = _stat_entry(dir_fd, name)
            now = FileStat.of(current) if current is not None and stat.S_ISREG(current.st_mode) else None
            if now != expect:
                return None
        write_file(dir_fd, name, data, owner=owner)
        written = _stat_entry(dir_fd, name)
        return FileStat.of(written) if written is not None else None
    finally:
        os.close(dir_fd)


def remove_path(root: str, path: str) -> None:
    """Remove ``path`` under ``root``, whatever it is (a folder with its whole tree)."""
    opened = open_parent(root, path, create=False)
    if opened is None:
        return
    dir_fd, name = opened
    try:
        remove(dir_fd, name)
    except FileNotFoundError:
        return
    finally:
        os.close(dir_fd)


@dataclass(frozen=True, slots=True)
class Listing:
    """The regular files under a root (path -> stat), and what the walk left out."""

    files: dict[str, FileStat]
    others: set[str]  # entries that are not regular files (folders, links, FIFOs, devices)
    truncated: bool  # more entries than the cap: the rest is not listed
    too_deep: int  # folders not entered because they were deeper than the cap


def scan(root: str, ignored: Callable[[str, bool], bool], *, max_entries: int, max_depth: int) -> Listing:
    """Every regular file under ``root``, without following links, skipping special files, the
    server's own temporary files and ``ignored(path, is_dir)``; at most ``max_entries`` entries and
    ``max_depth`` folders deep (one fd per level is held, so the cap bounds the fds too)."""
    files: dict[str, FileStat] = {}
    others: set[str] = set()
    seen = 0
    too_deep = 0
    root_fd = open_dir(root)
    stack: list[tuple[int, str, list[str]]] = [(root_fd, "", sorted(os.listdir(root_fd)))]
    try:
        while stack:
            fd, prefix, pending = stack[-1]
            if not pending:
                stack.pop()
                os.close(fd)
                continue
            name = pending.pop()
            seen += 1
            if seen > max_entries:
                return Listing(files, others, True, too_deep)
            path = prefix + name
            st = _stat_entry(fd, name)
            if st is None or name.startswith(TEMP_PREFIX):
                continue
            if not stat.S_ISREG(st.st_mode):
                others.add(path)
            if stat.S_ISDIR(st.st_mode):
                if ignored(path, True):
                    continue
                if len(stack) >= max_depth:
                    too_deep += 1
                    continue
                try:
                    child = open_dir(name, fd)
                except OSError:
                    continue  # gone, or turned into a link between the stat and the open
                try:
                    children = sorted(os.listdir(child))
                except OSError:
                    os.close(child)
                    continue
                stack.append((child, path + "/", children))
            elif stat.S_ISREG(st.st_mode) and not ignored(path, False):
                files[path] = FileStat.of(st)
    finally:
        for fd, _, _ in stack:
            os.close(fd)
    return Listing(files, others, False, too_deep)
