"""The kernels' Python environment, prepared by the package itself (``pairroom kernels setup``).

Kernels run as an unprivileged uid inside bubblewrap, which cannot read a Python installed under
``/root`` (pyenv) or a server's own venv there. So they get a venv of their own, made from the
system's ``/usr/bin/python3`` (the sandbox binds ``/usr``) at a place the sandbox uid can reach, with
only ipykernel and what it needs, pinned in ``kernel-requirements.txt`` (the file the repository's
``scripts/ensure-kernel-env`` reads too, and the stamp they both write: either one's venv satisfies the
other). A server installed with ``pip install`` runs this at its first start that needs it; the
command does it ahead of time, with pip's progress.
"""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("pairroom.kernels")

REQUIREMENTS_FILE = Path(__file__).with_name("kernel-requirements.txt")
STAMP = ".pairroom-installed"
DEFAULT_PYTHON = "/usr/bin/python3"


class SetupError(RuntimeError):
    """The environment could not be prepared; the message says what failed and what to do."""


def requirements() -> list[str]:
    lines = REQUIREMENTS_FILE.read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def is_ready(venv: Path) -> bool:
    """True when ``venv`` holds exactly the pinned packages (its stamp says so) and its Python runs."""
    python = venv / "bin" / "python"
    try:
        stamp = (venv / STAMP).read_text().strip()
    except OSError:
        return False
    return stamp == " ".join(requirements()) and python.exists()


def setup(venv: Path, python: str | None = None, say: Callable[[str], None] = print) -> bool:
    """Create or update the kernels' venv at ``venv``; returns False when it was ready already.

    ``say`` gets each step (and pip's own progress lines). Raises SetupError."""
    if is_ready(venv):
        say(f"the kernels' environment is ready: {venv}")
        return False
    base = python or os.environ.get("PAIRROOM_KERNEL_PYTHON") or DEFAULT_PYTHON
    if not Path(base).exists():
        raise SetupError(
            f"no {base} to build the kernels' environment from: install python3 (and python3-venv), "
            "or set PAIRROOM_KERNEL_PYTHON to a Python the sandbox can read (not one under /root)"
        )
    pins = requirements()
    venv.parent.mkdir(parents=True, exist_ok=True)
    say(f"[1/3] creating a virtual environment from {base} at {venv}")
    _run([base, "-m", "venv", str(venv)], say, "python3 -m venv (on Debian: apt-get install python3-venv)")
    say(f"[2/3] installing {' '.join(pins)}")
    _run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--progress-bar",
            "off",
            *pins,
        ],
        say,
        "pip install (is a package index reachable?)",
    )
    say("[3/3] making it readable by the sandbox's user")
    _readable(venv)
    for warning in _unreachable_parents(venv):
        say(f"warning: {warning}")
    (venv / STAMP).write_text(" ".join(pins) + "\n")
    say(f"the kernels' environment is ready: {venv}")
    return True


def _run(argv: list[str], say: Callable[[str], None], what: str) -> None:
    """Run ``argv``, passing each line it prints to ``say`` as it comes (pip's progress)."""
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except OSError as exc:
        raise SetupError(f"{what} could not start: {exc}") from exc
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        if line:
            say(f"      {line}")
            tail = [*tail[-9:], line]
    if proc.wait() != 0:
        raise SetupError(f"{what} failed (status {proc.returncode}): {' / '.join(tail[-3:])}")


def _readable(venv: Path) -> None:
    """chmod a+rX: the sandbox's uid (65534 when the server is root) reads and runs the venv."""
    for root, dirs, files in os.walk(venv):
        for name in [*dirs, *files]:
            path = Path(root, name)
            if path.is_symlink():
                continue
            mode = path.stat().st_mode
            extra = stat.S_IRGRP | stat.S_IROTH
            if stat.S_ISDIR(mode) or mode & stat.S_IXUSR:
                extra |= stat.S_IXGRP | stat.S_IXOTH
            path.chmod(mode | extra)
    venv.chmod(venv.stat().st_mode | stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH)


def _unreachable_parents(venv: Path) -> list[str]:
    """Directories above ``venv`` other users cannot search (the sandbox uid would not reach it)."""
    if os.geteuid() != 0:
        return []  # the sandbox keeps the server's uid: what the server reads, it reads
    found = []
    for parent in venv.resolve().parents:
        if not parent.stat().st_mode & stat.S_IXOTH:
            found.append(f"{parent} is not searchable by other users; the sandbox uid cannot reach {venv}")
    return found


def main(venv: Path, python: str | None) -> int:
    """``pairroom kernels setup``: 0 when ready (made now or before), 1 with the reason otherwise."""
    try:
        setup(venv, python, say=lambda line: print(line, flush=True))
    except SetupError as exc:
        print(f"pairroom kernels setup: {exc}", file=sys.stderr)
        return 1
    return 0
