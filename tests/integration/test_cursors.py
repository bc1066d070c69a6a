"""Cursors and event positions on every surface (tether/api/cursors.py): a value the server
could have issued is accepted, anything else is 400 in the surface's own error shape, never a
5xx, never silently read as something else. On both backends: PostgreSQL keeps seqs in 32-bit
columns, SQLite in 64-bit ones, and neither may overflow."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import websockets

from tests.helpers import Api, Server
from tether.api import cursors

GUMLOOP = "/compat/gumloop/api/v1"
FACTORY = "/compat/factory/api/v0"
TRUEFOUNDRY = "/compat/truefoundry/default/v1/agents/sessions"  # auth off: the default tenant

MAX = cursors.MAX_POSITION
# never a position: too big for either database, digits `int()` refuses or `isdigit()` likes,
# what `int()` alone would take, signs and fractions
BAD_POSITIONS = [
    "99999999999999999999",
    str(MAX + 1),
    str(2**63),
    "9" * 5000,
    "²",
    "٣",
    "-1",
    "+5",
    " 5",
    "5_0",
    "5.0",
    "0x10",
    "00000000001",
]
# never an id cursor: junk, another kind's id, what a position cursor looks like
BAD_IDS = ["garbage", "²", "9" * 5000, "turn_01arz3ndektsv4rrffq69g5fav", "42", "' or 1=1 --"]


@dataclass
class Seeded:
    agent: str
    sid: str
    turn: str


@pytest.fixture
async def seeded(api: Api) -> Seeded:
    agent = await api.agent(reply="hi")
    sid = await api.session(agent)
    turn = (await api.turn(sid))["id"]
    await api.wait_turn(sid, turn)
    return Seeded(agent, sid, turn)


Shape = Callable[[httpx.Response, int, str], None]


def v1_shape(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, (r.request.url, r.status_code, r.text[:300])
    error = r.json()["error"]
    assert error["code"] == code and error["message"], r.text[:300]
    assert len(r.content) < 2000, "a bad value is echoed only in part"


def gumloop_shape(r: httpx.Response, status: int, code: str) -> None:
    v1_shape(r, status, code)
    assert r.json()["error"]["type"] == "invalid_request_error"


def factory_shape(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, (r.request.url, r.status_code, r.text[:300])
    body = r.json()
    assert body["status"] == status and body["metadata"]["code"] == code, body
    assert body["detail"] and len(r.content) < 2000


def truefoundry_shape(r: httpx.Response, status: int, code: str) -> None:
    v1_shape(r, status, code)
    assert r.json()["error"]["type"] == "invalid_request_error"


def _positions(s: Seeded) -> list[tuple[str, str, str, dict[str, Any], Shape]]:
    """(name, method, path, request kwargs with {} for the value, shape) of each position."""
    sid, turn = s.sid, s.turn
    return [
        ("cursor", "GET", f"/v1/sessions/{sid}/turns", {"params": {"cursor": {}}}, v1_shape),
        ("cursor", "GET", f"/v1/sessions/{sid}/messages", {"params": {"cursor": {}}}, v1_shape),
        (
            "after",
            "GET",
            f"/v1/sessions/{sid}/events",
            {"params": {"stream": "false", "after": {}}},
            v1_shape,
        ),
        (
            "Last-Event-ID",
            "GET",
            f"/v1/sessions/{sid}/events",
            {"params": {"stream": "false"}, "headers": {"Last-Event-ID": {}}},
            v1_shape,
        ),
        (
            "cursor",
            "GET",
            f"{FACTORY}/sessions/{sid}/messages",
            {"params": {"cursor": {}}},
            factory_shape,
        ),
        (
            "page_token",
            "GET",
            f"{TRUEFOUNDRY}/{sid}/turns",
            {"params": {"page_token": {}}},
            truefoundry_shape,
        ),
        (
            "page_token",
            "GET",
            f"{TRUEFOUNDRY}/{sid}/events",
            {"params": {"page_token": {}}},
            truefoundry_shape,
        ),
        (
            "page_token",
            "GET",
            f"{TRUEFOUNDRY}/{sid}/turns/{turn}/events",
            {"params": {"page_token": {}}},
            truefoundry_shape,
        ),
        (
            "Last-Event-ID",
            "POST",
            f"{TRUEFOUNDRY}/{sid}/turns/{turn}/subscribe",
            {"headers": {"Last-Event-ID": {}}},
            truefoundry_shape,
        ),
    ]


def _id_cursors(s: Seeded) -> list[tuple[str, str, dict[str, Any], Shape]]:
    """(name, path, params with {} for the value, shape) of each id cursor."""
    return [
        ("cursor", "/v1/agents", {"cursor": {}}, v1_shape),
        ("cursor", "/v1/sessions", {"cursor": {}}, v1_shape),
        ("cursor", f"/v1/sessions/{s.sid}/interrupts", {"cursor": {}}, v1_shape),
        ("cursor", "/v1/audit", {"cursor": {}}, v1_shape),
        ("cursor", f"{FACTORY}/sessions", {"cursor": {}}, factory_shape),
        ("cursor", f"{GUMLOOP}/agents/{s.agent}/sessions", {"cursor": {}}, gumloop_shape),
        (
            "page_token",
            TRUEFOUNDRY,
            {"agent_name": s.agent, "page_token": {}},
            truefoundry_shape,
        ),
    ]


def _fill(kwargs: dict[str, Any], value: str | bytes) -> dict[str, Any]:
    return {
        part: {k: value if v == {} else v for k, v in given.items()}
        for part, given in kwargs.items()
    }


async def test_a_bad_position_is_400_in_the_surface_shape(
    client: httpx.AsyncClient, seeded: Seeded
) -> None:
    for name, method, path, kwargs, shape in _positions(seeded):
        for bad in BAD_POSITIONS:
            if "headers" in kwargs and bad != bad.strip():
                continue  # HTTP strips a header value's outer spaces: " 5" arrives as "5"
            value: str | bytes = bad.encode() if "headers" in kwargs else bad
            r = await client.request(method, path, **_fill(kwargs, value))
            shape(r, 400, "invalid_request")
            assert name in r.text, r.text[:300]


async def test_the_largest_position_and_an_empty_one_are_read(
    client: httpx.AsyncClient, seeded: Seeded
) -> None:
    """MAX names nothing yet (an empty page, a stream with nothing to replay); an empty value
    is no position, as the SSE specification says of an empty last event id."""
    for _, method, path, kwargs, _ in _positions(seeded):
        for ok in (str(MAX), "", "0"):
            r = await client.request(method, path, **_fill(kwargs, ok))
            assert r.status_code == 200, (path, ok, r.status_code, r.text[:300])
    page = (
        await client.get(
            f"/v1/sessions/{seeded.sid}/events", params={"stream": "false", "after": MAX}
        )
    ).json()
    assert page == {"data": [], "next_cursor": None}


async def test_the_event_stream_checks_its_position_before_it_starts(
    client: httpx.AsyncClient, seeded: Seeded
) -> None:
    """A bad `after` or `Last-Event-ID` is 400 before any byte of the stream (it used to
    answer 200 and abort the stream); the largest position opens a stream that replays
    nothing."""
    path = f"/v1/sessions/{seeded.sid}/events"
    for request in (
        {"params": {"after": str(10**30)}},
        {"params": {"after": str(2**63)}},
        {"params": {"after": str(MAX + 1)}},
        {"headers": {"Last-Event-ID": "9" * 20}},
        {"headers": {"Last-Event-ID": "²".encode()}},
        {"params": {"after": "3"}, "headers": {"Last-Event-ID": "x"}},  # both are checked
    ):
        async with client.stream("GET", path, **request) as r:
            await r.aread()
            v1_shape(r, 400, "invalid_request")
    async with client.stream("GET", path, params={"after": MAX}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")


async def test_a_huge_event_position_is_400_on_every_read_of_events(
    client: httpx.AsyncClient, seeded: Seeded
) -> None:
    """`after=10**30` overflowed SQLite's 64-bit integers (500) and PostgreSQL's 32-bit ones:
    as a JSON page, as a stream, and on TrueFoundry's event reads, it is the same 400."""
    huge = str(10**30)
    path = f"/v1/sessions/{seeded.sid}/events"
    for params in ({"after": huge, "stream": "false"}, {"after": huge}):
        async with client.stream("GET", path, params=params) as r:
            await r.aread()
            v1_shape(r, 400, "invalid_request")
            assert r.json()["error"]["details"] == {"param": "after"}
            assert str(MAX) in r.json()["error"]["message"]  # the bound is said
    tf = f"{TRUEFOUNDRY}/{seeded.sid}/turns/{seeded.turn}/subscribe"
    r = await client.post(tf, json={"after_sequence_number": 10**30})
    truefoundry_shape(r, 400, "invalid_request")
    assert str(MAX) in r.json()["error"]["message"]


