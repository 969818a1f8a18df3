"""An aiortc peer process for the media tests; prints one ``RESULT {json}`` line and exits.

    python -m tests.rtc.peer call-offer  BASE ROOM   # joins /call/ROOM, offers to each peer it sees
    python -m tests.rtc.peer call-answer BASE ROOM   # joins, answers one offer
    python -m tests.rtc.peer call-record BASE ROOM --seconds S   # offers its tone to the recorder
    python -m tests.rtc.peer speak  BASE ROOM        # the relay's speaker, until killed
    python -m tests.rtc.peer listen BASE ROOM --listeners K --frames F   # K relay listeners

Run only inside the loopback-only network namespace (tests/rtc/scenario.py): it gathers host
candidates on 127.0.0.1 only, through the same switch the server uses (``media_addresses``).
Call peers both send a 440 Hz tone and count the audio frames they receive; the call offerer also
opens a data channel and waits for its message to come back.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import fractions
import json
import math
import os
import sys
import time
from typing import Any

import httpx
import websockets
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame

from pairroom.rtc.media import restrict_host_addresses

restrict_host_addresses(("127.0.0.1",))

RATE = 48000
SAMPLES = 960  # 20 ms
DEADLINE = float(os.environ.get("PEER_DEADLINE", "25"))


class ToneTrack(MediaStreamTrack):
    """A 440 Hz sine, paced in real time (no numpy: the samples are packed with ``array``)."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.pts = 0
        self.start: float | None = None

    async def recv(self) -> AudioFrame:
        if self.start is None:
            self.start = time.monotonic()
        wait = self.start + self.pts / RATE - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        samples = array.array(
            "h", (int(12000 * math.sin(2 * math.pi * 440 * (self.pts + i) / RATE)) for i in range(SAMPLES))
        )
        frame = AudioFrame(format="s16", layout="mono", samples=SAMPLES)
        frame.planes[0].update(samples.tobytes())
        frame.sample_rate = RATE
        frame.pts = self.pts
        frame.time_base = fractions.Fraction(1, RATE)
        self.pts += SAMPLES
        return frame


