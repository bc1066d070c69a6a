"""MCP tools in agents, turn by turn, against real MCP servers: tests/mcp_servers/tiny.py (the
official Python SDK) declared by the operator on stdio, the same server over streamable HTTP
as a tenant's own server, and the npm `@modelcontextprotocol/server-everything` on stdio.

The HTTP server is one process for the module (its journal is shared: tests read the lines
after the point they started from); stdio servers are started by each test's worker, so only
the tests that need stdio start one."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet

from tests import mcp_helpers
from tests.helpers import Api, Server, running_server, store_snapshot, wait_for
from tether import specs
from tether.client import models as client_models

SECRET = "s3cret-header-value"
SECRET_KEY = Fernet.generate_key().decode()


@pytest.fixture(scope="module")
def http_journal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mcp") / "http-journal.jsonl"


@pytest.fixture(scope="module")
def tiny_http(http_journal: Path) -> Iterator[mcp_helpers.HttpProcess]:
    process = mcp_helpers.tiny_http(http_journal)
    asyncio.run(process.start())
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    return tmp_path / "stdio-journal.jsonl"


def _declare(path: Path, journal: Path, tiny_http: mcp_helpers.HttpProcess) -> Path:
    tiny = mcp_helpers.tiny_stdio(journal)
    everything = mcp_helpers.everything_stdio()
    servers = {
        "servers": {
            "tiny": {
                "command": tiny.command,
                "args": list(tiny.args),
                "env": dict(tiny.env),
                "cwd": tiny.cwd,
            },
            "everything": {"command": everything.command, "args": list(everything.args)},
            "shared": {"url": tiny_http.url},  # an HTTP server the operator vouches for
        }
    }
    path.write_text(json.dumps(servers))  # JSON is YAML
    return path


@pytest.fixture
async def server(
    tmp_path: Path, journal: Path, tiny_http: mcp_helpers.HttpProcess
) -> AsyncIterator[Server]:
    declared = _declare(tmp_path / "mcp.yaml", journal, tiny_http)
    async with running_server(
        tmp_path,
        mcp_servers=declared,
        mcp_allow_private=True,
        mcp_header_envs=["TINY_TOKEN"],
        secret_key=SECRET_KEY,  # cluster mode seals with the operator's key only
    ) as srv:
        yield srv
    _kill_leftovers(journal)


def _kill_leftovers(journal: Path) -> None:
    """A stdio server outliving its test would be a leak: the worker's stop ends them."""
    for pid in {e["pid"] for e in mcp_helpers.journal_lines(journal)}:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        os.kill(pid, signal.SIGKILL)
        raise AssertionError(f"MCP server process {pid} outlived its Tether server")


def _agent(name: str, calls: list[list[dict[str, Any]]], **spec: Any) -> dict[str, Any]:
    steps = [{"text": "", "tool_calls": step} for step in calls]
    return {
        "name": name,
        "model": {"provider": "scripted", "steps": steps, "reply": "done"},
        **spec,
    }


def _call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"name": name, "arguments": arguments}


async def _create(client: httpx.AsyncClient, agent: dict[str, Any]) -> str:
    r = await client.post("/v1/agents", json=agent)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def _run(api: Api, client: httpx.AsyncClient, agent: dict[str, Any]) -> tuple[str, str]:
    sid = await api.session(await _create(client, agent))
    return sid, (await api.turn(sid, "go"))["id"]


def _tool_results(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(m["name"], m["content"]) for m in messages if m["role"] == "tool"]


