"""The Anthropic provider, through the real `anthropic` SDK, against a local server speaking the
Messages API's streaming wire format (tether/testing_anthropic.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet

from tests.helpers import Api, Server, running_server, wait_for
from tether.testing_anthropic import REDACTED, SIGNATURE, FakeAnthropic


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    server = FakeAnthropic()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake: FakeAnthropic
) -> AsyncIterator[Server]:
    monkeypatch.setenv("TEST_ANTHROPIC_KEY", "sk-ant-test")
    async with running_server(
        tmp_path,
        provider_timeout_s=2.0,
        provider_key_envs=["TEST_ANTHROPIC_KEY"],
        provider_base_urls=[fake.url],
        secret_key=Fernet.generate_key().decode(),  # tenants' own keys: cluster mode needs one
    ) as srv:
        yield srv


async def _agent(client: httpx.AsyncClient, fake: FakeAnthropic, **model: Any) -> str:
    body = {
        "name": f"claude{time.monotonic_ns()}",
        "instructions": "be brief",
        "model": {
            "provider": "anthropic",
            "model": "claude-fake-1",
            "base_url": fake.url,
            "api_key_env": "TEST_ANTHROPIC_KEY",
            "params": {"stop_sequences": ["END"], "max_tokens": 300},
            **model,
        },
        "tools": [{"name": "get_time"}, {"name": "sleep"}],
    }
    r = await client.post("/v1/agents", json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def _run(api: Api, sid: str, text: str) -> dict[str, Any]:
    return await api.wait_turn(sid, (await api.turn(sid, text))["id"])


async def test_text_usage_and_request(
    api: Api, client: httpx.AsyncClient, fake: FakeAnthropic
) -> None:
    sid = await api.session(await _agent(client, fake))
    done = await _run(api, sid, "hello world")
    assert done["status"] == "completed", done.get("error") or done
    assert done["usage"] == {
        "input_tokens": 11,
        "output_tokens": 3,
        "model_calls": 1,
        "cache_creation_input_tokens": 5,
        "cache_read_input_tokens": 7,
    }
    assert (await api.messages(sid))[-1]["content"] == "echo: hello world "
    sent = fake.calls[-1].body
    assert sent["system"] == "be brief"
    assert sent["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "hello world"}]}
    ]
    assert sent["stop_sequences"] == ["END"]
    assert sent["max_tokens"] == 300
    assert sent["stream"] is True
    assert {t["name"] for t in sent["tools"]} == {"get_time", "sleep"}
    assert all("input_schema" in t for t in sent["tools"])
    assert fake.headers[-1]["authorization"] == "Bearer sk-ant-test"
    assert "anthropic-version" in fake.headers[-1]
    # the provider's blocks are not shown by the API
    assert all("provider_data" not in m for m in await api.messages(sid))


async def test_tool_call_streamed_in_pieces(
    api: Api, client: httpx.AsyncClient, fake: FakeAnthropic
) -> None:
    sid = await api.session(await _agent(client, fake))
    done = await _run(api, sid, 'call:sleep:{"seconds": 0.01}')
    assert done["status"] == "completed", done.get("error") or done
    msgs = await api.messages(sid)
    assert [m["role"] for m in msgs] == ["user", "assistant", "tool", "assistant"]
    assert msgs[1]["tool_calls"] == [
        {"id": "toolu_0", "name": "sleep", "arguments": {"seconds": 0.01}}
    ]
    assert msgs[3]["content"] == "done "
    second = fake.calls[-1].body["messages"]
    assert second[1] == {
        "role": "assistant",
        "content": [
            {"type": "tool_use", "id": "toolu_0", "name": "sleep", "input": {"seconds": 0.01}}
        ],
    }
    assert second[2] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_0", "content": "slept 0.01 seconds"}
        ],
    }


async def test_parallel_tool_use(api: Api, client: httpx.AsyncClient, fake: FakeAnthropic) -> None:
    sid = await api.session(await _agent(client, fake))
    done = await _run(api, sid, "parallel")
    assert done["status"] == "completed", done.get("error") or done
    msgs = await api.messages(sid)
    assert msgs[1]["content"] == "Two at once."
    assert [c["name"] for c in msgs[1]["tool_calls"]] == ["get_time", "sleep"]
    # both results go back in one user message, as the API wants
    results = fake.calls[-1].body["messages"][2]
    assert results["role"] == "user"
    assert [b["tool_use_id"] for b in results["content"]] == ["toolu_0", "toolu_1"]


async def test_thinking_blocks_round_trip_unchanged(
    api: Api, client: httpx.AsyncClient, fake: FakeAnthropic
) -> None:
    sid = await api.session(
        await _agent(
            client,
            fake,
            params={"max_tokens": 2000, "thinking": {"type": "enabled", "budget_tokens": 1024}},
        )
    )
    done = await _run(api, sid, "think")
    assert done["status"] == "completed", done  # the fake refuses modified thinking with 400
    assert len(fake.calls) == 2
    assert fake.calls[0].body["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assistant = fake.calls[1].body["messages"][1]
    assert assistant == {
        "role": "assistant",
        "content": [
            {"type": "thinking", "thinking": "The user wants the time.", "signature": SIGNATURE},
            {"type": "redacted_thinking", "data": REDACTED},
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "toolu_0", "name": "get_time", "input": {}},
        ],
    }
    msgs = await api.messages(sid)
    assert msgs[1]["content"] == "Let me check."  # the text only: thinking is not the answer
    # a later turn sends the same blocks again
    again = await _run(api, sid, "more")
    assert again["status"] == "completed", again
    assert fake.calls[-1].body["messages"][1] == assistant


async def test_overloaded_is_retried(
    api: Api, client: httpx.AsyncClient, fake: FakeAnthropic
) -> None:
    sid = await api.session(await _agent(client, fake))
    done = await _run(api, sid, "overloaded:2")
    assert done["status"] == "completed", done.get("error") or done
    assert len(fake.calls) == 3
    assert (await api.messages(sid))[-1]["content"] == "echo: overloaded:2 "
    # the failed attempts' input tokens are not counted
    assert done["usage"]["input_tokens"] == 11
    assert done["usage"]["model_calls"] == 1


async def test_retries_run_out(api: Api, client: httpx.AsyncClient, fake: FakeAnthropic) -> None:
    sid = await api.session(await _agent(client, fake, max_retries=1))
    done = await _run(api, sid, "http:529")
    assert done["status"] == "failed"
    assert done["error"]["code"] == "provider_unavailable", done["error"]
    assert "overloaded_error" in done["error"]["message"]
    assert (
        len([c for c in fake.calls if c.body["messages"][-1]["content"][0]["text"] == "http:529"])
        == 2
    )


async def test_rate_limit_retried_after_what_it_asks(
    api: Api, client: httpx.AsyncClient, fake: FakeAnthropic
) -> None:
    sid = await api.session(await _agent(client, fake))
    done = await _run(api, sid, "http:429:1")
    assert done["status"] == "completed", done.get("error") or done
    assert len(fake.calls) == 2


@pytest.mark.parametrize(
    ("command", "code"),
    [
        ("http:400", "provider_rejected"),
        ("http:401", "provider_rejected"),
        ("hang", "provider_timeout"),
        ("garbage", "provider_bad_response"),
    ],
)
async def test_failures_fail_the_turn_without_retry(
    api: Api, client: httpx.AsyncClient, fake: FakeAnthropic, command: str, code: str
) -> None:
    sid = await api.session(await _agent(client, fake))
    done = await _run(api, sid, command)
    assert done["status"] == "failed"
    assert done["reason"] == "model_error"
    assert done["error"]["code"] == code, done["error"]
    assert len(fake.calls) == 1, "not retried"
    again = await _run(api, sid, "fine")
    assert again["status"] == "completed"


async def test_unreachable_provider_is_retried_then_fails(
    api: Api, client: httpx.AsyncClient, fake: FakeAnthropic
) -> None:
    await fake.stop()
    sid = await api.session(await _agent(client, fake, max_retries=1))
    done = await _run(api, sid, "x")
    assert done["error"]["code"] == "provider_unavailable"


async def test_stop_closes_the_stream(
    api: Api, client: httpx.AsyncClient, fake: FakeAnthropic
) -> None:
    sid = await api.session(await _agent(client, fake))
    await api.turn(sid, "slow:1000")
    await wait_for(lambda: fake.calls and fake.calls[-1].chunks >= 5, 10, "tokens flowing")
    call = fake.calls[-1]
    sent = time.monotonic()
    r = await client.post(f"/v1/sessions/{sid}/interrupt")
    assert r.json()["turn"]["status"] == "cancelled"
    await wait_for(lambda: call.closed_at is not None, 5, "provider connection closed")
    assert call.closed_at is not None
    assert not call.finished
    assert call.closed_at - sent < 1.0
    chunks = call.chunks
    await asyncio.sleep(0.1)  # a closed connection produces nothing more
    assert call.chunks == chunks
    partial = (await api.messages(sid))[-1]
    assert partial["status"] == "interrupted"
    assert partial["content"].startswith("t0 t1 ")
    # the interrupted text goes back as plain text and the next turn works
    nxt = await _run(api, sid, "after")
    assert nxt["status"] == "completed", nxt
    assert fake.calls[-1].body["messages"][1]["content"][0]["text"].startswith("t0 t1 ")


async def test_stop_during_backoff_is_immediate(
    api: Api, client: httpx.AsyncClient, fake: FakeAnthropic
) -> None:
    # 503 without retry-after: backoff of 0.25 s or more; and 10 retries of them
    sid = await api.session(await _agent(client, fake, max_retries=10))
    await api.turn(sid, "http:500")
    await wait_for(lambda: len(fake.calls) >= 1, 10, "first attempt")
    started = time.monotonic()
    r = await client.post(f"/v1/sessions/{sid}/interrupt", json={"wait": 5})
    assert r.json()["turn"]["status"] == "cancelled"
    assert time.monotonic() - started < 1.0
    attempts = len(fake.calls)
    await asyncio.sleep(0.5)
    assert len(fake.calls) == attempts, "no retry after the stop"


async def test_stop_mid_tool_then_transcript_is_valid(
    api: Api, client: httpx.AsyncClient, fake: FakeAnthropic
) -> None:
    sid = await api.session(await _agent(client, fake))
    await api.turn(sid, 'call:sleep:{"seconds": 30}')

    async def tool_running() -> bool:
        return any(e["type"] == "tool.started" for e in await api.events(sid))

    await wait_for(tool_running, 10, "tool running")
    r = await client.post(f"/v1/sessions/{sid}/interrupt")
    assert r.json()["turn"]["status"] == "cancelled"
    # the fake refuses a tool_use without its tool_result, as Anthropic does
    nxt = await _run(api, sid, "after")
    assert nxt["status"] == "completed", nxt


async def test_a_fork_keeps_what_the_provider_needs_back(
    api: Api, client: httpx.AsyncClient, fake: FakeAnthropic
) -> None:
    """A fork copies the thinking blocks (sent back unchanged, or the fake refuses with 400)
    and the results of a stopped turn's calls (a tool_use without its result is refused)."""
    thinking = {"max_tokens": 2000, "thinking": {"type": "enabled", "budget_tokens": 1024}}
    sid = await api.session(await _agent(client, fake, params=thinking))
    thought = await _run(api, sid, "think")
    stopped = await api.turn(sid, 'call:sleep:{"seconds": 30}')

    async def tool_running() -> bool:
        return any(e["type"] == "tool.started" for e in await api.events(sid))

    await wait_for(tool_running, 10, "tool running")
    r = await client.post(f"/v1/sessions/{sid}/interrupt")
    assert r.json()["turn"]["status"] == "cancelled"
    blocks = fake.calls[1].body["messages"][1]
    for point in (thought["id"], stopped["id"]):
        r = await client.post(f"/v1/sessions/{sid}/fork", json={"turn_id": point})
        assert r.status_code == 201, r.text
        fork = r.json()["id"]
        nxt = await _run(api, fork, "more")
        assert nxt["status"] == "completed", nxt
        assert fake.calls[-1].body["messages"][1] == blocks


