"""The update log and the snapshots.

Revision ID: 0001
Revises:
Create Date: 2026-05-20

Timestamps are BIGINT microseconds since the Unix epoch (see ``models.UtcMicros``). Ids are BIGINT
except on SQLite, which only auto-increments an INTEGER primary key.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "updates",
        sa.Column("id", _BigId, primary_key=True, autoincrement=True),
        sa.Column("room", sa.String(255), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("uid", sa.String(64), nullable=False),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.Column("origin", sa.String(255), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_updates"),
        sa.UniqueConstraint("room", "seq", name="uq_updates_room_seq"),
        sa.UniqueConstraint("room", "uid", name="uq_updates_room_uid"),
    )
    op.create_table(
        "snapshots",
        sa.Column("id", _BigId, primary_key=True, autoincrement=True),
        sa.Column("room", sa.String(255), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_snapshots"),
        sa.UniqueConstraint("room", "seq", name="uq_snapshots_room_seq"),
    )


def downgrade() -> None:
    op.drop_table("snapshots")
    op.drop_table("updates")
