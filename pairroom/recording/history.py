"""A room's past, rebuilt from storage: its files at any point, sessions, diffs, restores, forks and
retention. No HTTP here (``api.py``) and no SQL: storage is reached through the ``Store`` port and
the recorder's ``HistoryStore`` port (``history_store.py``).

**Points.** A point is a seq of the room's log or a time. ``"123"`` is seq 123; anything else must be
an ISO 8601 time with a zone (``2026-05-21T10:00:00Z``, ``...+02:00``). A time names the state after
every update logged at or before it, i.e. the highest seq whose server timestamp is <= the time.

**Files.** ``files_of`` maps each path of the ``files`` map to its text. The root ``Y.Text`` named
``text`` (the buffer of plain y-websocket clients) appears under the pseudo path ``/text`` when it
is not empty: file paths are relative (``docs/doc-schema.md``), so no file can ever have that name.

**Seeking.** The state at seq S is the newest snapshot at or before S plus the log after it. The
rooms registry compacts every ``--snapshot-every`` (1000) updates and every snapshot is kept, so a
seek replays at most about 500 updates. Logs written another way (imports, clusters where no node
compacted for a while) are covered by a lazy policy: a seek that had to replay more than
``SEEK_SNAPSHOT_AFTER`` updates writes a snapshot at the point it rebuilt, so the next seek near it
is fast.

**Restores** are new forward changes: each restored ``Y.Text`` gets the smallest edits (difflib
opcodes, lines first, then characters within changed blocks) that turn it into the old content.
Nothing in the log is rewritten, and concurrent edits outside the changed ranges survive, so
collaborators converge on "the restored text plus whatever they typed meanwhile elsewhere".
"""

from __future__ import annotations

import difflib
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pycrdt import Doc, Map, Text

from pairroom.recording.history_store import Event, HistoryStore, history_store_for
from pairroom.storage.store import NewUpdate, Store

ROOT_TEXT_KEY = "/text"
SEEK_SNAPSHOT_AFTER = 2000
_CHAR_DIFF_LIMIT = 20_000  # a changed block longer than this is replaced whole, not diffed by char


class PointError(ValueError):
    """A point that names nothing: malformed, in the future, past the log, or purged."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def parse_point(value: str) -> int | datetime:
    """``"42"`` -> seq 42; an ISO 8601 time with a zone -> an aware datetime. Raises PointError(400)."""
    text = value.strip()
    if not text:
        raise PointError(400, "empty point: give a seq (an integer) or an ISO 8601 time with a zone")
    if text.isdigit():
        return int(text)
    try:
        when = datetime.fromisoformat(text.replace(" ", "+") if text.count(" ") == 1 and "T" in text else text)
    except ValueError as exc:
        raise PointError(400, f"{value!r} is neither a seq nor an ISO 8601 time") from exc
    if when.tzinfo is None or when.utcoffset() is None:
        raise PointError(400, f"{value!r} has no time zone: add Z or an offset like +02:00")
    return when.astimezone(UTC)


def iso(when: datetime | None) -> str | None:
    """UTC ISO 8601 with microseconds and a Z, as every API answer spells times."""
    if when is None:
        return None
    return when.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def files_of(doc: Doc) -> dict[str, str]:
    """Every file's text, plus the root ``text`` under ``/text`` when it is not empty."""
    out = {path: str(value) for path, value in doc.get("files", type=Map).items() if isinstance(value, Text)}
    root = str(doc.get("text", type=Text))
    if root:
        out[ROOT_TEXT_KEY] = root
    return dict(sorted(out.items()))


def recording_enabled(doc: Doc) -> bool:
    """False when the owners set ``meta.policy.recording`` to false (docs/doc-schema.md)."""
    policy = doc.get("meta", type=Map).get("policy")
    if isinstance(policy, Map):
        return policy.get("recording") is not False
    if isinstance(policy, dict):
        return policy.get("recording") is not False
    return True