async def test_truefoundry_after_sequence_number(client: httpx.AsyncClient, seeded: Seeded) -> None:
    """A JSON integer from 0 to MAX, the bound of every other position; anything else is
    TrueFoundry's 400, never a 5xx nor an empty 200 that reads as "nothing happened"."""
    path = f"{TRUEFOUNDRY}/{seeded.sid}/turns/{seeded.turn}/subscribe"
    json_type = {"content-type": "application/json"}
    for bad in (str(MAX + 1), str(2**63), str(10**30), "-1", "true", "1.5", '"5"', "[1]", "{}"):
        body = f'{{"after_sequence_number": {bad}}}'
        r = await client.post(path, content=body, headers=json_type)
        truefoundry_shape(r, 400, "invalid_request")
        assert r.json()["error"]["param"] == "after_sequence_number"
    # the body's position is checked even when a Last-Event-ID is sent too, and the other way
    r = await client.post(
        path, json={"after_sequence_number": MAX + 1}, headers={"Last-Event-ID": "1"}
    )
    truefoundry_shape(r, 400, "invalid_request")
    r = await client.post(path, json={"after_sequence_number": 1}, headers={"Last-Event-ID": "x"})
    truefoundry_shape(r, 400, "invalid_request")
    assert r.json()["error"]["param"] == "Last-Event-ID"
    # past Python's 4,300 digits the body does not parse: still TrueFoundry's 400
    r = await client.post(path, content=f'{{"after_sequence_number": {"9" * 5000}}}')
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = await client.post(path, json={"after_sequence_number": 0})
    assert r.status_code == 200 and "turn.done" in r.text
    r = await client.post(path, json={"after_sequence_number": MAX})
    assert r.status_code == 200


