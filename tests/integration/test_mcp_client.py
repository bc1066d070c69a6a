"""The MCP client layer against real MCP servers: a small one written with the official Python
SDK (tests/mcp_servers/tiny.py) on stdio and streamable HTTP, and the npm
`@modelcontextprotocol/server-everything`. No mocks: real processes, real transports."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests import mcp_helpers
from tests.helpers import wait_for
from tether import errors
from tether.runtime import mcp_client, toolbox

# Nothing here touches the store or the bus: one pass (the embedded one) is enough.
pytestmark = pytest.mark.embedded


@pytest.fixture
async def hub() -> AsyncIterator[mcp_client.McpHub]:
    hub = mcp_client.McpHub(connect_timeout_s=30)
    yield hub
    await hub.aclose()


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    return tmp_path / "journal.jsonl"


@pytest.fixture
async def tiny_http(journal: Path) -> AsyncIterator[mcp_helpers.HttpProcess]:
    server = await mcp_helpers.tiny_http(journal).start()
    yield server
    server.stop()


@pytest.fixture(params=["stdio", "http"])
def tiny(
    request: pytest.FixtureRequest, journal: Path
) -> mcp_client.StdioServer | mcp_client.HttpServer:
    """The tiny server on each transport."""
    if request.param == "stdio":
        return mcp_helpers.tiny_stdio(journal)
    process: mcp_helpers.HttpProcess = request.getfixturevalue("tiny_http")
    return mcp_client.HttpServer("tiny", process.url)


def _pid(result: mcp_client.CallResult) -> int:
    assert not result.is_error, result.text
    return int(json.loads(result.text)["pid"])


async def test_discovery(hub: mcp_client.McpHub, tiny: mcp_client.Server) -> None:
    tools = {t.name: t for t in await hub.tools(tiny)}
    assert {"echo", "add", "slow", "progress", "ask", "crash", "whoami"} <= set(tools)
    add = tools["add"]
    assert add.qualified_name == "tiny.add"
    assert add.description == "Add two integers."
    assert add.input_schema["properties"].keys() == {"a", "b"}
    assert await hub.tools(tiny) == list(tools.values())  # remembered


async def test_calls_reuse_the_connection(hub: mcp_client.McpHub, tiny: mcp_client.Server) -> None:
    added = await hub.call(tiny, "add", {"a": 2, "b": 3})
    assert added == mcp_client.CallResult("5")
    first = json.loads((await hub.call(tiny, "whoami", {})).text)
    second = json.loads((await hub.call(tiny, "whoami", {})).text)
    assert first["pid"] == second["pid"]
    assert second["calls"] == first["calls"] + 1


async def test_tool_errors_are_results(hub: mcp_client.McpHub, tiny: mcp_client.Server) -> None:
    bad = await hub.call(tiny, "add", {"a": "x"})
    assert bad.is_error
    missing = await hub.call(tiny, "nope", {})
    assert missing.is_error
    assert "nope" in missing.text
    assert (await hub.call(tiny, "echo", {"text": "still fine"})).text == "still fine"


async def test_progress(hub: mcp_client.McpHub, tiny: mcp_client.Server) -> None:
    seen: list[mcp_client.ProgressUpdate] = []
    result = await hub.call(tiny, "progress", {"steps": 3}, on_progress=seen.append)
    assert result.text == "did 3 steps"
    assert seen == [mcp_client.ProgressUpdate(float(i), 3.0, f"step {i}") for i in range(1, 4)]


async def test_elicitation_answered(hub: mcp_client.McpHub, tiny: mcp_client.Server) -> None:
    asked: list[mcp_client.Elicitation] = []

    async def answer(request: mcp_client.Elicitation) -> dict[str, Any]:
        asked.append(request)
        return toolbox.answer_from({"answer": "blue"})

    result = await hub.call(tiny, "ask", {"question": "Favourite colour?"}, on_elicit=answer)
    assert result.text == "you said: blue"
    assert asked[0].message == "Favourite colour?"
    assert asked[0].requested_schema is not None
    assert "answer" in asked[0].requested_schema["properties"]
    declined = await hub.call(
        tiny, "ask", {"question": "?"}, on_elicit=lambda r: _const({"action": "decline"})
    )
    assert declined.text == "no answer (decline)"


async def _const(value: dict[str, Any]) -> dict[str, Any]:
    return value


async def test_elicitation_that_pauses_ends_the_call(
    hub: mcp_client.McpHub, tiny: mcp_client.Server
) -> None:
    async def pause(request: mcp_client.Elicitation) -> dict[str, Any]:
        raise errors.PauseRequested("question", request.as_dict())

    with pytest.raises(errors.PauseRequested) as raised:
        await hub.call(tiny, "ask", {"question": "Deploy?"}, on_elicit=pause)
    assert raised.value.request["message"] == "Deploy?"
    # the connection goes on serving
    assert (await hub.call(tiny, "echo", {"text": "after"})).text == "after"


async def test_no_elicitation_handler_declines(
    hub: mcp_client.McpHub, tiny: mcp_client.Server
) -> None:
    result = await hub.call(tiny, "ask", {"question": "?"})
    assert result.is_error or result.text.startswith("no answer")


async def test_cancel_reaches_the_server(
    hub: mcp_client.McpHub, tiny: mcp_client.Server, journal: Path
) -> None:
    await hub.tools(tiny)  # connected
    call = asyncio.create_task(hub.call(tiny, "slow", {"seconds": 60}))

    def started() -> bool:
        return any(e["event"] == "started" for e in mcp_helpers.journal_lines(journal))

    await wait_for(started, 20, "the slow tool running")
    cancelled_at = time.monotonic()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert time.monotonic() - cancelled_at < mcp_client.CANCEL_GRACE_S + 0.5

    def server_saw_it() -> bool:
        return any(e["event"] == "cancelled" for e in mcp_helpers.journal_lines(journal))

    await wait_for(server_saw_it, 10, "the server to see the cancellation")
    # and the connection serves the next call
    assert (await hub.call(tiny, "echo", {"text": "next"})).text == "next"


async def test_parallel_calls(hub: mcp_client.McpHub, journal: Path) -> None:
    tiny = mcp_helpers.tiny_stdio(journal)
    results = await asyncio.gather(*(hub.call(tiny, "slow", {"seconds": 0.3}) for _ in range(3)))
    assert [r.text for r in results] == ["slept 0.3"] * 3
    # one call per connection: each in a server process of its own, reused afterwards
    pids = {e["pid"] for e in mcp_helpers.journal_lines(journal)}
    assert len(pids) == 3
    again = await asyncio.gather(*(hub.call(tiny, "whoami", {}) for _ in range(3)))
    assert {_pid(r) for r in again} <= pids


async def test_stdio_crash_gives_an_error_and_restarts(
    hub: mcp_client.McpHub, journal: Path
) -> None:
    tiny = mcp_helpers.tiny_stdio(journal)
    before = _pid(await hub.call(tiny, "whoami", {}))
    crashed = await hub.call(tiny, "crash", {})
    assert crashed.is_error
    assert "died" in crashed.text
    after = _pid(await hub.call(tiny, "whoami", {}))
    assert after != before
    assert {t.name for t in await hub.tools(tiny)} >= {"whoami"}


async def test_http_server_killed_then_back(
    hub: mcp_client.McpHub, journal: Path, tiny_http: mcp_helpers.HttpProcess
) -> None:
    server = mcp_client.HttpServer("tiny", tiny_http.url)
    assert (await hub.call(server, "echo", {"text": "up"})).text == "up"
    tiny_http.kill()
    down = await hub.call(server, "echo", {"text": "down?"})
    assert down.is_error
    await tiny_http.start()
    assert (await hub.call(server, "echo", {"text": "back"})).text == "back"


async def test_crash_during_a_call_in_flight(hub: mcp_client.McpHub, journal: Path) -> None:
    tiny = mcp_helpers.tiny_stdio(journal)
    pid = _pid(await hub.call(tiny, "whoami", {}))
    call = asyncio.create_task(hub.call(tiny, "slow", {"seconds": 60}))
    await wait_for(
        lambda: any(e["event"] == "started" for e in mcp_helpers.journal_lines(journal)),
        20,
        "the slow tool running",
    )
    os.kill(pid, 9)
    result = await asyncio.wait_for(call, 10)
    assert result.is_error
    assert "died" in result.text
    assert _pid(await hub.call(tiny, "whoami", {})) != pid


async def test_server_that_cannot_start(hub: mcp_client.McpHub, tmp_path: Path) -> None:
    missing = mcp_client.StdioServer("ghost", str(tmp_path / "no-such-command"))
    result = await hub.call(missing, "anything", {})
    assert result.is_error
    assert "did not start" in result.text
    with pytest.raises(mcp_client.McpUnavailable):
        await hub.tools(missing)
    exits = mcp_client.StdioServer("quitter", "/bin/sh", ("-c", "exit 1"))
    assert (await hub.call(exits, "x", {})).is_error
    nobody = mcp_client.HttpServer("nobody", f"http://127.0.0.1:{mcp_helpers.free_port()}/mcp")
    assert "did not start" in (await hub.call(nobody, "x", {})).text


async def test_environment_given_and_not_leaked(
    hub: mcp_client.McpHub, journal: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TETHER_TEST_WORKER_SECRET", "do-not-leak")
    tiny = mcp_helpers.tiny_stdio(journal, GIVEN_TOKEN="given")
    assert (await hub.call(tiny, "secret_env", {"name": "GIVEN_TOKEN"})).text == "given"
    leaked = await hub.call(tiny, "secret_env", {"name": "TETHER_TEST_WORKER_SECRET"})
    assert leaked.text == ""


async def test_scopes_do_not_share_connections(hub: mcp_client.McpHub, journal: Path) -> None:
    tiny = mcp_helpers.tiny_stdio(journal)
    a = _pid(await hub.call(tiny, "whoami", {}, scope="tenant-a"))
    b = _pid(await hub.call(tiny, "whoami", {}, scope="tenant-b"))
    assert a != b


async def test_idle_servers_are_stopped(journal: Path) -> None:
    hub = mcp_client.McpHub(idle_timeout_s=0.5)
    try:
        tiny = mcp_helpers.tiny_stdio(journal)
        pid = _pid(await hub.call(tiny, "whoami", {}))
        await wait_for(lambda: not _running(pid), 10, "the idle server to be stopped")
        assert _pid(await hub.call(tiny, "whoami", {})) != pid  # started again on demand
    finally:
        await hub.aclose()


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_close_ends_the_servers(journal: Path) -> None:
    hub = mcp_client.McpHub()
    tiny = mcp_helpers.tiny_stdio(journal)
    pid = _pid(await hub.call(tiny, "whoami", {}))
    await hub.aclose()
    await wait_for(lambda: not _running(pid), 10, "the server process to end")
    closed = await hub.call(tiny, "whoami", {})
    assert closed.is_error


# --- the npm reference server ---------------------------------------------------------------


@pytest.fixture(params=["stdio", "http"])
async def everything(
    request: pytest.FixtureRequest,
) -> AsyncIterator[mcp_client.StdioServer | mcp_client.HttpServer]:
    if request.param == "stdio":
        yield mcp_helpers.everything_stdio()
        return
    process = await mcp_helpers.everything_http().start()
    try:
        yield mcp_client.HttpServer("everything", process.url)
    finally:
        process.stop()


async def test_everything_server(hub: mcp_client.McpHub, everything: mcp_client.Server) -> None:
    names = {t.name for t in await hub.tools(everything)}
    assert {"echo", "get-sum", "trigger-long-running-operation"} <= names
    assert (await hub.call(everything, "echo", {"message": "hi"})).text == "Echo: hi"
    assert "5" in (await hub.call(everything, "get-sum", {"a": 2, "b": 3})).text
    seen: list[mcp_client.ProgressUpdate] = []
    done = await hub.call(
        everything,
        "trigger-long-running-operation",
        {"duration": 0.3, "steps": 3},
        on_progress=seen.append,
    )
    assert "completed" in done.text
    assert [u.progress for u in seen] == [1.0, 2.0, 3.0]


async def test_everything_elicitation(hub: mcp_client.McpHub) -> None:
    server = mcp_helpers.everything_stdio()
    assert "trigger-elicitation-request" in {t.name for t in await hub.tools(server)}
    asked: list[mcp_client.Elicitation] = []

    async def answer(request: mcp_client.Elicitation) -> dict[str, Any]:
        asked.append(request)
        return {"action": "accept", "content": {"name": "Ada", "check": True, "email": "a@b.c"}}

    result = await hub.call(server, "trigger-elicitation-request", {}, on_elicit=answer)
    assert not result.is_error, result.text
    assert "Ada" in result.text
    assert asked[0].requested_schema is not None

    async def pause(request: mcp_client.Elicitation) -> dict[str, Any]:
        raise errors.PauseRequested("question", request.as_dict())

    with pytest.raises(errors.PauseRequested):
        await hub.call(server, "trigger-elicitation-request", {}, on_elicit=pause)
    assert (await hub.call(server, "echo", {"message": "on"})).text == "Echo: on"
