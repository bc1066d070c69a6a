"""What the console needs from the server: `GET /v1/me`, the tenant-wide inbox
`GET /v1/interrupts`, and /console served with its security headers. (The browser tests are in
test_console_browser.py; the authorization matrix of test_auth.py covers these routes too.)"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import Server, running_server, wait_for
from tether import ids
from tether.api import console
from tether.auth import Role

ROOT = Path(__file__).resolve().parent.parent.parent


# --- /v1/me ----------------------------------------------------------------------------------


async def test_me_in_open_mode(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/me")
    assert r.status_code == 200, r.text
    assert r.json() == {
        "tenant_id": "default",
        "role": "admin",
        "auth": False,
        "key_id": None,
        "key_prefix": None,
    }


@pytest.fixture
async def secured(tmp_path: Path) -> AsyncIterator[Server]:
    async with running_server(tmp_path, auth="required") as srv:
        yield srv


async def test_me_tells_each_key_its_tenant_and_role(secured: Server) -> None:
    for role in Role:
        info, key = await secured.node.keys.create("acme", role)
        async with httpx.AsyncClient(
            base_url=secured.url, headers={"Authorization": f"Bearer {key}"}
        ) as c:
            r = await c.get("/v1/me")
        assert r.status_code == 200, r.text
        assert r.json() == {
            "tenant_id": "acme",
            "role": role.name.lower(),
            "auth": True,
            "key_id": info.id,
            "key_prefix": info.prefix,
        }
    async with httpx.AsyncClient(base_url=secured.url) as c:
        assert (await c.get("/v1/me")).status_code == 401
        bad = {"Authorization": "Bearer tth_000000000000_nope"}
        assert (await c.get("/v1/me", headers=bad)).status_code == 401


# --- /v1/interrupts --------------------------------------------------------------------------


async def _waiting_session(c: httpx.AsyncClient, ttl_s: float | None) -> str:
    """A session whose turn waits on one approval expiring in `ttl_s` (None: never)."""
    tool: dict[str, Any] = {"name": "sleep", "policy": "approve"}
    if ttl_s is not None:
        tool["interrupt_ttl_s"] = ttl_s
    agent = await c.post(
        "/v1/agents",
        json={
            "name": f"a{ids.new_ulid()}",
            "model": {
                "provider": "scripted",
                "steps": [{"tool_calls": [{"name": "sleep", "arguments": {"seconds": 0}}]}],
                "reply": "done",
            },
            "tools": [tool],
        },
    )
    assert agent.status_code == 201, agent.text
    made = await c.post("/v1/sessions", json={"agent_id": agent.json()["id"], "input": "go"})
    assert made.status_code == 201, made.text
    sid = str(made.json()["id"])

    async def pending() -> Any:
        r = await c.get(f"/v1/sessions/{sid}/interrupts", params={"status": "pending"})
        return r.json()["data"]

    await wait_for(pending, 10, "the approval")
    return sid


async def _inbox(c: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    r = await c.get("/v1/interrupts", params={"status": "pending", **params})
    assert r.status_code == 200, r.text
    return r.json()["data"]  # type: ignore[no-any-return]


async def test_inbox_lists_the_soonest_expiry_first_then_the_oldest(
    client: httpx.AsyncClient,
) -> None:
    never_old = await _waiting_session(client, None)
    late = await _waiting_session(client, 3000)
    never_new = await _waiting_session(client, None)
    soon = await _waiting_session(client, 600)
    items = await _inbox(client)
    assert [i["session_id"] for i in items] == [soon, late, never_old, never_new]
    assert all(i["status"] == "pending" and i["type"] == "approval" for i in items)
    assert items[0]["expires_at"] < items[1]["expires_at"]
    assert items[2]["expires_at"] is None

    # paged one by one: the same order, nothing twice, nothing missed
    walked, cursor = [], None
    while True:
        r = await client.get(
            "/v1/interrupts", params={"status": "pending", "limit": 1, "cursor": cursor}
        )
        assert r.status_code == 200, r.text
        walked += r.json()["data"]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            break
    assert [i["id"] for i in walked] == [i["id"] for i in items]

    # an answered one leaves the pending inbox and is listed as resolved
    answered = items[0]
    r = await client.post(
        f"/v1/interrupts/{answered['id']}/respond", json={"response": {"decision": "deny"}}
    )
    assert r.status_code == 200, r.text
    assert [i["id"] for i in await _inbox(client)] == [i["id"] for i in items[1:]]
    resolved = await client.get("/v1/interrupts", params={"status": "resolved"})
    assert [i["id"] for i in resolved.json()["data"]] == [answered["id"]]
    everything = await client.get("/v1/interrupts")
    assert {i["id"] for i in everything.json()["data"]} == {i["id"] for i in items}


@pytest.mark.parametrize(
    "params",
    [
        {"cursor": "not a cursor"},
        {"cursor": "WyJ4IiwgInkiLCAieiJd"},  # base64 JSON of three strings that are not dates
        {"cursor": "e30"},  # {}
        {"status": "asleep"},
        {"limit": 0},
        {"limit": 1001},
    ],
)
async def test_inbox_refuses_bad_parameters(
    client: httpx.AsyncClient, params: dict[str, Any]
) -> None:
    r = await client.get("/v1/interrupts", params=params)
    assert r.status_code in (400, 422), r.text
    assert r.json()["error"]["code"] in ("invalid_request", "validation_error"), r.text


async def test_inbox_is_scoped_to_the_tenant_and_open_to_readers(secured: Server) -> None:
    keys = {}
    for tenant in ("acme", "globex"):
        for role in (Role.ADMIN, Role.READ):
            _, keys[tenant, role] = await secured.node.keys.create(tenant, role)

    def client(tenant: str, role: Role) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=secured.url,
            timeout=30,
            headers={"Authorization": f"Bearer {keys[tenant, role]}"},
        )

    async with client("acme", Role.ADMIN) as acme, client("globex", Role.ADMIN) as globex:
        acme_sid = await _waiting_session(acme, 60)
        globex_sid = await _waiting_session(globex, 30)
    async with client("acme", Role.READ) as reader:
        items = await _inbox(reader)
        assert [i["session_id"] for i in items] == [acme_sid]
        # a reader sees the inbox but cannot answer
        r = await reader.post(
            f"/v1/interrupts/{items[0]['id']}/respond", json={"response": {"decision": "deny"}}
        )
        assert r.status_code == 403
    async with client("globex", Role.READ) as reader:
        assert [i["session_id"] for i in await _inbox(reader)] == [globex_sid]
    async with httpx.AsyncClient(base_url=secured.url) as anonymous:
        assert (await anonymous.get("/v1/interrupts")).status_code == 401


async def test_openapi_describes_the_console_routes(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    me = spec["paths"]["/v1/me"]["get"]["responses"]["200"]["content"]["application/json"]
    assert me["schema"]["$ref"].endswith("/MeOut")
    inbox = spec["paths"]["/v1/interrupts"]["get"]
    assert {p["name"] for p in inbox["parameters"]} == {"status", "limit", "cursor"}
    page = inbox["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert page.endswith("Page_InterruptOut_")
    assert not any(path.startswith("/console") for path in spec["paths"])


# --- /console --------------------------------------------------------------------------------


async def test_console_is_served_with_a_strict_policy(client: httpx.AsyncClient) -> None:
    r = await client.get("/console", follow_redirects=False)
    assert r.status_code == 308
    assert r.headers["location"] == "/console/"
    page = await client.get("/console/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert directives["require-trusted-types-for"] == "'script'"
    assert "unsafe" not in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["referrer-policy"] == "no-referrer"
    # scripts only from files, none inline; nothing from another origin
    scripts = re.findall(r"<script\b[^>]*>(.*?)</script>", page.text, re.S)
    assert scripts and all(body.strip() == "" for body in scripts)
    assert "http://" not in page.text and "https://" not in page.text
    for name, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        asset = await client.get(f"/console/{name}")
        assert asset.status_code == 200
        assert kind in asset.headers["content-type"]
        assert asset.headers["content-security-policy"] == csp
        assert asset.headers["x-content-type-options"] == "nosniff"
        again = await client.get(
            f"/console/{name}", headers={"if-none-match": asset.headers["etag"]}
        )
        assert again.status_code == 304
    missing = await client.get("/console/nothing-here.js")
    assert missing.status_code == 404
    assert missing.headers["content-security-policy"] == csp
    # the API's answers are not the console's: no CSP there (Swagger UI at /docs needs inline)
    assert "content-security-policy" not in (await client.get("/v1/me")).headers


def test_console_files_never_parse_strings_as_html_nor_load_other_origins() -> None:
    files = sorted(console.FILES.iterdir())
    assert {"index.html", "app.js", "style.css"} <= {f.name for f in files}
    forbidden = re.compile(
        r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function|"
        r"https?://|\bon(click|error|load)\s*="
    )
    for path in files:
        if path.suffix in (".js", ".css", ".html"):
            hits = [m.group(0) for m in forbidden.finditer(path.read_text())]
            assert not hits, (path.name, hits)


def test_console_files_ship_in_the_package() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["tether"]
    package = ROOT / "tether"
    for path in console.FILES.iterdir():
        relative = str(path.relative_to(package))
        assert any(fnmatch.fnmatch(relative, p) for p in patterns), relative
