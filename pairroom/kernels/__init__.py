"""Room kernels: sandboxed Jupyter kernels that run a room's code and write the outputs into its doc.

The sandbox they run in (bubblewrap, rlimits and cgroups, and the ``KernelSettings`` knobs) is
``pairroom/sandbox/``, shared with terminals and the debugger. Modules here, each with one job:

- ``launcher``  the jupyter-client kernel manager that wraps the kernel command in the above
- ``outputs``   Jupyter messages to nbformat outputs, with the per-run output cap
- ``kernel``    one kernel process: execute, interrupt, kill, and how it died
- ``pool``      pre-started kernels so a room's first run does not wait for a boot
- ``rundoc``    writing runs, outputs and the kernel's state into the room document
- ``service``   one kernel per room on this node: the run queue, idle shutdown, the lease hook
- ``api``       the HTTP routes
"""

from pairroom.sandbox.settings import KernelSettings

__all__ = ["KernelSettings"]
