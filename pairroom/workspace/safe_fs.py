"""File operations on a directory that room code can write, none of which a room can turn against the server.

Room code (a terminal, a run) owns the working directory: it can plant a symlink to ``/etc``, a named
pipe where a room file goes, a device node, or a folder 3,000 levels deep. Every function here holds:

- every component of a path is opened relative to its parent's fd with ``O_NOFOLLOW``: a symlink is
  never followed, only removed or skipped;
- every open has ``O_NONBLOCK`` and the type is checked with ``fstat`` afterwards: a FIFO or a device
  is refused before a single byte is read or written, so nothing blocks;
- only regular files and directories are read, written, listed or descended into;
- no recursion: trees are walked with an explicit stack, and removal climbs back with ``..`` checked
  against the inode it came from, so depth costs neither stack frames nor file descriptors;
- these are blocking system calls: callers run them in a worker thread with a timeout
  (``workspace.py`` does), never on the event loop.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from collections.abc import Callable
from dataclasses import dataclass

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
TEMP_PREFIX = ".pairroom-tmp-"
MAX_PATH = 255


class UnsafeEntry(OSError):
    """A path that is a symlink, a special file, or not the kind of entry expected."""


@dataclass(frozen=True, slots=True)
class FileStat:
    """What tells a file changed on disk without reading it."""

    size: int
    mtime_ns: int
    ino: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileStat:
        return cls(st.st_size, st.st_mtime_ns, st.st_ino)


def valid_path(path: str) -> bool:
    """A room file path as docs/doc-schema.md defines it: relative, ``/``-separated, no empty,
    ``.`` or ``..`` segment, at most 255 characters."""
    if not path or len(path) > MAX_PATH or path.startswith("/") or "\0" in path:
        return False
    return all(part not in ("", ".", "..") for part in path.split("/"))


def open_root(root: str) -> int:
    return os.open(root, DIR_FLAGS)


def _open_dir_at(dir_fd: int, name: str) -> int:
    fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    if not stat.S_ISDIR(os.fstat(fd).st_mode):  # O_DIRECTORY already says so; belt and braces
        os.close(fd)
        raise UnsafeEntry(errno.ENOTDIR, "not a directory", name)
    return fd


def open_parent(root: str, path: str, *, create: bool, own: Callable[[int, str], None] | None = None) -> tuple[int, str] | None:
    """An fd of the directory holding ``path`` and the last name, walked without following links.

    With ``create``, missing folders are made and a link, file or special file where the room has a
    folder is removed first; without it, None when the folder does not exist or is not a folder."""
    *folders, name = path.split("/")
    fd = open_root(root)
    try:
        for folder in folders:
            try:
                child = _open_dir_at(fd, folder)
            except OSError as exc:
                if not create:
                    if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
                        os.close(fd)
                        return None
                    raise
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    os.unlink(folder, dir_fd=fd)  # a link or a file where the room has a folder
                elif exc.errno != errno.ENOENT:
                    raise
                os.mkdir(folder, 0o755, dir_fd=fd)
                if own is not None:
                    own(fd, folder)
                child = _open_dir_at(fd, folder)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd, name


def read_regular(dir_fd: int, name: str, limit: int) -> tuple[bytes | None, FileStat]:
    """The content of regular file ``name`` (None if larger than ``limit``) and its stat.
    Raises UnsafeEntry for anything but a regular file (a link raises ELOOP before opening)."""
    fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeEntry(errno.EINVAL, "not a regular file", name)
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
            if total > limit:  # grew while reading
                return None, FileStat.of(os.fstat(fd))
        return b"".join(chunks), FileStat.of(os.fstat(fd))
    finally:
        os.close(fd)


def read_file(root: str, path: str, limit: int) -> tuple[bytes | None, FileStat] | None:
    """``read_regular`` for a path under ``root``; None if it does not exist (or is not a file)."""
    opened = open_parent(root, path, create=False)
    if opened is None:
        return None
    dir_fd, name = opened
    try:
        return read_regular(dir_fd, name, limit)
    except (FileNotFoundError, UnsafeEntry):
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR):
            return None
        raise
    finally:
        os.close(dir_fd)


def stat_entry(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def write_atomic(
    root: str,
    path: str,
    data: bytes,
    *,
    expect: FileStat | None = None,
    check_expect: bool = False,
    uid: int | None = None,
    gid: int | None = None,
) -> FileStat | None:
    """Write ``data`` to ``path`` through a temporary file renamed over it, so a reader (or a crash)
    never sees half a file. Returns the new file's stat, or None when ``check_expect`` is set and
    the file on disk is no longer ``expect`` (someone changed it since: merge before writing).

    Whatever is in the way (a link, a FIFO, a folder of any depth) is removed, never followed."""

    def own(fd: int, name: str) -> None:
        if uid is not None:
            os.chown(name, uid, gid if gid is not None else -1, dir_fd=fd, follow_symlinks=False)

    opened = open_parent(root, path, create=True, own=own)
    assert opened is not None
    dir_fd, name = opened
    try:
        current = stat_entry(dir_fd, name)
        if check_expect:
            now = FileStat.of(current) if current is not None and stat.S_ISREG(current.st_mode) else None
            if now != expect:
                return None
        temp = f"{TEMP_PREFIX}{secrets.token_hex(6)}"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if uid is not None:
                os.fchown(fd, uid, gid if gid is not None else -1)
            written = FileStat.of(os.fstat(fd))
        except BaseException:
            os.close(fd)
            os.unlink(temp, dir_fd=dir_fd)
            raise
        os.close(fd)
        if current is not None and stat.S_ISDIR(current.st_mode):
            remove_tree(dir_fd, name)  # a folder where the room has a file
        try:
            os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno not in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                os.unlink(temp, dir_fd=dir_fd)
                raise
            remove_tree(dir_fd, name)  # a folder appeared meanwhile
            os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        return written
    finally:
        os.close(dir_fd)


def remove(root: str, path: str) -> None:
    """Remove ``path`` (a file, a link, a special file or a whole folder) without following links."""
    opened = open_parent(root, path, create=False)
    if opened is None:
        return
    dir_fd, name = opened
    try:
        remove_tree(dir_fd, name)
    finally:
        os.close(dir_fd)


def remove_tree(dir_fd: int, name: str) -> None:
    """Remove ``name`` in ``dir_fd``, whatever it is, at any depth, with a bounded number of fds.

    Descends one folder at a time holding one fd; climbs back with ``..`` and checks that the folder
    reached is the one it came from (device and inode), so a tree moved meanwhile cannot lead it
    out of where it started: it stops instead."""
    try:
        os.unlink(name, dir_fd=dir_fd)
        return
    except FileNotFoundError:
        return
    except OSError as exc:
        if exc.errno not in (errno.EISDIR, errno.EPERM):
            raise
    trail: list[tuple[int, int]] = []  # (device, inode) of the folders above the current one
    current = os.dup(dir_fd)
    names: list[str] = [name]  # the name of each folder below the start, current last
    try:
        while names:
            try:
                child = _open_dir_at(current, names[-1])
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    os.unlink(names.pop(), dir_fd=current)
                    continue
                if exc.errno == errno.ENOENT:
                    names.pop()
                    continue
                raise
            descended = False
            with os.scandir(child) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        here = os.fstat(current)
                        trail.append((here.st_dev, here.st_ino))
                        os.close(current)
                        current = child
                        names.append(entry.name)
                        descended = True
                        break
                    os.unlink(entry.name, dir_fd=child)
            if descended:
                continue
            os.close(child)
            os.rmdir(names.pop(), dir_fd=current)
            if not names:
                break
            parent = os.open("..", DIR_FLAGS, dir_fd=current)
            st = os.fstat(parent)
            expected = trail.pop()
            if (st.st_dev, st.st_ino) != expected:
                os.close(parent)
                raise UnsafeEntry(errno.EXDEV, "folder moved while being removed", name)
            os.close(current)
            current = parent
    finally:
        os.close(current)


@dataclass(frozen=True, slots=True)
class Listing:
    """The regular files under a root (path -> stat), and what the walk left out."""

    files: dict[str, FileStat]
    truncated: bool  # more entries than the cap: the rest is not listed
    too_deep: int  # folders not entered because they were deeper than the cap


def scan(root: str, ignored: Callable[[str, bool], bool], *, max_entries: int, max_depth: int) -> Listing:
    """Every regular file under ``root``, without following links, skipping special files and
    ``ignored(path, is_dir)``; at most ``max_entries`` entries and ``max_depth`` folders deep
    (one fd per level of depth is held, so the cap also bounds the fds)."""
    files: dict[str, FileStat] = {}
    seen = 0
    too_deep = 0
    stack: list[tuple[int, str, list[str]]] = []  # (fd, prefix, names still to visit)
    root_fd = open_root(root)
    try:
        stack.append((root_fd, "", sorted(os.listdir(root_fd))))
        while stack:
            fd, prefix, pending = stack[-1]
            if not pending:
                stack.pop()
                if fd != root_fd:
                    os.close(fd)
                continue
            name = pending.pop()
            seen += 1
            if seen > max_entries:
                return Listing(files, True, too_deep)
            path = prefix + name
            st = stat_entry(fd, name)
            if st is None:
                continue
            if stat.S_ISDIR(st.st_mode):
                if ignored(path, True):
                    continue
                if len(stack) >= max_depth:
                    too_deep += 1
                    continue
                try:
                    child = _open_dir_at(fd, name)
                    children = sorted(os.listdir(child))
                except OSError:
                    continue  # gone, or turned into a link between the stat and the open
                stack.append((child, path + "/", children))
            elif stat.S_ISREG(st.st_mode) and not name.startswith(TEMP_PREFIX) and not ignored(path, False):
                files[path] = FileStat.of(st)
    finally:
        for fd, _, _ in stack:
            if fd != root_fd:
                os.close(fd)
        os.close(root_fd)
    return Listing(files, False, too_deep)