@dataclass(frozen=True, slots=True)
class State:
    room: str
    seq: int
    at: datetime | None  # when the update at seq was logged (None for the empty state)
    doc: Doc

    def files(self) -> dict[str, str]:
        return files_of(self.doc)


@dataclass
class Session:
    """A span of activity: from the first join to the last leave; joins within ``gap`` continue it."""

    id: str
    start: datetime
    end: datetime | None  # None while someone is still in the room
    participants: dict[str, dict[str, Any]] = field(default_factory=dict)
    edits: int = 0
    first_seq: int = 0  # the state at the start
    last_seq: int = 0  # the state at the end (or now)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "start": iso(self.start),
            "end": iso(self.end),
            "ongoing": self.end is None,
            "participants": list(self.participants.values()),
            "edits": self.edits,
            "from_seq": self.first_seq,
            "to_seq": self.last_seq,
        }


def session_id(start: datetime) -> str:
    """Stable across export and import: the start time in milliseconds since the epoch."""
    return str(int(start.timestamp() * 1000))


def user_of_origin(origin: str) -> str:
    """``client:conn:user`` -> user; other origins are counted under their kind (``kernel``...)."""
    kind, _, rest = origin.partition(":")
    if kind == "client":
        _conn, _, user = rest.partition(":")
        return user or rest
    return kind


