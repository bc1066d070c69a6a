"""No API key in the server's log (DESIGN §8), read from a real `tether serve` process at debug
level: the agent-threads WebSocket's documented `?access_token=` included."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
import websockets
from cryptography.fernet import Fernet

from tests import helpers
from tests.acceptance.procs import ServerProcess
from tests.webhook_receiver import Receiver
from tether.auth import Keys, Role
from tether.store import open_store


async def test_keys_never_reach_the_log(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = await open_store(helpers.settings_for(data).resolved_store_url)
    try:
        _, key = await Keys(store).create("acme", Role.ADMIN)
    finally:
        await store.close()
    bad = "tth_0123456789ab_this-one-does-not-exist-but-is-a-secret-all-the-same"
    secrets = [key, key.split("_", 2)[2], bad.split("_", 2)[2], "c2VjcmV0OnBhc3N3b3Jk"]
    receiver = Receiver().__enter__()  # a webhook delivery goes out at debug level too
    server = await asyncio.to_thread(
        ServerProcess(
            data,
            log_level="debug",
            webhook_allow_private="true",
            secret_key=Fernet.generate_key().decode(),  # cluster mode seals with it
        ).start
    )
    try:
        ws = f"ws://127.0.0.1:{server.port}/compat/agent-threads/ws"
        async with websockets.connect(f"{ws}?access_token={key}") as conn:
            await conn.send(json.dumps({"type": "hello", "version": 1}))
            assert json.loads(await conn.recv())["type"] == "server-hello"
        async with websockets.connect(ws, additional_headers={"Authorization": f"Bearer {key}"}):
            pass
        with pytest.raises(websockets.InvalidStatus):
            async with websockets.connect(f"{ws}?access_token={bad}"):
                pass
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
            own = {"Authorization": f"Bearer {key}"}
            assert (await c.get("/v1/sessions", headers=own)).status_code == 200
            made = await c.post("/v1/keys", json={"role": "read"}, headers=own)
            assert made.status_code == 201
            secrets.append(made.json()["key"].split("_", 2)[2])
            r = await c.get("/v1/sessions", headers={"Authorization": f"Bearer {bad}"})
            assert r.status_code == 401
            r = await c.get("/v1/sessions", headers={"Authorization": f"Basic {secrets[3]}"})
            assert r.status_code == 401
            r = await c.get("/v1/sessions", params={"access_token": key})  # not for HTTP: 401
            assert r.status_code == 401
            hook = {"url": receiver.url, "events": ["turn.completed"]}
            made = await c.post("/v1/webhooks", json=hook, headers=own)
            secrets += [made.json()["secret"], made.json()["secret"].removeprefix("whsec_")]
            rotated = await c.post(f"/v1/webhooks/{made.json()['id']}/rotate-secret", headers=own)
            secrets.append(rotated.json()["secret"].removeprefix("whsec_"))
            agent = {"name": "quick", "model": {"reply": "hi"}}
            assert (await c.post("/v1/agents", json=agent, headers=own)).status_code == 201
            first = {"agent_id": "quick", "input": "hi"}
            assert (await c.post("/v1/sessions", json=first, headers=own)).status_code == 201
            await helpers.wait_for(lambda: receiver.delivered(), 30, "a webhook delivery")
    finally:
        await asyncio.to_thread(server.stop)
        receiver.__exit__()
    log = server.log.read_text()
    assert "WebSocket /compat/agent-threads/ws?access_token=[redacted]" in log, log[-3000:]
    leaked = [secret for secret in secrets if secret in log]
    assert not leaked, "a key or a webhook secret in the server's log"
