"""The y-websocket codec (``pairroom.protocol.sync``) without any I/O.

Reference frames come from the real npm encoders (``tests/node/frames.mjs`` runs yjs + y-protocols
from ``tests/node/node_modules``), so decoding is checked against what browsers actually send, and
pairroom's encoders are checked to produce the very same bytes for the same inputs.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Doc, Text, write_var_uint

from pairroom.protocol import sync as protocol
from pairroom.protocol.sync import (
    KEEPALIVE,
    AwarenessEntry,
    CloseCode,
    Message,
    MessageType,
    ProtocolError,
    SyncStep,
    awareness_message,
    decode_awareness,
    decode_message,
    encode_awareness,
    read_var_uint,
    sync_step1,
    sync_step2,
    sync_update,
)
from tests.support.yjs_node import NODE_DIR, ensure_node_modules


@dataclass(frozen=True)
class NpmFrames:
    step1: bytes
    state_vector: bytes
    step2: bytes
    step2_update: bytes
    update: bytes
    update_update: bytes
    awareness: bytes
    awareness_payload: bytes
    awareness_clients: list[dict[str, Any]]
    query_awareness: bytes
    doc_text: str


@pytest.fixture(scope="module")
def npm() -> NpmFrames:
    ensure_node_modules()
    node = shutil.which("node")
    assert node is not None, "node is needed to build the reference frames"
    out = subprocess.run(
        [node, str(NODE_DIR / "frames.mjs")],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    raw = json.loads(out)
    b = base64.b64decode
    return NpmFrames(
        step1=b(raw["step1"]),
        state_vector=b(raw["stateVector"]),
        step2=b(raw["step2"]),
        step2_update=b(raw["step2Update"]),
        update=b(raw["update"]),
        update_update=b(raw["updateUpdate"]),
        awareness=b(raw["awareness"]),
        awareness_payload=b(raw["awarenessPayload"]),
        awareness_clients=raw["awarenessClients"],
        query_awareness=b(raw["queryAwareness"]),
        doc_text=raw["docText"],
    )


def all_frames(npm: NpmFrames) -> dict[str, bytes]:
    return {
        "step1": npm.step1,
        "step2": npm.step2,
        "update": npm.update,
        "awareness": npm.awareness,
        "query_awareness": npm.query_awareness,
    }


FRAME_NAMES = ["step1", "step2", "update", "awareness", "query_awareness"]


def assert_protocol_error(data: bytes, code: CloseCode, *, awareness: bool = False) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        if awareness:
            decode_awareness(data)
        else:
            decode_message(data)
    assert info.value.code is code, (data, info.value.reason)
    assert info.value.reason
    return info.value


# -- decoding what the npm client sends --------------------------------------------------------------


def test_decode_npm_sync_step1(npm: NpmFrames) -> None:
    assert decode_message(npm.step1) == Message(MessageType.SYNC, SyncStep.STEP1, npm.state_vector)
    # The state vector is a real one: pycrdt can compute the diff against it.
    doc = Doc()
    doc.get("text", type=Text).insert(0, "x")
    assert doc.get_update(decode_message(npm.step1).payload)


def test_decode_npm_sync_step2_and_update(npm: NpmFrames) -> None:
    step2 = decode_message(npm.step2)
    assert step2 == Message(MessageType.SYNC, SyncStep.STEP2, npm.step2_update)
    update = decode_message(npm.update)
    assert update == Message(MessageType.SYNC, SyncStep.UPDATE, npm.update_update)
    # Applying both payloads rebuilds the Node document.
    doc = Doc()
    doc.apply_update(step2.payload)
    doc.apply_update(update.payload)
    assert str(doc.get("text", type=Text)) == npm.doc_text == "hello, world"


def test_decode_npm_awareness_with_removed_client(npm: NpmFrames) -> None:
    message = decode_message(npm.awareness)
    assert message == Message(MessageType.AWARENESS, None, npm.awareness_payload)
    entries = decode_awareness(message.payload)
    expected = [AwarenessEntry(c["clientId"], c["clock"], c["state"]) for c in npm.awareness_clients]
    assert entries == expected
    present, removed = entries
    assert present.client_id == 1234
    assert json.loads(present.state) == {"user": {"name": "Zoë", "color": "#ff0000"}, "cursor": None}
    assert removed.client_id == 5678 and removed.state == "null" and removed.clock == 2


def test_decode_npm_query_awareness(npm: NpmFrames) -> None:
    assert decode_message(npm.query_awareness) == Message(MessageType.QUERY_AWARENESS, None, b"")


# -- encoding the same bytes the npm client does -------------------------------------------------------


def test_encoders_match_npm_bytes(npm: NpmFrames) -> None:
    assert sync_step1(npm.state_vector) == npm.step1
    assert sync_step2(npm.step2_update) == npm.step2
    assert sync_update(npm.update_update) == npm.update
    assert awareness_message(npm.awareness_payload) == npm.awareness


def test_encode_awareness_matches_npm_bytes(npm: NpmFrames) -> None:
    entries = [AwarenessEntry(c["clientId"], c["clock"], c["state"]) for c in npm.awareness_clients]
    assert encode_awareness(entries) == npm.awareness_payload
    assert awareness_message(encode_awareness(entries)) == npm.awareness


# -- malformed input ---------------------------------------------------------------------------------


def test_empty_frame_is_malformed() -> None:
    error = assert_protocol_error(b"", CloseCode.MALFORMED)
    assert "empty" in error.reason


@pytest.mark.parametrize("name", FRAME_NAMES)
def test_every_truncation_of_a_real_frame_is_malformed(npm: NpmFrames, name: str) -> None:
    frame = all_frames(npm)[name]
    decode_message(frame)  # the whole frame is fine
    for cut in range(len(frame)):
        assert_protocol_error(frame[:cut], CloseCode.MALFORMED)


def test_every_truncation_of_a_real_awareness_payload_is_malformed(npm: NpmFrames) -> None:
    payload = npm.awareness_payload
    for cut in range(len(payload)):
        assert_protocol_error(payload[:cut], CloseCode.MALFORMED, awareness=True)


@pytest.mark.parametrize("name", FRAME_NAMES)
@pytest.mark.parametrize("extra", [b"\x00", b"\x00\x00", bytes([0, 0, 1, 0])])
def test_trailing_bytes_after_a_real_frame_are_malformed(npm: NpmFrames, name: str, extra: bytes) -> None:
    error = assert_protocol_error(all_frames(npm)[name] + extra, CloseCode.MALFORMED)
    assert f"{len(extra)} bytes after" in error.reason


def test_trailing_bytes_after_an_awareness_payload_are_malformed(npm: NpmFrames) -> None:
    assert_protocol_error(npm.awareness_payload + b"\x00", CloseCode.MALFORMED, awareness=True)


def test_two_messages_in_one_frame_are_malformed(npm: NpmFrames) -> None:
    assert_protocol_error(npm.update + npm.update, CloseCode.MALFORMED)


@pytest.mark.parametrize(
    "frame",
    [
        b"\x80" * 8 + b"\x00",  # message type over 9 bytes
        b"\xff" * 9,
        b"\x00" + b"\x80" * 8 + b"\x00",  # sync step over 9 bytes
        b"\x00\x02" + b"\x80" * 8 + b"\x01" + b"x",  # payload length over 9 bytes
        b"\x01" + b"\xff" * 12,  # awareness payload length
    ],
)
def test_varuint_longer_than_8_bytes_is_malformed(frame: bytes) -> None:
    error = assert_protocol_error(frame, CloseCode.MALFORMED)
    assert "8 bytes" in error.reason


def test_varuint_of_8_bytes_is_the_longest_accepted() -> None:
    largest = 2**56 - 1
    encoded = write_var_uint(largest)
    assert len(encoded) == 8
    assert read_var_uint(encoded, 0) == (largest, 8)
    assert read_var_uint(b"\x00" + write_var_uint(2**53 - 1), 1) == (2**53 - 1, 9)
    with pytest.raises(ProtocolError) as info:
        read_var_uint(b"\x80" * 8 + b"\x01", 0)
    assert info.value.code is CloseCode.MALFORMED


def test_varuint_in_awareness_entry_longer_than_8_bytes_is_malformed() -> None:
    payload = b"\x01" + b"\x80" * 8 + b"\x01" + b"\x00\x04null"
    assert_protocol_error(payload, CloseCode.MALFORMED, awareness=True)


@pytest.mark.parametrize(
    "frame",
    [b"\x04", b"\x05\x00", b"\x7f", b"\x80\x01", b"\xff\xff\x03" + b"payload"],
    ids=["4", "5", "127", "128", "65535"],
)
def test_unknown_message_type(frame: bytes) -> None:
    error = assert_protocol_error(frame, CloseCode.UNKNOWN_TYPE)
    assert "unknown message type" in error.reason


@pytest.mark.parametrize("step", [3, 4, 127, 128, 2**20])
def test_unknown_sync_step(step: int) -> None:
    frame = b"\x00" + write_var_uint(step) + write_var_uint(2) + b"\x00\x00"
    error = assert_protocol_error(frame, CloseCode.UNKNOWN_TYPE)
    assert f"unknown sync step {step}" in error.reason


def test_auth_from_a_client_is_refused() -> None:
    reason = b"denied"
    frame = b"\x02\x00" + write_var_uint(len(reason)) + reason
    error = assert_protocol_error(frame, CloseCode.UNKNOWN_TYPE)
    assert "auth" in error.reason
    assert_protocol_error(b"\x02", CloseCode.UNKNOWN_TYPE)


# -- awareness payloads ------------------------------------------------------------------------------


def awareness_payload(*entries: tuple[int, int, bytes]) -> bytes:
    parts = [write_var_uint(len(entries))]
    for client, clock, state in entries:
        parts += [write_var_uint(client), write_var_uint(clock), write_var_uint(len(state)), state]
    return b"".join(parts)


def test_awareness_round_trip() -> None:
    entries = [
        AwarenessEntry(1, 0, "{}"),
        AwarenessEntry(2**53 - 1, 2**32, json.dumps({"user": {"name": "Ærøskøbing 🚲"}})),
        AwarenessEntry(77, 3, "null"),
    ]
    payload = encode_awareness(entries)
    assert decode_awareness(payload) == entries
    message = decode_message(awareness_message(payload))
    assert message.type is MessageType.AWARENESS and decode_awareness(message.payload) == entries


def test_empty_awareness_update_decodes_to_no_entries() -> None:
    assert encode_awareness([]) == b"\x00"
    assert decode_awareness(b"\x00") == []


@pytest.mark.parametrize(
    "state",
    [b"{not json", b"", b'{"a": 1', b"undefined", b"\xff\xfe", b'{"a": "\xc3"}', b"\xed\xa0\x80"],
    ids=["garbage", "empty", "unclosed", "undefined", "invalid-utf8", "cut-utf8", "surrogate"],
)
def test_awareness_state_that_is_not_json_text_is_malformed(state: bytes) -> None:
    good = (1, 1, b"{}")
    payload = awareness_payload(good, (42, 1, state))
    error = assert_protocol_error(payload, CloseCode.MALFORMED, awareness=True)
    assert "client 42" in error.reason
    # The frame itself is well formed: only the awareness check refuses it.
    assert decode_message(awareness_message(payload)).payload == payload


def test_awareness_count_larger_than_the_entries_is_malformed() -> None:
    payload = b"\x03" + awareness_payload((1, 1, b"{}"))[1:]
    assert_protocol_error(payload, CloseCode.MALFORMED, awareness=True)


def test_keepalive_is_an_awareness_message_with_no_entries() -> None:
    message = decode_message(KEEPALIVE)
    assert message.type is MessageType.AWARENESS
    assert message.step is None
    assert decode_awareness(message.payload) == []
    assert KEEPALIVE == b"\x01\x01\x00"


def test_empty_update_constant_is_what_yjs_encodes_for_nothing() -> None:
    doc = Doc()
    assert doc.get_update(doc.get_state()) == protocol.EMPTY_UPDATE


# -- properties --------------------------------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64))
def test_decode_message_raises_only_protocol_error(data: bytes) -> None:
    try:
        message = decode_message(data)
    except ProtocolError as exc:
        assert exc.code in (CloseCode.MALFORMED, CloseCode.UNKNOWN_TYPE)
        assert exc.reason
    else:
        assert message.type in (MessageType.SYNC, MessageType.AWARENESS, MessageType.QUERY_AWARENESS)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=64), st.builds(lambda b: b"\x01" + b, st.binary(max_size=64))))
def test_decode_message_and_awareness_raise_only_protocol_error(data: bytes) -> None:
    for decode in (decode_message, decode_awareness):
        try:
            decode(data)
        except ProtocolError as exc:
            assert exc.code in (CloseCode.MALFORMED, CloseCode.UNKNOWN_TYPE)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_sync_and_awareness_frames_round_trip(payload: bytes) -> None:
    assert decode_message(sync_step1(payload)) == Message(MessageType.SYNC, SyncStep.STEP1, payload)
    assert decode_message(sync_step2(payload)) == Message(MessageType.SYNC, SyncStep.STEP2, payload)
    assert decode_message(sync_update(payload)) == Message(MessageType.SYNC, SyncStep.UPDATE, payload)
    assert decode_message(awareness_message(payload)) == Message(MessageType.AWARENESS, None, payload)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)

awareness_entries = st.lists(
    st.builds(
        AwarenessEntry,
        client_id=st.integers(0, 2**53 - 1),
        clock=st.integers(0, 2**53 - 1),
        state=json_values.map(lambda v: json.dumps(v, ensure_ascii=False)),
    ),
    max_size=5,
)


@settings(max_examples=100, deadline=None)
@given(awareness_entries)
def test_awareness_entries_round_trip(entries: list[AwarenessEntry]) -> None:
    payload = encode_awareness(entries)
    assert decode_awareness(payload) == entries
    assert decode_awareness(decode_message(awareness_message(payload)).payload) == entries