async def test_a_bad_id_cursor_is_400_in_the_surface_shape(
    client: httpx.AsyncClient, seeded: Seeded
) -> None:
    for _, path, params, shape in _id_cursors(seeded):
        for bad in BAD_IDS:
            r = await client.get(path, params=_fill({"params": params}, bad)["params"])
            shape(r, 400, "invalid_request")
        r = await client.get(path, params=_fill({"params": params}, "")["params"])
        assert r.status_code == 200, (path, r.text[:300])


async def test_issued_cursors_page_through_every_list(
    client: httpx.AsyncClient, api: Api, seeded: Seeded
) -> None:
    """What the server hands out as a cursor, it takes back: two pages of one item each."""
    second = await api.session(seeded.agent)
    await api.wait_turn(second, (await api.turn(second))["id"])
    await api.wait_turn(second, (await api.turn(second, "again"))["id"])
    await api.agent(reply="another")
    lists: list[tuple[str, dict[str, Any], str, str]] = [
        ("/v1/agents", {"limit": 1}, "cursor", "next_cursor"),
        ("/v1/sessions", {"limit": 1}, "cursor", "next_cursor"),
        (f"/v1/sessions/{second}/turns", {"limit": 1}, "cursor", "next_cursor"),
        (f"/v1/sessions/{second}/messages", {"limit": 1}, "cursor", "next_cursor"),
        (
            f"/v1/sessions/{second}/events",
            {"limit": 1, "stream": "false"},
            "after",
            "next_cursor",
        ),
        ("/v1/audit", {"limit": 1}, "cursor", "next_cursor"),
        (f"{FACTORY}/sessions", {"limit": 1}, "cursor", "nextCursor"),
        (f"{FACTORY}/sessions/{second}/messages", {"limit": 1}, "cursor", "nextCursor"),
        (
            f"{GUMLOOP}/agents/{seeded.agent}/sessions",
            {"page_size": 1},
            "cursor",
            "next_cursor",
        ),
    ]
    for path, params, name, field in lists:
        first = await client.get(path, params=params)
        assert first.status_code == 200, first.text
        token = first.json()[field]
        assert token, (path, first.json())
        then = await client.get(path, params={**params, name: token})
        assert then.status_code == 200, then.text
        assert then.json() != first.json(), path
    tf = [
        (TRUEFOUNDRY, {"agent_name": seeded.agent, "limit": 1}),
        (f"{TRUEFOUNDRY}/{second}/turns", {"limit": 1}),
        (f"{TRUEFOUNDRY}/{second}/events", {"limit": 1}),
    ]
    for path, params in tf:
        first = await client.get(path, params=params)
        token = first.json()["pagination"]["next_page_token"]
        assert token, (path, first.json())
        then = await client.get(path, params={**params, "page_token": token})
        assert then.status_code == 200 and then.json()["data"] != first.json()["data"], path


async def test_gumloop_last_cursor(client: httpx.AsyncClient, seeded: Seeded) -> None:
    path = f"{GUMLOOP}/sessions/{seeded.sid}"
    message = "msg_01arz3ndektsv4rrffq69g5fav"
    for bad in [*BAD_POSITIONS, "x1", f"3:{message}", f"3:{message}:²", f"{MAX + 1}:{message}:1"]:
        r = await client.get(path, params={"stream": "true", "last_cursor": bad})
        gumloop_shape(r, 400, "invalid_request")
    for ok in ("0", str(MAX), f"1:{message}:3"):
        r = await client.get(path, params={"stream": "true", "last_cursor": ok})
        assert r.status_code == 200, (ok, r.text[:300])


