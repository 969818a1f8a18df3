"""Writing the room's files into a kernel's working directory, safely.

The working directory is writable by the sandboxed code, and the server may be root. A plain
``open(workdir / path, "w")`` would follow a symlink the code planted (``ln -s /etc helper``) and let
a room overwrite host files with the server's rights; a named pipe where a room file goes would block
the call forever. Every operation goes through kernels/safe_fs.py (no link followed, nothing but
regular files and folders opened, nothing blocking), and ``sync`` runs in a thread with a timeout
(``KernelSettings.file_sync_timeout``), never on the event loop.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Mapping

from pairroom.kernels import safe_fs

log = logging.getLogger("pairroom.kernels.workdir")

MAX_PATH = 255


def valid_path(path: str) -> bool:
    """A room file path as docs/doc-schema.md defines it: relative, ``/``-separated, no empty,
    ``.`` or ``..`` segment, at most 255 characters."""
    if not path or len(path) > MAX_PATH or path.startswith("/") or "\0" in path:
        return False
    return all(part not in ("", ".", "..") for part in path.split("/"))


class WorkDir:
    """Materialises room files into one directory; remembers what it wrote so deletions follow.

    ``sync`` blocks (it is file I/O): call it through ``safe_fs.run_off_loop``."""

    def __init__(self, root: str, uid: int | None, gid: int | None) -> None:
        self.root = root
        self.owner = (uid, gid if gid is not None else -1) if uid is not None else None
        self.written: set[str] = set()

    def sync(self, files: Mapping[str, str]) -> list[str]:
        """Write every file of the room; remove the ones it wrote before that the room deleted.
        Returns the paths that could not be written (each is logged)."""
        failed: list[str] = []
        for path, content in files.items():
            if not valid_path(path):
                log.warning("room file with an invalid path not written", extra={"path": path[:300]})
                failed.append(path[:300])
                continue
            try:
                self._write(path, content.encode())
            except (OSError, RecursionError) as exc:
                log.warning("room file not written", extra={"path": path, "error": str(exc)})
                failed.append(path)
                continue
            self.written.add(path)
        for path in sorted(self.written - set(files)):
            self._remove(path)
            self.written.discard(path)
        return failed

    def _write(self, path: str, data: bytes) -> None:
        opened = safe_fs.open_parent(self.root, path, create=True, owner=self.owner)
        if opened is None:
            raise OSError(errno.ENOENT, "no folder for the file", path)
        dir_fd, name = opened
        try:
            safe_fs.write_file(dir_fd, name, data, owner=self.owner)
        finally:
            os.close(dir_fd)

    def _remove(self, path: str) -> None:
        try:
            opened = safe_fs.open_parent(self.root, path, create=False)
            if opened is None:
                return
            dir_fd, name = opened
            try:
                safe_fs.remove(dir_fd, name)
            finally:
                os.close(dir_fd)
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("deleted room file not removed", extra={"path": path, "error": str(exc)})
