"""Idempotency-Key on creating POSTs."""

from __future__ import annotations

import asyncio
import hashlib
import json

import httpx

from tests.helpers import Api, Server, read_sse


async def test_same_key_same_body_replays(api: Api, client: httpx.AsyncClient) -> None:
    agent = await api.agent(reply="hi")
    h = {"Idempotency-Key": "k1"}
    first = await client.post("/v1/sessions", json={"agent_id": agent}, headers=h)
    again = await client.post("/v1/sessions", json={"agent_id": agent}, headers=h)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    listed = (await client.get("/v1/sessions", params={"agent_id": agent})).json()["data"]
    assert len(listed) == 1, "created once"
    # same body, keys in another order: the same request
    sid = first.json()["id"]
    body = {"input": "x", "on_busy": "enqueue"}
    t1 = await client.post(f"/v1/sessions/{sid}/turns", json=body, headers={"Idempotency-Key": "t"})
    t2 = await client.post(
        f"/v1/sessions/{sid}/turns",
        content=b'{"on_busy":"enqueue","input":"x"}',
        headers={"Idempotency-Key": "t", "content-type": "application/json"},
    )
    assert t1.json()["id"] == t2.json()["id"]
    turns = (await client.get(f"/v1/sessions/{sid}/turns")).json()["data"]
    assert len(turns) == 1


async def test_same_key_other_body_is_422(api: Api, client: httpx.AsyncClient) -> None:
    agent = await api.agent(reply="hi")
    h = {"Idempotency-Key": "k2"}
    assert (
        await client.post("/v1/sessions", json={"agent_id": agent}, headers=h)
    ).status_code == 201
    r = await client.post("/v1/sessions", json={"agent_id": agent, "metadata": {"a": 1}}, headers=h)
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "idempotency_key_reused"
    # another path with the same key is another request too
    r = await client.post("/v1/agents", json={"name": "zz"}, headers=h)
    assert r.status_code == 422


async def test_streamed_turn_is_streamed_again(api: Api, client: httpx.AsyncClient) -> None:
    sid = await api.session(await api.agent(reply="echo", tokens=50, token_delay_ms=5))
    h = {"Idempotency-Key": "stream-1"}
    body = {"input": "go", "stream": True}
    async with client.stream("POST", f"/v1/sessions/{sid}/turns", json=body, headers=h) as first:
        frames = read_sse(first)
        await frames.__anext__()
        # the answer has started: the key is recorded, a repeat streams the same turn again
        again = await client.post(f"/v1/sessions/{sid}/turns", json=body, headers=h)
        assert again.status_code == 200
        assert again.headers["Idempotent-Replayed"] == "true"
        kinds = [line for line in again.text.splitlines() if line.startswith("event:")]
        assert kinds[0] == "event: turn.queued"
        assert kinds[-1] == "event: turn.completed"
        async for _ in frames:
            pass
    turns = (await client.get(f"/v1/sessions/{sid}/turns")).json()["data"]
    assert len(turns) == 1


async def test_refusals_are_replayed_and_bad_keys(api: Api, client: httpx.AsyncClient) -> None:
    h = {"Idempotency-Key": "k3"}
    r1 = await client.post("/v1/sessions", json={"agent_id": "nope"}, headers=h)
    r2 = await client.post("/v1/sessions", json={"agent_id": "nope"}, headers=h)
    assert r1.status_code == r2.status_code == 404
    assert r1.json() == r2.json()
    r = await client.post(
        "/v1/sessions", json={"agent_id": "x"}, headers={"Idempotency-Key": "x" * 300}
    )
    assert r.status_code == 400


async def test_concurrent_same_key_creates_once(api: Api, client: httpx.AsyncClient) -> None:
    agent = await api.agent(reply="hi")
    h = {"Idempotency-Key": "race"}
    answers = await asyncio.gather(
        *(client.post("/v1/sessions", json={"agent_id": agent}, headers=h) for _ in range(10))
    )
    ok = [r for r in answers if r.status_code == 201]
    assert ok
    assert {r.json()["id"] for r in ok} == {ok[0].json()["id"]}
    assert all(r.status_code in (201, 409) for r in answers)
    listed = (await client.get("/v1/sessions", params={"agent_id": agent})).json()["data"]
    assert len(listed) == 1


async def test_in_flight_key_is_409(server: Server, api: Api, client: httpx.AsyncClient) -> None:
    agent = await api.agent(reply="hi")
    keys = server.node.store.idempotency
    body = {"agent_id": agent}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    fingerprint = hashlib.sha256(b"POST /v1/sessions\n" + canonical).hexdigest()
    # the first request has claimed the key and not answered yet
    assert await keys.begin("default", "slow", fingerprint) is None
    r = await client.post("/v1/sessions", json=body, headers={"Idempotency-Key": "slow"})
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "idempotency_key_in_flight"
    await keys.release("default", "slow")  # the first request failed: a retry goes through
    r = await client.post("/v1/sessions", json=body, headers={"Idempotency-Key": "slow"})
    assert r.status_code == 201