class History:
    def __init__(self, store: Store, history_store: HistoryStore | None = None) -> None:
        self.store = store
        self.db = history_store or history_store_for(store)
        self._policies: dict[str, tuple[int, bool]] = {}  # room -> (last seq, recording enabled)

    def forget(self, room: str) -> None:
        """The room was deleted: a new room of that name starts with a fresh policy."""
        self._policies.pop(room, None)

    async def recording_enabled(self, room: str) -> bool:
        """The room's recording policy as stored now; rebuilt only when the log has grown."""
        last = await self.db.last_seq(room)
        cached = self._policies.get(room)
        if cached is not None and cached[0] == last:
            return cached[1]
        enabled = recording_enabled((await self.state(room, last)).doc)
        if len(self._policies) > 1000:
            self._policies.clear()
        self._policies[room] = (last, enabled)
        return enabled

    # -- points and states ----------------------------------------------------------------------------

    async def resolve(self, room: str, point: str | int | datetime | None) -> int:
        """The seq a point names. Raises PointError (400 malformed or in the future, 404 past the log)."""
        value = parse_point(point) if isinstance(point, str) else point
        last = await self.db.last_seq(room)
        if value is None:
            return last
        if isinstance(value, int):
            if value > last:
                raise PointError(400, f"seq {value} is past the room's last seq {last}")
            return value
        if value > datetime.now(UTC) + timedelta(seconds=1):
            raise PointError(400, f"{iso(value)} is in the future")
        return await self.db.seq_at(room, value)

    async def state(self, room: str, seq: int) -> State:
        """The document as of ``seq``: the newest snapshot at or before it, then the log after it."""
        doc: Doc[Any] = Doc()
        if seq == 0:
            return State(room, 0, None, doc)
        snapshot = await self.db.snapshot_at_or_before(room, seq)
        if snapshot is None and await self.db.first_seq(room) > 1:
            raise PointError(410, f"seq {seq} of room {room!r} is older than its retention period")
        after = snapshot.seq if snapshot else 0
        updates = await self.store.read_updates(room, after, seq)
        with doc.transaction():
            if snapshot is not None:
                doc.apply_update(snapshot.data)
            for update in updates:
                doc.apply_update(update.data)
        if len(updates) > SEEK_SNAPSHOT_AFTER:
            await self.store.write_snapshot(room, seq, doc.get_update())
        at = updates[-1].at if updates else await self.db.time_of(room, seq)
        return State(room, seq, at, doc)

    async def state_at(self, room: str, point: str | int | datetime | None) -> State:
        return await self.state(room, await self.resolve(room, point))

    # -- sessions -------------------------------------------------------------------------------------

    async def sessions(self, room: str, gap: timedelta) -> list[Session]:
        """Sessions derived from the recorded joins and leaves (per connection). A participant is named
        as their presence last named them in the session (the name they typed, in open mode and for
        links without a name), else as their token did when they joined."""
        events = await self.db.events(room, kinds=("join", "leave", "presence"))
        sessions: list[Session] = []
        present: set[str] = set()
        current: Session | None = None
        last_leave: datetime | None = None
        for event in events:
            conn = str(event.data.get("conn") or event.user)
            if event.kind == "presence":
                state = event.data.get("state")
                user = state.get("user") if isinstance(state, dict) else None
                name = user.get("name") if isinstance(user, dict) else None
                person = current.participants.get(event.user) if current is not None else None
                if person is not None and isinstance(name, str) and name.strip():
                    person["name"] = name.strip()[:64]
                continue
            if event.kind == "join":
                if current is None or (not present and last_leave is not None and event.at - last_leave > gap):
                    current = Session(session_id(event.at), event.at, None)
                    sessions.append(current)
                present.add(conn)
                current.end = None
                person = current.participants.setdefault(
                    event.user, {"id": event.user, "name": event.data.get("name"), "edits": 0}
                )
                person["name"] = event.data.get("name") or person["name"]
            elif current is not None:
                present.discard(conn)
                if not present:
                    last_leave = event.at
                    current.end = event.at
        for session in sessions:
            await self._count(room, session)
        return sessions

    async def _count(self, room: str, session: Session) -> None:
        counts = await self.db.edit_counts(room, session.start, session.end)
        for origin, count in counts.items():
            user = user_of_origin(origin)
            person = session.participants.get(user)
            if person is not None:
                person["edits"] += count
        session.edits = sum(counts.values())
        session.first_seq = await self.db.seq_at(room, session.start)
        session.last_seq = await self.db.seq_at(room, session.end) if session.end else await self.db.last_seq(room)

    async def session(self, room: str, sid: str, gap: timedelta) -> Session:
        for session in await self.sessions(room, gap):
            if session.id == sid:
                return session
        raise PointError(404, f"room {room!r} has no session {sid!r}")

    # -- diff -----------------------------------------------------------------------------------------

    async def diff(self, room: str, old_seq: int, new_seq: int, path: str | None = None) -> str:
        old = (await self.state(room, old_seq)).files()
        new = (await self.state(room, new_seq)).files()
        if path is not None and path not in old and path not in new:
            raise PointError(404, f"no file {path!r} at seq {old_seq} or at seq {new_seq}")
        return unified_diff(old, new, path, f"seq {old_seq}", f"seq {new_seq}")

    # -- fork -----------------------------------------------------------------------------------------

    async def fork(self, room: str, seq: int, new_room: str, by: str) -> int:
        """Create ``new_room`` holding ``room``'s state at ``seq`` as its first log entry and snapshot."""
        if await self.db.has_anything(new_room):
            raise PointError(409, f"room {new_room!r} already exists")
        state = await self.state(room, seq)
        data = state.doc.get_update()
        now = datetime.now(UTC)
        uid = f"fork:{secrets.token_hex(8)}"
        last = await self.store.append(new_room, [NewUpdate(uid, now, "local:fork", data)])
        await self.store.write_snapshot(new_room, last, data)
        await self.db.append_events(
            [
                Event(new_room, now, "fork", by, {"from": room, "seq": seq}),
                Event(room, now, "forked", by, {"to": new_room, "seq": seq}),
            ]
        )
        return last

    # -- retention ------------------------------------------------------------------------------------

    async def purge(self, keep: timedelta, now: datetime | None = None) -> dict[str, int]:
        """Delete history older than ``keep`` in every room, keeping each document whole: a snapshot
        is written at the last seq before the cutoff first. Returns rows removed per room."""
        cutoff = (now or datetime.now(UTC)) - keep
        removed: dict[str, int] = {}
        for room in await self.store.rooms():
            keep_from = await self.db.seq_at(room, cutoff)
            if keep_from > await self.db.first_seq(room):
                state = await self.state(room, keep_from)
                await self.store.write_snapshot(room, keep_from, state.doc.get_update())
            count = await self.db.purge_before(room, keep_from, cutoff)
            if count:
                removed[room] = count
        return removed


