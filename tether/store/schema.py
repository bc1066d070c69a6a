"""The one SQLAlchemy Core schema, shared by the SQLite and PostgreSQL dialects.

Alembic migrations (store/migrations) are the history; this file is the present. A test
checks that the two agree.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, whatever the database keeps."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        value = value.astimezone(UTC)
        # SQLite compares datetimes as text: keep one naive ISO format there.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


Json = JSON().with_variant(JSONB(), "postgresql")

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

agents = Table(
    "agents",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("tenant_id", String(64), nullable=False),
    Column("name", String(128), nullable=False),
    Column("spec", Json, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("deleted_at", UTCDateTime),
    # names are unique among live agents of a tenant; deleted ones keep their rows
    Index(
        "ux_agents_tenant_name",
        "tenant_id",
        "name",
        unique=True,
        sqlite_where=text("deleted_at IS NULL"),
        postgresql_where=text("deleted_at IS NULL"),
    ),
)

sessions = Table(
    "sessions",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("tenant_id", String(64), nullable=False),
    Column("agent_id", String(40), ForeignKey("agents.id"), nullable=False),
    Column("status", String(16), nullable=False),
    Column("metadata", Json, nullable=False),
    Column("last_turn_id", String(40)),
    Column("last_turn_status", String(16)),
    # per-session counters, bumped in the same transaction as the rows they number
    Column("last_event_seq", Integer, nullable=False, server_default="0"),
    Column("last_message_seq", Integer, nullable=False, server_default="0"),
    Column("last_turn_seq", Integer, nullable=False, server_default="0"),
    # steers not yet delivered nor converted: a step's checkpoint looks for them only if any
    Column("pending_steers", Integer, nullable=False, server_default="0"),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("closed_at", UTCDateTime),
    Column("forked_from", Json, doc="a fork's origin: {session_id, turn_id, at}"),
    Index("ix_sessions_tenant_created", "tenant_id", "created_at", "id"),
    Index("ix_sessions_status", "status"),
)

turns = Table(
    "turns",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("session_id", String(64), ForeignKey("sessions.id"), nullable=False),
    Column("tenant_id", String(64), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("input", Json, nullable=False),
    Column("on_busy", String(16), nullable=False),
    Column("attempt", Integer, nullable=False, server_default="0"),
    Column("step", Integer, nullable=False, server_default="0"),
    Column("usage", Json, nullable=False),
    Column("run_time_s", Float, nullable=False, server_default="0"),
    Column("reason", String(64)),
    Column("error", Json),
    Column("stop", Json, doc="a requested stop: {mode, reason}; durable before any wake-up"),
    Column("worker_id", String(128)),
    Column("claim_token", String(40)),
    Column("lease_expires_at", UTCDateTime),
    Column("created_at", UTCDateTime, nullable=False),
    Column("started_at", UTCDateTime),
    Column("finished_at", UTCDateTime),
    UniqueConstraint("session_id", "seq"),
    Index("ix_turns_session_status", "session_id", "status", "seq"),
    Index("ix_turns_status_created", "status", "created_at"),
    Index("ix_turns_status_lease", "status", "lease_expires_at"),
    Index("ix_turns_tenant_status", "tenant_id", "status"),
)

messages = Table(
    "messages",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("session_id", String(64), ForeignKey("sessions.id"), nullable=False),
    Column("turn_id", String(40), ForeignKey("turns.id"), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("role", String(16), nullable=False),
    Column("content", Text),
    Column("tool_calls", Json),
    Column("tool_call_id", String(128)),
    Column("name", String(128)),
    Column("status", String(16), nullable=False),
    Column("hidden", Boolean, nullable=False, server_default="0", doc="rolled back"),
    Column("created_at", UTCDateTime, nullable=False),
    Column("provider_data", Json, doc="the answer in the provider's form, sent back verbatim"),
    UniqueConstraint("session_id", "seq"),
    Index("ix_messages_turn", "turn_id"),
)

events = Table(
    "events",
    metadata,
    Column("session_id", String(64), ForeignKey("sessions.id"), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("type", String(32), nullable=False),
    Column("turn_id", String(40)),
    Column("data", Json, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("v", Integer, nullable=False, server_default="1", doc="schema version: versions.py"),
    PrimaryKeyConstraint("session_id", "seq"),
)

interrupts = Table(
    "interrupts",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("tenant_id", String(64), nullable=False),
    Column("session_id", String(64), ForeignKey("sessions.id"), nullable=False),
    Column("turn_id", String(40), ForeignKey("turns.id"), nullable=False),
    Column("type", String(64), nullable=False),
    Column("tool_call_id", String(128)),
    Column("tool_name", String(128)),
    Column("request", Json, nullable=False),
    Column("response", Json),
    Column("status", String(16), nullable=False),
    Column("step", Integer, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("resolved_at", UTCDateTime),
    Column("resolved_by", String(128)),
    Column("expires_at", UTCDateTime),
    Column("on_expire", String(8), nullable=False, server_default="deny"),
    Column("v", Integer, nullable=False, server_default="1", doc="schema version: versions.py"),
    Index("ix_interrupts_session_status", "session_id", "status"),
    Index("ix_interrupts_status_expires", "status", "expires_at"),
)

# Steers (DESIGN §3): input that joined a turn, delivered at its next step boundary. A row is
# settled once (machines.SteerMove), in the transaction that delivers it or converts it into
# a new turn; `seq` orders the steers of a session as they were stored.
steers = Table(
    "steers",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("session_id", String(64), ForeignKey("sessions.id"), nullable=False),
    Column("turn_id", String(40), ForeignKey("turns.id"), nullable=False, doc="the turn joined"),
    Column("status", String(16), nullable=False),
    Column("messages", Json, nullable=False, doc="[{id, role, content}]: ids fixed when stored"),
    Column("created_at", UTCDateTime, nullable=False),
    Column("settled_at", UTCDateTime),
    Column("became_turn_id", String(40), doc="converted: the new turn it became"),
    Column("v", Integer, nullable=False, server_default="1", doc="schema version: versions.py"),
    Index("ix_steers_turn_status", "turn_id", "status"),
    Index("ix_steers_session", "session_id"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("tenant_id", String(64), nullable=False),
    Column("role", String(16), nullable=False),
    Column("name", String(128)),
    Column("prefix", String(32), nullable=False),
    Column("key_hash", String(128), nullable=False, unique=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("last_used_at", UTCDateTime),
    Column("revoked_at", UTCDateTime),
    Index("ix_api_keys_prefix", "prefix"),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("tenant_id", String(64), nullable=False),
    Column("key", String(255), nullable=False),
    Column("fingerprint", String(64), nullable=False, doc="sha256 of method, path and body"),
    Column("status_code", Integer, doc="null while the first request is in flight"),
    Column("response", Json),
    Column("created_at", UTCDateTime, nullable=False),
    PrimaryKeyConstraint("tenant_id", "key"),
    Index("ix_idempotency_keys_created", "created_at"),
)

# The ledger of tool executions (DESIGN §5): a call is `started` in the same transaction that
# records it about to run, and leaves that state only when its outcome is committed. After a
# crash, a call still `started` may or may not have run.
tool_runs = Table(
    "tool_runs",
    metadata,
    Column("turn_id", String(40), ForeignKey("turns.id"), nullable=False),
    Column("tool_call_id", String(128), nullable=False),
    Column("name", String(128), nullable=False),
    Column("status", String(16), nullable=False),  # started|finished|paused|interrupted
    Column("runs", Integer, nullable=False, server_default="0"),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("v", Integer, nullable=False, server_default="1", doc="schema version: versions.py"),
    PrimaryKeyConstraint("turn_id", "tool_call_id"),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", String(40), primary_key=True),  # aud_<ulid>: ordered by time
    Column("tenant_id", String(64), nullable=False),
    Column("key_id", String(40)),
    Column("key_prefix", String(32)),
    Column("action", String(64), nullable=False),
    Column("target", String(128)),
    Column("request_id", String(64)),
    Column("details", Json),
    Column("created_at", UTCDateTime, nullable=False),
    Index("ix_audit_log_tenant_id", "tenant_id", "id"),
)

# Webhooks (DESIGN §9). An endpoint that is deleted keeps its row (status `deleted`): a
# session write may be adding a delivery for it at that very moment.
webhook_endpoints = Table(
    "webhook_endpoints",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("tenant_id", String(64), nullable=False),
    Column("url", String(2048), nullable=False),
    Column("events", Json, nullable=False),
    Column("description", String(500)),
    Column("status", String(16), nullable=False),
    Column("disabled_reason", String(64)),
    Column("secret_sealed", Text, nullable=False, doc="the signing secret, sealed (sealing.py)"),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Index("ix_webhook_endpoints_tenant_status", "tenant_id", "status"),
)

# The outbox: a delivery is written in the transaction of the state change it reports. `seq`
# orders it: a session's writes are serialized, so its deliveries are numbered in the order of
# its changes, and go out in that order.
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column(
        "seq",
        BigInteger().with_variant(Integer(), "sqlite"),  # SQLite: the rowid, auto-incremented
        primary_key=True,
        autoincrement=True,
    ),
    Column("id", String(40), nullable=False, unique=True, doc="the webhook-id of every attempt"),
    Column("tenant_id", String(64), nullable=False),
    Column("endpoint_id", String(40), ForeignKey("webhook_endpoints.id"), nullable=False),
    Column("session_id", String(64), nullable=False),
    Column("type", String(32), nullable=False),
    Column("body", Text, nullable=False, doc="the JSON sent, exactly as signed"),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", UTCDateTime, nullable=False),
    Column("retry_until", UTCDateTime, doc="null: retry_for after created_at"),
    Column("claim_token", String(40)),
    Column("lease_expires_at", UTCDateTime),
    Column("error", String(300), doc="why it failed, when it did"),
    Column("created_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime),
    Index("ix_webhook_deliveries_status_next", "status", "next_attempt_at"),
    Index("ix_webhook_deliveries_status_lease", "status", "lease_expires_at"),
    Index("ix_webhook_deliveries_order", "endpoint_id", "session_id", "seq"),
    Index("ix_webhook_deliveries_session", "session_id"),
    Index("ix_webhook_deliveries_status_finished", "status", "finished_at"),
)

webhook_attempts = Table(
    "webhook_attempts",
    metadata,
    Column(
        "delivery_seq",
        BigInteger().with_variant(Integer(), "sqlite"),
        ForeignKey("webhook_deliveries.seq", ondelete="CASCADE"),  # a purge races an attempt
        nullable=False,
    ),
    Column("n", Integer, nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("status_code", Integer),
    Column("error", String(300)),
    Column("duration_ms", Float, nullable=False),
    Column("response", Text, doc="the first bytes of the answer only"),
    Column("worker_id", String(128), nullable=False, doc="the process that sent it"),
    PrimaryKeyConstraint("delivery_seq", "n"),
)
