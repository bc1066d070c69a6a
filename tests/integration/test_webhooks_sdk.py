"""Webhooks through the SDK (both clients) and the CLI, against a real server and a real
receiver on loopback."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.helpers import running_server, scripted_agent, wait_for
from tests.integration.test_webhooks import QUICK
from tests.webhook_receiver import Answer, Receiver, verify
from tether import cli
from tether.auth import Role
from tether.client import AsyncTether, Tether, errors, models


@pytest.fixture
async def server(tmp_path: Path) -> Any:
    async with running_server(tmp_path, **QUICK) as srv:
        yield srv


async def test_the_async_client(server: Any) -> None:
    with Receiver(lambda got: Answer(500) if got.attempt == 1 else Answer()) as receiver:
        _, key = await server.node.keys.create("acme", Role.ADMIN)
        async with AsyncTether(server.url, key) as sdk:
            made = await sdk.webhooks.create(receiver.url, ["turn.completed"], description="ci")
            assert isinstance(made, models.WebhookCreated)
            assert made.secret.startswith("whsec_") and made.status == "enabled"
            assert [w.id async for w in sdk.webhooks.list()] == [made.id]
            assert (await sdk.webhooks.get(made.id)).description == "ci"
            changed = await sdk.webhooks.update(made.id, events=["*"], description=None)
            assert changed.events == ["*"] and changed.description is None
            await sdk.agents.create(scripted_agent("hook", reply="hi"))
            session = await sdk.sessions.create("hook", input="go")
            assert session.turn is not None

            async def delivered() -> list[models.WebhookDelivery] | None:
                found = [d async for d in sdk.webhooks.deliveries(made.id, status="delivered")]
                return found or None

            [delivery] = await wait_for(delivered, 20, "the delivery")
            assert delivery.type == "turn.completed" and delivery.session_id == session.id
            assert [a.status_code for a in delivery.log] == [500, 200]
            verify(made.secret, receiver.delivered()[0])
            with pytest.raises(errors.Conflict) as refused:
                await sdk.webhooks.retry(made.id, delivery.id)
            assert refused.value.code == "delivery_not_failed"
            rotated = await sdk.webhooks.rotate_secret(made.id)
            assert rotated.secret != made.secret
            disabled = await sdk.webhooks.update(made.id, status="disabled")
            assert disabled.status == "disabled"
            await sdk.webhooks.delete(made.id)
            with pytest.raises(errors.NotFound):
                await sdk.webhooks.get(made.id)
            with pytest.raises(errors.Unprocessable) as bad:
                await sdk.webhooks.create("gopher://example.com/")
            assert bad.value.code == "destination_not_allowed"


async def test_the_sync_client(server: Any) -> None:
    _, key = await server.node.keys.create("acme", Role.ADMIN)

    def use() -> None:
        with Tether(server.url, key) as sdk:
            made = sdk.webhooks.create("https://receiver.example/hook", ["session.closed"])
            assert sdk.webhooks.get(made.id).events == ["session.closed"]
            assert [w.id for w in sdk.webhooks.list()] == [made.id]
            assert sdk.webhooks.deliveries(made.id).to_list() == []
            sdk.webhooks.delete(made.id)
            assert sdk.webhooks.list().to_list() == []

    await asyncio.to_thread(use)


async def test_the_cli(server: Any) -> None:
    _, key = await server.node.keys.create("acme", Role.ADMIN)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    env = {**env, "TETHER_URL": server.url, "TETHER_API_KEY": key, "NO_COLOR": "1"}

    def run(*args: str) -> Any:
        return CliRunner().invoke(cli.app, list(args), env=env)

    def session() -> None:
        made = run("webhooks", "create", "https://receiver.example/a", "-e", "turn.failed")
        assert made.exit_code == 0, made.output
        secret = made.stdout.strip().splitlines()[-1]
        assert secret.startswith("whsec_")
        shown = run("webhooks", "create", "https://receiver.example/b", "--json")
        second = json.loads(shown.stdout)
        listed = json.loads(run("webhooks", "ls", "--json").stdout)
        assert {w["url"] for w in listed} == {"https://receiver.example/a", second["url"]}
        assert secret not in run("webhooks", "ls").stdout
        assert second["events"] == ["*"]
        removed = run("webhooks", "rm", second["id"])
        assert removed.exit_code == 0 and second["id"] in removed.stdout
        gone = run("webhooks", "rm", second["id"])
        assert gone.exit_code == 5 and gone.stderr.startswith("error: ")
        wrong = run("webhooks", "create", "https://receiver.example/c", "-e", "turn.done")
        assert wrong.exit_code == 2 and "--event must be one of" in wrong.stderr
        private = run("webhooks", "create", "http://[::1]/x")
        assert private.exit_code == 1 and "destination_not_allowed" in private.stderr

    # the CLI refuses a private destination: a server that does not allow them
    server.node.service.webhooks.guard = type(server.node.service.webhooks.guard)()
    await asyncio.to_thread(session)
