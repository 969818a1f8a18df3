"""Structured fuzzing of what a stranger can send a node: websocket messages from several connections
with different roles, node-to-node bus messages, and HTTP bodies on every route (issue 22, item 17).

Real servers: a pairroom node runs in a thread with its own event loop (Hypothesis drives clients
synchronously from the test's thread), with a secret so roles matter, on real SQLite, and for the bus
on a real ``redis-server``. Invariants checked while and after fuzzing:

- the server answers (``/healthz`` after every step, ``/readyz`` after the bus fuzz);
- the clients that only sent legitimate messages converge on one document;
- nothing a viewer or reviewer sent reaches the document (no guard is bypassed);
- storage equals memory: after a restart on the same database, every room reads as it was.

``make test`` runs a short pass (a few examples per target); ``make fuzz`` sets
``PAIRROOM_FUZZ=long`` for hundreds. A failure prints the shrunk sequence of steps that caused it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test
from pycrdt import Array, Doc, Map, Text
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from pairroom.app import create_app
from pairroom.config import Settings
from pairroom.protocol import bus
from pairroom.protocol import sync as protocol
from pairroom.protocol.sync import ProtocolError
from pairroom.web.auth import mint
from pairroom.web.runner import Server, start_serving, uvicorn_config

LONG = os.environ.get("PAIRROOM_FUZZ") == "long"
SECRET = "fuzz-secret-0123456789abcdef0123456789abcdef"
ROLES = ("owner", "editor", "reviewer", "viewer")
WRITERS = ("owner", "editor")
EVIL = "EVIL"  # what a non-writer tries to put in the document; never seen by anyone else

FUZZ = settings(
    max_examples=300 if LONG else 12,
    stateful_step_count=40 if LONG else 15,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=not LONG,  # the short run is the same every time: a failure in CI is reproducible
    database=None,
)


# -- a real node in a thread -------------------------------------------------------------------------


class ThreadNode:
    """A pairroom node served from its own thread and event loop; ``stop`` flushes and exits."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.server: Server | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="fuzz-node", daemon=True)
        self.thread.start()
        if not self._ready.wait(30) or self.server is None or self.server.port is None:
            raise RuntimeError(f"node did not start: {self._error!r}")
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.server.port}", timeout=10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def main() -> None:
            self.server = Server(uvicorn_config(create_app(self.settings), self.settings, signals=False))
            task = await start_serving(self.server)
            self._ready.set()
            await task

        try:
            self.loop.run_until_complete(main())
        except BaseException as exc:  # reported by the constructor or by stop()
            self._error = exc
            self._ready.set()

    def ws(self, room: str, role: str) -> str:
        assert self.server is not None
        token = mint(SECRET, room, role, role.capitalize(), user_id=f"u-{role}-{uuid.uuid4().hex[:6]}")
        return f"ws://127.0.0.1:{self.server.port}/yjs/{room}?token={token}"

    def owner_headers(self, room: str) -> dict[str, str]:
        return {"authorization": f"Bearer {mint(SECRET, room, 'owner', 'Owner')}"}

    def stop(self) -> None:
        self.http.close()
        assert self.server is not None
        self.server.should_exit = True
        self.thread.join(60)
        assert not self.thread.is_alive(), "the node did not stop"
        if self._error is not None:
            raise self._error


@pytest.fixture(scope="module")
def db_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "pairroom.db"


def node_settings(db_path: Path, **overrides: Any) -> Settings:
    return dataclasses.replace(
        Settings(),
        port=0,
        db=f"sqlite:///{db_path}",
        log_format="text",
        kernels=False,
        secret=SECRET,
        rate_limit=100_000.0,
        rate_burst=100_000,
        log_level="error",
        **overrides,
    )


@contextlib.contextmanager
def running_node(db_path: Path, **overrides: Any) -> Iterator[ThreadNode]:
    node = ThreadNode(node_settings(db_path, **overrides))
    try:
        yield node
    finally:
        node.stop()


