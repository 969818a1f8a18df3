"""The bubblewrap command line kernels run under, and the start-up probe that refuses without it.

What the sandbox gives a kernel (measured in docs/kernels.md):

- its own network namespace (only a loopback of its own: no host ports, no DNS), pid, ipc, uts,
  cgroup and user namespaces, and it dies with the server (``--die-with-parent``);
- a root that is an empty read-only tmpfs with ``/usr`` and the kernel venv bound read-only, two
  files of ``/etc`` (nothing of the server's data, secrets or other rooms), a private size-limited
  ``/tmp``, and one writable working directory at ``/home/room``;
- the per-launch ZMQ directory bound at the same path, because the connection file names absolute
  ipc socket paths: kernel and server talk over unix sockets, no TCP at all.

When the server is root the whole command first drops to an unprivileged uid with ``setpriv``:
``--unshare-user`` alone would map the sandbox to host root (files owned by root become readable
through owner bits, and RLIMIT_NPROC is not enforced for root).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pairroom.sandbox.settings import KernelSettings

WORKDIR_INSIDE = "/home/room"


class SandboxUnavailable(RuntimeError):
    """Kernels cannot be isolated on this host; the message says what is missing and how to fix it."""


@dataclass(frozen=True, slots=True)
class Sandbox:
    """Builds the wrapper argv for one kernel launch. ``bwrap is None`` means unsafe (no isolation)."""

    settings: KernelSettings
    bwrap: str | None
    setpriv: str | None  # set when the server is root: drop to the kernel uid first

    @property
    def isolated(self) -> bool:
        return self.bwrap is not None

    @property
    def drops_privileges(self) -> bool:
        return self.setpriv is not None

    def wrap(self, argv: list[str], run_dir: Path, work_dir: Path) -> tuple[list[str], str]:
        """The command that runs ``argv`` sandboxed, and the working dir the kernel sees."""
        if self.bwrap is None:
            return argv, str(work_dir)
        venv = str(self.settings.kernel_venv)
        inner = [
            self.bwrap,
            "--unshare-all", "--unshare-user", "--uid", "1000", "--gid", "1000",
            "--die-with-parent", "--new-session", "--hostname", "sandbox",
            "--ro-bind", "/usr", "/usr",
            "--symlink", "usr/bin", "/bin", "--symlink", "usr/sbin", "/sbin",
            "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
            "--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache",
            "--ro-bind-try", "/etc/localtime", "/etc/localtime",
            "--proc", "/proc", "--dev", "/dev",
            "--size", str(self.settings.tmp_bytes), "--tmpfs", "/tmp",
            "--ro-bind", venv, venv,
            "--bind", str(run_dir), str(run_dir),
            "--bind", str(work_dir), WORKDIR_INSIDE,
            "--chdir", WORKDIR_INSIDE,
            "--clearenv",
            "--setenv", "HOME", WORKDIR_INSIDE,
            "--setenv", "PATH", f"{venv}/bin:/usr/bin:/bin",
            "--setenv", "IPYTHONDIR", "/tmp/.ipython",
            "--setenv", "MPLCONFIGDIR", "/tmp/.mpl",
            "--setenv", "LANG", "C.UTF-8",
            "--setenv", "PYTHONDONTWRITEBYTECODE", "1",
            "--disable-userns",
            "--remount-ro", "/",
            "--",
            *argv,
        ]
        if self.setpriv is None:
            return inner, WORKDIR_INSIDE
        drop = [
            self.setpriv,
            f"--reuid={self.settings.kernel_uid}", f"--regid={self.settings.kernel_gid}",
            "--clear-groups", "--inh-caps=-all", "--",
        ]
        return drop + inner, WORKDIR_INSIDE


def probe(settings: KernelSettings) -> Sandbox:
    """Check that kernels can be isolated here, or raise SandboxUnavailable naming what is missing.

    Runs the real sandbox once (``true`` inside it), so a host where user namespaces are disabled
    fails here, at start-up, rather than at a room's first run. With ``settings.unsafe`` nothing is
    checked and kernels run unisolated.
    """
    python = settings.kernel_venv / "bin" / "python"
    if not python.exists():
        raise SandboxUnavailable(
            f"no kernel Python at {python}: run scripts/ensure-kernel-env (or set the kernel venv)"
        )
    if settings.unsafe:
        return Sandbox(settings, None, None)
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxUnavailable(
            "bubblewrap (bwrap) is not installed, so kernels cannot be sandboxed: install it "
            "(apt-get install bubblewrap, or scripts/ensure-bwrap), or pass --unsafe-kernels for "
            "trusted local use only"
        )
    setpriv = None
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            raise SandboxUnavailable(
                "the server runs as root and setpriv (util-linux) is missing, so kernels cannot drop "
                "to an unprivileged uid; install util-linux or run the server as a normal user"
            )
    sandbox = Sandbox(settings, bwrap, setpriv)
    with tempfile.TemporaryDirectory(prefix="pairroom-probe-") as scratch:
        os.chmod(scratch, 0o755)  # the sandbox uid must be able to reach what bwrap binds
        argv, _ = sandbox.wrap([str(python), "-c", "import ipykernel"], Path(scratch), Path(scratch))
        try:
            done = subprocess.run(argv, capture_output=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SandboxUnavailable(f"the sandbox probe could not run: {exc}") from exc
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip()[-400:]
        hint = ""
        if "namespace" in detail.lower() or "permission" in detail.lower():
            hint = (
                " (user namespaces look disabled: kernel.unprivileged_userns_clone=0, "
                "or AppArmor apparmor_restrict_unprivileged_userns=1)"
            )
        if "ipykernel" in detail:
            hint = (
                f" (the sandbox uid {settings.kernel_uid} cannot import ipykernel from "
                f"{settings.kernel_venv}: it must be world-readable, see scripts/ensure-kernel-env)"
            )
        raise SandboxUnavailable(f"the kernel sandbox does not work here: {detail}{hint}; "
                                 "pass --unsafe-kernels only for trusted local use")
    return sandbox
