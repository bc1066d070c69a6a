"""messages keep the provider's own form of an answer (Anthropic's signed thinking blocks)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28

A JSON column rather than more fields on the message: what a provider needs back verbatim is
its own business (content blocks with opaque signatures), is never shown by the API, and
differs per provider; the column is `{"provider": name, "content": [...]}` and a provider
reads only its own.
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlalchemy.dialects.postgresql
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(
            sa.Column(
                "provider_data",
                sa.JSON().with_variant(
                    sa.dialects.postgresql.JSONB(astext_type=sa.Text()), "postgresql"
                ),
                nullable=True,
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("provider_data")
