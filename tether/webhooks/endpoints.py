"""Webhook endpoints as tenants manage them (DESIGN §9): their URLs checked against the
destination guard (DESIGN §8), their signing secrets sealed at rest and shown once, the log of
their deliveries and the manual retry of a failed one."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from tether import destinations, domain, errors, ids, sealing
from tether.config import Settings
from tether.store import Page, Store
from tether.webhooks import records
from tether.webhooks.records import DeliveryStatus, EndpointStatus

_SECRET_BYTES = 32


def new_secret() -> str:
    """A signing secret in Standard Webhooks' form: `whsec_` and base64 of random bytes."""
    return records.SECRET_PREFIX + base64.b64encode(secrets.token_bytes(_SECRET_BYTES)).decode()


def _events(events: Sequence[str]) -> list[str]:
    """The subscription, each event once, in the order given; `*` stands for all."""
    known = {e.value for e in records.WebhookEvent} | {records.ALL_EVENTS}
    unknown = [e for e in events if e not in known]
    if unknown or not events:
        raise errors.InvalidWebhook(
            f"unknown event types: {', '.join(unknown)}" if unknown else "events is empty",
            details={"unknown_events": unknown, "events": sorted(known)},
        )
    return list(dict.fromkeys(events))


class Endpoints:
    def __init__(self, store: Store, settings: Settings):
        self.store = store
        self.settings = settings
        self.sealer = sealing.Sealer(settings)
        # private destinations only where the operator allows them; checked again on every
        # connection by the dispatcher's client (the name may resolve elsewhere later)
        self.guard = destinations.Guard(allow_private=settings.webhook_allow_private)

    def _seal(self, tenant: str, secret: str) -> str:
        try:
            return self.sealer.seal(tenant, secret)
        except errors.SecretKeyMissing as exc:
            raise errors.SecretKeyMissing(
                "this server cannot keep webhook signing secrets: TETHER_SECRET_KEY is not "
                "configured (cluster mode needs it on every node and worker)"
            ) from exc

    async def create(
        self, tenant: str, url: str, events: Sequence[str], description: str | None
    ) -> tuple[records.Endpoint, str]:
        """A new enabled endpoint, and its signing secret: shown this once."""
        self.guard.check(url)
        now = domain.utcnow()
        endpoint = records.Endpoint(
            id=ids.new("whk"),
            tenant_id=tenant,
            url=url,
            events=_events(events),
            description=description,
            status=EndpointStatus.ENABLED,
            disabled_reason=None,
            created_at=now,
            updated_at=now,
        )
        secret = new_secret()
        await self.store.webhooks.create(endpoint, self._seal(tenant, secret))
        return endpoint, secret

    async def get(self, tenant: str, endpoint_id: str) -> records.Endpoint:
        return await self.store.webhooks.get(tenant, ids.check("whk", endpoint_id))

    async def page(self, tenant: str, limit: int, cursor: str | None) -> Page:
        return await self.store.webhooks.page(tenant, limit, cursor)

    async def update(
        self, tenant: str, endpoint_id: str, changes: dict[str, Any]
    ) -> records.Endpoint:
        """`changes`: any of url, events, description, status (`enabled`, `disabled`)."""
        ids.check("whk", endpoint_id)
        fields = {k: v for k, v in changes.items() if k in ("url", "events", "description")}
        required = [k for k in ("url", "events") if k in fields and fields[k] is None]
        if required:
            raise errors.InvalidWebhook(f"{', '.join(required)} cannot be null")
        if "url" in fields:
            self.guard.check(fields["url"])
        if "events" in fields:
            fields["events"] = _events(fields["events"])
        status = EndpointStatus(changes["status"]) if changes.get("status") else None
        return await self.store.webhooks.update(tenant, endpoint_id, fields, status)

    async def rotate_secret(self, tenant: str, endpoint_id: str) -> tuple[records.Endpoint, str]:
        """A new signing secret, shown this once; every attempt from now on is signed with it
        (a delivery being sent right now may still carry the old signature)."""
        ids.check("whk", endpoint_id)
        secret = new_secret()
        endpoint = await self.store.webhooks.update(
            tenant, endpoint_id, {}, secret_sealed=self._seal(tenant, secret)
        )
        return endpoint, secret

    async def delete(self, tenant: str, endpoint_id: str) -> None:
        await self.store.webhooks.delete(tenant, ids.check("whk", endpoint_id))

    async def deliveries(
        self,
        tenant: str,
        endpoint_id: str,
        status: DeliveryStatus | None,
        limit: int,
        cursor: int | None,
    ) -> Page:
        ids.check("whk", endpoint_id)
        return await self.store.webhooks.deliveries(tenant, endpoint_id, status, limit, cursor)

    async def retry(self, tenant: str, endpoint_id: str, delivery_id: str) -> records.Delivery:
        """Send a failed delivery again, with the same id and a fresh retry window."""
        ids.check("whk", endpoint_id)
        ids.check("dlv", delivery_id)
        until = domain.utcnow() + timedelta(seconds=self.settings.webhook_retry_for_s)
        return await self.store.webhooks.retry(tenant, endpoint_id, delivery_id, until)
