"""tether/storable.py and the edge that applies it (api/input_guard.py), without a server."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from tether import errors, storable
from tether.api.input_guard import InputGuard


def nested(levels: int) -> Any:
    value: Any = 0
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("value", "error", "path"),
    [
        ({"a": "x\ud800"}, errors.InvalidText, "$.a"),
        ({"a": ["ok", "\udfff"]}, errors.InvalidText, "$.a[1]"),
        ({"k\udc00": 1}, errors.InvalidText, "$.k\\udc00"),
        ({"a": {"b\x00": 1}}, errors.InvalidText, "$.a.b\\x00"),
        ("nul\x00", errors.InvalidText, "$"),
        ({"n": float("nan")}, errors.InvalidNumber, "$.n"),
        ([float("-inf")], errors.InvalidNumber, "$[0]"),
        (nested(storable.MAX_DEPTH + 1), errors.NestingTooDeep, "$" + "[0]" * storable.MAX_DEPTH),
    ],
)
def test_check_names_what_and_where(value: Any, error: type[Exception], path: str) -> None:
    with pytest.raises(error) as raised:
        storable.check(value)
    assert isinstance(raised.value, errors.UnstorableInput)
    assert raised.value.details == {"in": "body", "path": path}


def test_check_accepts_what_can_be_stored() -> None:
    storable.check(nested(storable.MAX_DEPTH))
    storable.check({"emoji": "\U0001f600", "accents": "é", "big": 10**400, "f": 1.5, "n": None})


def test_parse_refuses_what_the_parser_itself_cannot_nest() -> None:
    with pytest.raises(errors.NestingTooDeep):
        storable.parse(b"[" * 200_000)
    with pytest.raises(json.JSONDecodeError):
        storable.parse(b"{not json")


def test_loads_stored_repairs_and_leaves_the_rest_alone() -> None:
    stored = json.dumps({"a": "x\ud800y", "b": float("nan"), "c": [1.5, "\U0001f600"]})
    assert storable.loads_stored(stored) == {"a": "x\ufffdy", "b": None, "c": [1.5, "\U0001f600"]}
    deep = storable.loads_stored(json.dumps(nested(300)))
    depth = 0
    while isinstance(deep, list):
        depth, deep = depth + 1, deep[0]
    assert (depth, deep) == (storable.READ_DEPTH, None)
    assert storable.loads_stored("[" * 5000 + "]" * 5000) is None  # past the parser: unreadable


# any character, and often one no storage takes (rare among all the code points otherwise)
any_text = st.text(st.characters(exclude_categories=[]) | st.sampled_from("\ud800\udfff\x00"))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | any_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_what_check_accepts_is_stored_and_read_back_unchanged(value: Any) -> None:
    """The two halves agree: anything `check` lets in survives `loads_stored` as it was."""
    try:
        storable.check(value)
    except errors.UnstorableInput:
        return
    text = json.dumps(value)
    assert storable.loads_stored(text) == json.loads(text)
    json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")  # and renders


@given(json_values)
def test_whatever_is_read_back_renders(value: Any) -> None:
    repaired = storable.loads_stored(json.dumps(value))
    json.dumps(repaired, ensure_ascii=False, allow_nan=False).encode("utf-8")


# --- the guard -------------------------------------------------------------------------------


def _guarded() -> tuple[InputGuard, list[bytes]]:
    """The guard in front of an app that records the bodies it was handed."""
    seen: list[bytes] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        seen.append(body)
        await Response(b"ok")(scope, receive, send)

    def vendor(exc: errors.TetherError) -> Response:
        return JSONResponse({"vendor": exc.code}, status_code=418)

    def native(exc: errors.TetherError) -> Response:
        return JSONResponse({"error": {"code": exc.code}}, status_code=422)

    return InputGuard(app, answers=[("/vendor/", vendor)], default=native), seen


async def test_the_guard_refuses_before_the_app_and_passes_the_rest_intact() -> None:
    guard, seen = _guarded()
    transport = httpx.ASGITransport(app=guard)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        ok = b'{"text": "\\ud83d\\ude00 fine"}'
        assert (await c.post("/x", content=ok)).text == "ok"
        assert (await c.post("/x", content=b"not json at all")).text == "ok"
        assert seen == [ok, b"not json at all"]

        bad = b'{"text": "\\ud800"}'
        r = await c.post("/x", content=bad)
        assert (r.status_code, r.json()) == (422, {"error": {"code": "invalid_text"}})
        r = await c.post("/vendor/x", content=bad)
        assert (r.status_code, r.json()) == (418, {"vendor": "invalid_text"})
        r = await c.get("/x", params={"q": "a\x00"})
        assert r.json() == {"error": {"code": "invalid_text"}}
        # uvicorn itself refuses a NUL in a header; another server might not
        r = await c.post("/x", content=b"{}", headers={"Idempotency-Key": "a\x00b"})
        assert r.json() == {"error": {"code": "invalid_text"}}
        assert len(seen) == 2  # none of the refused reached the app
