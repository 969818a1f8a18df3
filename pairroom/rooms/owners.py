"""Who may write each part of the room document, and what shape it must have: one table.

Every root of the document (docs/doc-schema.md) and, for map roots, every key has one ``OwnerRow``:
the roles whose clients may write it (the server itself always may: its changes never come from a
client) and a validator for the value's shape. ``DocumentGuards`` (``guards.py``) enforces the table
on every client transaction; features add their rows through ``Extension.document_rows`` instead of
writing a guard of their own.

A row's ``key`` is an exact key of a map root, ``"*"`` for any key of that root no exact row claims,
or ``None`` for a root taken whole (an array or text root). A map key with no row at all is the
server's: a client's write to it is reverted.

Validators take the value as the document holds it (a pycrdt ``Map``, ``Array`` or ``Text``, or
plain JSON) and answer True or False; they never raise on hostile input (NaN, infinities, wrong types,
a 3,000-deep map, a huge string), and a validator that raises anyway counts as False: the guards fail
closed.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pycrdt import Array, Map, Text

from .identity import Role

Validator = Callable[[Any], bool]

MAX_DEPTH = 16  # nesting of maps, arrays and objects under one key
MAX_NODES = 100_000  # values under one key (a run's outputs are capped in bytes, not counted here)
MAX_STRING = 2 * 1024 * 1024  # one string; runs' outputs are capped at 1 MiB per run by the kernels
MAX_INT = 2**53  # JavaScript numbers are exact up to here

EVERYONE_WHO_WRITES = frozenset({Role.OWNER, Role.EDITOR, Role.REVIEWER})
FILE_WRITERS = frozenset({Role.OWNER, Role.EDITOR})
OWNERS = frozenset({Role.OWNER})
SERVER = frozenset[Role]()


@dataclass(frozen=True, slots=True)
class OwnerRow:
    """One root (``key`` None), one key of a map root, or every other key of it (``key`` ``"*"``)."""

    root: str
    key: str | None
    writers: frozenset[Role]  # roles whose clients may write it; empty: the server only
    validate: Validator
    shape: str  # for docs/doc-schema.md
    root_type: type[Map[Any]] | type[Array[Any]] | type[Text] = Map
    # Whether changes inside the value are checked too, or only setting and deleting the key: a
    # file is whatever its writers type, so keystrokes (most of all updates) cost the guards nothing.
    deep: bool = True

    def allows(self, role: Role) -> bool:
        return role in self.writers

    @property
    def server_kept(self) -> bool:
        """The server keeps its own copy of what is under this row, to restore it after a client's
        write: every row editors may not write (small, written by the server or owners)."""
        return Role.EDITOR not in self.writers


@dataclass(slots=True)
class OwnerTable:
    """The rows of the document, looked up by (root, key). Never changed once built: every room of
    a node shares the one ``default`` builds for its extensions' rows."""

    rows: Sequence[OwnerRow]
    _by_key: dict[tuple[str, str | None], OwnerRow] = field(init=False)
    _roots: dict[str, type[Map[Any]] | type[Array[Any]] | type[Text]] = field(init=False)

    def __post_init__(self) -> None:
        self._by_key = {}
        self._roots = {}
        for row in self.rows:
            if (row.root, row.key) in self._by_key:
                raise ValueError(f"two rows for {row.root}.{row.key}")
            known = self._roots.setdefault(row.root, row.root_type)
            if not row.deep and not FILE_WRITERS <= row.writers:
                # What is not watched cannot be reverted: only rows every full writer may write
                # can leave the changes inside their values unchecked.
                raise ValueError(f"{row.root}.{row.key}: deep=False needs owners and editors among its writers")
            if row.root_type is Text and not FILE_WRITERS <= row.writers:
                raise ValueError(f"{row.root}: a text root cannot be reverted; owners and editors must write it")
            if known is not row.root_type:
                raise ValueError(f"root {row.root!r} declared as {known.__name__} and {row.root_type.__name__}")
            self._by_key[(row.root, row.key)] = row

    @classmethod
    def default(cls, extra: Iterable[OwnerRow] = ()) -> OwnerTable:
        """The built-in rows plus ``extra`` (the rows every extension contributes), built once per
        set of rows (about 2 KiB that each loaded room would otherwise keep)."""
        return _default_table(tuple(extra))

    @property
    def roots(self) -> dict[str, type[Map[Any]] | type[Array[Any]] | type[Text]]:
        return dict(self._roots)

    def deep(self, root: str) -> bool:
        """Whether changes inside the values of ``root`` are checked (any of its rows says so)."""
        return any(row.deep for row in self.rows if row.root == root)

    def row(self, root: str, key: str | None) -> OwnerRow | None:
        """The row for ``root`` (``key`` None) or ``root[key]``; None means the server's."""
        found = self._by_key.get((root, key))
        if found is None and key is not None:
            found = self._by_key.get((root, "*"))
        if found is None:
            found = self._by_key.get((root, None))
        return found


