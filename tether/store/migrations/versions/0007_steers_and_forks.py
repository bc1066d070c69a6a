"""steers (input joining a running turn) and forks (a session's origin)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02

A steer is a row of its own, settled once (delivered at a step boundary, or converted into a
new turn), so that it survives crashes and lease changes without being lost or delivered
twice. `sessions.pending_steers` counts the unsettled ones, so a step's checkpoint looks for
steers only when there are some. `sessions.forked_from` is a fork's origin.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
import sqlalchemy.dialects.postgresql
from alembic import op

import tether.store.schema

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(sa.dialects.postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(
            sa.Column("pending_steers", sa.Integer(), server_default="0", nullable=False)
        )
        batch.add_column(sa.Column("forked_from", _json(), nullable=True))
    op.create_table(
        "steers",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("session_id", sa.String(length=64), nullable=False),
        sa.Column("turn_id", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("messages", _json(), nullable=False),
        sa.Column("created_at", tether.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.Column("settled_at", tether.store.schema.UTCDateTime(timezone=True), nullable=True),
        sa.Column("became_turn_id", sa.String(length=40), nullable=True),
        sa.Column("v", sa.Integer(), server_default="1", nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"], ["sessions.id"], name=op.f("fk_steers_session_id_sessions")
        ),
        sa.ForeignKeyConstraint(["turn_id"], ["turns.id"], name=op.f("fk_steers_turn_id_turns")),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_steers")),
    )
    op.create_index("ix_steers_turn_status", "steers", ["turn_id", "status"])
    op.create_index("ix_steers_session", "steers", ["session_id"])


def downgrade() -> None:
    op.drop_index("ix_steers_session", table_name="steers")
    op.drop_index("ix_steers_turn_status", table_name="steers")
    op.drop_table("steers")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("forked_from")
        batch.drop_column("pending_steers")
