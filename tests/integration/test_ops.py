"""Health, readiness, metrics, OpenAPI."""

from __future__ import annotations

import httpx

from tests.helpers import Api


async def test_health_ready_metrics(api: Api, client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = (await client.get("/readyz")).json()
    assert ready["status"] == "ready"
    sid = await api.session(await api.agent(reply="hi"))
    await api.wait_turn(sid, (await api.turn(sid))["id"])
    text = (await client.get("/metrics")).text
    assert 'tether_turns_finished_total{status="completed"}' in text
    assert "tether_sse_connections" in text


async def test_openapi_lists_the_native_api(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    paths = spec["paths"]
    for path in [
        "/v1/agents",
        "/v1/sessions",
        "/v1/sessions/{session_id}/turns",
        "/v1/sessions/{session_id}/events",
        "/v1/sessions/{session_id}/messages",
    ]:
        assert path in paths
    assert "422" in paths["/v1/sessions"]["post"]["responses"]


async def test_demo_agent_exists(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/agents")
    assert "demo" in [a["name"] for a in r.json()["data"]]
