"""The OpenAI-compatible provider against a local server speaking the real wire format."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import Api, Server, running_server, wait_for
from tether import destinations, errors, specs
from tether.runtime import credentials
from tether.runtime.model import ModelRequest
from tether.runtime.openai_chat import OpenAIChatModel
from tether.testing import FakeOpenAI


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    server = FakeOpenAI()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def server(tmp_path: Path, fake: FakeOpenAI) -> AsyncIterator[Server]:
    # the fake is on loopback: the operator allows it, as TETHER_PROVIDER_BASE_URLS would
    async with running_server(
        tmp_path, provider_timeout_s=2.0, provider_base_urls=[fake.url]
    ) as srv:
        yield srv


async def _agent(client: httpx.AsyncClient, fake: FakeOpenAI, **extra: Any) -> str:
    body = {
        "name": f"oa{time.monotonic_ns()}",
        "instructions": "be brief",
        "model": {
            "provider": "openai",
            "model": "fake-1",
            "base_url": fake.url,
            "params": {"temperature": 0},
        },
        "tools": [{"name": "get_time"}, {"name": "sleep"}],
        **extra,
    }
    r = await client.post("/v1/agents", json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def test_text_and_usage(api: Api, client: httpx.AsyncClient, fake: FakeOpenAI) -> None:
    sid = await api.session(await _agent(client, fake))
    done = await api.wait_turn(sid, (await api.turn(sid, "hello world"))["id"])
    assert done["status"] == "completed", done
    assert done["usage"] == {
        "input_tokens": 11,
        "output_tokens": 3,
        "model_calls": 1,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }
    msgs = await api.messages(sid)
    assert msgs[-1]["content"] == "echo: hello world "
    sent = fake.calls[-1].body
    assert sent["messages"][0] == {"role": "system", "content": "be brief"}
    assert sent["temperature"] == 0
    assert sent["stream"] is True
    assert {t["function"]["name"] for t in sent["tools"]} == {"get_time", "sleep"}


async def test_tool_calls_streamed_in_pieces(
    api: Api, client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    sid = await api.session(await _agent(client, fake))
    done = await api.wait_turn(sid, (await api.turn(sid, 'call:sleep:{"seconds": 0.01}'))["id"])
    assert done["status"] == "completed", done
    msgs = await api.messages(sid)
    assert [m["role"] for m in msgs] == ["user", "assistant", "tool", "assistant"]
    assert msgs[1]["tool_calls"] == [
        {"id": "call_a", "name": "sleep", "arguments": {"seconds": 0.01}}
    ]
    assert msgs[2]["content"] == "slept 0.01 seconds"
    assert msgs[3]["content"] == "done "
    sent = fake.calls[-1].body["messages"]
    assert sent[-1] == {"role": "tool", "tool_call_id": "call_a", "content": "slept 0.01 seconds"}


async def test_parallel_tool_calls(api: Api, client: httpx.AsyncClient, fake: FakeOpenAI) -> None:
    sid = await api.session(await _agent(client, fake))
    done = await api.wait_turn(sid, (await api.turn(sid, "parallel"))["id"])
    assert done["status"] == "completed", done
    tools = [m for m in await api.messages(sid) if m["role"] == "tool"]
    assert sorted(m["tool_call_id"] for m in tools) == ["call_0", "call_1"]


@pytest.mark.parametrize(
    ("command", "code"),
    [
        ("http:500", "provider_unavailable"),
        ("http:503", "provider_unavailable"),
        ("http:400", "provider_rejected"),
        ("http:429", "provider_rejected"),
        ("hang", "provider_timeout"),
        ("garbage", "provider_bad_response"),
        ("badargs", "provider_bad_response"),
        ("html", "provider_bad_response"),
    ],
)
async def test_provider_failures_fail_the_turn(
    api: Api, client: httpx.AsyncClient, fake: FakeOpenAI, command: str, code: str
) -> None:
    sid = await api.session(await _agent(client, fake))
    done = await api.wait_turn(sid, (await api.turn(sid, command))["id"])
    assert done["status"] == "failed"
    assert done["reason"] == "model_error"
    assert done["error"]["code"] == code, done["error"]
    # and the session goes on
    again = await api.wait_turn(sid, (await api.turn(sid, "fine"))["id"])
    assert again["status"] == "completed"


@pytest.mark.parametrize("command", ["http:503:2", "http:429:2"])
async def test_transient_failures_are_retried(
    api: Api, client: httpx.AsyncClient, fake: FakeOpenAI, command: str
) -> None:
    sid = await api.session(await _agent(client, fake))
    done = await api.wait_turn(sid, (await api.turn(sid, command))["id"])
    assert done["status"] == "completed", done
    assert len(fake.calls) == 3  # two failures, then the answer
    assert (await api.messages(sid))[-1]["content"] == f"echo: {command} "


async def test_no_retry_when_max_retries_is_zero(
    api: Api, client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    agent = await _agent(
        client,
        fake,
        model={"provider": "openai", "model": "fake-1", "base_url": fake.url, "max_retries": 0},
    )
    sid = await api.session(agent)
    done = await api.wait_turn(sid, (await api.turn(sid, "http:503:1"))["id"])
    assert done["error"]["code"] == "provider_unavailable"
    assert len(fake.calls) == 1


async def test_unreachable_provider(api: Api, client: httpx.AsyncClient, fake: FakeOpenAI) -> None:
    await fake.stop()
    sid = await api.session(await _agent(client, fake))
    done = await api.wait_turn(sid, (await api.turn(sid, "x"))["id"])
    assert done["error"]["code"] == "provider_unavailable"
    await fake.start()


async def test_stop_closes_provider_connection_and_next_turn_works(
    api: Api, client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    sid = await api.session(await _agent(client, fake))
    turn = await api.turn(sid, "slow:1000")
    await wait_for(lambda: fake.calls and fake.calls[-1].chunks >= 5, 10, "tokens flowing")
    call = fake.calls[-1]
    sent = time.monotonic()
    r = await client.post(f"/v1/sessions/{sid}/interrupt")
    assert r.status_code == 200
    assert r.json()["turn"]["status"] == "cancelled"
    await wait_for(lambda: call.closed_at is not None, 5, "provider connection closed")
    assert call.closed_at is not None
    assert not call.finished
    assert call.closed_at - sent < 1.0
    chunks_at_close = call.chunks
    await asyncio.sleep(0.1)  # a closed connection produces nothing more
    assert call.chunks == chunks_at_close
    partial = (await api.messages(sid))[-1]
    assert partial["status"] == "interrupted"
    assert partial["content"].startswith("t0 t1 ")
    nxt = await api.wait_turn(sid, (await api.turn(sid, "after"))["id"])
    assert nxt["status"] == "completed", nxt
    assert turn["id"] != nxt["id"]


async def test_stop_mid_tool_then_provider_accepts_transcript(
    api: Api, client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    sid = await api.session(await _agent(client, fake))
    await api.turn(sid, 'call:sleep:{"seconds": 30}')

    async def tool_running() -> bool:
        r = await client.get(f"/v1/sessions/{sid}/events", params={"stream": "false"})
        return any(e["type"] == "tool.started" for e in r.json()["data"])

    await wait_for(tool_running, 10, "tool running")
    r = await client.post(f"/v1/sessions/{sid}/interrupt")
    assert r.json()["turn"]["status"] == "cancelled"
    # the fake refuses a dangling tool call with 400, as real providers do
    nxt = await api.wait_turn(sid, (await api.turn(sid, "after"))["id"])
    assert nxt["status"] == "completed", nxt


async def test_bad_params_that_reach_a_turn_fail_it_as_a_provider_error(
    server: Server, api: Api, fake: FakeOpenAI
) -> None:
    """Creation refuses unknown params; one stored before that rule (written here straight to
    the store) fails its turn with a provider error code, not a crash, and sends nothing."""
    spec = specs.AgentSpec.model_validate(
        {
            "name": "old",
            "model": {
                "provider": "openai",
                "model": "fake-1",
                "base_url": fake.url,
                "params": {"temprature": 0.2},
            },
        }
    )
    agent = await server.node.store.agents.create("default", spec)
    sid = await api.session(agent.id)
    done = await api.wait_turn(sid, (await api.turn(sid, "hi"))["id"])
    assert done["status"] == "failed", done
    assert done["reason"] == "model_error"
    assert done["error"]["code"] == "provider_rejected"
    assert "temprature" in done["error"]["message"]
    assert fake.calls == []


async def test_params_the_sdk_refuses_at_call_time_are_a_provider_error(fake: FakeOpenAI) -> None:
    access = credentials.Access(fake.url, None, destinations.Guard(trusted=(fake.url,)))
    spec = specs.ModelSpec(provider="openai", model="fake-1", base_url=fake.url)
    model = OpenAIChatModel(spec, access, 2.0)
    request = ModelRequest("", [], params={"not_a_param": 1})
    try:
        with pytest.raises(errors.ProviderRejected, match="not_a_param"):
            async for _ in model.stream(request):
                pass
    finally:
        await model.aclose()
    assert fake.calls == []
