"""The destination guard (tether/destinations.py): URL checks, prefix matching, and the check of
every resolved address when a connection is made."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpcore
import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from tests.helpers import free_port, wait_for
from tether import destinations, errors
from tether.destinations import Guard


@pytest.mark.parametrize(
    ("url", "prefix", "expected"),
    [
        ("https://api.openai.com/v1", "https://api.openai.com/v1", True),
        ("https://api.openai.com/v1/", "https://api.openai.com/v1", True),
        ("https://api.openai.com/v1/chat/completions", "https://api.openai.com/v1", True),
        ("https://API.OpenAI.com/v1", "https://api.openai.com/v1", True),
        ("https://api.openai.com:443/v1", "https://api.openai.com/v1", True),
        ("https://api.anthropic.com/v1/messages", "https://api.anthropic.com", True),
        ("https://api.openai.com.evil.com/v1", "https://api.openai.com/v1", False),
        ("https://api.openai.com/v1evil", "https://api.openai.com/v1", False),
        ("https://api.openai.com/v2", "https://api.openai.com/v1", False),
        ("https://api.openai.com", "https://api.openai.com/v1", False),
        ("http://api.openai.com/v1", "https://api.openai.com/v1", False),
        ("https://api.openai.com:8443/v1", "https://api.openai.com/v1", False),
        ("https://evil.com/api.openai.com/v1", "https://api.openai.com/v1", False),
        ("https://evil.com#@api.openai.com/v1", "https://api.openai.com/v1", False),
        ("https://api.openai.com@evil.com/v1", "https://api.openai.com/v1", False),
        ("https://api.openai.com/v1/%2e%2e/admin", "https://api.openai.com/v1", False),
        ("https://api.openai.com/v1/../admin", "https://api.openai.com/v1", False),
        ("ftp://api.openai.com/v1", "https://api.openai.com/v1", False),
        ("not a url", "https://api.openai.com/v1", False),
    ],
)
def test_under_matches_scheme_host_port_and_whole_path_segments(
    url: str, prefix: str, expected: bool
) -> None:
    assert destinations.under(url, prefix) is expected


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x",
        "file:///etc/passwd",
        "gopher://example.com/",
        "http:///nohost",
        "https://user:pw@example.com/v1",
        "https://example.com/v1/%2e%2e/x",
        "example.com/v1",
    ],
)
def test_parse_refuses_what_is_not_a_plain_http_destination(url: str) -> None:
    with pytest.raises(errors.DestinationNotAllowed):
        destinations.parse(url)


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("::ffff:8.8.8.8", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("100.64.0.1", False),  # shared address space
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("::1", False),
        ("::", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("ff02::1", False),
        ("::ffff:127.0.0.1", False),  # IPv4-mapped
        ("::ffff:169.254.169.254", False),
        ("::127.0.0.1", False),  # IPv4-compatible
        ("64:ff9b::a00:1", False),  # NAT64 of 10.0.0.1
        ("2002:7f00:1::", False),  # 6to4 of 127.0.0.1
    ],
)
def test_is_public(address: str, public: bool) -> None:
    assert destinations.is_public(ipaddress.ip_address(address)) is public


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/v1",
        "http://10.0.0.5/v1",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:8000/v1",
        "http://[::ffff:127.0.0.1]/v1",
        "http://[fe80::1%25eth0]/v1",
        "http://127.1/v1",  # legacy forms resolvers accept
        "http://2130706433/v1",
        "http://0x7f.0.0.1/v1",
        "http://localhost:8000/v1",
        "http://LOCALHOST./v1",
        "http://api.localhost/v1",
    ],
)
def test_check_refuses_literal_private_addresses_and_loopback_names(url: str) -> None:
    with pytest.raises(errors.DestinationNotAllowed):
        Guard().check(url)


def test_check_allows_public_names_and_what_the_operator_allows() -> None:
    Guard().check("https://api.example.com/v1")
    Guard().check("http://8.8.8.8/v1")
    Guard(allow_private=True).check("http://10.0.0.5/hook")
    trusted = Guard(trusted=("http://127.0.0.1:8000/v1",))
    trusted.check("http://127.0.0.1:8000/v1/chat/completions")
    with pytest.raises(errors.DestinationNotAllowed):  # another port is not vouched for
        trusted.check("http://127.0.0.1:8001/v1")


def test_only_bounds_every_url() -> None:
    guard = Guard(only=("https://api.openai.com/v1",))
    guard.check("https://api.openai.com/v1/chat/completions")
    for url in ("https://api.openai.com/v2", "https://example.com/v1"):
        with pytest.raises(errors.DestinationNotAllowed):
            guard.check(url)


# --- connections: a real local server, and the guarded clients ------------------------------


class Local:
    """A local HTTP server on 127.0.0.1 that counts the requests it gets."""

    def __init__(self) -> None:
        self.port = free_port()
        self.hits: list[str] = []

        async def hello(request: Request) -> Response:
            self.hits.append(request.url.path)
            return PlainTextResponse("hello")

        async def moved(request: Request) -> Response:
            self.hits.append(request.url.path)
            return RedirectResponse(f"http://127.0.0.1:{self.port}/elsewhere", status_code=302)

        self.app = Starlette(
            routes=[Route("/hello", hello), Route("/moved", moved), Route("/elsewhere", hello)]
        )


@pytest.fixture
async def local() -> AsyncIterator[Local]:
    server = Local()
    uv = uvicorn.Server(
        uvicorn.Config(server.app, host="127.0.0.1", port=server.port, log_level="warning")
    )
    task = asyncio.create_task(uv.serve())
    await wait_for(lambda: uv.started or task.done(), 10, "local server")
    yield server
    uv.should_exit = True
    await task


def _pool(guard: Guard) -> httpcore.AsyncConnectionPool:
    """An httpcore pool on the guarded backend: connections checked, no URL check on top."""
    backend = destinations._GuardedBackend(guard, httpcore.AnyIOBackend(), httpcore)
    return httpcore.AsyncConnectionPool(network_backend=backend)


async def test_a_name_resolving_to_loopback_is_refused_at_connect(local: Local) -> None:
    async with _pool(Guard()) as pool:
        with pytest.raises(errors.DestinationNotAllowed, match="resolves to"):
            await pool.request("GET", f"http://localhost:{local.port}/hello")
    assert local.hits == []


@pytest.mark.parametrize("host", ["127.0.0.1", "[::ffff:127.0.0.1]", "[::1]"])
async def test_literal_private_addresses_are_refused_at_connect(local: Local, host: str) -> None:
    async with _pool(Guard()) as pool:
        with pytest.raises(errors.DestinationNotAllowed):
            await pool.request("GET", f"http://{host}:{local.port}/hello")
    assert local.hits == []


async def test_a_trusted_origin_or_allow_private_connects(local: Local) -> None:
    for guard in (Guard(trusted=(f"http://localhost:{local.port}/",)), Guard(allow_private=True)):
        async with _pool(guard) as pool:
            response = await pool.request("GET", f"http://localhost:{local.port}/hello")
        assert response.status == 200
    assert local.hits == ["/hello", "/hello"]


async def test_rebinding_answer_is_checked_and_not_looked_up_again(
    local: Local, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A DNS server we cannot run here: its answers stand in, first public-looking at the URL
    check (no lookup there at all), then loopback when the client connects."""
    lookups: list[str] = []

    async def rebinding(host: str, port: int, **_: Any) -> list[Any]:
        lookups.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    monkeypatch.setattr(destinations.anyio, "getaddrinfo", rebinding)
    guard = Guard()
    guard.check(f"http://rebind.example:{local.port}/hello")  # a name: nothing to refuse yet
    async with guard.httpx_client(timeout=5) as client:
        with pytest.raises(errors.DestinationNotAllowed, match=r"rebind\.example resolves to"):
            await client.get(f"http://rebind.example:{local.port}/hello")
    assert lookups == ["rebind.example"]
    assert local.hits == []


