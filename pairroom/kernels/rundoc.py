"""Runs, outputs and the kernel's state in the room document (docs/doc-schema.md, ``runs`` and
``meta.kernel``). Every write is one ``room.local_change`` with a ``KernelOrigin``, so members, late
joiners, storage and replays all see the same record.

Outputs are batched: a chatty run (a loop of prints) would otherwise make one transaction, one
broadcast and one stored update per line. ``OutputBatch`` gathers outputs for
``output_flush_seconds`` and writes them in one transaction, merging consecutive stream outputs of
the same stream within a batch. Across batches streams are appended, not merged (rewriting the last
item would store the growing text again each time); a client shows consecutive stream outputs as one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from pycrdt import Array, Map, Text

from pairroom.kernels.outputs import OutputCap, kernel_error, room_traceback
from pairroom.protocol.origins import KernelOrigin, LocalOrigin
from pairroom.rooms.room import Room
from pairroom.sandbox.bubblewrap import WORKDIR_INSIDE

log = logging.getLogger("pairroom.kernels.doc")


def now_ms() -> int:
    return int(time.time() * 1000)


def read_files(room: Room) -> dict[str, str]:
    """The room's files as path to content (a read: the transaction changes nothing)."""
    with room.local_change(LocalOrigin("kernel-read")) as doc:
        files = doc.get("files", type=Map)
        return {path: str(text) for path, text in files.items() if isinstance(text, Text)}


def read_run_policy(room: Room) -> str:
    """``meta.policy.run``: ``"editors"`` (the default) or ``"owners"``."""
    with room.local_change(LocalOrigin("kernel-read")) as doc:
        policy = doc.get("meta", type=Map).get("policy")
        value = policy.get("run") if isinstance(policy, Map) else None
    return value if value in ("editors", "owners") else "editors"


def read_run(room: Room, run_id: str) -> dict[str, Any] | None:
    with room.local_change(LocalOrigin("kernel-read")) as doc:
        run = doc.get("runs", type=Map).get(run_id)
        return run.to_py() if isinstance(run, Map) else None


def read_kernel_state(room: Room) -> dict[str, Any]:
    with room.local_change(LocalOrigin("kernel-read")) as doc:
        state = doc.get("meta", type=Map).get("kernel")
        read = state.to_py() if isinstance(state, Map) else None
        return read if isinstance(read, dict) else {}


def create_run(
    room: Room,
    run_id: str,
    *,
    code: str,
    path: str | None,
    by: str,
    client: str | None = None,
    language: str | None = "python",
) -> int:
    """Add a queued run; returns its ``order`` (after every run the room has had). ``client`` names
    the page that asked for it: that page answers the run's ``input()``."""
    with room.local_change(KernelOrigin(run_id)) as doc:
        runs = doc.get("runs", type=Map)
        order = 1 + max((int(run.get("order", 0)) for run in runs.values() if isinstance(run, Map)), default=0)
        runs[run_id] = Map(
            {
                "code": code,
                "path": path,
                "by": by,
                "status": "queued",
                "queuedAt": now_ms(),
                "outputs": Array([]),
                "order": order,
                **({"client": client} if client is not None else {}),
                **({"language": language} if language != "python" else {}),
            }
        )
    return order


def update_run(room: Room, run_id: str, **fields: Any) -> None:
    with room.local_change(KernelOrigin(run_id)) as doc:
        run = doc.get("runs", type=Map).get(run_id)
        if not isinstance(run, Map):
            log.warning("run vanished from the document", extra={"room": room.name, "run": run_id})
            return
        for key, value in fields.items():
            run[key] = value


def set_kernel_state(room: Room, node: str, status: str, *, restarted: bool = False) -> None:
    with room.local_change(LocalOrigin("kernel")) as doc:
        meta = doc.get("meta", type=Map)
        state = meta.get("kernel")
        if not isinstance(state, Map):
            state = meta["kernel"] = Map({})
        state["status"] = status
        state["node"] = node
        if restarted:
            state["restartedAt"] = now_ms()


class OutputBatch:
    """The output sink of one run: capped, batched, written in one transaction per batch."""

    def __init__(self, room: Room, run_id: str, cap_bytes: int, flush_seconds: float) -> None:
        self.room = room
        self.run_id = run_id
        self.cap = OutputCap(cap_bytes)
        self.flush_seconds = flush_seconds
        self._ops: list[dict[str, Any]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._clear_on_next = False
        run = read_run(room, run_id) or {}
        path = run.get("path")
        self.label = path if isinstance(path, str) and path else "selection"  # what tracebacks call the code
        self.roots = (WORKDIR_INSIDE,)  # where the room's files are, as the kernel sees them

    def __call__(self, output: dict[str, Any]) -> None:
        if output["output_type"] == "clear_output":
            if output["wait"]:
                self._clear_on_next = True
            else:
                self._clear()
            return
        if self._clear_on_next:
            self._clear_on_next = False
            self._clear()
        if output["output_type"] == "error":
            output = room_traceback(output, self.label, self.roots)
        for kept in self.cap.admit(output):
            last = self._ops[-1] if self._ops else None
            if (
                last is not None
                and kept["output_type"] == "stream"
                and last["output_type"] == "stream"
                and last["name"] == kept["name"]
            ):
                last["text"] += kept["text"]
            else:
                self._ops.append(dict(kept))
        self._schedule()

    def add_error(self, ename: str, evalue: str) -> None:
        """An error the server reports itself (kernel died, time limit); not counted by the cap."""
        self._ops.append(kernel_error(ename, evalue))
        self._schedule()

    def _clear(self) -> None:
        self._ops = [{"output_type": "clear_output"}]
        self.cap = OutputCap(self.cap.limit)
        self._schedule()

    def _schedule(self) -> None:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.flush_seconds, self.flush)

    def flush(self) -> None:
        """Write what has gathered. Called by the timer, and once more when the run ends."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        ops, self._ops = self._ops, []
        if not ops:
            return
        try:
            with self.room.local_change(KernelOrigin(self.run_id)) as doc:
                run = doc.get("runs", type=Map).get(self.run_id)
                if not isinstance(run, Map):
                    return
                outputs = run.get("outputs")
                if not isinstance(outputs, Array):
                    outputs = run["outputs"] = Array([])
                for op in ops:
                    if op["output_type"] == "clear_output":
                        del outputs[:]
                    else:
                        outputs.append(op)
        except RuntimeError as exc:  # the room closed under us (server shutdown)
            log.warning("outputs not written", extra={"room": self.room.name, "run": self.run_id, "error": str(exc)})
