"""Keys, tenants and roles on every route (DESIGN §8): an authorization matrix generated from
the OpenAPI document."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet

from tests.helpers import Server, running_server, wait_for
from tether import ids
from tether.auth import Role

OPEN = {
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/docs",
    "/docs/oauth2-redirect",
    "/redoc",
}
ADMIN_ROUTES = {
    ("POST", "/v1/agents"),
    ("PATCH", "/v1/agents/{agent_id}"),
    ("DELETE", "/v1/agents/{agent_id}"),
    ("POST", "/v1/keys"),
    ("GET", "/v1/keys"),
    ("DELETE", "/v1/keys/{key_id}"),
    ("GET", "/v1/audit"),
    ("POST", "/v1/webhooks"),
    ("GET", "/v1/webhooks"),
    ("GET", "/v1/webhooks/{webhook_id}"),
    ("PATCH", "/v1/webhooks/{webhook_id}"),
    ("DELETE", "/v1/webhooks/{webhook_id}"),
    ("POST", "/v1/webhooks/{webhook_id}/rotate-secret"),
    ("GET", "/v1/webhooks/{webhook_id}/deliveries"),
    ("POST", "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/retry"),
}
# endpoints made here never hear of anything: no delivery is attempted (and none could be)
HOOK = {"url": "https://receiver.example/hook", "events": ["interrupt.expired"]}


def required_role(method: str, path: str) -> Role:
    if (method, path) in ADMIN_ROUTES:
        return Role.ADMIN
    return Role.READ if method == "GET" else Role.WRITE


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    # cluster mode seals webhook secrets only with a secret key of the operator's
    key = Fernet.generate_key().decode()
    async with running_server(
        tmp_path, auth="required", webhook_concurrency=0, secret_key=key
    ) as srv:
        yield srv


class Tenant:
    def __init__(self, server: Server, name: str):
        self.server, self.name = server, name
        self.keys: dict[str, str] = {}

    async def setup(self) -> None:
        for role in Role:
            _, key = await self.server.node.keys.create(self.name, role, role.name.lower())
            self.keys[role.name.lower()] = key

    def client(self, role: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.server.url,
            timeout=30,
            headers={"Authorization": f"Bearer {self.keys[role]}"},
        )

    async def objects(self) -> dict[str, str]:
        """Fresh objects of this tenant for one request's path parameters."""
        async with self.client("admin") as c:
            agent = (
                await c.post(
                    "/v1/agents",
                    json={
                        "name": f"a{ids.new_ulid()}",
                        "model": {"reply": "hi"},
                        "tools": [{"name": "sleep", "policy": "approve"}],
                    },
                )
            ).json()["id"]
            session = (await c.post("/v1/sessions", json={"agent_id": agent})).json()["id"]
            turn = (await c.post(f"/v1/sessions/{session}/turns", json={"input": "x"})).json()
            key = (await c.post("/v1/keys", json={"role": "read"})).json()["id"]
            webhook = (await c.post("/v1/webhooks", json=HOOK)).json()["id"]
        return {
            "agent_id": agent,
            "session_id": session,
            "turn_id": turn["id"],
            "key_id": key,
            "interrupt_id": "int_01arz3ndektsv4rrffq69g5fav",
            "webhook_id": webhook,
            "delivery_id": "dlv_01arz3ndektsv4rrffq69g5fav",
        }


BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/v1/agents"): {"name": "made-here"},
    ("PATCH", "/v1/agents/{agent_id}"): {"instructions": "changed"},
    ("POST", "/v1/sessions"): {"agent_id": "{agent_id}"},
    ("POST", "/v1/sessions/{session_id}/turns"): {"input": "hi"},
    ("POST", "/v1/sessions/{session_id}/interrupt"): {"wait": 0},
    ("POST", "/v1/sessions/{session_id}/turns/{turn_id}/cancel"): {"wait": 0},
    ("POST", "/v1/interrupts/{interrupt_id}/respond"): {"response": "x"},
    ("POST", "/v1/keys"): {"role": "read"},
    ("POST", "/v1/webhooks"): HOOK,
    ("PATCH", "/v1/webhooks/{webhook_id}"): {"description": "changed"},
}


def _fill(template: str, objects: dict[str, str]) -> str:
    return re.sub(r"{(\w+)}", lambda m: objects[m.group(1)], template)


