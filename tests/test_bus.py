"""The node-to-node codec (``pairroom.protocol.bus``) without I/O, and how a node's bridge takes
messages it cannot read: logged, counted, and the reader goes on."""

from __future__ import annotations

import asyncio
import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import write_var_uint

from pairroom.cluster.bridge import Cluster
from pairroom.cluster.broker import MemoryBroker, MemoryHub
from pairroom.protocol import bus, keys
from pairroom.protocol.bus import Author, BusMessage, Kind, UnknownBusVersion
from pairroom.protocol.origins import ClientOrigin, KernelOrigin, LocalOrigin, PeerOrigin, peer_origin
from pairroom.protocol.sync import CloseCode, ProtocolError
from pairroom.rooms.identity import Principal, Role
from pairroom.rooms.room import peer_author
from pairroom.web.metrics import Metrics

from .yclient import eventually

ADA = Author("client", "c-12ab", "u-ada", "Ada Lovelace", "#e6194b", "editor")
UPDATE = BusMessage(Kind.UPDATE, "node1", "notes/π", b"\x01\x02\x00\xff", uid="node1:7", author=ADA)


def v1(message: BusMessage) -> bytes:
    """A message as a node of the previous release (codec version 1, no author) encodes it."""

    def string(value: str) -> bytes:
        return write_var_uint(len(value.encode())) + value.encode()

    fields = (message.node, message.room, message.target, message.uid)
    return bytes((1, message.kind)) + b"".join(map(string, fields)) + write_var_uint(len(message.payload)) + message.payload


def test_an_update_with_its_author_round_trips() -> None:
    data = bus.encode(UPDATE)
    assert data[0] == bus.VERSION == 2
    assert bus.decode(data) == UPDATE


@pytest.mark.parametrize("kind", list(Kind))
def test_every_kind_round_trips_without_an_author(kind: Kind) -> None:
    message = BusMessage(kind, "n", "room", b"payload", target="m")
    assert bus.decode(bus.encode(message)) == message


def test_a_version_1_message_is_read_as_an_update_with_no_author() -> None:
    old = BusMessage(Kind.UPDATE, "node1", "notes/π", b"\x01\x02", uid="node1:7")
    decoded = bus.decode(v1(old))
    assert decoded == old and decoded.author == bus.NO_AUTHOR
    assert decoded.author.origin("node1").label() == "peer:node1"


@pytest.mark.parametrize("version", [0, 3, 200, 255])
def test_an_unknown_version_is_refused_by_name(version: int) -> None:
    data = bytes((version,)) + bus.encode(UPDATE)[1:]
    with pytest.raises(UnknownBusVersion) as caught:
        bus.decode(data)
    assert caught.value.version == version
    assert f"version {version}" in caught.value.reason and "1, 2" in caught.value.reason


@pytest.mark.parametrize("data", [bus.encode(UPDATE), v1(UPDATE)], ids=["v2", "v1"])
def test_every_truncation_is_malformed(data: bytes) -> None:
    for end in range(len(data)):
        with pytest.raises(ProtocolError) as caught:
            bus.decode(data[:end])
        assert caught.value.code is CloseCode.MALFORMED, end


def test_trailing_bytes_are_malformed() -> None:
    with pytest.raises(ProtocolError, match="length does not match"):
        bus.decode(bus.encode(UPDATE) + b"\x00")


def test_an_unknown_author_kind_is_malformed() -> None:
    data = bytearray(bus.encode(BusMessage(Kind.UPDATE, "n", "r", b"x", uid="u")))
    author_at = 2 + 2 + 2 + 1 + 2  # version, kind, then node "n", room "r", target "", uid "u"
    assert data[author_at] == 0
    data[author_at] = 9
    with pytest.raises(ProtocolError, match="author kind 9"):
        bus.decode(bytes(data))


def test_an_unknown_author_kind_is_not_encoded() -> None:
    with pytest.raises(ValueError, match="unknown author kind"):
        bus.encode(BusMessage(Kind.UPDATE, "n", "r", b"x", author=Author("robot", "r1")))


def test_a_message_over_the_limit_is_refused_not_truncated() -> None:
    big = BusMessage(Kind.UPDATE, "n", "r", b"", author=Author("client", "c", "u", "x" * bus.MAX_BUS_MESSAGE))
    with pytest.raises(bus.BusMessageTooLarge):
        bus.encode(big)


# -- authorship: a peer logs the label the first node logs ----------------------------------------


