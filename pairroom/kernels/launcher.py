"""The jupyter-client kernel manager that starts a kernel inside the sandbox.

Imported only when a kernel is launched (``kernel.Kernel.start``): jupyter-client, pyzmq and
tornado are about 6 MiB resident, which a node that never runs code does not pay. It launches in
``dirs.KernelDirs``; per kernel (one room's kernel, or one pool slot that becomes a room's kernel)
the server keeps::

    <state>/<kernel id>/          0711, the server's
        work/                     0700, the kernel uid's: the room's working copy, /home/room inside
        kernel.log                the kernel's stdout and stderr (never the server's terminal)
        launch-<n>/               0700, the kernel uid's: the connection file and ipc sockets of launch n

A restart is a new launch with a new ``launch-<n>`` dir (never shared: a kernel that could reach
another launch's sockets could talk to that kernel) and a new cgroup, over the same ``work`` dir, so
files the code wrote survive a restart the way they would in a local Jupyter.

The manager is used for exactly one launch; restarts build a new one. Its auto-restarter is off:
``kernel`` notices a death itself (through a pidfd) and fails the run in flight, which the stock
restarter would leave waiting for a reply that never comes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio
from jupyter_client.kernelspec import KernelSpec
from jupyter_client.manager import AsyncKernelManager
from zmq.utils.monitor import parse_monitor_message

from pairroom.kernels.dirs import KernelDirs
from pairroom.sandbox.bubblewrap import Sandbox
from pairroom.sandbox.limits import KernelCgroup, prlimit_argv


def kernel_spec(python: Path) -> KernelSpec:
    return KernelSpec(
        argv=[
            str(python),
            "-m",
            "ipykernel_launcher",
            "-f",
            "{connection_file}",
            # History is an SQLite file in IPYTHONDIR on the small /tmp; a full /tmp would break it.
            "--HistoryManager.enabled=False",
        ],
        display_name="pairroom python",
        language="python",
        # Signals cannot reach the kernel under --new-session; ipykernel's control thread can.
        interrupt_mode="message",
    )


class SandboxedKernelManager(AsyncKernelManager):
    """An AsyncKernelManager whose kernel command is wrapped: cgroup join, setpriv, bwrap, prlimit."""

    def __init__(
        self,
        *,
        sandbox: Sandbox,
        dirs: KernelDirs,
        launch_dir: Path,
        cgroup: KernelCgroup | None,
        memory_in_cgroup: bool,
        **kwargs: Any,
    ) -> None:
        super().__init__(transport="ipc", autorestart=False, **kwargs)
        self._sandbox = sandbox
        self._dirs = dirs
        self._launch_dir = launch_dir
        self._cgroup = cgroup
        self._memory_in_cgroup = memory_in_cgroup
        self.connection_file = str(launch_dir / "kernel.json")
        self.ip = str(launch_dir / "kernel-ipc")  # ipc "ip" is the socket path prefix
        self._kernel_spec = kernel_spec(sandbox.settings.kernel_venv / "bin" / "python")

    def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
        argv = super().format_kernel_cmd(extra_arguments)
        limits = prlimit_argv(
            self._sandbox.settings, memory_in_cgroup=self._memory_in_cgroup, isolated=self._sandbox.isolated
        )
        wrapped, _ = self._sandbox.wrap(limits + argv, self._launch_dir, self._dirs.work)
        if self._cgroup is not None:
            wrapped = self._cgroup.join_argv() + wrapped
        return wrapped

    def write_connection_file(self, **kwargs: Any) -> None:
        super().write_connection_file(**kwargs)
        # The file is 0600 and the server's; a kernel under another uid could not read it.
        self._dirs.give(Path(self.connection_file))

    def launch_environment(self) -> dict[str, str]:
        """What the launcher process gets (bwrap clears it again for the kernel itself)."""
        venv = self._sandbox.settings.kernel_venv
        return {
            "PATH": f"{venv}/bin:/usr/bin:/bin",
            "HOME": str(self._dirs.work),
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
        }


def recheck(socket: zmq.asyncio.Socket | None) -> bool:
    """Read ``zmq.EVENTS`` through pyzmq's asyncio socket: pyzmq then wakes a reader whose wake-up
    was missed while a message waits (``kernel.Kernel._recheck_sockets``). False once it is closed."""
    if socket is None or socket.closed:
        return False
    socket.get(zmq.EVENTS)
    return True


class HandshakeWatch:
    """Tells when a client socket has finished its ZMTP handshake with the kernel.

    Why: the kernel's stdin socket is a ROUTER, which drops a message for a peer whose handshake has
    not completed. Only the shell and IOPub channels answer the start handshake (``kernel_info``), and
    each channel reconnects on its own 100 ms timer while the kernel is still binding, so stdin can
    come up after shell does: a run's ``input()`` in that window would wait for an answer forever.
    Made right after ``start_channels``, before the kernel has bound (it takes ~0.3 s to start), so
    the event cannot have passed."""

    def __init__(self, socket: zmq.asyncio.Socket) -> None:
        self._socket = socket
        self._monitor: zmq.asyncio.Socket | None = socket.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)

    async def wait(self) -> None:
        """Return once the handshake succeeded (the caller bounds the wait)."""
        monitor = self._monitor
        if monitor is None:
            return
        while True:
            event = parse_monitor_message(await monitor.recv_multipart())
            if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.close()
                return

    def close(self) -> None:
        if self._monitor is not None:
            self._socket.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None
