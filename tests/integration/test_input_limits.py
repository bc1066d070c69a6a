"""DESIGN §8 "Input": text that cannot be stored and read back as valid UTF-8 JSON is refused
at the edge, on every surface, in the surface's own error shape, and nothing is stored; and
what an older version may have stored cannot make reads fail.

The requests are those of issue 11's probe (items 3 and 4), which were answered 500 or 201
and stored. Bodies are sent as JSON text with `\\ud800` escapes, as a client would send them."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import websockets

from tests.conftest import CLUSTER
from tests.helpers import Api, Server, store_snapshot
from tether import storable

GUMLOOP = "/compat/gumloop/api/v1"
FACTORY = "/compat/factory/api/v0"
TFY = "/compat/truefoundry/default/v1/agents/sessions"  # open mode: the path names the tenant
A_TURN_ID = "turn_01arz3ndektsv4rrffq69g5fav"
AN_INTERRUPT = "int_01arz3ndektsv4rrffq69g5fav"


def nested(levels: int) -> Any:
    value: Any = "x"
    for _ in range(levels):
        value = {"a": value}
    return value


def raw(body: Any) -> dict[str, Any]:
    """Request kwargs for `body` as JSON text (`\\ud800` escaped, NaN as NaN)."""
    return {"content": json.dumps(body), "headers": {"content-type": "application/json"}}


@pytest.fixture
async def seeded(api: Api) -> tuple[str, str]:
    agent = await api.agent(reply="hi", name="talker")
    sid = await api.session(agent)
    await api.wait_turn(sid, (await api.turn(sid))["id"])
    return agent, sid


def v1_cases(agent: str, sid: str) -> list[tuple[str, str, dict[str, Any], str]]:
    """(method, path, request kwargs, code): every /v1 route that takes text."""
    lone = "p\ud800"
    return [
        # item 3: a first turn's input
        ("POST", "/v1/sessions", raw({"agent_id": "demo", "input": lone}), "invalid_text"),
        ("POST", "/v1/sessions", raw({"agent_id": "demo", "input": "a\x00b"}), "invalid_text"),
        (
            "POST",
            "/v1/sessions",
            raw({"agent_id": "demo", "input": [{"role": "user", "content": "\udc00"}]}),
            "invalid_text",
        ),
        ("POST", f"/v1/sessions/{sid}/turns", raw({"input": lone}), "invalid_text"),
        ("POST", f"/v1/sessions/{sid}/turns", raw({"input": "x", "on_busy": lone}), "invalid_text"),
        # item 4: metadata nested deep, with a lone surrogate in a value or a key
        (
            "POST",
            "/v1/sessions",
            raw({"agent_id": "demo", "metadata": nested(256)}),
            "nesting_too_deep",
        ),
        (
            "POST",
            "/v1/sessions",
            raw({"agent_id": "demo", "metadata": nested(64)}),
            "nesting_too_deep",
        ),
        (
            "POST",
            "/v1/sessions",
            raw({"agent_id": "demo", "metadata": {"k": lone}}),
            "invalid_text",
        ),
        ("POST", "/v1/sessions", raw({"agent_id": "demo", "metadata": {lone: 1}}), "invalid_text"),
        ("POST", "/v1/sessions", raw({"agent_id": lone}), "invalid_text"),
        (
            "POST",
            "/v1/sessions",
            raw({"agent_id": "demo", "metadata": {"n": float("nan")}}),
            "invalid_number",
        ),
        (
            "POST",
            "/v1/sessions",
            raw({"agent_id": "demo", "metadata": {"big": "x" * 17_000}}),
            "metadata_too_large",
        ),
        # agents: any field
        ("POST", "/v1/agents", raw({"name": "x", "instructions": lone}), "invalid_text"),
        ("POST", "/v1/agents", raw({"name": lone}), "invalid_text"),
        (
            "POST",
            "/v1/agents",
            raw({"name": "x", "model": {"params": {"t": float("inf")}}}),
            "invalid_number",
        ),
        ("POST", "/v1/agents", raw({"name": "x", "metadata": nested(100)}), "nesting_too_deep"),
        (
            "POST",
            "/v1/agents",
            raw({"name": "x", "metadata": {"big": "x" * 17_000}}),
            "metadata_too_large",
        ),
        ("PATCH", f"/v1/agents/{agent}", raw({"instructions": lone}), "invalid_text"),
        ("PATCH", f"/v1/agents/{agent}", raw({"metadata": {lone: lone}}), "invalid_text"),
        # control and answers
        ("POST", f"/v1/sessions/{sid}/interrupt", raw({"reason": lone}), "invalid_text"),
        (
            "POST",
            f"/v1/sessions/{sid}/turns/{A_TURN_ID}/cancel",
            raw({"reason": lone}),
            "invalid_text",
        ),
        (
            "POST",
            f"/v1/interrupts/{AN_INTERRUPT}/respond",
            raw({"response": {"answer": lone}}),
            "invalid_text",
        ),
        (
            "POST",
            f"/v1/interrupts/{AN_INTERRUPT}/respond",
            raw({"response": nested(80)}),
            "nesting_too_deep",
        ),
        ("POST", "/v1/keys", raw({"role": "read", "name": lone}), "invalid_text"),
        # query strings that reach the store
        ("GET", "/v1/sessions", {"params": {"agent_id": "a\x00"}}, "invalid_text"),
        ("GET", "/v1/sessions", {"params": {"cursor": "\x00"}}, "invalid_text"),
        # too deep for Python's own parser: still 422, not a bare 400
        (
            "POST",
            "/v1/sessions",
            {
                "content": b"[" * 100_000 + b"]" * 100_000,
                "headers": {"content-type": "application/json"},
            },
            "nesting_too_deep",
        ),
    ]


def vendor_cases(sid: str) -> list[tuple[str, str, dict[str, Any], int, str]]:
    """(method, path, request kwargs, status, code) on the compatibility surfaces."""
    lone = "p\ud800"
    tfy_message = {"type": "user.message", "content": lone}
    return [
        ("POST", f"{GUMLOOP}/agents/demo/sessions", raw({"input": lone}), 422, "invalid_text"),
        (
            "POST",
            f"{GUMLOOP}/agents/demo/sessions",
            raw({"metadata": nested(300)}),
            422,
            "nesting_too_deep",
        ),
        # accepted with 202 before
        ("POST", f"{GUMLOOP}/sessions/{sid}/messages", raw({"input": lone}), 422, "invalid_text"),
        (
            "POST",
            f"{GUMLOOP}/sessions/{sid}/messages",
            raw({"input": [{"type": "text", "text": lone}], "delivery": "queued"}),
            422,
            "invalid_text",
        ),
        (
            "POST",
            f"{GUMLOOP}/sessions/{sid}/approvals",
            raw(
                {
                    "approval_responses": [
                        {"action_request_id": AN_INTERRUPT, "action": "reject", "reason": lone}
                    ]
                }
            ),
            422,
            "invalid_text",
        ),
        (
            "POST",
            f"{FACTORY}/sessions",
            raw({"agentId": "demo", "message": lone}),
            422,
            "invalid_text",
        ),
        (
            "POST",
            f"{FACTORY}/sessions",
            raw({"agentId": "demo", "metadata": nested(253)}),
            422,
            "nesting_too_deep",
        ),
        (
            "POST",
            f"{FACTORY}/sessions",
            raw({"agentId": "demo", "metadata": {"k": "x" * 17_000}}),
            422,
            "metadata_too_large",
        ),
        ("POST", f"{FACTORY}/sessions/{sid}/messages", raw({"content": lone}), 422, "invalid_text"),
        # TrueFoundry answers every request error 400 (docs/compat/truefoundry.md)
        ("POST", TFY, raw({"agent_name": lone}), 400, "invalid_text"),
        ("POST", f"{TFY}/{sid}/turns", raw({"input": [tfy_message]}), 400, "invalid_text"),
        ("GET", TFY, {"params": {"agent_name": "demo\x00"}}, 400, "invalid_text"),
        # path segments that name something the store would be asked for: no such thing
        ("POST", f"{GUMLOOP}/agents/a%00b/sessions", raw({}), 404, "not_found"),
        ("POST", "/compat/truefoundry/a%00b/v1/agents/sessions", raw({}), 404, "not_found"),
    ]


def shape_of(path: str, body: dict[str, Any]) -> tuple[str, str]:
    """(code, message) out of each surface's own error shape."""
    if path.startswith(FACTORY):
        assert set(body) == {"detail", "status", "title", "metadata"}, body
        return body["metadata"]["code"], body["detail"]
    error = body["error"]
    if path.startswith(GUMLOOP):
        assert set(error) == {"code", "type", "message", "details"}, body
    elif path.startswith("/compat/truefoundry"):
        assert set(error) == {"message", "type", "code", "param"}, body
    else:
        assert set(error) <= {"code", "message", "details"}, body
    return error["code"], error["message"]