@pytest.mark.parametrize("flavour", ["httpx", "httpx2"])
async def test_guarded_clients_check_urls_and_do_not_follow_redirects(
    local: Local, flavour: str
) -> None:
    trusted = Guard(trusted=(f"http://127.0.0.1:{local.port}/",))
    make = trusted.httpx_client if flavour == "httpx" else trusted.httpx2_client
    async with make(timeout=5) as client:
        ok = await client.get(f"http://127.0.0.1:{local.port}/hello")
        assert ok.status_code == 200
        moved = await client.get(f"http://127.0.0.1:{local.port}/moved")
        assert moved.status_code == 302  # handed back, not followed
    assert local.hits == ["/hello", "/moved"]
    async with (Guard().httpx_client if flavour == "httpx" else Guard().httpx2_client)() as c:
        with pytest.raises(errors.DestinationNotAllowed):
            await c.get(f"http://127.0.0.1:{local.port}/hello")
    assert local.hits == ["/hello", "/moved"]


async def test_guarded_client_ignores_environment_proxies(
    local: Local, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proxy would resolve names where the guard cannot see: the environment's is unused."""
    monkeypatch.setenv("HTTP_PROXY", "http://10.255.255.1:3128")
    monkeypatch.setenv("ALL_PROXY", "http://10.255.255.1:3128")
    async with Guard(allow_private=True).httpx_client(timeout=5) as client:
        r = await client.get(f"http://127.0.0.1:{local.port}/hello")
    assert r.status_code == 200


def test_unguardable_transport_is_never_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    class Bare(httpx.AsyncHTTPTransport):
        def __init__(self, **_: Any) -> None:
            pass  # no connection pool where the guard looks for one

    monkeypatch.setattr(httpx, "AsyncHTTPTransport", Bare)
    with pytest.raises(RuntimeError, match="cannot guard"):
        Guard().httpx_client()
