"""A tenant cannot make the server send the operator's secrets anywhere (DESIGN §8): which key
a provider call carries and where it may go, at agent creation and again at turn start, end
to end against a local server speaking the OpenAI wire format."""

from __future__ import annotations

import json
import logging
import secrets
import socket
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr
from sqlalchemy import select

from tests import helpers
from tests.helpers import Api, Server, running_server
from tether import destinations, errors, specs
from tether.store.schema import agents
from tether.testing import FakeOpenAI

TEST_KEY_ENV = "TETHER_TEST_PROVIDER_KEY"


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    server = FakeOpenAI()
    await server.start()
    yield server
    await server.stop()


def _cluster() -> bool:
    return "store_url" in helpers.BACKEND


def _sealing() -> dict[str, Any]:
    """Cluster mode stores tenants' keys only with a configured secret key (embedded mode
    makes its own in the data dir, which the tests below check)."""
    return {"secret_key": Fernet.generate_key().decode()} if _cluster() else {}


def _agent(**model: Any) -> dict[str, Any]:
    return {
        "name": f"p{time.monotonic_ns()}",
        "model": {"provider": "openai", "model": "fake-1", **model},
        "tools": [{"name": "get_time"}],
    }


async def _create(client: httpx.AsyncClient, **model: Any) -> str:
    r = await client.post("/v1/agents", json=_agent(**model))
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def _run(api: Api, agent_id: str, text: str = "hello") -> dict[str, Any]:
    sid = await api.session(agent_id)
    return await api.wait_turn(sid, (await api.turn(sid, text))["id"])


# --- refused at creation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "code"),
    [
        ({"api_key_env": "TETHER_SECRET_KEY"}, "provider_key_env_not_allowed"),
        ({"api_key_env": "HOME"}, "provider_key_env_not_allowed"),
        ({"base_url": "https://evil.example/v1"}, "provider_base_url_not_allowed"),
        (
            {"base_url": "https://evil.example/v1", "api_key_env": "OPENAI_API_KEY"},
            "provider_base_url_not_allowed",
        ),
        ({"base_url": "https://api.openai.com.evil.com/v1"}, "provider_base_url_not_allowed"),
        ({"base_url": "https://api.openai.com/v1evil"}, "provider_base_url_not_allowed"),
        ({"base_url": "http://api.openai.com/v1"}, "provider_base_url_not_allowed"),
        ({"api_key": "sk-own-1", "base_url": "http://10.0.0.1/v1"}, "destination_not_allowed"),
        ({"api_key": "sk-own-1", "base_url": "http://169.254.169.254/"}, "destination_not_allowed"),
        ({"api_key": "sk-own-1", "base_url": "http://[::1]:8000/v1"}, "destination_not_allowed"),
        (
            {"api_key": "sk-own-1", "base_url": "http://[::ffff:127.0.0.1]/v1"},
            "destination_not_allowed",
        ),
        ({"api_key": "sk-own-1", "base_url": "http://localhost:80/v1"}, "destination_not_allowed"),
        ({"api_key": "sk-own-1", "base_url": "ftp://llm.example/v1"}, "destination_not_allowed"),
        ({"params": {"temprature": 1}}, "invalid_model_params"),
        ({"params": {"stream": False}}, "invalid_model_params"),
        ({"params": {"temperature": "hot"}}, "invalid_model_params"),
        ({"api_key": "sk-own-1", "temperature": 1}, "validation_error"),  # not echoed either
        ({"api_key": "sk-own-1", "api_key_env": "OPENAI_API_KEY"}, "validation_error"),
    ],
)
async def test_creation_refuses_what_the_operator_does_not_allow(
    client: httpx.AsyncClient, model: dict[str, Any], code: str
) -> None:
    r = await client.post("/v1/agents", json=_agent(**model))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == code
    assert r.json()["error"]["message"]
    assert "sk-own-1" not in r.text
    listed = await client.get("/v1/agents")
    assert [a["name"] for a in listed.json()["data"]] == ["demo"]


async def test_patch_is_checked_like_creation(client: httpx.AsyncClient) -> None:
    agent_id = await _create(client)  # the server's key, to the official host: allowed
    before = (await client.get(f"/v1/agents/{agent_id}")).json()
    for model, code in [
        ({"base_url": "https://evil.example/v1"}, "provider_base_url_not_allowed"),
        ({"api_key_env": "PATH"}, "provider_key_env_not_allowed"),
        ({"params": {"bogus": True}}, "invalid_model_params"),
    ]:
        body = {"model": {"provider": "openai", "model": "fake-1", **model}}
        r = await client.patch(f"/v1/agents/{agent_id}", json=body)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == code
    assert (await client.get(f"/v1/agents/{agent_id}")).json() == before