# -- a synchronous Yjs client ----------------------------------------------------------------------------


class Client:
    """One websocket connection with its own document, synced the way y-websocket does it."""

    def __init__(self, url: str, role: str) -> None:
        self.role = role
        self._connection = connect(url, max_size=None, open_timeout=10)
        self.ws: ClientConnection = self._connection.__enter__()
        self.doc = Doc()
        self.text = self.doc.get("text", type=Text)
        self.closed: int | None = None
        self.tainted = False  # sent something hostile: its own copy may differ on purpose
        self.left = False
        self.clock = 0  # of its awareness state
        self.wrote = False  # made an edit: the server knows its Yjs client id as this connection's
        self._applying = False
        self.doc.observe(self._on_update)
        self.send(protocol.sync_step1(self.doc.get_state()))

    def _on_update(self, event: Any) -> None:
        if not self._applying:
            self.send(protocol.sync_update(event.update))

    def send(self, frame: bytes) -> None:
        if self.closed is not None:
            return
        try:
            self.ws.send(frame)
        except ConnectionClosed as exc:
            self.closed = exc.rcvd.code if exc.rcvd else 1006

    def drain(self, seconds: float = 0.02) -> None:
        """Take what the server sent, until it has been quiet for ``seconds``."""
        while self.closed is None:
            try:
                frame = self.ws.recv(timeout=seconds)
            except TimeoutError:
                return
            except ConnectionClosed as exc:
                self.closed = exc.rcvd.code if exc.rcvd else 1006
                return
            if isinstance(frame, bytes):
                self._receive(frame)

    def _receive(self, frame: bytes) -> None:
        try:
            message = protocol.decode_message(frame)
        except ProtocolError:  # an auth message (permission denied) is server to client only
            return
        if message.type is not protocol.MessageType.SYNC:
            return
        if message.step is protocol.SyncStep.STEP1:
            self.send(protocol.sync_step2(self.doc.get_update(message.payload)))
            return
        self._applying = True
        try:
            self.doc.apply_update(message.payload)
        finally:
            self._applying = False

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._connection.__exit__(None, None, None)


# -- what a stranger sends -----------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def awareness_payload(entries: list[tuple[int, int, str]], count: int | None = None) -> bytes:
    parts = [protocol.write_var_uint(len(entries) if count is None else count)]
    for client_id, clock, state in entries:
        raw = state.encode("utf-8", "surrogatepass")
        parts += [
            protocol.write_var_uint(client_id),
            protocol.write_var_uint(clock),
            protocol.write_var_uint(len(raw)),
            raw,
        ]
    return b"".join(parts)


states = st.one_of(
    json_values.map(lambda v: json.dumps(v)),
    st.just("null"),
    st.text(max_size=40),
    st.integers(0, 40_000).map(lambda n: json.dumps({"cursor": "x" * n})),
)
awareness_frames = st.builds(
    lambda entries, count: protocol.awareness_message(awareness_payload(entries, count)),
    st.lists(st.tuples(st.integers(0, 2**53), st.integers(0, 2**32), states), max_size=24),
    st.none() | st.integers(0, 10**9),
)
sync_frames = st.builds(
    lambda step, payload: bytes([0]) + protocol.write_var_uint(step) + protocol.write_var_uint(len(payload)) + payload,
    st.integers(0, 4),
    st.binary(max_size=80),
)
hostile_frames = st.one_of(
    st.binary(max_size=64),
    sync_frames,
    awareness_frames,
    st.builds(lambda kind, rest: protocol.write_var_uint(kind) + rest, st.integers(0, 300), st.binary(max_size=16)),
)