@functools.lru_cache(maxsize=8)
def _default_table(extra: tuple[OwnerRow, ...]) -> OwnerTable:
    return OwnerTable([*BUILTIN_ROWS, *extra])


# -- validators ------------------------------------------------------------------------------------


def plain_value(value: Any, *, depth: int = MAX_DEPTH, max_string: int = MAX_STRING) -> bool:
    """JSON-like with finite numbers, bounded depth, size and strings; shared types included."""
    budget = [MAX_NODES]
    try:
        return _plain(value, depth, max_string, budget)
    except (RecursionError, TypeError, ValueError):
        return False


def _plain(value: Any, depth: int, max_string: int, budget: list[int]) -> bool:
    budget[0] -= 1
    if budget[0] < 0 or depth < 0:
        return False
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, int):
        return -MAX_INT <= value <= MAX_INT
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        return len(value) <= max_string
    if isinstance(value, (bytes, bytearray)):
        return len(value) <= max_string
    if isinstance(value, Text):
        return len(value) <= max_string
    if isinstance(value, (dict, Map)):
        return all(
            isinstance(k, str) and len(k) <= 256 and _plain(v, depth - 1, max_string, budget) for k, v in value.items()
        )
    if isinstance(value, (list, tuple, Array)):
        return all(_plain(v, depth - 1, max_string, budget) for v in value)
    return False


def finite_number(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and abs(value) <= MAX_INT
    )


def short_string(limit: int) -> Validator:
    def check(value: Any) -> bool:
        return isinstance(value, str) and len(value) <= limit

    return check


def valid_path(path: str) -> bool:
    """A file path as docs/doc-schema.md gives it: relative, ``/`` between non-empty segments, no
    ``.`` or ``..``, at most 255 characters."""
    if not isinstance(path, str) or not 0 < len(path) <= 255 or "\x00" in path:
        return False
    return all(part not in ("", ".", "..") for part in path.split("/"))


def file_value(value: Any) -> bool:
    return isinstance(value, Text) and len(value) <= MAX_STRING


def text_root(value: Any) -> bool:
    return isinstance(value, Text)


def roles_map(value: Any) -> bool:
    return isinstance(value, Map) and all(
        isinstance(k, str) and len(k) <= 256 and v in {r.value for r in Role} for k, v in value.items()
    )


POLICY_VALUES: dict[str, Callable[[Any], bool]] = {
    "run": lambda v: v in ("editors", "owners"),
    "recording": lambda v: isinstance(v, bool),
    "speak": lambda v: v in ("everyone", "owners"),
    "git": lambda v: v in ("editors", "owners"),  # who commits, pulls and pushes (docs/git.md)
}


def policy_map(value: Any) -> bool:
    return isinstance(value, Map) and all(k in POLICY_VALUES and POLICY_VALUES[k](v) for k, v in value.items())


def kernel_map(value: Any) -> bool:
    return isinstance(value, Map) and plain_value(value, depth=2, max_string=256)


def run_map(value: Any) -> bool:
    return isinstance(value, Map) and plain_value(value, depth=8)