async def test_agents_files_are_held_to_the_same_rules(server: Server, tmp_path: Path) -> None:
    """`--agents-file` definitions go through the same checks (a refusal stops the start)."""
    from tether.node import load_agents_file

    path = tmp_path / "agents.yaml"
    path.write_text(
        "- name: leaky\n  model: {provider: openai, model: m, api_key_env: DATABASE_URL}\n"
    )
    [spec] = load_agents_file(path)
    with pytest.raises(errors.ProviderKeyEnvNotAllowed):
        await server.node.service.agents.upsert("default", spec)
    path.write_text("- name: x\n  model: {provider: openai, model: m, api_key: sk-f1le, x: 1}\n")
    with pytest.raises(errors.InvalidAgent) as refused:
        load_agents_file(path)
    assert "sk-f1le" not in refused.value.message


# --- allowed: the key reaches the provider ---------------------------------------------------


async def test_allowed_server_keys_reach_the_provider(
    tmp_path: Path, fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TEST_KEY_ENV, "sk-server-held")
    async with (
        running_server(
            tmp_path,
            provider_base_urls=[fake.url],  # the fake is on loopback: the operator allows it
            provider_key_envs=[TEST_KEY_ENV],
            openai_api_key="sk-configured",
        ) as srv,
        httpx.AsyncClient(base_url=srv.url, timeout=30) as client,
    ):
        api = Api(client)
        named = await _run(api, await _create(client, base_url=fake.url, api_key_env=TEST_KEY_ENV))
        assert named["status"] == "completed", named
        assert fake.calls[-1].authorization == "Bearer sk-server-held"
        default = await _run(api, await _create(client, base_url=fake.url))
        assert default["status"] == "completed", default
        assert fake.calls[-1].authorization == "Bearer sk-configured"


async def test_settings_tightened_after_creation_fail_the_turn_and_send_nothing(
    tmp_path: Path, fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TEST_KEY_ENV, "sk-server-held")
    permissive = {"provider_base_urls": [fake.url], "provider_key_envs": [TEST_KEY_ENV]}
    async with (
        running_server(tmp_path, **permissive) as srv,
        httpx.AsyncClient(base_url=srv.url, timeout=30) as client,
    ):
        by_url = await _create(client, base_url=fake.url)
        by_env = await _create(client, base_url=fake.url, api_key_env=TEST_KEY_ENV)
    async with (  # the same store, now under the defaults
        running_server(tmp_path) as srv,
        httpx.AsyncClient(base_url=srv.url, timeout=30) as client,
    ):
        api = Api(client)
        for agent_id, code in [
            (by_url, "provider_base_url_not_allowed"),
            (by_env, "provider_key_env_not_allowed"),
        ]:
            done = await _run(api, agent_id)
            assert done["status"] == "failed", done
            assert done["reason"] == "model_error"
            assert done["error"]["code"] == code
            assert "TETHER_PROVIDER" in done["error"]["message"]
    assert fake.calls == []


# --- a tenant's own key ------------------------------------------------------------------------