def foreign_update(kind: str, text: str) -> bytes:
    """A well-formed update a member might forge: text, the roles table, the policy, chat."""
    doc = Doc()
    with doc.transaction():
        if kind == "text":
            doc.get("text", type=Text).insert(0, EVIL + text)
        elif kind == "roles":
            doc.get("meta", type=Map)["roles"] = Map({"u-owner": "viewer", "someone": "owner"})
        elif kind == "policy":
            doc.get("meta", type=Map)["policy"] = Map({"run": "owners", "recording": False})
        elif kind == "files":
            doc.get("files", type=Map)[EVIL + ".py"] = Text(EVIL)
    return protocol.sync_update(doc.get_update())


def editor_forgery(kind: str) -> bytes:
    """An update an editor may not make: what the owner table refuses from editors."""
    doc = Doc()
    with doc.transaction():
        meta = doc.get("meta", type=Map)
        if kind == "roles":
            meta["roles"] = Map({"u-owner": "viewer", "someone": "owner"})
        elif kind == "policy":
            meta["policy"] = Map({"run": "owners", "recording": False})
        elif kind == "run":
            doc.get("runs", type=Map)["forged"] = Map(
                {"by": "u-owner", "status": "done", "outputs": [EVIL], "order": 0}
            )
        elif kind == "nan":
            doc.get("chat", type=Array).append(Map({"text": EVIL, "by": "u-owner", "at": float("nan")}))
            meta["roles"] = Map({"someone": "owner"})
        elif kind == "deep":
            value: Any = EVIL
            for _ in range(3000):
                value = {"a": value}
            meta["policy"] = Map({"run": "owners", "x": value})
    return protocol.sync_update(doc.get_update())


def stolen_client_update(thief: Client, victim: Client) -> bytes:
    """Structs under ``victim``'s Yjs client id, one clock ahead of what it wrote: if the server
    took it, the victim's next keystroke would be a duplicate and the copies would never converge."""
    forged = Doc(client_id=victim.doc.client_id)
    forged.apply_update(thief.doc.get_update())
    before = forged.get_state()
    forged.get("text", type=Text).insert(0, EVIL)
    return protocol.sync_update(forged.get_update(before))


# -- the websocket machine ------------------------------------------------------------------------------


