"""The recorder's events and versions, and an index to seek the update log by time.

Revision ID: 0002
Revises: 0001
Create Date: 2026-05-21

Matches ``pairroom/storage/event_models.py``. Timestamps are BIGINT microseconds (``UtcMicros``),
``data`` is JSON text.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", _BigId, primary_key=True, autoincrement=True),
        sa.Column("room", sa.String(255), nullable=False),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("user", sa.String(255), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
    )
    op.create_index("ix_events_room_at", "events", ["room", "at"])
    op.create_table(
        "versions",
        sa.Column("id", _BigId, primary_key=True, autoincrement=True),
        sa.Column("room", sa.String(255), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.Column("by", sa.String(255), nullable=False),
        sa.Column("auto", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_versions"),
    )
    op.create_index("ix_versions_room_seq", "versions", ["room", "seq"])
    op.create_index("ix_updates_room_at", "updates", ["room", "at"])


def downgrade() -> None:
    op.drop_index("ix_updates_room_at", table_name="updates")
    op.drop_index("ix_versions_room_seq", table_name="versions")
    op.drop_table("versions")
    op.drop_index("ix_events_room_at", table_name="events")
    op.drop_table("events")
