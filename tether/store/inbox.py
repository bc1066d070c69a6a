"""A tenant's interrupts across its sessions: the approvals inbox (console, CLI).

Ordered by what needs a human soonest: expiry first (those that never expire last), then
age, then id, so the order is total and a keyset cursor can resume it exactly.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime

from sqlalchemy import func, literal, select, tuple_

from tether import domain, errors
from tether.store import records
from tether.store.base import Page, Store
from tether.store.schema import UTCDateTime, interrupts

# Stands in for "never expires" so one tuple comparison orders and pages the inbox.
_NEVER = datetime(9999, 12, 31, tzinfo=UTC)
_expiry = func.coalesce(interrupts.c.expires_at, literal(_NEVER, UTCDateTime()))


def _cursor_of(item: domain.Interrupt) -> str:
    key = [(item.expires_at or _NEVER).isoformat(), item.created_at.isoformat(), item.id]
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")


def _parse_cursor(cursor: str) -> tuple[datetime, datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        expires, created, interrupt_id = json.loads(raw)
        key = (datetime.fromisoformat(expires), datetime.fromisoformat(created), interrupt_id)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise errors.InvalidRequest(f"invalid cursor {cursor!r}") from exc
    if not isinstance(key[2], str) or key[0].tzinfo is None or key[1].tzinfo is None:
        raise errors.InvalidRequest(f"invalid cursor {cursor!r}")
    return key


async def tenant_interrupts(
    store: Store,
    tenant_id: str,
    status: domain.InterruptStatus | None,
    limit: int,
    cursor: str | None,
) -> Page:
    """One page of the tenant's interrupts (optionally of one status), soonest expiry first."""
    query = select(interrupts).where(interrupts.c.tenant_id == tenant_id)
    if status is not None:
        query = query.where(interrupts.c.status == status.value)
    if cursor:
        expires, created, interrupt_id = _parse_cursor(cursor)
        query = query.where(
            tuple_(_expiry, interrupts.c.created_at, interrupts.c.id)
            > tuple_(
                literal(expires, UTCDateTime()),
                literal(created, UTCDateTime()),
                literal(interrupt_id),
            )
        )
    query = query.order_by(_expiry, interrupts.c.created_at, interrupts.c.id).limit(limit + 1)
    rows = await store.read(lambda conn: conn.execute(query).all())
    items = [records.interrupt(r) for r in rows[:limit]]
    return Page(items, _cursor_of(items[-1]) if len(rows) > limit else None)