class RoomMachine(RuleBasedStateMachine):
    """Several connections with different roles in one fresh room, some legitimate, some hostile."""

    node: ThreadNode
    finished: dict[str, str]
    steps = 0  # room -> the text its legitimate clients converged on
    forgeries: dict[str, int] = {}  # editor_forges kind -> how many were sent

    connections = Bundle("connections")

    def __init__(self) -> None:
        super().__init__()
        self.room = "fz-" + uuid.uuid4().hex[:10]
        self.clients: list[Client] = []
        self.written = ""

    @initialize(target=connections)
    def first_owner(self) -> Client:
        client = Client(self.node.ws(self.room, "owner"), "owner")
        self.clients.append(client)
        return client

    @initialize(target=connections)
    def an_editor(self) -> Client:
        client = Client(self.node.ws(self.room, "editor"), "editor")
        self.clients.append(client)
        return client

    @rule(target=connections, role=st.sampled_from(ROLES))
    def join(self, role: str) -> Client:
        client = Client(self.node.ws(self.room, role), role)
        self.clients.append(client)
        return client

    @rule(client=connections, text=st.text(alphabet="abcxyz \n", min_size=1, max_size=12), where=st.integers(0, 10_000))
    def edit(self, client: Client, text: str, where: int) -> None:
        client.drain()
        if client.role in WRITERS and client.closed is None:
            client.text.insert(min(where, len(str(client.text))), text)
            client.wrote = True

    @rule(client=connections, frame=hostile_frames)
    def hostile_frame(self, client: Client, frame: bytes) -> None:
        client.tainted = True
        client.send(frame)

    @rule(client=connections, kind=st.sampled_from(["text", "roles", "policy", "files"]), text=st.text(max_size=8))
    def forged_update(self, client: Client, kind: str, text: str) -> None:
        if client.role in WRITERS:
            return  # text and files are theirs to write; what an editor may not is editor_forges
        client.tainted = True
        client.send(foreign_update(kind, text))

    @rule(
        client=connections,
        kind=st.sampled_from(["roles", "policy", "run", "nan", "deep", "steal"]),
        pick=st.integers(0, 100),
    )
    def editor_forges(self, client: Client, kind: str, pick: int) -> None:
        """What only owners or the server may write, sent by an editor (a well-formed update): the
        roles table, the room's policy, a run record with forged output, values a guard cannot
        compare (NaN, 3,000-deep maps), and structs under another live connection's client id."""
        if client.role != "editor" or client.closed is not None:
            return
        client.drain()
        if kind == "steal":
            victims = [c for c in self.clients if c is not client and c.wrote and c.closed is None and not c.left]
            if not victims:
                return
            frame = stolen_client_update(client, victims[pick % len(victims)])
        else:
            frame = editor_forgery(kind)
        client.tainted = True  # its own copy now holds what the server refused
        client.send(frame)
        RoomMachine.forgeries[kind] = RoomMachine.forgeries.get(kind, 0) + 1

    @rule(client=connections, state=json_values.map(lambda v: json.dumps({"user": {}, "file": v})))
    def presence(self, client: Client, state: str) -> None:
        """What a browser sends: its own client id, a JSON state of a few hundred bytes."""
        client.clock += 1
        client.send(protocol.awareness_message(awareness_payload([(client.doc.client_id, client.clock, state)])))

    @rule(client=connections)
    def leave(self, client: Client) -> None:
        client.drain()
        client.close()
        client.left = True
        client.closed = client.closed or 1000

    @invariant()
    def server_answers(self) -> None:
        assert self.node.http.get("/healthz").status_code == 200
        RoomMachine.steps += 1

    def teardown(self) -> None:
        try:
            observer = Client(self.node.ws(self.room, "viewer"), "viewer")
            deadline = time.monotonic() + 15
            while True:
                for client in [*self.clients, observer]:
                    client.drain(0.02)
                # a client the server closed (for what it sent) keeps the copy it had then
                legit = [c for c in [*self.clients, observer] if not c.tainted and c.closed is None]
                texts = {str(c.text) for c in legit}
                if len(texts) == 1 or time.monotonic() > deadline:
                    break
            assert len(texts) == 1, f"legitimate clients did not converge: {texts}"
            (text,) = texts
            assert EVIL not in text, "a non-writer's update reached the document"
            meta = observer.doc.get("meta", type=Map)
            roles = meta.get("roles")
            assert not (isinstance(roles, Map) and roles.get("someone") == "owner"), "the roles table was forged"
            assert EVIL + ".py" not in observer.doc.get("files", type=Map)
            policy = meta.get("policy")
            assert not (isinstance(policy, Map) and policy.get("recording") is False), "the policy was forged"
            assert not (isinstance(policy, Map) and policy.get("run") == "owners"), "the policy was forged"
            assert all(EVIL not in str(line) for line in observer.doc.get("chat", type=Array)), "a forged chat line"
            runs = observer.doc.get("runs", type=Map)
            assert all(EVIL not in str(run) for run in runs.values()), "a forged run record was kept"
            for client in self.clients:  # an honest client is never thrown out, whatever others sent
                if not client.tainted and not client.left:
                    assert client.closed is None, (client.role, client.closed)
            self.finished[self.room] = text
            observer.close()
        finally:
            for client in self.clients:
                client.close()


