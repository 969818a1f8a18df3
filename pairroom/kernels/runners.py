"""What runs a room's file: Python in the kernel itself, JavaScript with ``node`` started by the kernel.

A file that is neither is not run (a Markdown file run as Python is a syntax error that explains
nothing). JavaScript goes through the same kernel, queue, sandbox, limits, interrupt and output path as
Python: the kernel runs a short Python program that starts ``node`` in the room's folder and copies its
stdout and stderr into the run's outputs as they come. ``node`` is used only if it works inside the
sandbox (``probe_node`` at start-up: the sandbox binds the host's ``/usr``, so a Node.js installed
there is what the kernel sees).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pairroom.sandbox.bubblewrap import Sandbox

log = logging.getLogger("pairroom.kernels")

PYTHON_SUFFIXES = (".py", ".pyi")
NODE_SUFFIXES = (".js", ".mjs", ".cjs")


class NotRunnable(ValueError):
    """The file (or code) cannot be run here; the message says why, for the page's Run button."""


@dataclass(frozen=True, slots=True)
class Runners:
    """The interpreters a run may use on this node: Python always, ``node`` when the sandbox has it."""

    node: str | None = None  # its version, e.g. "v20.20.2"

    def describe(self) -> dict[str, str | None]:
        return {"python": "kernel", "javascript": self.node}


def language_of(path: str) -> str | None:
    lower = path.lower()
    if lower.endswith(PYTHON_SUFFIXES):
        return "python"
    if lower.endswith(NODE_SUFFIXES):
        return "javascript"
    return None


def kernel_code(runners: Runners, language: str | None, text: str, path: str | None) -> str:
    """The Python the kernel runs for ``text`` in ``language`` (``path`` is the file it comes from,
    None for a selection). Raises NotRunnable."""
    if language == "python":
        return text
    if language == "javascript":
        if runners.node is None:
            raise NotRunnable("this server's sandbox has no node (Node.js), so JavaScript files cannot run here")
        return node_program(text, path)
    what = f"{path} is not a Python or JavaScript file" if path else "only Python and JavaScript run here"
    raise NotRunnable(f"{what}: the room runs .py files in its Python kernel and .js files with node")


def node_program(text: str, path: str | None) -> str:
    """A Python program that runs ``node path`` (or ``node -`` fed ``text``, for a selection) and
    copies its output as it comes. A non-zero exit is the run's error; an interrupt kills node."""
    args = [path] if path is not None else ["-"]
    source = None if path is not None else text
    return NODE_RUNNER.format(args=repr(args), source=repr(source))  # Python literals


NODE_RUNNER = """def __pairroom_node(args, source):
    import codecs, os, selectors, subprocess, sys

    class NodeExit(Exception):
        def _render_traceback_(self):
            return [str(self)]

    env = {{k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "CLICOLOR_FORCE")}}
    env.update(NO_COLOR="1", NODE_DISABLE_COLORS="1")  # the kernel forces colours; the page shows plain text
    proc = subprocess.Popen(["node", *args], stdin=subprocess.PIPE if source is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        if source is not None:
            proc.stdin.write(source.encode())
            proc.stdin.close()
        sel = selectors.DefaultSelector()
        for pipe, out in ((proc.stdout, sys.stdout), (proc.stderr, sys.stderr)):
            sel.register(pipe, selectors.EVENT_READ, (out, codecs.getincrementaldecoder("utf-8")("replace")))
        while sel.get_map():
            for key, _ in sel.select():
                chunk = os.read(key.fd, 65536)
                out, decoder = key.data
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                out.write(decoder.decode(chunk).replace("/home/room/", "").replace("[stdin]", "selection"))
                out.flush()
        status = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if status:
        raise NodeExit(f"node exited with status {{status}}" if status > 0 else f"node was killed by signal {{-status}}")


try:
    __pairroom_node({args}, {source})
finally:
    del __pairroom_node
"""


def probe_node(sandbox: Sandbox) -> str | None:
    """The version of the ``node`` the sandbox can run, or None (not installed, or it fails there)."""
    node = shutil.which("node", path="/usr/bin:/bin") if sandbox.isolated else shutil.which("node")
    if node is None:
        return None
    with tempfile.TemporaryDirectory(prefix="pairroom-node-probe-") as scratch:
        Path(scratch).chmod(0o755)  # the sandbox uid must reach what bwrap binds
        argv, _ = sandbox.wrap([node, "--version"], Path(scratch), Path(scratch))
        try:
            done = subprocess.run(argv, capture_output=True, timeout=20, check=False, text=True)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("node does not run in the kernel sandbox", extra={"error": str(exc)})
            return None
    if done.returncode != 0:
        log.warning("node does not run in the kernel sandbox", extra={"error": done.stderr.strip()[-300:]})
        return None
    return done.stdout.strip() or None
