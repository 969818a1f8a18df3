"""The recorder's tables beside the update log: what happened around the edits, and named versions.

They share ``models.Base`` (``models.py`` imports this module at its end), so Alembic's metadata and
``tests/test_storage.py``'s schema comparison see every table. Migration ``0002_events`` creates
them and must match what is declared here.

* ``events``: joins, leaves, presence samples, chat and run marks, versions, restores, forks, audio.
  ``data`` is JSON text (portable between SQLite and PostgreSQL and byte-stable for export). Reads
  are always "one room, a time range", hence the (room, at) index.
* ``versions``: a name for a point of the log (``seq``), made by a person (``by``) or automatically
  (``auto``, the checkpoints the recorder writes when a room closes or after long activity).
* ``ix_updates_room_at`` on the update log: seeking by wall-clock time asks "the last seq at or
  before T", which without it scans the room's whole log.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from pairroom.storage.models import ROOM_MAX_LENGTH, Base, UpdateRow, UtcMicros, _BigId
from pairroom.storage.store import KIND_MAX_LENGTH, NAME_MAX_LENGTH, USER_MAX_LENGTH


class EventRow(Base):
    """Something that happened in a room at ``at`` (server clock), by ``user`` ("" for the server)."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_room_at", "room", "at"),)

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    room: Mapped[str] = mapped_column(String(ROOM_MAX_LENGTH), nullable=False)
    at: Mapped[datetime] = mapped_column(UtcMicros, nullable=False)
    kind: Mapped[str] = mapped_column(String(KIND_MAX_LENGTH), nullable=False)
    user: Mapped[str] = mapped_column(String(USER_MAX_LENGTH), nullable=False)
    data: Mapped[str] = mapped_column(Text, nullable=False)


class VersionRow(Base):
    """A named point of a room's log: the document as of ``seq``."""

    __tablename__ = "versions"
    __table_args__ = (Index("ix_versions_room_seq", "room", "seq"),)

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    room: Mapped[str] = mapped_column(String(ROOM_MAX_LENGTH), nullable=False)
    name: Mapped[str] = mapped_column(String(NAME_MAX_LENGTH), nullable=False)
    seq: Mapped[int] = mapped_column(BigInteger, nullable=False)
    at: Mapped[datetime] = mapped_column(UtcMicros, nullable=False)
    by: Mapped[str] = mapped_column(String(USER_MAX_LENGTH), nullable=False)
    auto: Mapped[bool] = mapped_column(Boolean, nullable=False)


UPDATES_BY_TIME = Index("ix_updates_room_at", UpdateRow.__table__.c.room, UpdateRow.__table__.c.at)
