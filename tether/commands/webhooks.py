"""`tether webhooks ls|create|rm` (admin keys)."""

from __future__ import annotations

from typing import Annotated

import typer

from tether.client import models
from tether.commands import common
from tether.commands.common import DEFAULT, ApiKey, AsJson, Url

app = typer.Typer(
    help="Webhook endpoints: list, create (the secret is shown once), delete.",
    no_args_is_help=True,
)


@app.command("ls")
def ls(as_json: AsJson = False, url: Url = DEFAULT, api_key: ApiKey = None) -> None:
    """List the tenant's webhook endpoints (never their secrets)."""
    with common.client(url, api_key) as tether:
        hooks = list(tether.webhooks.list())
    if as_json:
        common.print_json(hooks)
        return
    grid = common.Grid("id", "url", "events", "status", "description", ids=["id"])
    for h in hooks:
        status = h.status + (f" ({h.disabled_reason})" if h.disabled_reason else "")
        grid.add_row(h.id, h.url, ", ".join(h.events), status, h.description or "")
    grid.print()


@app.command("create")
def create(
    endpoint_url: Annotated[str, typer.Argument(metavar="URL", help="where to POST events")],
    event: Annotated[
        list[str] | None,
        typer.Option(
            "--event",
            "-e",
            help="an event to send (repeat it): turn.completed, turn.failed, turn.cancelled, "
            "turn.waiting, interrupt.expired, session.closed; default all (*)",
        ),
    ] = None,
    description: Annotated[str | None, typer.Option(help="a note for people")] = None,
    as_json: AsJson = False,
    url: Url = DEFAULT,
    api_key: ApiKey = None,
) -> None:
    """Create an endpoint and print its signing secret, once."""
    events = [common.choice("--event", e, models.WebhookEvent) for e in event or ["*"]]
    with common.client(url, api_key) as tether:
        made = tether.webhooks.create(endpoint_url, events, description=description)
    if as_json:
        common.print_json(made)
        return
    common.out.print(f"created {made.id} ({', '.join(made.events)}); the signing secret, once:")
    print(made.secret)


@app.command("rm")
def rm(
    webhook_id: Annotated[str, typer.Argument(help="the endpoint's id (whk_…)")],
    as_json: AsJson = False,
    url: Url = DEFAULT,
    api_key: ApiKey = None,
) -> None:
    """Delete an endpoint: its pending deliveries fail."""
    with common.client(url, api_key) as tether:
        tether.webhooks.delete(webhook_id)
    if as_json:
        common.print_json({"id": webhook_id, "deleted": True})
    else:
        common.out.print(f"deleted {webhook_id}")