async def test_unstorable_input_is_refused_everywhere_and_nothing_is_stored(
    server: Server, client: httpx.AsyncClient, seeded: tuple[str, str]
) -> None:
    agent, sid = seeded
    before = await store_snapshot(server)
    cases = [(m, p, kw, 422, code) for m, p, kw, code in v1_cases(agent, sid)]
    for method, path, kwargs, status, code in cases + vendor_cases(sid):
        r = await client.request(method, path, **kwargs)
        assert r.status_code == status, (method, path, r.status_code, r.text)
        got, message = shape_of(path, r.json())
        assert got == code, (method, path, r.text)
        assert message
    assert await store_snapshot(server) == before
    # and every read still works
    for path in ["/v1/sessions", f"/v1/sessions/{sid}", f"{FACTORY}/sessions", "/v1/agents"]:
        assert (await client.get(path)).status_code == 200


async def test_messages_say_what_and_where(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/v1/sessions", **raw({"agent_id": "demo", "metadata": {"k": ["\ud800"]}})
    )
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["code"] == "invalid_text"
    assert error["details"] == {"in": "body", "path": "$.metadata.k[0]"}
    assert "U+D800" in error["message"] and "lone surrogate" in error["message"]
    r = await client.post("/v1/sessions", **raw({"agent_id": "demo", "metadata": nested(70)}))
    assert r.json()["error"]["message"].endswith(f"nested deeper than {storable.MAX_DEPTH} levels")