async def test_a_steer_after_tool_results_joins_their_message(
    api: Api, client: httpx.AsyncClient, fake: FakeAnthropic
) -> None:
    """Anthropic takes tool results as a user message: a steer delivered after them is
    sent in that message, after the results (the order Anthropic requires)."""
    sid = await api.session(await _agent(client, fake))
    turn = await api.turn(sid, 'call:sleep:{"seconds": 1}')

    async def tool_running() -> bool:
        return any(e["type"] == "tool.started" for e in await api.events(sid))

    await wait_for(tool_running, 10, "tool running")
    r = await client.post(
        f"/v1/sessions/{sid}/turns", json={"input": "use JWT", "on_busy": "steer"}
    )
    assert r.status_code == 202 and r.json()["steer"]["joined"], r.text
    done = await api.wait_turn(sid, turn["id"])
    assert done["status"] == "completed", done
    last = fake.calls[-1].body["messages"][-1]
    assert last["role"] == "user"
    assert [b["type"] for b in last["content"]] == ["tool_result", "text"]
    assert last["content"][1]["text"] == "use JWT"
    roles = [m["role"] for m in await api.messages(sid)]
    assert roles == ["user", "assistant", "tool", "user", "assistant"]


# --- the operator's credential rules (DESIGN §8), as for every provider ---------------------