async def test_enum_filters_refuse_unknown_values(
    client: httpx.AsyncClient, seeded: Seeded
) -> None:
    r = await client.get("/v1/sessions", params={"status": "nope"})
    v1_shape(r, 422, "validation_error")
    r = await client.get(f"/v1/sessions/{seeded.sid}/interrupts", params={"status": "nope"})
    v1_shape(r, 422, "validation_error")
    r = await client.get("/v1/sessions", params={"agent_id": "garbage"})
    v1_shape(r, 400, "invalid_id")
    r = await client.get("/v1/sessions", params={"agent_id": seeded.agent})
    assert [s["id"] for s in r.json()["data"]] == [seeded.sid]
    gumloop = f"{GUMLOOP}/agents/{seeded.agent}/sessions"
    gumloop_shape(await client.get(gumloop, params={"state": "nope"}), 422, "validation_error")
    r = await client.get(gumloop, params={"state": "completed"})
    assert [s["id"] for s in r.json()["sessions"]] == [seeded.sid]
    r = await client.get(gumloop, params={"state": "idle"})
    assert r.status_code == 200 and r.json()["sessions"] == []
    r = await client.get(TRUEFOUNDRY, params={"agent_name": seeded.agent, "order": "asc"})
    truefoundry_shape(r, 400, "invalid_request")


@pytest.fixture
async def threads(server: Server) -> AsyncIterator[Any]:
    url = server.url.replace("http://", "ws://") + "/compat/agent-threads/ws"
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"type": "hello", "version": 1}))
        assert json.loads(await ws.recv())["type"] == "server-hello"
        yield ws


async def _next_not_ping(ws: Any) -> dict[str, Any]:
    while True:
        message: dict[str, Any] = json.loads(await ws.recv())
        if message["type"] != "ping":
            return message


async def test_agent_threads_after_seq(threads: Any, seeded: Seeded) -> None:
    """`afterSeq` is a seq the JavaScript client can hold (up to 2^53 - 1); past it the
    subscription is refused as a malformed message, not left to die in its task."""
    stream = f"session:{seeded.sid}"
    for bad in (2**53, 2**64, 10**30, -1, 1.5, "3", True):
        await threads.send(json.dumps({"type": "subscribe", "streamId": stream, "afterSeq": bad}))
        error = await _next_not_ping(threads)
        assert error["code"] == "INVALID_MESSAGE", bad
        assert "afterSeq" in error["message"] and str(2**53 - 1) in error["message"], error
    await threads.send(json.dumps({"type": "subscribe", "streamId": stream, "afterSeq": 2**53 - 1}))
    end = await _next_not_ping(threads)
    assert end["type"] == "replay-end" and end["lastReplaySeq"] == 2**53 - 1


def _inbox_cursor(*parts: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(parts)).encode()).decode().rstrip("=")


async def test_the_inbox_cursor(client: httpx.AsyncClient, api: Api) -> None:
    """The tenant's interrupts resume from (expiry, creation, id): a cursor that is not three
    such values, or holds a time the store cannot hold, is 400, never a 5xx (a year-1 time
    at +14:00 overflowed when moved to UTC for the query)."""
    interrupt = "int_01arz3ndektsv4rrffq69g5fav"
    now = "2030-01-01T00:00:00+00:00"
    for bad in [
        "garbage",
        "²",
        "9" * 5000,
        _inbox_cursor(now, now),
        _inbox_cursor(now, now, interrupt, "extra"),
        _inbox_cursor(now, now, "turn_01arz3ndektsv4rrffq69g5fav"),
        _inbox_cursor("2030-01-01T00:00:00", now, interrupt),  # no zone
        _inbox_cursor("0001-01-01T00:00:00+14:00", now, interrupt),
        _inbox_cursor(now, "9999-12-31T23:59:59-14:00", interrupt),
        _inbox_cursor(1, now, interrupt),
        _inbox_cursor(now, now, 5),
        _inbox_cursor(*[[[[]]]] * 3),
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
    ]:
        r = await client.get("/v1/interrupts", params={"cursor": bad})
        v1_shape(r, 400, "invalid_request")
        assert r.json()["error"]["details"] == {"param": "cursor"}
    # the extremes the store holds are read, and name nothing after them
    for ok in ("0001-01-01T00:00:00+00:00", "9999-12-31T23:59:59+00:00"):
        r = await client.get("/v1/interrupts", params={"cursor": _inbox_cursor(ok, ok, interrupt)})
        assert r.status_code == 200, r.text
    r = await client.get("/v1/interrupts", params={"cursor": ""})
    assert r.status_code == 200, r.text