def chat_entry(item: Any) -> bool:
    """A chat line as a client may append it: an object with a text. Whatever else it holds is
    replaced: the server stamps ``author``, ``name`` and ``at`` and keeps only those and ``id``."""
    return isinstance(item, dict) and isinstance(item.get("text"), str) and len(item["text"]) <= 8192


THREAD_FIELDS: dict[str, Callable[[Any], bool]] = {
    "path": lambda v: isinstance(v, str) and len(v) <= 1024,
    "start": lambda v: isinstance(v, (bytes, bytearray)) and len(v) <= 1024,
    "end": lambda v: isinstance(v, (bytes, bytearray)) and len(v) <= 1024,
    "status": lambda v: isinstance(v, str) and len(v) <= 32,  # the review guard keeps it known
    "suggestion": lambda v: v is None or (isinstance(v, str) and len(v) <= 64 * 1024),
    "createdAt": finite_number,
    "by": lambda v: isinstance(v, str) and len(v) <= 256,
    "pass": lambda v: v is None or (isinstance(v, str) and len(v) <= 64),
    "messages": lambda v: isinstance(v, Array) and len(v) <= 10_000 and all(_thread_message(m) for m in v),
}


def _thread_message(item: Any) -> bool:
    return (
        isinstance(item, dict)
        and set(item) <= {"id", "author", "name", "at", "text", "run"}
        and plain_value(item, depth=1, max_string=16 * 1024)
    )


def review_thread(value: Any) -> bool:
    """A review thread: a ``Y.Map`` of the fields docs/doc-schema.md lists, each of its shape."""
    try:
        return isinstance(value, Map) and all(k in THREAD_FIELDS and THREAD_FIELDS[k](v) for k, v in value.items())
    except (RecursionError, TypeError, ValueError):
        return False


def review_pass(value: Any) -> bool:
    return isinstance(value, Map) and plain_value(value, depth=2, max_string=1024)


BUILTIN_ROWS: tuple[OwnerRow, ...] = (
    OwnerRow("files", "*", FILE_WRITERS, file_value, "`Y.Text`; the key a valid path", deep=False),
    OwnerRow("text", None, FILE_WRITERS, text_root, "`Y.Text`", Text, deep=False),
    OwnerRow("meta", "title", OWNERS, short_string(200), "string, at most 200 characters"),
    OwnerRow("meta", "createdAt", SERVER, finite_number, "number"),
    OwnerRow("meta", "roles", SERVER, roles_map, "`Y.Map` user id to role"),
    OwnerRow(
        "meta",
        "policy",
        OWNERS,
        policy_map,
        "`Y.Map`: `run` `editors`/`owners`, `recording` bool, `speak` `everyone`/`owners`, `git` `editors`/`owners`",
    ),
    OwnerRow("meta", "kernel", SERVER, kernel_map, "`Y.Map`: `status`, `restartedAt`, `node`"),
    OwnerRow(
        "chat",
        None,
        EVERYONE_WHO_WRITES,
        chat_entry,
        "appended objects `{id, text}`; the server stamps `author`, `name`, `at`",
        Array,
    ),
    OwnerRow("runs", "*", SERVER, run_map, "`Y.Map` run record (finite numbers, depth 8)"),
    OwnerRow("reviews", "*", EVERYONE_WHO_WRITES, review_thread, "`Y.Map` thread of known fields"),
    OwnerRow("reviewPasses", "*", SERVER, review_pass, "`Y.Map` review pass"),
)


def valid_key(row: OwnerRow, key: str | None) -> bool:
    """Keys of ``files`` are paths; keys elsewhere are short strings."""
    if key is None:
        return True
    if row.root == "files":
        return valid_path(key)
    return len(key) <= 256


def checked(validate: Validator, value: Any) -> bool:
    """Run a validator; one that raises says no (fail closed)."""
    try:
        return bool(validate(value))
    except Exception:  # noqa: BLE001 - a validator that cannot decide says no (fail closed)
        return False