async def test_params_the_sdk_does_not_declare_are_refused(
    client: httpx.AsyncClient, fake: FakeAnthropic
) -> None:
    for params, bad in (
        ({"temperature": 0.2}, "temperature"),  # not a field of this SDK's create params
        ({"system": "x"}, "system"),  # Tether sets it from instructions
        ({"max_tokens": "many"}, "max_tokens"),
    ):
        body = {
            "name": f"bad{time.monotonic_ns()}",
            "model": {
                "provider": "anthropic",
                "model": "claude-fake-1",
                "base_url": fake.url,
                "api_key_env": "TEST_ANTHROPIC_KEY",
                "params": params,
            },
        }
        r = await client.post("/v1/agents", json=body)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "invalid_model_params"
        assert bad in r.json()["error"]["message"]


async def test_server_held_key_only_goes_where_the_operator_allows(
    client: httpx.AsyncClient, fake: FakeAnthropic
) -> None:
    elsewhere = {
        "name": f"x{time.monotonic_ns()}",
        "model": {"provider": "anthropic", "model": "c", "base_url": "https://evil.example"},
    }
    r = await client.post("/v1/agents", json=elsewhere)
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "provider_base_url_not_allowed"
    other_env = {
        "name": f"y{time.monotonic_ns()}",
        "model": {"provider": "anthropic", "model": "c", "api_key_env": "HOME"},
    }
    r = await client.post("/v1/agents", json=other_env)
    assert r.json()["error"]["code"] == "provider_key_env_not_allowed"


async def test_own_key_is_used_and_never_shown(
    api: Api, client: httpx.AsyncClient, fake: FakeAnthropic
) -> None:
    body = {
        "name": f"own{time.monotonic_ns()}",
        "model": {
            "provider": "anthropic",
            "model": "claude-fake-1",
            "base_url": fake.url,
            "api_key": "sk-ant-tenants-own",
        },
    }
    r = await client.post("/v1/agents", json=body)
    assert r.status_code == 201, r.text
    assert "sk-ant-tenants-own" not in r.text
    sid = await api.session(r.json()["id"])
    done = await _run(api, sid, "hi")
    assert done["status"] == "completed", done.get("error")
    assert fake.headers[-1]["authorization"] == "Bearer sk-ant-tenants-own"
