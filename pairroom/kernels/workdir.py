"""Writing the room's files into a kernel's working directory, safely.

The working directory is writable by the sandboxed code, and the server may be root. A plain
``open(workdir / path, "w")`` would follow a symlink the code planted (``ln -s /etc helper``) and let
a room overwrite host files with the server's rights. So every path is walked one component at a
time from a directory fd with ``O_NOFOLLOW``: a symlink (or a file where a folder should be) found
on the way is removed and replaced by what the room says, never followed.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Mapping

log = logging.getLogger("pairroom.kernels.workdir")

MAX_PATH = 255


def valid_path(path: str) -> bool:
    """A room file path as docs/doc-schema.md defines it: relative, ``/``-separated, no empty,
    ``.`` or ``..`` segment, at most 255 characters."""
    if not path or len(path) > MAX_PATH or path.startswith("/") or "\0" in path:
        return False
    return all(part not in ("", ".", "..") for part in path.split("/"))


class WorkDir:
    """Materialises room files into one directory; remembers what it wrote so deletions follow."""

    def __init__(self, root: str, uid: int | None, gid: int | None) -> None:
        self.root = root
        self.uid = uid
        self.gid = gid
        self.written: set[str] = set()

    def sync(self, files: Mapping[str, str]) -> None:
        """Write every file of the room; remove the ones it wrote before that the room deleted."""
        for path, content in files.items():
            if not valid_path(path):
                log.warning("room file with an invalid path not written", extra={"path": path[:300]})
                continue
            try:
                self._write(path, content.encode())
            except OSError as exc:
                log.warning("room file not written", extra={"path": path, "error": str(exc)})
                continue
            self.written.add(path)
        for path in sorted(self.written - set(files)):
            self._remove(path)
            self.written.discard(path)

    def _open_parent(self, path: str, create: bool) -> tuple[int, str] | None:
        """An fd of the directory holding ``path`` (walked without following links), and the name."""
        *folders, name = path.split("/")
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            for folder in folders:
                try:
                    child = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                except OSError as exc:
                    if not create:
                        return None
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        os.unlink(folder, dir_fd=fd)  # a link or a file where the room has a folder
                    elif exc.errno != errno.ENOENT:
                        raise
                    os.mkdir(folder, 0o755, dir_fd=fd)
                    self._own(folder, fd)
                    child = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd, name

    def _write(self, path: str, data: bytes) -> None:
        opened = self._open_parent(path, create=True)
        assert opened is not None
        dir_fd, name = opened
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
            try:
                fd = os.open(name, flags, 0o644, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.EISDIR):
                    raise
                _remove_entry(name, dir_fd)  # a planted link or a folder where the room has a file
                fd = os.open(name, flags, 0o644, dir_fd=dir_fd)
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise OSError(errno.EINVAL, "not a regular file")
                os.write(fd, data)
                if self.uid is not None:
                    os.fchown(fd, self.uid, self.gid if self.gid is not None else -1)
            finally:
                os.close(fd)
        finally:
            os.close(dir_fd)

    def _remove(self, path: str) -> None:
        try:
            opened = self._open_parent(path, create=False)
            if opened is None:
                return
            dir_fd, name = opened
            try:
                os.unlink(name, dir_fd=dir_fd)
            finally:
                os.close(dir_fd)
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("deleted room file not removed", extra={"path": path, "error": str(exc)})

    def _own(self, name: str, dir_fd: int) -> None:
        if self.uid is not None:
            os.chown(name, self.uid, self.gid if self.gid is not None else -1, dir_fd=dir_fd, follow_symlinks=False)


def _remove_entry(name: str, dir_fd: int) -> None:
    """Remove a file, link or whole folder tree named ``name`` in ``dir_fd`` without following links."""
    try:
        os.unlink(name, dir_fd=dir_fd)
        return
    except IsADirectoryError:
        pass
    except OSError as exc:
        if exc.errno != errno.EISDIR:
            raise
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
    try:
        for entry in os.listdir(fd):
            _remove_entry(entry, fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dir_fd)
