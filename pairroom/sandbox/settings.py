"""Kernel settings: one frozen dataclass; the CLI maps ``--kernel-*`` flags and variables onto it."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

MiB = 1024 * 1024


def _default_venv() -> Path:
    """Where the kernels' Python environment is (``pairroom kernels setup`` makes it): in a checkout,
    the repository's ``.cache`` (scripts/ensure-kernel-env makes it there too); for an installed
    package, a cache directory the sandbox's uid can reach (not under ``/root`` when run as root)."""
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").exists():
        return checkout / ".cache" / "kernel-venv"
    if os.geteuid() == 0:
        return Path("/var/cache/pairroom/kernel-venv")
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "pairroom" / "kernel-venv"


@dataclass(frozen=True, slots=True)
class KernelSettings:
    # where kernels come from
    kernel_venv: Path = field(default_factory=_default_venv)
    setup_missing: bool = False  # create kernel_venv at start when it does not exist (pairroom kernels setup)
    state_dir: Path | None = None  # per-kernel run and work dirs; None: a fresh dir under /tmp
    pool_size: int = 2
    pool_fill_delay: float = 0.5  # wait a little before refilling, so a refill does not slow the run that took a kernel
    max_concurrent_starts: int = 2  # starting kernels is CPU-bound (~0.4 s of imports each)
    start_timeout: float = 30.0
    # room kernels
    idle_shutdown_seconds: float = 600.0  # a room kernel with no run for this long is shut down
    run_timeout: float = 300.0  # wall-clock limit of one run; past it the kernel is killed and restarted
    interrupt_grace: float = 3.0  # after an interrupt, a still-busy kernel is killed (C loops ignore interrupts)
    output_cap_bytes: int = 1 * MiB  # per run; then a {"output_type": "truncated"} marker
    output_flush_seconds: float = 0.05  # outputs are written to the doc in batches this far apart
    file_sync_timeout: float = 10.0  # writing the room's files into the kernel's folder (off the event loop)
    # the sandbox
    unsafe: bool = False  # run kernels without bubblewrap: trusted local use only
    kernel_uid: int = 65534  # host uid kernels run as when the server is root (RLIMIT_NPROC needs non-root)
    kernel_gid: int = 65534
    tmp_bytes: int = 256 * MiB  # size of the kernel's private /tmp
    # limits
    cpu_seconds: int = 3600  # RLIMIT_CPU: a lifetime backstop for one kernel process, not per run
    memory_bytes: int = 1024 * MiB  # cgroup memory limit; RLIMIT_AS of twice this when no cgroup is writable
    pids: int = 128  # cgroup pids.max and RLIMIT_NPROC (threads count: an idle kernel has ~10)
    file_bytes: int = 100 * MiB  # RLIMIT_FSIZE: the largest file a kernel may write
    open_files: int = 1024  # RLIMIT_NOFILE
    node: str = field(default_factory=socket.gethostname)  # written to meta.kernel.node