class Counter:
    """Counts received audio frames and how loud they are (a tone, not silence)."""

    def __init__(self, want: int) -> None:
        self.want = want
        self.frames = 0
        self.loud = 0
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.done = asyncio.Event()
        self.first = asyncio.Event()

    async def consume(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:  # the track ended
                return
            self.first_at = self.first_at or time.monotonic()
            self.first.set()
            self.frames += 1
            self.last_at = time.monotonic()
            pcm = array.array("h", bytes(frame.planes[0]))
            if pcm and max(abs(x) for x in pcm) > 1000:
                self.loud += 1
            if self.frames >= self.want:
                self.done.set()


def result(**data: Any) -> None:
    print("RESULT " + json.dumps(data), flush=True)


async def call(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    ws = await websockets.connect(f"{args.base.replace('http', 'ws')}/call/{args.room}")
    await ws.send(json.dumps({"type": "join", "audio": True}))
    pcs: dict[str, RTCPeerConnection] = {}
    counter = Counter(args.frames)
    echoed = asyncio.Event()
    connected = asyncio.Event()
    offerer_left = asyncio.Event()
    out: dict[str, Any] = {"role": args.role}
    tasks: set[asyncio.Task[None]] = set()

    def peer_connection(peer: str) -> RTCPeerConnection:
        pc = pcs[peer] = RTCPeerConnection()

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            tasks.add(asyncio.ensure_future(counter.consume(track)))

        @pc.on("datachannel")
        def on_channel(channel: Any) -> None:
            @channel.on("message")
            def on_message(message: str) -> None:
                out["received"] = message  # the offerer's message, as it arrived here
                channel.send("echo:" + message)

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc.connectionState == "connected":
                connected.set()
                out["connected_ms"] = round((time.monotonic() - started) * 1000)

        return pc

    async def offer_to(peer: str, *, tone_only: bool) -> None:
        pc = peer_connection(peer)
        pc.addTrack(ToneTrack())
        if not tone_only:
            channel = pc.createDataChannel("chat")
            channel.on("open", lambda: channel.send("hello"))

            @channel.on("message")
            def on_message(message: str) -> None:
                out["echo"] = message
                echoed.set()

        await pc.setLocalDescription(await pc.createOffer())  # every candidate gathered: no trickle
        await ws.send(json.dumps({"type": "offer", "to": peer, "sdp": pc.localDescription.sdp}))

    async def finished() -> None:
        if args.role == "call-record":
            await connected.wait()
            await asyncio.sleep(args.seconds)  # the length of audio to record, measured by the test
        elif args.role == "call-offer":
            await asyncio.gather(echoed.wait(), counter.done.wait())
        else:  # the answerer stays until the offerer, who may still be counting, has left
            await asyncio.gather(counter.done.wait(), offerer_left.wait())

    done = asyncio.create_task(finished())
    try:
        async with asyncio.timeout(DEADLINE):
            while not done.done():
                receive = asyncio.create_task(ws.recv())
                await asyncio.wait({receive, done}, return_when=asyncio.FIRST_COMPLETED)
                if not receive.done():
                    receive.cancel()
                    break
                message = json.loads(receive.result())
                kind = message["type"]
                peers = message.get("peers", []) if kind == "joined" else [message] if kind == "peer-joined" else []
                for peer in peers:
                    if peer["peer"] in pcs:  # across nodes a peer may be announced twice
                        continue
                    recorder = peer.get("recorder", False)
                    if args.role == "call-offer" and not recorder or args.role == "call-record" and recorder:
                        await offer_to(peer["peer"], tone_only=recorder)
                if kind == "offer" and args.role == "call-answer":
                    pc = peer_connection(message["from"])
                    pc.addTrack(ToneTrack())
                    await pc.setRemoteDescription(RTCSessionDescription(message["sdp"], "offer"))
                    await pc.setLocalDescription(await pc.createAnswer())
                    await ws.send(json.dumps({"type": "answer", "to": message["from"], "sdp": pc.localDescription.sdp}))
                elif kind == "answer":
                    await pcs[message["from"]].setRemoteDescription(RTCSessionDescription(message["sdp"], "answer"))
                elif kind == "peer-left" and message["peer"] in pcs:
                    offerer_left.set()
                elif kind == "error":
                    out.setdefault("errors", []).append(message)
            await done
        out.update(ok=True)
    except TimeoutError:
        out.update(ok=False, reason="deadline")
    out.update(frames=counter.frames, loud=counter.loud)
    if counter.first_at is not None:
        out["first_frame_ms"] = round((counter.first_at - started) * 1000)
    await ws.send(json.dumps({"type": "leave"}))
    await ws.close()
    for pc in pcs.values():
        await pc.close()
    for task in tasks:
        task.cancel()
    return out


async def speak(args: argparse.Namespace) -> dict[str, Any]:
    pc = RTCPeerConnection()
    pc.addTrack(ToneTrack())
    await pc.setLocalDescription(await pc.createOffer())
    async with httpx.AsyncClient(base_url=args.base) as http:
        response = await http.post(
            f"/rtc/{args.room}/speak", content=pc.localDescription.sdp, headers={"content-type": "application/sdp"}
        )
        response.raise_for_status()
        await pc.setRemoteDescription(RTCSessionDescription(response.text, "answer"))
        print("SPEAKING", flush=True)
        await asyncio.sleep(args.seconds)  # keeps the tone flowing until the scenario stops us
        await http.delete(response.headers["location"])
    await pc.close()
    return {"ok": True}


async def listen_one(http: httpx.AsyncClient, room: str, want: int) -> tuple[RTCPeerConnection, Counter]:
    counter = Counter(want)
    while True:  # 409 until the speaker is in: retry, bounded by the caller's deadline
        pc = RTCPeerConnection()
        pc.addTransceiver("audio", direction="recvonly")
        pc.on("track", lambda track: asyncio.ensure_future(counter.consume(track)))
        await pc.setLocalDescription(await pc.createOffer())
        response = await http.post(
            f"/rtc/{room}/listen", content=pc.localDescription.sdp, headers={"content-type": "application/sdp"}
        )
        if response.status_code == 201:
            await pc.setRemoteDescription(RTCSessionDescription(response.text, "answer"))
            return pc, counter
        await pc.close()
        if response.status_code != 409:
            raise RuntimeError(f"listen refused: {response.status_code} {response.text}")
        await asyncio.sleep(0.1)


async def listen(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=args.base, timeout=10) as http:
        try:
            async with asyncio.timeout(DEADLINE):
                joined = await asyncio.gather(
                    *(listen_one(http, args.room, args.frames) for _ in range(args.listeners))
                )
                await asyncio.gather(*(c.first.wait() for _, c in joined))
                print(f"STREAMING {sum(c.frames for _, c in joined)}", flush=True)  # for the per-node figure
                await asyncio.gather(*(c.done.wait() for _, c in joined))
            ok = True
        except TimeoutError:
            ok = False
            joined = []
    counters = [c for _, c in joined]
    out = {
        "ok": ok,
        "frames": [c.frames for c in counters],
        "loud": [c.loud for c in counters],
        "first_frame_ms": [round(((c.first_at or started) - started) * 1000) for c in counters],
        # frames a second once audio flows: 50 is everything (20 ms frames)
        "fps": [
            round((c.frames - 1) / (c.last_at - c.first_at), 1)
            for c in counters
            if c.first_at and c.last_at and c.last_at > c.first_at
        ],
    }
    for pc, _ in joined:
        await pc.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["call-offer", "call-answer", "call-record", "speak", "listen"])
    parser.add_argument("base")
    parser.add_argument("room")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--listeners", type=int, default=1)
    args = parser.parse_args()
    runner = {"speak": speak, "listen": listen}.get(args.role, call)
    result(**asyncio.run(runner(args)))


if __name__ == "__main__":
    sys.exit(main())
