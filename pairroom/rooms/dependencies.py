"""A bound on updates that wait for changes the room does not have yet.

A Yjs update whose structs start past what the document has of their client, or point at structs
it has not seen (left or right neighbour, parent), cannot be integrated: the CRDT keeps it aside
until the missing changes arrive, which from a hostile client is never (+53-63 MiB while a room was
loaded). Legitimate clients send such updates too, rarely and briefly: one that got a peer's change
through another path (a WebRTC provider) before the server did.

So each client update is decoded before it is applied (``partial_writes.decode_update``, time
proportional to the update) and compared with the document's state vector. One with missing
dependencies counts its size against its connection and its room until the document has what it
needs; past ``per_connection`` or ``per_room`` bytes the update is refused (4422) and the connection
closes (its client resyncs when it reconnects). Nothing already waiting inside the CRDT is dropped;
no more is let in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pairroom.protocol.sync import CloseCode, ProtocolError

from .partial_writes import DecodedUpdate, UpdateDecodeError, decode_state_vector, decode_update

PER_CONNECTION = 1024 * 1024
PER_ROOM = 8 * 1024 * 1024


def missing_dependencies(decoded: DecodedUpdate, have: dict[int, int]) -> dict[int, int]:
    """Client id -> the clock the document must reach before ``decoded`` integrates whole (empty:
    nothing is missing). ``have`` is the document's state vector."""
    ranges: dict[int, list[tuple[int, int]]] = {}
    for s in decoded.structs:
        ranges.setdefault(s.client, []).append((s.clock, s.clock + s.length))
    reach = dict(have)  # how far each client's clocks are known once the update's own structs count
    needs: dict[int, int] = {}
    for client, spans in ranges.items():
        end = have.get(client, 0)
        for start, stop in sorted(spans):
            if start > end:
                needs[client] = max(needs.get(client, 0), start)  # a gap before this struct
            end = max(end, stop)
        reach[client] = max(reach.get(client, 0), end)
    for s in decoded.structs:
        for ref in (s.parent, s.origin, s.right):
            if ref is not None and ref[1] >= reach.get(ref[0], 0):
                needs[ref[0]] = max(needs.get(ref[0], 0), ref[1] + 1)
    for client, clock, length in decoded.deletes:
        if length > 0 and clock + length > reach.get(client, 0):
            needs[client] = max(needs.get(client, 0), min(clock + length, clock + 1))
    return needs


@dataclass(slots=True)
class _Waiting:
    needs: dict[int, int]
    size: int


@dataclass(slots=True)
class HeldUpdates:
    """What each connection of one room sent that still waits for missing changes."""

    per_connection: int = PER_CONNECTION
    per_room: int = PER_ROOM
    waiting: dict[str, list[_Waiting]] = field(default_factory=dict)  # member id -> its updates

    def admit(self, member_id: str, update: bytes, state_vector: bytes) -> None:
        """Raise ProtocolError (4422) if letting ``update`` wait would pass a bound."""
        try:
            decoded = decode_update(update)
        except UpdateDecodeError:
            return  # the CRDT refuses what does not decode, with its own reason
        have = decode_state_vector(state_vector)
        self._settle(have)
        needs = missing_dependencies(decoded, have)
        if not needs:
            return
        mine = sum(w.size for w in self.waiting.get(member_id, ()))
        room = sum(w.size for held in self.waiting.values() for w in held)
        if mine + len(update) > self.per_connection or room + len(update) > self.per_room:
            raise ProtocolError(
                CloseCode.UPDATE_REJECTED,
                f"updates waiting for changes the server does not have would pass "
                f"{self.per_connection // 1024} KiB for a connection or {self.per_room // 1024} KiB "
                "for the room; reconnect to resync",
            )
        self.waiting.setdefault(member_id, []).append(_Waiting(needs, len(update)))

    def forget(self, member_id: str) -> None:
        self.waiting.pop(member_id, None)

    def _settle(self, have: dict[int, int]) -> None:
        """Drop what the document caught up with."""
        for member_id in list(self.waiting):
            held = [w for w in self.waiting[member_id] if any(have.get(c, 0) < k for c, k in w.needs.items())]
            if held:
                self.waiting[member_id] = held
            else:
                del self.waiting[member_id]