def test_websocket_fuzz_with_several_roles(db_path: Path) -> None:
    finished: dict[str, str] = {}
    with running_node(db_path) as node:
        RoomMachine.node = node
        RoomMachine.finished = finished
        run_state_machine_as_test(RoomMachine, settings=FUZZ)
    print(
        f"websocket fuzz: {len(finished)} rooms, {RoomMachine.steps} steps, editors' forgeries {RoomMachine.forgeries}"
    )
    assert len(finished) >= FUZZ.max_examples, "examples did not run to their end"
    # storage equals memory: the same rooms, read from the database by a fresh node
    with running_node(db_path) as again:
        for room, text in finished.items():
            reader = Client(again.ws(room, "viewer"), "viewer")
            deadline = time.monotonic() + 10
            while str(reader.text) != text and time.monotonic() < deadline:
                reader.drain(0.05)
            assert str(reader.text) == text, (room, str(reader.text), text)
            reader.close()


# -- the bus codec --------------------------------------------------------------------------------------


bus_messages = st.builds(
    bus.BusMessage,
    st.sampled_from(list(bus.Kind)),
    st.text(max_size=20),
    st.text(max_size=40),
    st.binary(max_size=200),
    st.text(max_size=20),
    st.text(max_size=20),
)


@settings(max_examples=2000 if LONG else 300, deadline=None, database=None, derandomize=not LONG)
@given(st.binary(max_size=300))
def test_bus_decode_refuses_anything_malformed_with_a_protocol_error(data: bytes) -> None:
    try:
        message = bus.decode(data)
    except ProtocolError:
        return
    assert bus.decode(bus.encode(message)) == message


@settings(max_examples=2000 if LONG else 300, deadline=None, database=None, derandomize=not LONG)
@given(bus_messages)
def test_bus_messages_round_trip(message: bus.BusMessage) -> None:
    encoded = bus.encode(message)
    assert bus.decode(encoded) == message
    for cut in (1, len(encoded) // 2, len(encoded) - 1):  # every truncation is refused, not misread
        with pytest.raises(ProtocolError):
            bus.decode(encoded[:cut])


@settings(max_examples=2000 if LONG else 200, deadline=None, database=None, derandomize=not LONG)
@given(st.binary(max_size=200), st.integers(0, 100), st.integers(0, 16 * 1024))
def test_awareness_decode_refuses_with_a_protocol_error_only(payload: bytes, max_entries: int, max_state: int) -> None:
    with contextlib.suppress(ProtocolError):
        entries = protocol.decode_awareness(payload, max_entries=max_entries, max_state_bytes=max_state)
        assert len(entries) <= max_entries
        assert all(len(e.state.encode()) <= max_state for e in entries)


def test_hostile_bus_messages_from_a_peer_leave_the_node_serving(db_path: Path, tmp_path: Path) -> None:
    """Bytes published on a room's channel by something that is not a pairroom node: the node logs
    and drops what it cannot use, its bus reader lives on, and its clients keep working."""
    import redis

    from pairroom.protocol import keys
    from tests.support.redis_server import RedisProcess

    async def start_redis() -> RedisProcess:
        process = RedisProcess()
        await process.start()
        return process

    redis_process = asyncio.run(start_redis())
    node = ThreadNode(node_settings(tmp_path / "bus.db", redis=redis_process.url))  # stopped below
    publisher = redis.Redis(host="127.0.0.1", port=redis_process.port)
    try:
        room = "bus-" + uuid.uuid4().hex[:8]
        writer = Client(node.ws(room, "editor"), "editor")
        writer.drain(0.2)
        channel = keys.room_channel(room)

        @settings(
            max_examples=1000 if LONG else 120,
            deadline=None,
            database=None,
            derandomize=not LONG,
            suppress_health_check=list(HealthCheck),
        )
        @given(
            st.one_of(
                st.binary(max_size=200),
                bus_messages.map(lambda m: bus.encode(dataclasses.replace(m, room=room))),
                st.builds(
                    lambda kind, payload: bus.encode(bus.BusMessage(kind, "mallory", room, payload)),
                    st.sampled_from(
                        [
                            bus.Kind.UPDATE,
                            bus.Kind.MISSING,
                            bus.Kind.AWARENESS,
                            bus.Kind.STATE_VECTOR,
                            bus.Kind.STATE_VECTOR_REPLY_WANTED,
                        ]
                    ),
                    st.binary(max_size=120) | awareness_frames.map(lambda f: f[2:]),
                ),
            )
        )
        def publish(data: bytes) -> None:
            publisher.publish(channel, data)

        publish()
        writer.text.insert(0, "still here")
        observer = Client(node.ws(room, "viewer"), "viewer")
        deadline = time.monotonic() + 10
        while "still here" not in str(observer.text) and time.monotonic() < deadline:
            observer.drain(0.05)
            writer.drain(0.01)
        assert "still here" in str(observer.text)
        assert node.http.get("/healthz").status_code == 200
        assert node.http.get("/readyz").status_code == 200, node.http.get("/readyz").text
        writer.close()
        observer.close()
    finally:
        publisher.close()
        node.stop()
        asyncio.run(redis_process.close())


# -- HTTP bodies on every route -------------------------------------------------------------------------


def writing_routes(node: ThreadNode) -> list[tuple[str, str]]:
    """(method, path template) of every route that takes a body, read from the app itself."""
    from starlette.routing import Mount, Route

    assert node.server is not None
    found: list[tuple[str, str]] = []

    def walk(routes: list[Any], prefix: str) -> None:
        for route in routes:
            if isinstance(route, Mount):
                walk(list(route.routes), prefix + route.path)
            elif isinstance(route, Route):
                for method in sorted((route.methods or set()) & {"POST", "PUT", "PATCH", "DELETE"}):
                    found.append((method, prefix + route.path))

    walk(list(node.server.config.app.routes), "")
    return found


json_bodies = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(
        st.sampled_from(
            [
                "room",
                "name",
                "ttl",
                "roles",
                "role",
                "text",
                "code",
                "path",
                "title",
                "seq",
                "at",
                "file",
                "line",
                "suggestion",
                "run",
                "status",
                "message",
                "version",
            ]
        ),
        json_values,
        max_size=6,
    ).map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=100),
    st.just(b"[" * 50_000 + b"]" * 50_000),
    st.just(json.dumps({"text": "x" * 70_000}).encode()),
    st.just(b'{"ttl": NaN, "at": Infinity, "seq": -Infinity}'),
)