async def test_authorization_matrix(server: Server) -> None:
    own, other = Tenant(server, "acme"), Tenant(server, "globex")
    await own.setup()
    await other.setup()
    async with own.client("admin") as c:
        spec = (await c.get("/openapi.json")).json()
    revoked = Tenant(server, "acme")
    await revoked.setup()
    async with own.client("admin") as c:
        for key in (await c.get("/v1/keys")).json()["data"]:
            if key["name"] == "admin" and revoked.keys["admin"].split("_", 2)[1] == key["prefix"]:
                await c.delete(f"/v1/keys/{key['id']}")
    routes = [(m.upper(), p) for p, ops in spec["paths"].items() for m in ops if p not in OPEN]
    assert len(routes) >= 20
    cross_tenant_successes = 0
    checked = 0
    for method, path in routes:
        needed = required_role(method, path)
        principals: list[tuple[str, dict[str, str]]] = [
            (f"own-{r}", {"Authorization": f"Bearer {own.keys[r]}"}) for r in own.keys
        ]
        principals += [
            ("other-admin", {"Authorization": f"Bearer {other.keys['admin']}"}),
            ("revoked", {"Authorization": f"Bearer {revoked.keys['admin']}"}),
            ("bad", {"Authorization": "Bearer tth_000000000000_nope"}),
            ("malformed", {"Authorization": "Basic abc"}),
            ("none", {}),
        ]
        for who, headers in principals:
            objects = await own.objects()
            url = _fill(path, objects)
            body = BODIES.get((method, path))
            if body is not None:
                body = {k: _fill(v, objects) if isinstance(v, str) else v for k, v in body.items()}
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
                r = await c.request(
                    method,
                    url,
                    headers=headers,
                    json=body if method != "GET" else None,
                    params={"stream": "false"} if "events" in path else None,
                )
            checked += 1
            status = r.status_code
            context = (method, path, who, status, r.text[:200])
            if who in ("revoked", "bad", "malformed", "none"):
                assert status == 401, context
                assert r.headers["www-authenticate"] == "Bearer"
            elif who == "other-admin":
                placeholders = re.compile(r"{\w+}")
                refers = bool(
                    placeholders.search(path + str(BODIES.get((method, path), {}).values()))
                )
                if refers:  # another tenant's object: 404, never 403, never a hint
                    assert status == 404, context
                    cross_tenant_successes += status < 300
                elif method == "GET":  # lists of its own tenant only
                    assert status == 200, context
                    made_up = ("interrupt_id", "delivery_id")
                    leaked = [v for k, v in objects.items() if k not in made_up and v in r.text]
                    assert not leaked, context
                else:
                    assert status < 300, context  # creating in its own tenant
            else:
                role = Role[who.removeprefix("own-").upper()]
                if role < needed:
                    assert status == 403, context
                    assert r.json()["error"]["code"] == "forbidden"
                else:
                    assert status not in (401, 403, 500), context
    assert cross_tenant_successes == 0
    assert checked >= 20 * 9


async def test_keys_are_stored_only_as_hashes(server: Server) -> None:
    _, key = await server.node.keys.create("acme", Role.ADMIN)
    async with httpx.AsyncClient(
        base_url=server.url, headers={"Authorization": f"Bearer {key}"}
    ) as c:
        assert (await c.get("/v1/sessions")).status_code == 200
        made = (await c.post("/v1/keys", json={"role": "write"})).json()
        assert made["key"].startswith("tth_")
        listed = (await c.get("/v1/keys")).json()["data"]
        assert all("key" not in k for k in listed)
    db = sqlite3.connect(server.settings.data_dir / "tether.db")
    dump = "\n".join(db.iterdump())
    db.close()
    for secret in (key, made["key"]):
        assert secret not in dump
        assert secret.split("_", 2)[2] not in dump


async def test_audit_log_records_mutations(server: Server) -> None:
    _, key = await server.node.keys.create("acme", Role.ADMIN, "ops")
    h = {"Authorization": f"Bearer {key}", "X-Request-Id": "req-42"}
    async with httpx.AsyncClient(base_url=server.url, headers=h) as c:
        agent = (await c.post("/v1/agents", json={"name": "x", "model": {"reply": "hi"}})).json()
        sid = (await c.post("/v1/sessions", json={"agent_id": agent["id"]})).json()["id"]
        turn = (await c.post(f"/v1/sessions/{sid}/turns", json={"input": "x"})).json()
        await c.post(f"/v1/sessions/{sid}/interrupt", json={"wait": 1})
        r = await c.get("/v1/audit")
        assert r.headers["x-request-id"] == "req-42"
    actions = [(a["action"], a["target"]) for a in r.json()["data"]]
    assert ("agent.create", agent["id"]) in actions
    assert ("session.create", sid) in actions
    assert ("turn.create", turn["id"]) in actions
    assert any(a == "turn.stop" for a, _ in actions)
    first = r.json()["data"][0]
    assert first["key_prefix"] == key.split("_", 2)[1]
    assert first["request_id"] == "req-42"
    assert key not in r.text


async def test_revoked_key_stops_working(server: Server) -> None:
    info, key = await server.node.keys.create("acme", Role.READ)
    async with httpx.AsyncClient(
        base_url=server.url, headers={"Authorization": f"Bearer {key}"}
    ) as c:
        assert (await c.get("/v1/sessions")).status_code == 200
        await server.node.keys.revoke(info.id)
        assert (await c.get("/v1/sessions")).status_code == 401


async def test_limits_answer_429(tmp_path: Path) -> None:
    async with (
        running_server(
            tmp_path,
            max_queued_turns_per_tenant=2,
            max_running_turns_per_tenant=1,
            max_streams_per_tenant=1,
            workers=4,
        ) as srv,
        httpx.AsyncClient(base_url=srv.url) as c,
    ):
        agent = (
            await c.post(
                "/v1/agents",
                json={
                    "name": "long",
                    "model": {"reply": "echo", "tokens": 1000, "token_delay_ms": 5},
                },
            )
        ).json()
        s1 = (await c.post("/v1/sessions", json={"agent_id": agent["id"]})).json()["id"]
        s2 = (await c.post("/v1/sessions", json={"agent_id": agent["id"]})).json()["id"]
        assert (await c.post(f"/v1/sessions/{s1}/turns", json={"input": "a"})).status_code == 202

        async def running() -> bool:
            r = await c.get(f"/v1/sessions/{s1}")
            return r.json()["status"] == "running"

        await wait_for(running, 10, "a running turn")
        r = await c.post(f"/v1/sessions/{s2}/turns", json={"input": "b"})
        assert r.status_code == 429
        assert r.headers["retry-after"] == "2"
        assert r.json()["error"]["code"] == "rate_limited"
        async with c.stream("GET", f"/v1/sessions/{s1}/events") as first:
            assert first.status_code == 200
            second = await c.get(f"/v1/sessions/{s1}/events")
            assert second.status_code == 429
            assert second.headers["retry-after"] == "5"
        await c.post(f"/v1/sessions/{s1}/interrupt")
        async with c.stream("GET", f"/v1/sessions/{s1}/events") as again:
            assert again.status_code == 200, "the slot was released"
