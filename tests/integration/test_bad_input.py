"""Bad input gets a clear 4xx with a code, and leaves the store unchanged."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.helpers import Api, Server, store_snapshot

GOOD_SID = "01arz3ndektsv4rrffq69g5fav.local"


@pytest.fixture
async def seeded(api: Api) -> tuple[str, str]:
    agent = await api.agent(reply="hi")
    sid = await api.session(agent)
    await api.wait_turn(sid, (await api.turn(sid))["id"])
    return agent, sid


def cases(agent: str, sid: str) -> list[tuple[str, str, dict[str, Any], int, str]]:
    """(method, path, request kwargs, status, code)"""
    json_h = {"content-type": "application/json"}
    return [
        ("POST", "/v1/sessions", {"content": b"{not json", "headers": json_h}, 400, "invalid_json"),
        ("POST", "/v1/sessions", {"json": {"agent_id": 42}}, 422, "validation_error"),
        ("POST", "/v1/sessions", {"json": {}}, 422, "validation_error"),
        (
            "POST",
            "/v1/sessions",
            {"json": {"agent_id": agent, "bogus": 1}},
            422,
            "validation_error",
        ),
        (
            "POST",
            "/v1/sessions",
            {"json": {"agent_id": "agt_01arz3ndektsv4rrffq69g5fav"}},
            404,
            "not_found",
        ),
        (
            "POST",
            "/v1/sessions",
            {"json": {"agent_id": agent, "input": []}},
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/sessions",
            {"json": {"agent_id": agent, "input": [{"role": "tool", "content": "x"}]}},
            422,
            "validation_error",
        ),
        ("GET", "/v1/sessions/not-a-session", {}, 400, "invalid_id"),
        ("GET", "/v1/sessions/01ARZ3NDEKTSV4RRFFQ69G5FAV.local", {}, 400, "invalid_id"),
        ("GET", f"/v1/sessions/{GOOD_SID}", {}, 404, "not_found"),
        ("GET", "/v1/sessions", {"params": {"status": "sleepy"}}, 422, "validation_error"),
        ("GET", "/v1/sessions", {"params": {"limit": 0}}, 422, "validation_error"),
        ("POST", f"/v1/sessions/{sid}/turns", {"json": {"input": 5}}, 422, "validation_error"),
        (
            "POST",
            f"/v1/sessions/{sid}/turns",
            {"json": {"input": "x", "on_busy": "shove"}},
            422,
            "validation_error",
        ),
        (
            "POST",
            f"/v1/sessions/{sid}/turns",
            {"content": b"[1,", "headers": json_h},
            400,
            "invalid_json",
        ),
        ("POST", f"/v1/sessions/{GOOD_SID}/turns", {"json": {"input": "x"}}, 404, "not_found"),
        ("POST", "/v1/sessions/bad/turns", {"json": {"input": "x"}}, 400, "invalid_id"),
        ("GET", f"/v1/sessions/{sid}/turns/turn_nope", {}, 400, "invalid_id"),
        ("GET", f"/v1/sessions/{sid}/turns/turn_01arz3ndektsv4rrffq69g5fav", {}, 404, "not_found"),
        ("GET", f"/v1/sessions/{sid}/turns", {"params": {"cursor": "x"}}, 400, "invalid_request"),
        (
            "GET",
            f"/v1/sessions/{sid}/messages",
            {"params": {"cursor": "-1"}},
            400,
            "invalid_request",
        ),
        ("GET", f"/v1/sessions/{sid}/events", {"params": {"after": -1}}, 400, "invalid_request"),
        (
            "GET",
            f"/v1/sessions/{GOOD_SID}/events",
            {"params": {"stream": "false"}},
            404,
            "not_found",
        ),
        (
            "POST",
            "/v1/agents",
            {"json": {"name": "x", "tools": [{"name": "rm_rf"}]}},
            422,
            "invalid_agent",
        ),
        ("POST", "/v1/agents", {"json": {"name": "bad name!"}}, 422, "validation_error"),
        (
            "POST",
            "/v1/agents",
            {"json": {"name": "x", "model": {"provider": "magic"}}},
            422,
            "validation_error",
        ),
        ("POST", "/v1/agents", {"json": {"name": "x", "max_steps": 0}}, 422, "validation_error"),
        ("POST", "/v1/agents", {"json": {"name": "demo"}}, 409, "already_exists"),
        (
            "PATCH",
            f"/v1/agents/{agent}",
            {"json": {"tools": [{"name": "nope"}]}},
            422,
            "invalid_agent",
        ),
        ("PATCH", f"/v1/agents/{agent}", {"json": {"max_steps": -3}}, 422, "invalid_agent"),
        ("PATCH", "/v1/agents/agt_01arz3ndektsv4rrffq69g5fav", {"json": {}}, 404, "not_found"),
        ("DELETE", "/v1/agents/agt_bad", {}, 400, "invalid_id"),
        ("GET", "/v1/nowhere", {}, 404, "not_found"),
        ("PUT", "/v1/sessions", {"json": {}}, 405, "method_not_allowed"),
        (
            "POST",
            "/v1/sessions",
            {"content": b"x" * (2 << 20), "headers": json_h},
            413,
            "body_too_large",
        ),
    ]


async def test_bad_requests_are_clear_and_change_nothing(
    server: Server, client: httpx.AsyncClient, seeded: tuple[str, str]
) -> None:
    agent, sid = seeded
    before = await store_snapshot(server)
    for method, path, kwargs, status, code in cases(agent, sid):
        r = await client.request(method, path, **kwargs)
        assert r.status_code == status, (method, path, r.status_code, r.text)
        body = r.json()
        assert body["error"]["code"] == code, (method, path, body)
        assert body["error"]["message"]
    assert await store_snapshot(server) == before


async def test_chunked_oversized_body_is_413(server: Server, client: httpx.AsyncClient) -> None:
    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(40):
            yield b"x" * 65536

    r = await client.post(
        "/v1/sessions", content=chunks(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
