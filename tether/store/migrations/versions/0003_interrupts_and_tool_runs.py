"""interrupt expiry policy; ledger of tool runs

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import tether.store.schema

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("interrupts") as batch:
        batch.add_column(
            sa.Column("on_expire", sa.String(length=8), server_default="deny", nullable=False)
        )
    op.create_table(
        "tool_runs",
        sa.Column("turn_id", sa.String(length=40), nullable=False),
        sa.Column("tool_call_id", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("runs", sa.Integer(), server_default="0", nullable=False),
        sa.Column("updated_at", tether.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["turn_id"], ["turns.id"], name=op.f("fk_tool_runs_turn_id_turns")),
        sa.PrimaryKeyConstraint("turn_id", "tool_call_id", name=op.f("pk_tool_runs")),
    )


def downgrade() -> None:
    op.drop_table("tool_runs")
    with op.batch_alter_table("interrupts") as batch:
        batch.drop_column("on_expire")
