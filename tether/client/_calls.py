"""Every endpoint the SDK calls, described once: method, path, body, how to read the answer and
whether it may be retried. The sync and async clients only carry these out, so the two cannot
drift apart and a new endpoint is one function here plus a one-line method on each client."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from tether.client import models

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


class Retry(enum.Enum):
    """When a call may be sent again after a failure."""

    UNSENT = "unsent"  # only if it surely never reached the server (connect failed)
    SAFE = "safe"  # after any connection failure or a 502/503/504: repeating it is harmless


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    method: str
    path: str
    read: Callable[[httpx.Response], T]
    params: Mapping[str, Any] = field(default_factory=dict)
    json: Any = None
    retry: Retry = Retry.SAFE
    creates: bool = False  # carries an Idempotency-Key, which makes a repeat safe
    timeout: float | None = None  # read timeout, when the server may take long on purpose


@dataclass(frozen=True, slots=True)
class PagedCall(Generic[M]):
    """A list endpoint: `{data, next_cursor}` pages, fetched one after the other."""

    path: str
    item: type[M]
    params: Mapping[str, Any] = field(default_factory=dict)
    cursor_param: str = "cursor"

    def page(self, cursor: str | None) -> Call[tuple[list[M], str | None]]:
        params = dict(self.params)
        if cursor is not None:
            params[self.cursor_param] = cursor
        item = self.item

        def read(response: httpx.Response) -> tuple[list[M], str | None]:
            body = response.json()
            return [item.model_validate(x) for x in body["data"]], body.get("next_cursor")

        return Call("GET", self.path, read, params=params)


def seg(value: str) -> str:
    """One path segment, quoted: an id with a `/` or a space is refused by the server with a
    clear 400, never taken for another route."""
    return quote(str(value), safe="")


def _reader(model: type[M]) -> Callable[[httpx.Response], M]:
    def read(response: httpx.Response) -> M:
        return model.model_validate(response.json())

    return read


def _nothing(_: httpx.Response) -> None:
    return None


def _stop_result(response: httpx.Response) -> models.StopResult:
    # 202: the executor had not confirmed within `wait`
    return models.StopResult.model_validate(
        {**response.json(), "confirmed": response.status_code == 200}
    )


def _clean(**params: Any) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


def _body(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_unset=True)
    return dict(value) if isinstance(value, Mapping) else value


# --- agents ----------------------------------------------------------------------------------


def create_agent(definition: Mapping[str, Any] | BaseModel) -> Call[models.Agent]:
    return Call("POST", "/v1/agents", _reader(models.Agent), json=_body(definition), creates=True)


def list_agents(limit: int | None) -> PagedCall[models.Agent]:
    return PagedCall("/v1/agents", models.Agent, _clean(limit=limit))


def get_agent(agent_id: str) -> Call[models.Agent]:
    return Call("GET", f"/v1/agents/{seg(agent_id)}", _reader(models.Agent))


def update_agent(agent_id: str, changes: Mapping[str, Any]) -> Call[models.Agent]:
    return Call("PATCH", f"/v1/agents/{seg(agent_id)}", _reader(models.Agent), json=dict(changes))


def delete_agent(agent_id: str) -> Call[None]:
    # a repeat of a delete that went through would answer 404: only retried if never sent
    return Call("DELETE", f"/v1/agents/{seg(agent_id)}", _nothing, retry=Retry.UNSENT)


# --- sessions --------------------------------------------------------------------------------


def create_session(
    agent_id: str, metadata: Mapping[str, Any] | None, input: Any
) -> Call[models.Session]:
    body: dict[str, Any] = {"agent_id": agent_id, "metadata": dict(metadata or {})}
    if input is not None:
        body["input"] = input
    return Call("POST", "/v1/sessions", _reader(models.Session), json=body, creates=True)


def fork_session(
    session_id: str,
    turn_id: str | None,
    at: str,
    metadata: Mapping[str, Any] | None,
    input: Any,
) -> Call[models.Session]:
    body: dict[str, Any] = {"at": at, "metadata": dict(metadata or {})}
    if turn_id is not None:
        body["turn_id"] = turn_id
    if input is not None:
        body["input"] = input
    path = f"/v1/sessions/{seg(session_id)}/fork"
    return Call("POST", path, _reader(models.Session), json=body, creates=True)


def list_sessions(
    status: str | None, agent_id: str | None, limit: int | None
) -> PagedCall[models.Session]:
    params = _clean(status=status, agent_id=agent_id, limit=limit)
    return PagedCall("/v1/sessions", models.Session, params)


def get_session(session_id: str) -> Call[models.Session]:
    return Call("GET", f"/v1/sessions/{seg(session_id)}", _reader(models.Session))


def close_session(session_id: str) -> Call[models.Session]:
    return Call("DELETE", f"/v1/sessions/{seg(session_id)}", _reader(models.Session))


def purge_session(session_id: str) -> Call[None]:
    # a repeat of a purge that went through would answer 404: only retried if never sent
    path = f"/v1/sessions/{seg(session_id)}"
    return Call("DELETE", path, _nothing, params={"purge": "true"}, retry=Retry.UNSENT)


def stop_session(
    session_id: str, mode: str, scope: str, wait: float, reason: str | None
) -> Call[models.StopResult]:
    body = _clean(mode=mode, scope=scope, wait=wait, reason=reason)
    path = f"/v1/sessions/{seg(session_id)}/interrupt"
    return Call("POST", path, _stop_result, json=body, timeout=wait + 10)


def list_messages(session_id: str, limit: int | None) -> PagedCall[models.Message]:
    path = f"/v1/sessions/{seg(session_id)}/messages"
    return PagedCall(path, models.Message, _clean(limit=limit))


def list_events(session_id: str, after: int, limit: int | None) -> PagedCall[models.Event]:
    path = f"/v1/sessions/{seg(session_id)}/events"
    params = _clean(stream="false", limit=limit, after=after)
    return PagedCall(path, models.Event, params, cursor_param="after")


# --- turns -----------------------------------------------------------------------------------


def turn_body(input: Any, on_busy: str, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"input": input, "on_busy": on_busy}
    if stream:
        body["stream"] = True
    return body


def turns_path(session_id: str) -> str:
    return f"/v1/sessions/{seg(session_id)}/turns"


def events_path(session_id: str) -> str:
    return f"/v1/sessions/{seg(session_id)}/events"


def create_turn(session_id: str, input: Any, on_busy: str) -> Call[models.Turn]:
    body = turn_body(input, on_busy, stream=False)
    return Call("POST", turns_path(session_id), _reader(models.Turn), json=body, creates=True)


def list_turns(session_id: str, limit: int | None) -> PagedCall[models.Turn]:
    return PagedCall(turns_path(session_id), models.Turn, _clean(limit=limit))


def get_turn(session_id: str, turn_id: str) -> Call[models.Turn]:
    return Call("GET", f"{turns_path(session_id)}/{seg(turn_id)}", _reader(models.Turn))


def cancel_turn(
    session_id: str, turn_id: str, mode: str, wait: float, reason: str | None
) -> Call[models.StopResult]:
    body = _clean(mode=mode, wait=wait, reason=reason)
    path = f"{turns_path(session_id)}/{seg(turn_id)}/cancel"
    return Call("POST", path, _stop_result, json=body, timeout=wait + 10)


# --- interrupts ------------------------------------------------------------------------------


def list_interrupts(
    session_id: str | None, status: str | None, limit: int | None
) -> PagedCall[models.Interrupt]:
    """A session's interrupts; without a session, the tenant's (the approvals inbox, the one
    expiring soonest first)."""
    path = "/v1/interrupts" if session_id is None else f"/v1/sessions/{seg(session_id)}/interrupts"
    return PagedCall(path, models.Interrupt, _clean(status=status, limit=limit))


def get_interrupt(interrupt_id: str) -> Call[models.Interrupt]:
    return Call("GET", f"/v1/interrupts/{seg(interrupt_id)}", _reader(models.Interrupt))


def respond(interrupt_id: str, response: Any, resolved_by: str | None) -> Call[models.Interrupt]:
    body = {"response": response, **_clean(resolved_by=resolved_by)}
    path = f"/v1/interrupts/{seg(interrupt_id)}/respond"
    # the first answer wins; a repeat of one that went through would be refused with 409
    return Call("POST", path, _reader(models.Interrupt), json=body, retry=Retry.UNSENT)


def approval(decision: str, reason: str | None, arguments: Mapping[str, Any] | None) -> Any:
    answer: dict[str, Any] = {"decision": decision}
    if reason is not None:
        answer["reason"] = reason
    if arguments is not None:
        answer["arguments"] = dict(arguments)
    return answer


# --- who is asking, keys and audit -----------------------------------------------------------


def me() -> Call[models.Me]:
    return Call("GET", "/v1/me", _reader(models.Me))


def create_key(role: str, name: str | None) -> Call[models.ApiKeyCreated]:
    body = {"role": role, **_clean(name=name)}
    # the keys endpoint does not take Idempotency-Key: a blind repeat could make two keys
    return Call("POST", "/v1/keys", _reader(models.ApiKeyCreated), json=body, retry=Retry.UNSENT)


def list_keys() -> PagedCall[models.ApiKey]:
    return PagedCall("/v1/keys", models.ApiKey)


def revoke_key(key_id: str) -> Call[models.ApiKey]:
    return Call("DELETE", f"/v1/keys/{seg(key_id)}", _reader(models.ApiKey))


def list_audit(limit: int | None) -> PagedCall[models.AuditEntry]:
    return PagedCall("/v1/audit", models.AuditEntry, _clean(limit=limit))


# --- webhooks (admins) -----------------------------------------------------------------------


def create_webhook(
    url: str, events: list[str], description: str | None
) -> Call[models.WebhookCreated]:
    body = {"url": url, "events": list(events), **_clean(description=description)}
    # no Idempotency-Key here: the answer holds the secret, which is never stored to replay
    path = "/v1/webhooks"
    return Call("POST", path, _reader(models.WebhookCreated), json=body, retry=Retry.UNSENT)


def list_webhooks(limit: int | None) -> PagedCall[models.Webhook]:
    return PagedCall("/v1/webhooks", models.Webhook, _clean(limit=limit))


def get_webhook(webhook_id: str) -> Call[models.Webhook]:
    return Call("GET", f"/v1/webhooks/{seg(webhook_id)}", _reader(models.Webhook))


def update_webhook(webhook_id: str, changes: Mapping[str, Any]) -> Call[models.Webhook]:
    path = f"/v1/webhooks/{seg(webhook_id)}"
    return Call("PATCH", path, _reader(models.Webhook), json=dict(changes))


def delete_webhook(webhook_id: str) -> Call[None]:
    # a repeat of a delete that went through would answer 404: only retried if never sent
    return Call("DELETE", f"/v1/webhooks/{seg(webhook_id)}", _nothing, retry=Retry.UNSENT)


def rotate_webhook_secret(webhook_id: str) -> Call[models.WebhookCreated]:
    path = f"/v1/webhooks/{seg(webhook_id)}/rotate-secret"
    # a blind repeat would rotate again, and the first new secret would be lost
    return Call("POST", path, _reader(models.WebhookCreated), retry=Retry.UNSENT)


def list_deliveries(
    webhook_id: str, status: str | None, limit: int | None
) -> PagedCall[models.WebhookDelivery]:
    path = f"/v1/webhooks/{seg(webhook_id)}/deliveries"
    return PagedCall(path, models.WebhookDelivery, _clean(status=status, limit=limit))


def retry_delivery(webhook_id: str, delivery_id: str) -> Call[models.WebhookDelivery]:
    path = f"/v1/webhooks/{seg(webhook_id)}/deliveries/{seg(delivery_id)}/retry"
    # a repeat of one that went through is refused with 409 (it is no longer failed)
    return Call("POST", path, _reader(models.WebhookDelivery), retry=Retry.UNSENT)
