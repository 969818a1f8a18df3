"""Watching a terminal that runs on another node: frames relayed through the cluster's broker.

A member connected to node B opens ``ws://B/terminal/{room}/{id}`` for a terminal held by node A.
B asks A (through the terminal lease, op ``attach``) to add a *remote viewer*: an ordinary
``Viewer`` on A, with A's bounded queue and fresh-snapshot-when-behind rule, whose ``send``
publishes each frame to B (``keys.node_channel(B, "terminal-frames")``, one channel per node, the
frame prefixed with the viewer's id and a newline). B hands each frame to that websocket's own
bounded queue. What the member sends is checked on B (size, rate, JSON shape, as for a local
viewer) and published in order on ``keys.terminal_input(room)``, which only the holder listens to;
A applies it with the member's live role (``Terminal.input`` etc.), so roles are checked where the
bytes enter. Messages on the input channel::

    {"v": viewer id, "f": ["stdin", "ls\\r"]}   a client frame, already validated on B
    {"v": viewer id, "resync": true}            B's queue overflowed: send a fresh snapshot
    {"v": viewer id, "detach": true}            the websocket closed

B's queue: past ``viewer_queue_bytes`` its ``stdout`` frames are dropped, it asks A for a snapshot
and drops screen content until that snapshot arrives (control frames are kept, up to twice the
cap). A ends a remote viewer with an internal ``["_close", code, reason]`` frame (the terminal
ended), never shown to the client.

Node failures. Each side watches the other through the cluster's heartbeats: when A is no longer
heard from, B tells its viewers ``["notice", ...]`` and ``["exit", null]`` and closes them (the
terminal is listed as ended and can be restarted on a live node); when B is no longer heard from, A
drops B's remote viewers.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pairroom.cluster.side_channel import SideChannel
from pairroom.protocol import keys
from pairroom.rooms.identity import Principal

from .session import Terminal, Viewer

log = logging.getLogger("pairroom.terminal.relay")

FRAMES = "terminal-frames"
WATCH_SECONDS = 0.5  # how often each side looks at the other's heartbeat


# -- the holder's side -------------------------------------------------------------------------------


@dataclass(eq=False)
class RemoteViewer:
    id: str
    node: str
    terminal: Terminal
    viewer: Viewer
    inputs: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None
    detached: bool = False


class RemoteViewers:
    """The viewers on other nodes of the terminals this node holds."""

    def __init__(self, side: SideChannel, alive: Callable[[str], bool], queue_bytes: int) -> None:
        self.side = side
        self.alive = alive
        self.queue_bytes = queue_bytes
        self.viewers: dict[str, RemoteViewer] = {}

    def attach(self, terminal: Terminal, viewer_id: str, principal: Principal, node: str) -> None:
        if viewer_id in self.viewers:
            return  # a republished attach
        channel = keys.node_channel(node, FRAMES)
        prefix = viewer_id + "\n"

        async def send(frame: str) -> None:
            await self.side.publish(channel, (prefix + frame).encode())

        remote = RemoteViewer(viewer_id, node, terminal, Viewer(principal, send, self.queue_bytes))
        self.viewers[viewer_id] = remote
        terminal.attach(remote.viewer)
        remote.task = asyncio.create_task(self._serve(remote), name=f"pairroom-terminal-remote-{viewer_id}")
        log.info("remote viewer attached", extra={"room": terminal.room, "terminal": terminal.id, "node": node})

    async def _serve(self, remote: RemoteViewer) -> None:
        terminal, viewer = remote.terminal, remote.viewer
        tasks = {
            asyncio.create_task(terminal.serve_viewer(viewer)),
            asyncio.create_task(terminal.ended.wait()),
            asyncio.create_task(self._apply_inputs(remote)),
        }
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    log.error("remote viewer failed", exc_info=task.exception(), extra={"terminal": terminal.id})
        finally:
            terminal.detach(viewer)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.viewers.pop(remote.id, None)
        if not remote.detached:
            await viewer.send(json.dumps(["_close", 1000, "terminal ended"]))

    async def _apply_inputs(self, remote: RemoteViewer) -> None:
        """The member's frames, one at a time and in order (a command line awaits the workspace)."""
        terminal, viewer = remote.terminal, remote.viewer
        while True:
            message = await remote.inputs.get()
            if message.get("detach"):
                remote.detached = True
                return
            if message.get("resync"):
                viewer.needs_snapshot = True
                viewer.wake.set()
                continue
            frame = message.get("f")
            if not isinstance(frame, list) or not frame:
                continue
            kind = frame[0]
            if kind == "stdin" and len(frame) == 2 and isinstance(frame[1], str):
                await terminal.input(viewer, frame[1])
            elif kind == "resize" and len(frame) == 3:
                terminal.resize(viewer, frame[1], frame[2])
            elif kind == "propose" and len(frame) == 2:
                terminal.propose(viewer, frame[1])
            elif kind in ("accept", "dismiss") and len(frame) == 2:
                await terminal.answer(viewer, frame[1], kind == "accept")

    def on_input(self, data: bytes) -> None:
        try:
            message = json.loads(data)
            remote = self.viewers.get(message["v"])
        except (ValueError, KeyError, TypeError) as exc:
            log.error("malformed terminal input", extra={"error": repr(exc)})
            return
        if remote is not None:
            remote.inputs.put_nowait(message)

    def sweep(self) -> None:
        """Drop the viewers of nodes no longer heard from (their websockets died with them)."""
        for remote in list(self.viewers.values()):
            if not self.alive(remote.node) and remote.task is not None:
                log.warning("remote viewer's node is gone", extra={"node": remote.node, "terminal": remote.terminal.id})
                remote.detached = True
                remote.task.cancel()

    async def close(self) -> None:
        tasks = [r.task for r in self.viewers.values() if r.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# -- the watching side ---------------------------------------------------------------------------------


@dataclass(eq=False)
class Relayed:
    """One local websocket watching a remote terminal: its bounded queue of frames from the holder."""

    id: str
    max_bytes: int
    request_snapshot: Callable[[], None]
    queue: collections.deque[str] = field(default_factory=collections.deque)
    queued: int = 0
    awaiting_snapshot: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    closed: tuple[int, str] | None = None
    resyncs: int = 0

    def push(self, frame: str) -> None:
        if frame.startswith('["_close"'):
            with contextlib.suppress(ValueError, IndexError):
                _, code, reason = json.loads(frame)
                self.closed = (int(code), str(reason))
        elif frame.startswith('["snapshot"'):
            self.awaiting_snapshot = False
            self._append(frame)
        elif frame.startswith('["stdout"'):
            if self.awaiting_snapshot:
                return  # the snapshot on its way includes this
            if self.queued + len(frame) > self.max_bytes:
                self.queue = collections.deque(f for f in self.queue if not f.startswith('["stdout"'))
                self.queued = sum(len(f) for f in self.queue)
                self.awaiting_snapshot = True
                self.resyncs += 1
                self.request_snapshot()
            else:
                self._append(frame)
        elif self.queued + len(frame) <= 2 * self.max_bytes:
            self._append(frame)
        self.wake.set()

    def _append(self, frame: str) -> None:
        self.queue.append(frame)
        self.queued += len(frame)


class Relays:
    """This node's websockets watching terminals held elsewhere."""

    def __init__(self, side: SideChannel, node_id: str, queue_bytes: int) -> None:
        self.side = side
        self.node_id = node_id
        self.queue_bytes = queue_bytes
        self.local: dict[str, Relayed] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        await self.side.listen(keys.node_channel(self.node_id, FRAMES), self._on_frame)

    def open(self, room: str) -> Relayed:
        viewer_id = secrets.token_urlsafe(9)
        relayed = Relayed(viewer_id, self.queue_bytes, lambda: self.publish(room, {"v": viewer_id, "resync": True}))
        self.local[viewer_id] = relayed
        return relayed

    def close(self, room: str, relayed: Relayed) -> None:
        self.local.pop(relayed.id, None)
        if relayed.closed is None:
            self.publish(room, {"v": relayed.id, "detach": True})

    def publish(self, room: str, message: dict[str, Any]) -> None:
        task = asyncio.create_task(self.send(room, message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def send(self, room: str, message: dict[str, Any]) -> bool:
        return await self.side.publish(keys.terminal_input(room), json.dumps(message).encode())

    def _on_frame(self, data: bytes) -> None:
        viewer_id, _, frame = data.decode("utf-8", "replace").partition("\n")
        relayed = self.local.get(viewer_id)
        if relayed is not None:
            relayed.push(frame)
