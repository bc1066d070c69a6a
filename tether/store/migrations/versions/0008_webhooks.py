"""webhooks: endpoints, the outbox of deliveries, and their attempts (DESIGN §9)

Revision ID: 0008
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_TIME = sa.DateTime(timezone=True)
_SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("events", _JSON, nullable=False),
        sa.Column("description", sa.String(500)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("disabled_reason", sa.String(64)),
        sa.Column("secret_sealed", sa.Text(), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_endpoints"),
    )
    op.create_index(
        "ix_webhook_endpoints_tenant_status", "webhook_endpoints", ["tenant_id", "status"]
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("seq", _SEQ, autoincrement=True, nullable=False),
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("endpoint_id", sa.String(40), nullable=False),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", _TIME, nullable=False),
        sa.Column("retry_until", _TIME),
        sa.Column("claim_token", sa.String(40)),
        sa.Column("lease_expires_at", _TIME),
        sa.Column("error", sa.String(300)),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("finished_at", _TIME),
        sa.ForeignKeyConstraint(
            ["endpoint_id"],
            ["webhook_endpoints.id"],
            name="fk_webhook_deliveries_endpoint_id_webhook_endpoints",
        ),
        sa.PrimaryKeyConstraint("seq", name="pk_webhook_deliveries"),
        sa.UniqueConstraint("id", name="uq_webhook_deliveries_id"),
    )
    for name, columns in (
        ("ix_webhook_deliveries_status_next", ["status", "next_attempt_at"]),
        ("ix_webhook_deliveries_status_lease", ["status", "lease_expires_at"]),
        ("ix_webhook_deliveries_order", ["endpoint_id", "session_id", "seq"]),
        ("ix_webhook_deliveries_session", ["session_id"]),
        ("ix_webhook_deliveries_status_finished", ["status", "finished_at"]),
    ):
        op.create_index(name, "webhook_deliveries", columns)
    op.create_table(
        "webhook_attempts",
        sa.Column("delivery_seq", _SEQ, nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("at", _TIME, nullable=False),
        sa.Column("status_code", sa.Integer()),
        sa.Column("error", sa.String(300)),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.Column("response", sa.Text()),
        sa.Column("worker_id", sa.String(128), nullable=False),
        sa.ForeignKeyConstraint(
            ["delivery_seq"],
            ["webhook_deliveries.seq"],
            name="fk_webhook_attempts_delivery_seq_webhook_deliveries",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("delivery_seq", "n", name="pk_webhook_attempts"),
    )


def downgrade() -> None:
    op.drop_table("webhook_attempts")
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_endpoints")
