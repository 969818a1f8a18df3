"""The y-websocket sync endpoint, spoken to by a protocol-level client."""

from __future__ import annotations

import asyncio

from pairroom.protocol import sync as protocol
from pairroom.protocol.sync import MessageType, SyncStep

from .yclient import YClient, eventually


def names(client: YClient) -> set[str]:
    return {s.get("user", {}).get("name") for s in client.awareness.states.values() if s}


async def test_server_greets_with_step1_and_answers_step1_with_step2(server, connect):
    ws = await connect(server.ws("greet"))
    first = protocol.decode_message(await ws.recv())
    assert (first.type, first.step) == (MessageType.SYNC, SyncStep.STEP1)
    await ws.send(protocol.sync_step1(b"\x00"))
    reply = protocol.decode_message(await ws.recv())
    assert (reply.type, reply.step) == (MessageType.SYNC, SyncStep.STEP2)


async def test_edits_reach_every_member_and_a_late_joiner(server):
    a = await YClient.connect(server.ws("edits"))
    b = await YClient.connect(server.ws("edits"))
    await asyncio.wait_for(asyncio.gather(a.synced.wait(), b.synced.wait()), 5)
    a.insert(0, "hello ")
    b.insert(0, "world")
    await eventually(lambda: str(a.text) == str(b.text) and len(str(a.text)) == 11, what="converge")
    late = await YClient.connect(server.ws("edits"))
    await eventually(lambda: str(late.text) == str(a.text), what="late joiner has the full state")
    for c in (a, b, late):
        await c.close()


async def test_rooms_are_isolated(server):
    a = await YClient.connect(server.ws("left"))
    b = await YClient.connect(server.ws("right"))
    a.insert(0, "only left")
    await eventually(
        lambda: (
            "left" in server.hub.registry.rooms
            and str(server.hub.registry.rooms["left"].doc.get("text", type=type(a.text))) == "only left"
        )
    )
    late = await YClient.connect(server.ws("right"))
    await eventually(lambda: late.synced.is_set())
    assert str(late.text) == "" and str(b.text) == ""
    for c in (a, b, late):
        await c.close()


async def test_awareness_is_relayed_and_removed_when_its_connection_closes(server):
    a = await YClient.connect(server.ws("aw"))
    b = await YClient.connect(server.ws("aw"))
    await a.set_awareness({"user": {"name": "Ada"}})
    await eventually(lambda: "Ada" in names(b), what="b sees Ada")
    late = await YClient.connect(server.ws("aw"))
    await eventually(lambda: "Ada" in names(late), what="a joiner is sent current awareness")
    await a.close()
    await eventually(lambda: "Ada" not in names(b) and "Ada" not in names(late), what="Ada removed")
    await b.close()
    await late.close()


async def test_query_awareness_is_answered_with_every_state(server, connect):
    a = await YClient.connect(server.ws("q"))
    await a.set_awareness({"user": {"name": "Grace"}})
    await eventually(lambda: server.hub.registry.rooms["q"].awareness.states)
    ws = await connect(server.ws("q"))
    await ws.send(bytes([MessageType.QUERY_AWARENESS]))
    while True:
        msg = protocol.decode_message(await asyncio.wait_for(ws.recv(), 5))
        if msg.type is MessageType.AWARENESS:
            entries = protocol.decode_awareness(msg.payload)
            if any("Grace" in e.state for e in entries):
                break
    await a.close()


async def test_keepalive_reaches_an_idle_client(start_server, connect):
    server = await start_server(keepalive_seconds=0.3)
    ws = await connect(server.ws("idle"))
    await ws.recv()  # sync step 1
    frame = await asyncio.wait_for(ws.recv(), 3)
    assert frame == protocol.KEEPALIVE


async def test_two_mib_update_goes_through(server):
    a = await YClient.connect(server.ws("big"))
    b = await YClient.connect(server.ws("big"))
    await asyncio.wait_for(asyncio.gather(a.synced.wait(), b.synced.wait()), 5)
    a.insert(0, "x" * (2 * 1024 * 1024))
    await eventually(lambda: len(str(b.text)) == 2 * 1024 * 1024, timeout=20, what="2 MiB arrives")
    await a.close()
    await b.close()


async def test_backlogged_updates_are_merged_one_message_per_frame(server, connect):
    """A client that falls behind gets merged updates, still one message per frame."""
    writer = await YClient.connect(server.ws("merge"))
    reader = await connect(server.ws("merge"), max_queue=1)
    await asyncio.wait_for(writer.synced.wait(), 5)
    for i in range(300):
        writer.insert(len(str(writer.text)), f"{i};")
    expected = str(writer.text)
    from pycrdt import Doc, Text

    doc = Doc()
    frames = 0
    async with asyncio.timeout(10):
        while str(doc.get("text", type=Text)) != expected:
            msg = protocol.decode_message(await reader.recv())  # raises if a frame held two
            frames += 1
            if msg.type is MessageType.SYNC and msg.step is not SyncStep.STEP1:
                doc.apply_update(msg.payload)
    assert frames < 300, "a backlog of updates should be merged"
    await writer.close()


async def test_compression_is_negotiated_only_when_enabled(start_server, connect):
    """Browsers offer permessage-deflate; the server declines unless --ws-compression is on."""
    plain = await start_server()
    ws = await connect(plain.ws("deflate"))  # the websockets client offers it by default
    assert ws.response.headers.get("Sec-WebSocket-Extensions") is None
    compressed = await start_server(ws_compression=True)
    ws = await connect(compressed.ws("deflate"))
    assert "permessage-deflate" in ws.response.headers.get("Sec-WebSocket-Extensions", "")


async def test_health_ready_and_metrics(server):
    import httpx

    async with httpx.AsyncClient(base_url=server.http) as http:
        assert (await http.get("/healthz")).json() == {"status": "alive"}
        ready = await http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready"
        a = await YClient.connect(server.ws("m"))
        a.insert(0, "abc")
        await eventually(lambda: server.hub.metrics.stored_updates._value.get() >= 1, what="stored")
        text = (await http.get("/metrics")).text
        for name in (
            "pairroom_connections",
            "pairroom_rooms_loaded 1.0",
            "pairroom_updates_stored_total",
            "pairroom_flush_seconds_bucket",
            "pairroom_messages_received_total",
            "pairroom_bytes_sent_total",
            "pairroom_slow_client_disconnects_total",
        ):
            assert name in text, name
        await a.close()


async def test_server_closes_connections_cleanly_with_1012_on_shutdown(start_server):
    server = await start_server()
    a = await YClient.connect(server.ws("bye"))
    await asyncio.wait_for(a.synced.wait(), 5)
    await server.stop()
    assert await a.closed() == 1012
