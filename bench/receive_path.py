"""What parsing one incoming client frame costs: websockets' sansio parser (the front door's, and
uvicorn's) against picows' Cython parser, on the same masked frames, without sockets.

Why: after the front door for /yjs (pairroom/web/door.py) the receive path is websockets' generator
parser, the door's dispatch and the room. picows was the other candidate for the door; this measures
the part it would replace, on this machine, so the choice rests on a figure rather than on published
ones. picows is not a dependency of pairroom: install it into a scratch environment to compare
(``pip install picows==2.3.1``); without it only the websockets rows are printed.

    .venv/bin/python bench/receive_path.py [--frames 20000] [--size 60]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import struct
import time
from typing import Any

from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.server import ServerProtocol

HANDSHAKE = (
    b"GET /yjs/room HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def masked(payload: bytes) -> bytes:
    """A client's binary frame (clients mask)."""
    mask = os.urandom(4)
    data = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    length = len(payload)
    if length < 126:
        head = struct.pack("!BB", 0x82, 0x80 | length)
    elif length < 65536:
        head = struct.pack("!BBH", 0x82, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", 0x82, 0x80 | 127, length)
    return head + mask + data


def websockets_sansio(frames: list[bytes]) -> tuple[float, int]:
    """Seconds for ``frames``, one ``receive_data`` each (one frame per read, as at typing rates),
    with the door's dispatch (opcode by identity)."""
    conn = ServerProtocol(max_size=None)
    conn.receive_data(HANDSHAKE)
    (request,) = conn.events_received()
    assert isinstance(request, Request)
    conn.send_response(conn.accept(request))
    conn.data_to_send()
    binary = Opcode.BINARY
    got = 0
    start = time.perf_counter()
    for data in frames:
        conn.receive_data(data)
        for event in conn.events_received():
            if type(event) is Frame and event.opcode is binary:
                got += len(event.data)
    return time.perf_counter() - start, got


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return server, client


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = 0
        self.sockets = tcp_pair()  # picows sets TCP options on the connection's socket

    def write(self, data: Any) -> None:
        self.written += len(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.sockets[0] if name == "socket" else default

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


async def picows_parser(frames: list[bytes]) -> tuple[float, int] | None:
    try:
        import picows
        from picows.picows import WSProtocol
    except ImportError:
        return None
    got = 0

    class Listener(picows.WSListener):  # type: ignore[misc]
        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            nonlocal got
            if frame.msg_type == picows.WSMsgType.BINARY:
                got += len(frame.get_payload_as_bytes())

    # the server side as ``ws_create_server`` builds it (positional arguments of picows 2.3.1)
    protocol = WSProtocol(
        None,
        None,
        False,
        lambda request: Listener(),
        logging.getLogger("picows.bench"),
        True,
        5.0,
        False,
        10,
        10,
        1,
        True,
        10 * 2**20,
        None,
        16384,
    )
    protocol.connection_made(FakeTransport())

    def feed(data: bytes) -> None:  # a BufferedProtocol: the bytes go into its own buffer
        buffer = protocol.get_buffer(len(data))
        buffer[: len(data)] = data
        protocol.buffer_updated(len(data))

    feed(HANDSHAKE)
    await asyncio.sleep(0.01)
    start = time.perf_counter()
    for data in frames:
        feed(data)
    return time.perf_counter() - start, got


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=20000)
    parser.add_argument("--size", type=int, action="append", help="payload bytes (repeatable; default 60 and 2000)")
    args = parser.parse_args()
    for size in args.size or [60, 2000]:
        frames = [masked(os.urandom(size)) for _ in range(args.frames)]
        rows: list[tuple[str, float]] = []
        runs = [websockets_sansio(frames) for _ in range(5)]
        assert all(got == size * args.frames for _, got in runs)  # every payload came out whole
        rows.append(("websockets sansio (the door's parser)", min(seconds for seconds, _ in runs)))
        picows_runs = [asyncio.run(picows_parser(frames)) for _ in range(5)]
        if all(run is not None for run in picows_runs):
            assert all(run[1] == size * args.frames for run in picows_runs if run is not None)
            rows.append(("picows", min(run[0] for run in picows_runs if run is not None)))
        for name, seconds in rows:
            print(f"{size:>6} B  {name:<40} {seconds / args.frames * 1e6:7.2f} us per frame")


if __name__ == "__main__":
    main()
