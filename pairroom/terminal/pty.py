"""One ``bash`` on a server-made PTY, inside the room's sandbox.

The server opens the PTY (``os.openpty``) and starts, with the slave as stdin, stdout and stderr::

    [cgroup join] [setpriv to the sandbox uid] bwrap <the kernels' flags> -- prlimit <limits> --
        setsid -c bash --rcfile <run dir>/bashrc -i

``bwrap --new-session`` leaves the sandbox without a controlling terminal; ``setsid -c`` makes the
PTY bash's controlling terminal again, so job control, ^C and ^Z work (measured in
docs/terminals.md). The working directory is the room's workspace at ``/home/room``; there is no
network, the root is read-only, ``/tmp`` is private and small, and the limits are the kernels'.

The master is read with ``loop.add_reader`` (non-blocking; never a thread per terminal) and written
through a bounded buffer. Killing the outer process kills the sandbox's pid namespace, so nothing
the shell started survives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import shutil
import signal
import struct
import tempfile
import termios
from collections.abc import Callable
from pathlib import Path

from pairroom.sandbox.bubblewrap import Sandbox
from pairroom.sandbox.limits import Cgroups, KernelCgroup, prlimit_argv
from pairroom.workspace import safe_fs

log = logging.getLogger("pairroom.terminal.pty")

BASHRC = r"""# pairroom terminal: a short prompt, a usable TERM, no history file in the room's files
PS1='\w \$ '
export TERM=xterm-256color
export HISTFILE=/tmp/.bash_history
"""

MAX_PENDING_INPUT = 256 * 1024  # bytes typed but not yet taken by the PTY


class ShellStartError(RuntimeError):
    pass


class Shell:
    """A sandboxed ``bash -i`` on a PTY. ``on_output(bytes)`` is called on the loop for each read;
    ``on_exit(code)`` once, after the process is gone."""

    def __init__(
        self,
        sandbox: Sandbox,
        cgroups: Cgroups,
        workdir: Path,
        rows: int,
        cols: int,
        on_output: Callable[[bytes], None],
        on_exit: Callable[[int], None],
    ) -> None:
        self.sandbox = sandbox
        self.cgroups = cgroups
        self.workdir = workdir
        self.rows, self.cols = rows, cols
        self.on_output = on_output
        self.on_exit = on_exit
        self.master: int | None = None
        self.process: asyncio.subprocess.Process | None = None
        self.run_dir: Path | None = None
        self.cgroup: KernelCgroup | None = None
        self.exit_code: int | None = None
        self.reading = False
        self._pending = bytearray()
        self._waiter: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        settings = self.sandbox.settings
        run_dir = Path(tempfile.mkdtemp(prefix="pairroom-term-"))
        os.chmod(run_dir, 0o755)  # the sandbox uid reads the rcfile
        (run_dir / "bashrc").write_text(BASHRC)
        os.chmod(run_dir / "bashrc", 0o644)
        self.run_dir = run_dir
        bash = ["setsid", "-c", "bash", "--rcfile", str(run_dir / "bashrc"), "-i"]
        limits = prlimit_argv(settings, memory_in_cgroup=self.cgroups.limits_memory, isolated=self.sandbox.isolated)
        argv, inside = self.sandbox.wrap(limits + bash, run_dir, self.workdir)
        # bwrap changes into the workspace itself; unsandboxed (--unsafe-kernels) the shell starts there
        cwd = str(run_dir) if self.sandbox.isolated else inside
        self.cgroup = self.cgroups.create(f"term-{run_dir.name}", settings)
        if self.cgroup is not None:
            argv = self.cgroup.join_argv() + argv
        master, slave = os.openpty()
        try:
            _set_size(master, self.rows, self.cols)
            env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "TERM": "xterm-256color", "HOME": str(run_dir)}
            self.process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=slave,
                stdout=slave,
                stderr=slave,
                start_new_session=True,
                cwd=cwd,
                env=env,
            )
        except OSError as exc:
            os.close(master)
            self._cleanup_dirs()
            raise ShellStartError(f"the shell could not start: {exc}") from exc
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        self.master = master
        self.resume()
        self._waiter = asyncio.create_task(self._wait(), name="pairroom-terminal-wait")

    # -- output ------------------------------------------------------------------------------------

    def pause(self) -> None:
        """Stop reading: the PTY's buffer fills and the program blocks on write (backpressure)."""
        if self.reading and self.master is not None and self._loop is not None:
            self._loop.remove_reader(self.master)
            self.reading = False

    def resume(self) -> None:
        if not self.reading and self.master is not None and self._loop is not None and self.exit_code is None:
            self._loop.add_reader(self.master, self._readable)
            self.reading = True

    def _readable(self) -> None:
        assert self.master is not None
        try:
            data = os.read(self.master, 65536)
        except BlockingIOError:
            return
        except OSError as exc:  # EIO: the slave side is closed, the shell is gone
            if exc.errno != errno.EIO:
                log.warning("terminal read failed", extra={"error": str(exc)})
            self.pause()
            return
        if not data:
            self.pause()
            return
        self.on_output(data)

    # -- input -------------------------------------------------------------------------------------

    def write(self, data: bytes) -> bool:
        """Queue bytes for the shell; False (nothing queued) when too much is already waiting."""
        if self.master is None or self.exit_code is not None:
            return False
        if len(self._pending) + len(data) > MAX_PENDING_INPUT:
            return False
        self._pending.extend(data)
        self._drain()
        return True

    def _drain(self) -> None:
        assert self.master is not None and self._loop is not None
        while self._pending:
            try:
                written = os.write(self.master, self._pending)
            except BlockingIOError:
                self._loop.add_writer(self.master, self._writable)
                return
            except OSError:
                self._pending.clear()
                return
            del self._pending[:written]
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_writer(self.master)

    def _writable(self) -> None:
        self._drain()

    def resize(self, rows: int, cols: int) -> None:
        self.rows, self.cols = rows, cols
        if self.master is not None:
            _set_size(self.master, rows, cols)  # the kernel sends SIGWINCH to the foreground group

    # -- the end -----------------------------------------------------------------------------------

    async def _wait(self) -> None:
        assert self.process is not None
        code = await self.process.wait()
        try:
            # drain what the shell printed last (its "exit"), then stop reading
            if self.master is not None:
                for _ in range(64):
                    try:
                        data = os.read(self.master, 65536)
                    except OSError:
                        break
                    if not data:
                        break
                    self.on_output(data)
            self.exit_code = code
            self._close_master()
            if self.cgroup is not None:
                await self.cgroup.remove()
            await self._remove_run_dir()
        finally:
            self.exit_code = code
            self.on_exit(code)

    async def kill(self) -> None:
        """End the shell and everything it started (the sandbox's pid namespace dies with it)."""
        process = self.process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        if self._waiter is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._waiter

    def _close_master(self) -> None:
        master, self.master = self.master, None
        if master is None:
            return
        if self._loop is not None:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(master)
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_writer(master)
        self.reading = False
        os.close(master)

    def _cleanup_dirs(self) -> None:
        """Before the shell ran: nothing but the rcfile is in the run dir."""
        if self.run_dir is not None:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            self.run_dir = None

    async def _remove_run_dir(self) -> None:
        """After the shell ran. The run dir is bound into the sandbox; when the server is not root the
        sandbox's uid is the server's and could have written into it, so it is removed with the safe
        primitives, off the loop."""
        run_dir, self.run_dir = self.run_dir, None
        if run_dir is None:
            return
        try:
            await safe_fs.run_off_loop(safe_fs.remove_path_tree, str(run_dir), timeout=10.0, what="terminal run dir")
        except OSError as exc:
            log.error("terminal run dir left behind", extra={"path": str(run_dir), "error": str(exc)})


def _set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