async def test_own_key_is_sent_and_never_shown(
    tmp_path: Path, fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    own = f"sk-tenant-{secrets.token_hex(12)}"
    async with (
        running_server(tmp_path, provider_base_urls=[fake.url], **_sealing()) as srv,
        httpx.AsyncClient(base_url=srv.url, timeout=30) as client,
    ):
        api = Api(client)
        r = await client.post("/v1/agents", json=_agent(base_url=fake.url, api_key=own))
        assert r.status_code == 201, r.text
        assert "api_key" not in r.json()["model"]
        agent_id = r.json()["id"]
        done = await _run(api, agent_id)
        assert done["status"] == "completed", done
        assert fake.calls[-1].authorization == f"Bearer {own}"

        shown = [
            r.text,
            (await client.get(f"/v1/agents/{agent_id}")).text,
            (await client.get("/v1/agents")).text,
            json.dumps(await api.events(done["session_id"])),
            (await client.get("/v1/audit")).text,
            (await client.get(f"{fake.url[: -len('/v1')]}/_calls")).text,
        ]
        for text in shown:
            assert own not in text
        stored = await srv.node.store.db.read(
            lambda conn: conn.execute(select(agents.c.spec).where(agents.c.id == agent_id)).one()
        )
        assert own not in json.dumps(stored.spec)
        assert stored.spec["model"]["api_key_sealed"]
        if not _cluster():
            key_file = tmp_path / "secret.key"
            assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert any(r.name.startswith("openai") for r in caplog.records)  # the SDK's debug logs too
    assert own not in caplog.text


async def test_own_key_survives_edits_but_not_a_new_destination(
    tmp_path: Path, fake: FakeOpenAI
) -> None:
    other = FakeOpenAI()
    await other.start()
    try:
        allowed = [fake.url, other.url]
        async with (
            running_server(tmp_path, provider_base_urls=allowed, **_sealing()) as srv,
            httpx.AsyncClient(base_url=srv.url, timeout=30) as client,
        ):
            api = Api(client)
            agent_id = await _create(client, base_url=fake.url, api_key="sk-first")
            r = await client.patch(f"/v1/agents/{agent_id}", json={"instructions": "be terse"})
            assert r.status_code == 200, r.text
            assert (await _run(api, agent_id))["status"] == "completed"
            assert fake.calls[-1].authorization == "Bearer sk-first"

            model = {"provider": "openai", "model": "fake-1", "base_url": other.url}
            r = await client.patch(f"/v1/agents/{agent_id}", json={"model": model})
            assert r.status_code == 422, r.text
            assert "api_key" in r.json()["error"]["message"]

            r = await client.patch(
                f"/v1/agents/{agent_id}", json={"model": {**model, "api_key": "sk-second"}}
            )
            assert r.status_code == 200, r.text
            assert "sk-second" not in r.text
            assert (await _run(api, agent_id))["status"] == "completed"
            assert other.calls[-1].authorization == "Bearer sk-second"

            # null: no own key any more; the server's goes there (an allowed prefix)
            r = await client.patch(
                f"/v1/agents/{agent_id}", json={"model": {**model, "api_key": None}}
            )
            assert r.status_code == 200, r.text
            assert (await _run(api, agent_id))["status"] == "completed"
            assert other.calls[-1].authorization != "Bearer sk-second"
    finally:
        await other.stop()


async def test_own_key_may_go_to_a_public_host_of_the_tenants_choosing(
    tmp_path: Path,
) -> None:
    async with (
        running_server(tmp_path, **_sealing()) as srv,
        httpx.AsyncClient(base_url=srv.url, timeout=30) as client,
    ):
        r = await client.post(
            "/v1/agents", json=_agent(base_url="https://llm.example.org/v1", api_key="sk-mine")
        )
        assert r.status_code == 201, r.text
        assert "sk-mine" not in r.text


@pytest.mark.cluster
async def test_cluster_without_secret_key_refuses_own_keys(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path) as srv,
        httpx.AsyncClient(base_url=srv.url, timeout=30) as client,
    ):
        r = await client.post(
            "/v1/agents", json=_agent(base_url="https://llm.example.org/v1", api_key="sk-mine")
        )
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "secret_key_missing"
        assert "TETHER_SECRET_KEY" in r.json()["error"]["message"]


async def test_agent_file_key_is_sealed_once(tmp_path: Path) -> None:
    """Restarting with the same agents file does not rewrite an agent whose key is unchanged."""
    async with running_server(tmp_path, **_sealing()) as srv:
        service = srv.node.service
        spec = specs.AgentSpec.model_validate(
            _agent(base_url="https://llm.example.org/v1", api_key="sk-file") | {"name": "filed"}
        )
        first = await service.agents.upsert("default", spec)
        assert (await service.agents.upsert("default", spec)).updated_at == first.updated_at
        changed = spec.model_copy(
            update={"model": spec.model.model_copy(update={"api_key": SecretStr("sk-other")})}
        )
        assert (await service.agents.upsert("default", changed)).updated_at > first.updated_at


# --- refused when connecting -------------------------------------------------------------------


async def test_a_name_resolving_to_a_private_address_is_refused_when_connecting(
    tmp_path: Path, fake: FakeOpenAI
) -> None:
    """The machine's own name passes the URL check (it is not an address) and resolves to a
    private one: the turn fails when the worker connects, and nothing reaches the fake."""
    host = socket.gethostname()
    found = {info[4][0] for info in socket.getaddrinfo(host, fake.port, type=socket.SOCK_STREAM)}
    if not found or any(destinations.is_public(destinations.literal_address(a)) for a in found):  # type: ignore[arg-type]
        pytest.skip(f"{host} does not resolve to private addresses only here")
    async with (
        running_server(tmp_path, **_sealing()) as srv,
        httpx.AsyncClient(base_url=srv.url, timeout=30) as client,
    ):
        base_url = f"http://{host}:{fake.port}/v1"
        done = await _run(Api(client), await _create(client, base_url=base_url, api_key="sk-own"))
        assert done["status"] == "failed", done
        assert done["reason"] == "model_error"
        assert done["error"]["code"] == "destination_not_allowed"
    assert fake.calls == []
