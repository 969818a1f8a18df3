"""Property: any interleaving of concurrent edits from 3 clients, with disconnects and reconnects,
converges to one document that is also what storage holds."""

from __future__ import annotations

import asyncio
import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycrdt import Doc, Text

from .yclient import YClient, eventually

rooms = itertools.count()

op = st.one_of(
    st.tuples(st.just("insert"), st.integers(0, 2), st.floats(0, 1), st.text("abcxyz\n", min_size=1, max_size=5)),
    st.tuples(st.just("delete"), st.integers(0, 2), st.floats(0, 1), st.integers(1, 4)),
    st.tuples(st.just("disconnect"), st.integers(0, 2), st.just(0.0), st.just(0)),
    st.tuples(st.just("reconnect"), st.integers(0, 2), st.just(0.0), st.just(0)),
    st.tuples(st.just("yield"), st.integers(0, 2), st.just(0.0), st.integers(0, 3)),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(op, min_size=5, max_size=40))
async def test_random_interleavings_converge_and_match_storage(server, ops):
    room = f"prop-{next(rooms)}"
    url = server.ws(room)
    docs = [Doc() for _ in range(3)]
    clients: list[YClient | None] = [await YClient.connect(url, doc) for doc in docs]
    for kind, who, where, arg in ops:
        text = docs[who].get("text", type=Text)
        if kind == "insert":
            text.insert(int(where * len(text)), arg)
        elif kind == "delete" and len(text):
            start = min(int(where * len(text)), len(text) - 1)
            del text[start : min(start + arg, len(text))]
        elif kind == "disconnect" and clients[who] is not None:
            await clients[who].close()
            clients[who] = None
        elif kind == "reconnect" and clients[who] is None:
            clients[who] = await YClient.connect(url, docs[who])
        elif kind == "yield":
            for _ in range(arg):
                await asyncio.sleep(0)
    for i, client in enumerate(clients):
        if client is None:
            clients[i] = await YClient.connect(url, docs[i])

    def texts() -> list[str]:
        return [str(d.get("text", type=Text)) for d in docs]

    await eventually(lambda: len(set(texts())) == 1, timeout=10, what=f"clients converge: {texts()}")
    live = server.hub.registry.rooms[room]
    await eventually(lambda: str(live.doc.get("text", type=Text)) == texts()[0], what="server converges")
    await live.flush()
    loaded = await server.hub.store.load(room)
    stored = Doc()
    if loaded.snapshot:
        stored.apply_update(loaded.snapshot.data)
    for update in loaded.updates:
        stored.apply_update(update.data)
    assert str(stored.get("text", type=Text)) == texts()[0]
    for client in clients:
        assert client is not None
        await client.close()