def unified_diff(old: dict[str, str], new: dict[str, str], path: str | None, old_label: str, new_label: str) -> str:
    """A ``git diff``-like unified diff of the files that differ (or of ``path`` only)."""
    paths = [path] if path is not None else sorted(set(old) | set(new))
    out: list[str] = []
    for name in paths:
        a, b = old.get(name), new.get(name)
        if a == b:
            continue
        lines = difflib.unified_diff(
            (a or "").splitlines(keepends=True),
            (b or "").splitlines(keepends=True),
            fromfile=f"a/{name.lstrip('/')}" if a is not None else "/dev/null",
            tofile=f"b/{name.lstrip('/')}" if b is not None else "/dev/null",
            fromfiledate=old_label,
            tofiledate=new_label,
        )
        for line in lines:
            out.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    return "".join(out)


# -- restoring: minimal edits -------------------------------------------------------------------------


def text_edits(current: str, target: str) -> list[tuple[int, int, str]]:
    """(start, end, replacement) character ranges of ``current`` that turn it into ``target``,
    in increasing order and not overlapping. Lines first, then characters inside changed blocks."""
    edits: list[tuple[int, int, str]] = []
    a_lines = current.splitlines(keepends=True)
    b_lines = target.splitlines(keepends=True)
    a_starts = _offsets(a_lines)
    b_starts = _offsets(b_lines)
    matcher = difflib.SequenceMatcher(None, a_lines, b_lines, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        a0, a1 = a_starts[i1], a_starts[i2]
        b0, b1 = b_starts[j1], b_starts[j2]
        old, new = current[a0:a1], target[b0:b1]
        if tag == "replace" and len(old) + len(new) <= _CHAR_DIFF_LIMIT:
            chars = difflib.SequenceMatcher(None, old, new, autojunk=False)
            for ctag, c1, c2, d1, d2 in chars.get_opcodes():
                if ctag != "equal":
                    edits.append((a0 + c1, a0 + c2, new[d1:d2]))
        else:
            edits.append((a0, a1, new))
    return edits


def _offsets(lines: list[str]) -> list[int]:
    out = [0]
    for line in lines:
        out.append(out[-1] + len(line))
    return out


def set_text(text: Text, target: str) -> bool:
    """Edit ``text`` into ``target`` with minimal deletes and inserts. Must run in a transaction.

    pycrdt indexes text by UTF-8 byte, so character offsets are converted; edits go from the end
    backwards so earlier offsets stay valid."""
    current = str(text)
    if current == target:
        return False
    for start, end, replacement in reversed(text_edits(current, target)):
        byte_start = len(current[:start].encode())
        byte_end = byte_start + len(current[start:end].encode())
        if byte_end > byte_start:
            del text[byte_start:byte_end]
        if replacement:
            text.insert(byte_start, replacement)
    return True


def restore_files(doc: Doc, target: dict[str, str], only: str | None = None) -> list[str]:
    """Make the live document's files equal ``target`` (or only the file ``only``); return the paths
    that changed. Files absent from ``target`` are deleted; files absent now are created."""
    files = doc.get("files", type=Map)
    paths = [only] if only is not None else sorted(set(target) | set(files.keys()) | {ROOT_TEXT_KEY})
    changed: list[str] = []
    for path in paths:
        if path == ROOT_TEXT_KEY:
            if set_text(doc.get("text", type=Text), target.get(path, "")):
                changed.append(path)
            continue
        current = files.get(path)
        if path in target:
            if isinstance(current, Text):
                if set_text(current, target[path]):
                    changed.append(path)
            else:
                files[path] = Text(target[path])
                changed.append(path)
        elif path in files:
            del files[path]
            changed.append(path)
    return changed
