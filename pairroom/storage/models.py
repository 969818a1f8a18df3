"""The tables behind ``SqlStore``: a per-room update log and the snapshots written beside it.

Only ``migrate.py`` and the migrations import this module: the stores run plain SQL
(``statements.py``). The migrations are written by hand and must match these tables, and so must
``statements.SQLITE_SCHEMA``; ``tests/test_storage.py`` compares them.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Integer, LargeBinary, MetaData, String, UniqueConstraint
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from pairroom.storage.statements import from_utc_micros, utc_micros
from pairroom.storage.store import ORIGIN_MAX_LENGTH, ROOM_MAX_LENGTH, UID_MAX_LENGTH

__all__ = [
    "ORIGIN_MAX_LENGTH",
    "ROOM_MAX_LENGTH",
    "UID_MAX_LENGTH",
    "Base",
    "SnapshotRow",
    "UpdateRow",
    "UtcMicros",
    "from_utc_micros",
    "utc_micros",
]

# SQLite only auto-increments an INTEGER PRIMARY KEY (the rowid alias), never a BIGINT one.
_BigId = BigInteger().with_variant(Integer(), "sqlite")


class UtcMicros(TypeDecorator[datetime]):
    """A timezone-aware datetime stored as integer microseconds since the Unix epoch (UTC).

    Why not ``DateTime(timezone=True)``: SQLite has no datetime type, and SQLAlchemy stores one there
    as text without its offset, so it comes back naive; PostgreSQL's ``timestamptz`` comes back in the
    session's time zone. An integer is stored and compared the same way by both, has exactly Python's
    resolution (one microsecond), sorts correctly and covers years 1 to 9999 within 64 bits, so a value
    reads back equal to what was written on either database. Values read back are in UTC.
    """

    impl = BigInteger
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> int | None:
        if value is None:
            return None
        return utc_micros(value)

    def process_result_value(self, value: int | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return from_utc_micros(value)


class Base(DeclarativeBase):
    """Declarative base with stable constraint names, so migrations can refer to them."""

    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class UpdateRow(Base):
    """One entry of a room's append-only update log.

    The unique constraint on (room, seq) is also the index that every read uses (equality on room,
    range on seq), so there is no second index.
    """

    __tablename__ = "updates"
    __table_args__ = (UniqueConstraint("room", "seq"), UniqueConstraint("room", "uid"))

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    room: Mapped[str] = mapped_column(String(ROOM_MAX_LENGTH), nullable=False)
    seq: Mapped[int] = mapped_column(BigInteger, nullable=False)
    uid: Mapped[str] = mapped_column(String(UID_MAX_LENGTH), nullable=False)
    at: Mapped[datetime] = mapped_column(UtcMicros, nullable=False)
    origin: Mapped[str] = mapped_column(String(ORIGIN_MAX_LENGTH), nullable=False)
    data: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)


class SnapshotRow(Base):
    """The whole document of a room as of ``seq``; every snapshot is kept (see ``SqlStore``)."""

    __tablename__ = "snapshots"
    __table_args__ = (UniqueConstraint("room", "seq"),)

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    room: Mapped[str] = mapped_column(String(ROOM_MAX_LENGTH), nullable=False)
    seq: Mapped[int] = mapped_column(BigInteger, nullable=False)
    at: Mapped[datetime] = mapped_column(UtcMicros, nullable=False)
    data: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)


# The recorder's tables share this metadata (Alembic and the schema tests see one schema).
from pairroom.storage import event_models as _event_models  # noqa: E402, F401 - imported for its tables