def test_http_bodies_on_every_route_get_an_answer_below_500(tmp_path: Path) -> None:
    with running_node(tmp_path / "http.db") as node:
        http_fuzz(node)


def http_fuzz(node: ThreadNode) -> None:
    routes = writing_routes(node)
    assert len(routes) >= 8, routes
    room = "http-" + uuid.uuid4().hex[:8]
    headers = node.owner_headers(room)
    answers: dict[int, int] = {}

    @settings(
        max_examples=1500 if LONG else 300,
        deadline=None,
        database=None,
        derandomize=not LONG,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.sampled_from(routes), json_bodies, st.sampled_from([True, True, True, False]))
    def send(route: tuple[str, str], body: bytes, authorized: bool) -> None:
        method, template = route
        path = template
        for name in ("room", "user", "id", "thread", "run_id", "name", "version", "session", "message"):
            path = path.replace("{" + name + "}", room if name == "room" else "x1")
        path = path.replace("{path:path}", "a.py")
        response = node.http.request(method, path, content=body, headers=headers if authorized else {})
        answers[response.status_code] = answers.get(response.status_code, 0) + 1
        # 503 is how a disabled feature answers (kernels off); anything else 5xx is a server bug
        assert response.status_code < 500 or (response.status_code == 503 and "disabled" in response.text), (
            method,
            path,
            body[:200],
            response.status_code,
            response.text[:300],
        )

    send()
    print(f"http fuzz over {len(routes)} routes: answers {sorted(answers.items())}")
    assert sum(answers.values()) >= 100
    assert node.http.get("/healthz").status_code == 200
    assert any(code < 300 for code in answers), answers  # the fuzz reached real work, not only refusals
