"""Settings of version control (``Settings.vcs_settings()`` fills them from ``PAIRROOM_GIT_*``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class VcsSettings:
    root: Path | None = None  # where repositories live; None: a fresh dir under the temp dir, removed at stop
    allow_local: bool = False  # git://, http://, file:// and loopback or private hosts (--git-allow-local)
    max_file_bytes: int = 1 * MiB  # text files up to this size become the document's files
    max_repo_bytes: int = 200 * MiB  # a repository whose files are larger is refused (413)
    depth: int = 1  # shallow clones by default; 0 for the whole history
    timeout: float = 120.0  # one git call