async def test_limits_are_limits_not_less(client: httpx.AsyncClient, api: Api) -> None:
    """At the limits, accepted: 64 levels in all, 16 KiB of metadata, and any valid text
    (emoji are surrogate pairs in JSON escapes)."""
    metadata = {"deep": nested(62), "emoji": "\U0001f600 \u00e9", "pad": ""}
    size = len(json.dumps(metadata, ensure_ascii=False, separators=(",", ":")).encode())
    metadata["pad"] = "x" * (16 * 1024 - size)
    agent = await api.agent(reply="echo")
    r = await client.post("/v1/sessions", **raw({"agent_id": agent, "metadata": metadata}))
    assert r.status_code == 201, r.text
    assert r.json()["metadata"] == metadata
    sid = r.json()["id"]
    turn = await api.turn(sid, "\U0001f600")
    assert (await api.wait_turn(sid, turn["id"]))["status"] == "completed"


async def test_a_chunked_body_is_checked_too(client: httpx.AsyncClient) -> None:
    async def chunks():  # type: ignore[no-untyped-def]
        yield b'{"agent_id": "demo", '
        yield b'"input": "p\\ud800"}'

    r = await client.post(
        "/v1/sessions", content=chunks(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_text"


async def test_websocket_messages_are_checked(server: Server) -> None:
    """agent-threads has no status codes: the protocol's INVALID_MESSAGE, and the connection
    goes on (a message nested too deep for the parser used to end it)."""
    url = f"ws://127.0.0.1:{server.port}/compat/agent-threads/ws"
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send('{"type": "hello", "version": 1}')
        assert json.loads(await ws.recv())["type"] == "server-hello"
        for message, problem in [
            ('{"type": "subscribe", "streamId": "session:\\ud800"}', "lone surrogate"),
            ('{"type": "pong", "x": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested deeper"),
            ('{"type": "pong", "x": NaN}', "not a JSON number"),
        ]:
            await ws.send(message)
            answer = json.loads(await ws.recv())
            while answer["type"] == "ping":
                answer = json.loads(await ws.recv())
            assert answer["type"] == "error" and answer["code"] == "INVALID_MESSAGE", answer
            assert problem in answer["message"], answer
        await ws.send('{"type": "hello", "version": 1}')
        assert json.loads(await ws.recv())["type"] in ("server-hello", "ping")


# --- what an older version may have stored ---------------------------------------------------


async def _stored_directly(
    server: Server,
    metadata: dict[str, Any],
    first: list[dict[str, Any]] | None = None,
    agent: str = "demo",
) -> str:
    """A session written straight to the store, past the edge, as a bug or an older version
    could have written it."""
    store = server.node.store
    agent_id = (await store.agents.get("default", agent)).id
    session_id, _ = await store.lifecycle.create_session(
        "default", agent_id, "local", metadata, first
    )
    return session_id


async def test_stored_data_cannot_make_reads_fail(
    server: Server, client: httpx.AsyncClient, api: Api
) -> None:
    """Item 4 from the other side: rows no edge lets in any more, read back through every
    surface. Deep values come back cut at storable.READ_DEPTH; on SQLite (PostgreSQL refuses
    them in the first place) lone surrogates come back as U+FFFD."""
    deep = await _stored_directly(server, {"deep": nested(300)})
    made = [deep]
    if not CLUSTER:
        made.append(await _stored_directly(server, {"k\ud800": "v\udfff"}))
    demo = (await server.node.store.agents.get("default", "demo")).id
    for path in ["/v1/sessions", f"{FACTORY}/sessions", f"{GUMLOOP}/agents/{demo}/sessions"]:
        r = await client.get(path)
        assert r.status_code == 200, (path, r.text)
    for sid in made:
        for path in [
            f"/v1/sessions/{sid}",
            f"{FACTORY}/sessions/{sid}",
            f"{GUMLOOP}/sessions/{sid}",
            f"{TFY}/{sid}",
        ]:
            r = await client.get(path)
            assert r.status_code == 200, (path, r.text)
    r = await client.get(f"/v1/sessions/{deep}")
    depth, value = 0, r.json()["metadata"]["deep"]
    while isinstance(value, dict):
        depth, value = depth + 1, value["a"]
    assert value is None and depth == storable.READ_DEPTH - 1  # cut, under the metadata key
    if not CLUSTER:
        assert (await client.get(f"/v1/sessions/{made[1]}")).json()["metadata"] == {
            "k\ufffd": "v\ufffd"
        }


@pytest.mark.embedded  # PostgreSQL refuses a lone surrogate in JSONB: it cannot be stored there
async def test_a_stored_lone_surrogate_turn_reads_stops_and_runs(
    server: Server, client: httpx.AsyncClient, api: Api
) -> None:
    """The probe's poisoned session, as an older version stored it: stopping it answered 500
    and the worker failed to claim its turn forever. Now its input reads back repaired, so
    it can be read, stopped (200), and a turn of it runs."""
    await api.agent(reply="echo", name="echo")
    sid = await _stored_directly(server, {}, [{"role": "user", "content": "p\ud800"}], "echo")
    r = await client.post(f"/v1/sessions/{sid}/interrupt", json={"scope": "all"})
    assert r.status_code in (200, 202), r.text
    assert r.json()["session"]["id"] == sid
    lone = [{"role": "user", "content": "q\ud800"}]
    poisoned = await _stored_directly(server, {}, lone, "echo")
    server.node.bus.notify_work()
    turn = (await client.get(f"/v1/sessions/{poisoned}")).json()["last_turn"]
    ended = await api.wait_turn(poisoned, turn["id"])
    assert ended["status"] == "completed", ended
    assert ended["input"] == [{"role": "user", "content": "q\ufffd"}]
    messages = await api.messages(poisoned)
    assert messages[0]["content"] == "q\ufffd"