def _outcomes(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [
        (e["data"]["name"], e["data"]["outcome"]) for e in events if e["type"] == "tool.completed"
    ]


async def _pending(client: httpx.AsyncClient, sid: str) -> list[dict[str, Any]]:
    r = await client.get(f"/v1/sessions/{sid}/interrupts", params={"status": "pending"})
    return r.json()["data"]  # type: ignore[no-any-return]


def _journal_after(journal: Path, start: int, event: str, tool: str | None = None) -> int:
    return sum(
        e["event"] == event and (tool is None or e["tool"] == tool)
        for e in mcp_helpers.journal_lines(journal)[start:]
    )


# --- definitions ------------------------------------------------------------------------------


async def test_definitions_are_checked(server: Server, client: httpx.AsyncClient) -> None:
    base = {"name": "bad", "model": {"provider": "scripted"}}

    async def refused(status: int, code: str, text: str, **spec: Any) -> None:
        r = await client.post("/v1/agents", json={**base, **spec})
        assert r.status_code == status, r.text
        assert r.json()["error"]["code"] == code, r.text
        assert text in r.json()["error"]["message"], r.text

    before = await store_snapshot(server)
    await refused(
        422,
        "invalid_agent",
        "'ghost' is not one the operator declared",
        mcp_servers=[{"name": "ghost"}],
    )
    await refused(
        422, "invalid_agent", "more than once", mcp_servers=[{"name": "tiny"}, {"name": "tiny"}]
    )
    await refused(
        422,
        "invalid_agent",
        "unknown tools: nope.echo",
        mcp_servers=[{"name": "tiny"}],
        tools=[{"name": "nope.echo"}],
    )
    await refused(
        422,
        "invalid_agent",
        "unknown tools: tiny",
        mcp_servers=[{"name": "tiny"}],
        tools=[{"name": "tiny"}],
    )
    await refused(
        422,
        "invalid_agent",
        "${HOME} is not a variable agents may reference",
        mcp_servers=[
            {
                "name": "own",
                "url": "https://mcp.example.com/mcp",
                "headers": {"Authorization": "Bearer ${HOME}"},
            }
        ],
    )
    r = await client.post(
        "/v1/agents", json={**base, "mcp_servers": [{"name": "own", "transport": "http"}]}
    )
    assert r.status_code == 422 and "needs a url" in r.text
    r = await client.post(
        "/v1/agents", json={**base, "mcp_servers": [{"name": "tiny", "headers": {"X": "y"}}]}
    )
    assert r.status_code == 422 and "headers are for a server of your own" in r.text
    assert await store_snapshot(server) == before, "nothing refused was stored"

    # patterns may match nothing; an exact name of a listed server is taken on trust
    ok = await client.post(
        "/v1/agents",
        json={
            **base,
            "name": "fine",
            "mcp_servers": [{"name": "tiny"}],
            "tools": [
                {"name": "tiny.echo"},
                {"name": "gh.*", "policy": "approve"},
                {"name": "get_time"},
            ],
        },
    )
    assert ok.status_code == 201, ok.text


async def test_private_destinations_need_the_operator(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv, httpx.AsyncClient(base_url=srv.url) as c:
        r = await c.post(
            "/v1/agents",
            json={
                "name": "own",
                "model": {"provider": "scripted"},
                "mcp_servers": [{"name": "own", "url": "http://127.0.0.1:9/mcp"}],
            },
        )
        assert r.status_code == 422
        assert r.json()["error"]["code"] == "destination_not_allowed"
        assert "own" in r.json()["error"]["message"]


async def test_headers_are_sealed_and_never_shown(
    server: Server, client: httpx.AsyncClient, api: Api, tiny_http: mcp_helpers.HttpProcess
) -> None:
    own = {"name": "own", "url": tiny_http.url, "headers": {"X-Token": SECRET}}
    agent = _agent("sealed", [[_call("own__echo", text="hi")]], mcp_servers=[own])
    aid = await _create(client, agent)
    sid = await api.session(aid)
    tid = (await api.turn(sid, "go"))["id"]
    assert (await api.wait_turn(sid, tid))["status"] == "completed"
    assert ("own__echo", "hi") in _tool_results(await api.messages(sid))
    r = await client.get(f"/v1/agents/{aid}")
    assert r.json()["mcp_servers"] == [{"name": "own", "transport": "http", "url": tiny_http.url}]
    assert client_models.Agent.model_validate(r.json()).mcp_servers[0].url == tiny_http.url
    everything = json.dumps([r.json(), await api.events(sid), await store_snapshot(server)])
    assert SECRET not in everything, "a header value was shown or stored in the clear"

    # an update keeps them; another url must be given them again
    r = await client.patch(f"/v1/agents/{aid}", json={"instructions": "be brief"})
    assert r.status_code == 200, r.text
    moved = {"name": "own", "url": tiny_http.url.replace("127.0.0.1", "localhost")}
    r = await client.patch(f"/v1/agents/{aid}", json={"mcp_servers": [moved]})
    assert r.status_code == 422 and "give its headers again" in r.text
    stored = await server.node.store.agents.by_id(aid)
    assert stored.spec.mcp_servers[0].headers_sealed is not None
    r = await client.patch(
        f"/v1/agents/{aid}", json={"mcp_servers": [{**moved, "headers": {"X-Token": "other"}}]}
    )
    assert r.status_code == 200, r.text
    again = (await server.node.store.agents.by_id(aid)).spec.mcp_servers[0].headers_sealed
    assert again not in (None, stored.spec.mcp_servers[0].headers_sealed)


# --- turns ------------------------------------------------------------------------------------


async def test_discovered_tools_are_called(
    server: Server, client: httpx.AsyncClient, api: Api, tiny_http: mcp_helpers.HttpProcess
) -> None:
    """Over HTTP: the operator's shared server by name and a tenant's own by url."""
    agent = _agent(
        "caller",
        [
            [_call("shared__add", a=2, b=3), _call("own__echo", text="hello")],
            [_call("own__nope"), _call("shared__crash_not_offered")],
        ],
        mcp_servers=[{"name": "shared"}, {"name": "own", "url": tiny_http.url}],
        tools=[{"name": "shared.crash", "policy": "deny"}],
    )
    sid, tid = await _run(api, client, agent)
    turn = await api.wait_turn(sid, tid)
    assert turn["status"] == "completed", turn
    results = dict(_tool_results(await api.messages(sid)))
    assert results["shared__add"] == "5"
    assert results["own__echo"] == "hello"
    assert results["own__nope"].startswith("Error: no tool named 'own__nope'")
    outcomes = dict(_outcomes(await api.events(sid)))
    assert outcomes == {
        "shared__add": "completed",
        "own__echo": "completed",
        "own__nope": "error",
        "shared__crash_not_offered": "error",
    }


async def test_offered_names_and_policies(
    server: Server, tiny_http: mcp_helpers.HttpProcess
) -> None:
    """What the model is offered: provider-safe names, denied tools left out, patterns and
    exact entries applied."""

    spec = specs.AgentSpec.model_validate(
        _agent(
            "offered",
            [],
            mcp_servers=[{"name": "shared"}],
            tools=[
                {"name": "shared.*", "policy": "approve"},
                {"name": "shared.echo"},
                {"name": "shared.cr*", "policy": "deny"},
                {"name": "get_time"},
            ],
        )
    )
    record = await server.node.store.agents.create("default", spec)
    _, agent = await server.node.worker.agent(record.id)  # type: ignore[union-attr]
    await agent.tools.refresh()
    names = [t["name"] for t in agent.tools.offered()]
    assert "get_time" in names and "shared__echo" in names and "shared__add" in names
    assert "shared__crash" not in names
    assert all(n.replace("_", "").replace("-", "").isalnum() and len(n) <= 64 for n in names)
    policy = {n: agent.tools.entry(n).policy.value for n in names}  # type: ignore[union-attr]
    assert policy["shared__echo"] == "auto" and policy["shared__add"] == "approve"
    add = next(t for t in agent.tools.offered() if t["name"] == "shared__add")
    assert add["parameters"]["properties"].keys() == {"a", "b"}


async def test_approval_gated_mcp_tool(
    client: httpx.AsyncClient, api: Api, http_journal: Path
) -> None:
    agent = _agent(
        "gated",
        [[_call("shared__slow", seconds=0), _call("shared__echo", text="free")]],
        mcp_servers=[{"name": "shared"}],
        tools=[{"name": "shared.*", "policy": "approve"}, {"name": "shared.echo"}],
    )
    r = await client.post("/v1/agents", json=agent)
    assert r.status_code == 201, r.text
    outcomes = {}
    for decision in ("deny", "approve"):
        start = len(mcp_helpers.journal_lines(http_journal))
        sid = await api.session(r.json()["id"])
        tid = (await api.turn(sid, "go"))["id"]
        [asked] = await wait_for(lambda sid=sid: _pending(client, sid), 20, "the approval")
        assert (asked["type"], asked["tool_name"]) == ("approval", "shared__slow")
        assert asked["request"]["arguments"] == {"seconds": 0}
        respond = await client.post(
            f"/v1/interrupts/{asked['id']}/respond", json={"response": {"decision": decision}}
        )
        assert respond.status_code == 200, respond.text
        assert (await api.wait_turn(sid, tid))["status"] == "completed"
        outcomes[decision] = dict(_outcomes(await api.events(sid)))
        ran = _journal_after(http_journal, start, "started", "slow")
        assert ran == (1 if decision == "approve" else 0), "the server ran it iff approved"
    assert outcomes["deny"] == {"shared__slow": "denied", "shared__echo": "completed"}
    assert outcomes["approve"] == {"shared__slow": "completed", "shared__echo": "completed"}


async def test_stop_cancels_the_mcp_call(
    client: httpx.AsyncClient, api: Api, http_journal: Path
) -> None:
    start = len(mcp_helpers.journal_lines(http_journal))
    agent = _agent(
        "stoppable", [[_call("shared__slow", seconds=60)]], mcp_servers=[{"name": "shared"}]
    )
    sid, _ = await _run(api, client, agent)
    await wait_for(
        lambda: _journal_after(http_journal, start, "started", "slow"),
        20,
        "the slow MCP tool to run",
    )
    asked = time.monotonic()
    r = await client.post(f"/v1/sessions/{sid}/interrupt", json={"wait": 5})
    assert r.status_code == 200, r.text
    assert r.json()["turn"]["status"] == "cancelled"
    assert time.monotonic() - asked < 5
    await wait_for(
        lambda: _journal_after(http_journal, start, "cancelled", "slow"),
        10,
        "the server to see notifications/cancelled",
    )
    assert _outcomes(await api.events(sid)) == [("shared__slow", "interrupted")]


async def test_elicitation_is_a_question(
    client: httpx.AsyncClient, api: Api, http_journal: Path
) -> None:
    start = len(mcp_helpers.journal_lines(http_journal))
    agent = _agent(
        "asker",
        [[_call("shared__ask", question="Favourite colour?")]],
        mcp_servers=[{"name": "shared"}],
    )
    sid, tid = await _run(api, client, agent)
    [asked] = await wait_for(lambda: _pending(client, sid), 20, "the question")
    assert asked["type"] == "question"
    assert asked["tool_name"] == "shared__ask"
    assert asked["request"]["question"] == "Favourite colour?"
    assert asked["request"]["server"] == "shared" and asked["request"]["tool"] == "ask"
    assert "answer" in asked["request"]["requested_schema"]["properties"]
    assert (await api.get_turn(sid, tid))["status"] == "waiting"
    r = await client.post(
        f"/v1/interrupts/{asked['id']}/respond", json={"response": {"answer": "blue"}}
    )
    assert r.status_code == 200, r.text
    assert (await api.wait_turn(sid, tid))["status"] == "completed"
    assert _tool_results(await api.messages(sid)) == [("shared__ask", "you said: blue")]
    # the call was made again on resume, and the server's new request got the recorded
    # answer: no second question
    assert _journal_after(http_journal, start, "asked", "ask") >= 2
    events = await api.events(sid)
    assert sum(e["type"] == "interrupt.created" for e in events) == 1


async def test_progress_becomes_events(client: httpx.AsyncClient, api: Api) -> None:
    agent = _agent(
        "progressing",
        # reports are written by a task of their own: a tool ending at once may beat them
        [[_call("shared__progress", steps=3, pause_s=0.3)]],
        mcp_servers=[{"name": "shared"}],
    )
    sid, tid = await _run(api, client, agent)
    assert (await api.wait_turn(sid, tid))["status"] == "completed"
    events = await api.events(sid)
    progress = [e for e in events if e["type"] == "tool.progress"]
    assert progress, "at least the first report is written (later ones coalesce)"
    first = progress[0]["data"]
    call_id = next(e["data"]["tool_call_id"] for e in events if e["type"] == "tool.started")
    assert first == {
        "tool_call_id": call_id,
        "name": "shared__progress",
        "progress": 1.0,
        "total": 3.0,
        "message": "step 1",
    }
    typed = client_models.Event.model_validate(progress[0]).progress  # the SDK's model
    assert typed is not None and (typed.progress, typed.total) == (1.0, 3.0)
    types = [e["type"] for e in events]
    assert types.index("tool.started") < types.index("tool.progress")
    assert max(i for i, t in enumerate(types) if t == "tool.progress") < types.index(
        "tool.completed"
    ), "no report after the call's result"


async def test_stdio_crash_is_an_error_result_and_the_server_restarts(
    client: httpx.AsyncClient, api: Api, journal: Path
) -> None:
    agent = _agent(
        "crashing",
        [[_call("tiny__whoami")], [_call("tiny__crash")], [_call("tiny__whoami")]],
        mcp_servers=[{"name": "tiny"}],
    )
    sid, tid = await _run(api, client, agent)
    assert (await api.wait_turn(sid, tid, timeout=40))["status"] == "completed"
    [(_, before), (_, crashed), (_, after)] = _tool_results(await api.messages(sid))
    assert "died" in crashed
    assert json.loads(before)["pid"] != json.loads(after)["pid"], "restarted for the next call"
    assert [o for _, o in _outcomes(await api.events(sid))] == ["completed", "error", "completed"]


async def test_everything_server(client: httpx.AsyncClient, api: Api) -> None:
    """The npm reference server: a call, progress, and an elicitation answered on resume."""
    agent = _agent(
        "everything",
        [
            [
                _call("everything__echo", message="hi"),
                _call("everything__trigger-long-running-operation", duration=0.3, steps=3),
            ],
            [_call("everything__trigger-elicitation-request")],
        ],
        mcp_servers=[{"name": "everything"}],
    )
    sid, tid = await _run(api, client, agent)
    [asked] = await wait_for(lambda: _pending(client, sid), 40, "the elicitation")
    assert asked["type"] == "question" and asked["request"]["requested_schema"]
    answer = {"action": "accept", "content": {"name": "Ada", "check": True, "email": "a@b.c"}}
    r = await client.post(f"/v1/interrupts/{asked['id']}/respond", json={"response": answer})
    assert r.status_code == 200, r.text
    assert (await api.wait_turn(sid, tid, timeout=40))["status"] == "completed"
    results = dict(_tool_results(await api.messages(sid)))
    assert results["everything__echo"] == "Echo: hi"
    assert "completed" in results["everything__trigger-long-running-operation"]
    assert "Ada" in results["everything__trigger-elicitation-request"]
    assert any(e["type"] == "tool.progress" for e in await api.events(sid))


async def test_an_unreachable_server_fails_its_calls_not_the_turn(
    tmp_path: Path, journal: Path, tiny_http: mcp_helpers.HttpProcess
) -> None:
    declared = tmp_path / "mcp.yaml"
    declared.write_text(
        json.dumps(
            {
                "servers": {
                    "gone": {"command": str(tmp_path / "no-such-command")},
                    "tiny": {"command": sys.executable, "args": ["-c", "pass"]},
                }
            }
        )
    )
    async with (
        running_server(tmp_path, mcp_servers=declared) as srv,
        httpx.AsyncClient(base_url=srv.url, timeout=30) as c,
    ):
        api = Api(c)
        agent = _agent("unlucky", [[_call("gone__anything")]], mcp_servers=[{"name": "gone"}])
        sid, tid = await _run(api, c, agent)
        assert (await api.wait_turn(sid, tid))["status"] == "completed"
        [(_, text)] = _tool_results(await api.messages(sid))
        assert "did not start" in text