@pytest.mark.parametrize(
    "origin",
    [ClientOrigin("c-1", "u-ada"), ClientOrigin("c-2"), LocalOrigin("restore"), KernelOrigin("run-9")],
    ids=["client", "anonymous", "local", "kernel"],
)
def test_a_peer_logs_the_label_the_first_node_logs(origin) -> None:
    sent = BusMessage(Kind.UPDATE, "node1", "r", b"x", uid="node1:1", author=Author.of(origin, "Ada"))
    received = bus.decode(bus.encode(sent)).author.origin("node1")
    assert isinstance(received, PeerOrigin)
    assert received.label() == origin.label()
    assert received.first_origin() == origin


def test_the_person_travels_with_a_client_update() -> None:
    received = bus.decode(bus.encode(UPDATE)).author.origin("node1")
    assert (received.user_id, received.user_name, received.node_id) == ("u-ada", "Ada Lovelace", "node1")
    assert peer_author(received, "notes") == Principal("u-ada", "Ada Lovelace", "#e6194b", Role.EDITOR, "notes")


@pytest.mark.parametrize(
    "origin",
    [PeerOrigin("n1"), PeerOrigin("n1", "kernel", "run-1"), PeerOrigin("n1", "client", "c", "u", "U", "#fff", "boss"),
     PeerOrigin("n1", "client", "c", "", "", "", "editor"), ClientOrigin("c", "u")],
    ids=["no-author", "kernel", "unknown-role", "no-user", "not-a-peer"],
)
def test_no_person_is_made_up_for_a_peer_update_without_one(origin) -> None:
    assert peer_author(origin, "r") is None


def test_a_relayed_update_keeps_its_first_author() -> None:
    heard = PeerOrigin("node1", "client", "c-1", "u-ada", "Ada")
    assert peer_origin("node2", heard) == PeerOrigin("node2", "client", "c-1", "u-ada", "Ada")
    assert Author.of(heard) == Author("client", "c-1", "u-ada", "Ada")


def test_an_update_without_an_author_is_labelled_by_its_node() -> None:
    assert PeerOrigin("node3").label() == "peer:node3"


# -- properties ------------------------------------------------------------------------------------

strings = st.text(max_size=12)
authors = st.builds(Author, st.sampled_from(["", "client", "local", "kernel"]), strings, strings, strings, strings, strings)
messages = st.builds(BusMessage, st.sampled_from(list(Kind)), strings, strings, st.binary(max_size=200), strings, strings, authors)


@settings(max_examples=300, deadline=None)
@given(messages)
def test_messages_round_trip(message: BusMessage) -> None:
    assert bus.decode(bus.encode(message)) == message


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.binary(max_size=64), st.builds(lambda b: b"\x02" + b, st.binary(max_size=64))))
def test_decode_raises_only_protocol_error(data: bytes) -> None:
    try:
        bus.decode(data)
    except ProtocolError as exc:
        assert exc.code in (CloseCode.MALFORMED, CloseCode.UNKNOWN_TYPE) and exc.reason


# -- a node's reader and what it cannot read -------------------------------------------------------


async def test_a_node_logs_an_unknown_version_once_counts_every_one_and_keeps_reading(caplog) -> None:
    hub = MemoryHub()
    metrics = Metrics()
    cluster = Cluster(MemoryBroker("node1", hub), {}, metrics=metrics, heartbeat=0.05)
    other = MemoryBroker("node9", hub)
    await other.start(lambda channel, data: None, _nothing)
    started = asyncio.Event()
    task = asyncio.create_task(cluster.run(started))
    await started.wait()
    try:
        newer = bytes((7,)) + bus.encode(BusMessage(Kind.HEARTBEAT, "node9", ""))[1:]
        with caplog.at_level(logging.ERROR, logger="pairroom.cluster"):
            for _ in range(3):
                assert await other.publish(keys.cluster_channel(), newer)
            assert await other.publish(keys.cluster_channel(), b"\x02\x06\xff")  # truncated
            assert await other.publish(keys.cluster_channel(), bus.encode(BusMessage(Kind.HEARTBEAT, "node9", "")))
            await eventually(lambda: "node9" in cluster.peers, what="the reader goes on after bad messages")
        unknown = [r for r in caplog.records if "unknown version" in r.getMessage()]
        assert len(unknown) == 1 and unknown[0].version == 7
        assert any("undecodable" in r.getMessage() for r in caplog.records)
        scraped = metrics.render().decode()
        assert 'pairroom_cluster_dropped_total{reason="unknown_version"} 3.0' in scraped
        assert 'pairroom_cluster_dropped_total{reason="undecodable"} 1.0' in scraped
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await other.stop()


async def _nothing() -> None:
    return None
