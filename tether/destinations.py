"""Where Tether may send a request on a tenant's behalf (DESIGN §8).

A tenant names URLs (a model provider's base URL; later webhooks and HTTP MCP servers) and a
worker then connects to them from inside the operator's network. A `Guard` bounds that:

- http(s) only, no credentials in the URL;
- no private, loopback, link-local or otherwise non-public address, unless the operator allows
  private destinations (`allow_private`) or vouches for the URL (`trusted` prefixes);
- optionally, only URLs under given prefixes (`only`: where a server-held key may go).

`Guard.check(url)` is the early check (agent creation, turn start): it sees the URL only, so it
refuses literal addresses. The clients it makes (`httpx_client`, `httpx2_client`) check again
for every request, and check every address a name resolves to when they connect, then connect
to that very address: a name that resolved to a public address when it was checked and to
127.0.0.1 a moment later (DNS rebinding) is refused. They follow no redirects and ignore the
environment's proxies and .netrc (a proxy would resolve names where we cannot check them).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import anyio
import httpx

from tether import errors

if TYPE_CHECKING:
    import httpx2

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_DEFAULT_PORTS = {"http": 80, "https": 443}
# IPv6 ranges that carry an IPv4 address in their last 32 bits (IPv4-compatible, NAT64): the
# IPv4 address is where the packets end up, so it is the one to judge.
_EMBEDS_IPV4 = (ipaddress.ip_network("::/96"), ipaddress.ip_network("64:ff9b::/96"))


def parse(url: str) -> httpx.URL:
    """A destination URL, or DestinationNotAllowed saying what is wrong with it."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise errors.DestinationNotAllowed(f"{url!r} is not a valid URL: {exc}") from exc
    if parsed.scheme not in _DEFAULT_PORTS:
        raise errors.DestinationNotAllowed(f"{url!r}: only http and https URLs are allowed")
    if not parsed.host:
        raise errors.DestinationNotAllowed(f"{url!r} has no host")
    if parsed.userinfo:  # not echoed: the URL holds a password
        raise errors.DestinationNotAllowed("a URL with credentials (user:password@) is not allowed")
    if any(segment in (".", "..") for segment in parsed.path.split("/")):
        raise errors.DestinationNotAllowed(f"{url!r}: '.' and '..' path segments are not allowed")
    return parsed


def origin(url: httpx.URL) -> tuple[str, str, int]:
    """(scheme, host, port), the port made explicit."""
    return url.scheme, url.host.lower(), url.port or _DEFAULT_PORTS[url.scheme]


def under(url: str, prefix: str) -> bool:
    """Is `url` under `prefix`: same scheme, host and port, and the prefix's path segments
    begin the URL's path (`https://a/v1` covers `https://a/v1/chat`, not `https://a/v1evil`
    nor `https://a.evil/v1`)? Malformed URLs are under nothing."""
    try:
        target, base = parse(url), parse(prefix)
    except errors.DestinationNotAllowed:
        return False
    if origin(target) != origin(base):
        return False
    wanted = [s for s in base.path.split("/") if s]
    return [s for s in target.path.split("/") if s][: len(wanted)] == wanted


def literal_address(host: str) -> IPAddress | None:
    """The address `host` spells, if it is one. Besides the usual forms this reads the legacy
    IPv4 forms resolvers accept (`127.1`, `2130706433`, `0x7f.0.0.1`)."""
    try:
        return ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def is_public(address: IPAddress) -> bool:
    """May anyone on the internet be reached at this address (not a private, loopback,
    link-local, shared, reserved or multicast one)? Judged on the IPv4 address an IPv6 one
    carries (IPv4-mapped, 6to4, NAT64, IPv4-compatible), where there is one."""
    if isinstance(address, ipaddress.IPv6Address):
        carried = address.ipv4_mapped or address.sixtofour
        if carried is None and any(address in net for net in _EMBEDS_IPV4):
            carried = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if carried is not None and not is_public(carried):
            return False
    return address.is_global and not address.is_multicast


def _names_loopback(host: str) -> bool:
    host = host.lower().rstrip(".")
    return host == "localhost" or host.endswith(".localhost")  # RFC 6761


@dataclasses.dataclass(frozen=True)
class Guard:
    """What one user of outgoing requests may reach.

    allow_private: private addresses are fine everywhere (e.g. `TETHER_WEBHOOK_ALLOW_PRIVATE`).
    trusted: URL prefixes the operator vouches for: URLs under them may be private, and their
        hosts may resolve to private addresses.
    only: when set, every URL must be under one of these prefixes.
    """

    allow_private: bool = False
    trusted: tuple[str, ...] = ()
    only: tuple[str, ...] | None = None

    def check(self, url: str) -> None:
        """Refuse (DestinationNotAllowed) what can be refused from the URL alone."""
        parsed = parse(url)
        if self.only is not None and not any(under(url, prefix) for prefix in self.only):
            raise errors.DestinationNotAllowed(f"{url} is not under an allowed URL prefix")
        if self.allow_private or any(under(url, prefix) for prefix in self.trusted):
            return
        address = literal_address(parsed.host)
        if address is not None and not is_public(address):
            raise errors.DestinationNotAllowed(
                f"{url}: {address} is a private, loopback or link-local address"
            )
        if _names_loopback(parsed.host):
            raise errors.DestinationNotAllowed(f"{url}: {parsed.host} is a loopback name")

    def may_be_private(self, host: str, port: int) -> bool:
        """May a connection to host:port reach a private address? Decided per origin: a
        trusted prefix vouches for its host and port."""
        if self.allow_private:
            return True
        for prefix in self.trusted:
            try:
                _, trusted_host, trusted_port = origin(parse(prefix))
            except errors.DestinationNotAllowed:
                continue
            if (trusted_host, trusted_port) == (host.lower(), port):
                return True
        return False

    def httpx_client(self, **options: Any) -> httpx.AsyncClient:
        """An httpx client bound by this guard. `options` are AsyncClient's (timeout, …)."""
        import httpcore

        return _client(self, httpx, httpcore, options)  # type: ignore[no-any-return]

    def httpx2_client(self, **options: Any) -> httpx2.AsyncClient:
        """The same for httpx2 (the HTTP library of recent `openai` SDKs)."""
        import httpcore2
        import httpx2

        return _client(self, httpx2, httpcore2, options)  # type: ignore[no-any-return]


def _client(guard: Guard, http: Any, core: Any, options: dict[str, Any]) -> Any:
    """An AsyncClient of library `http` (httpx or httpx2, same API) whose connections go
    through a guarded network backend of its core library (httpcore or httpcore2)."""
    transport = http.AsyncHTTPTransport(trust_env=False)
    pool = getattr(transport, "_pool", None)
    if pool is None or not hasattr(pool, "_network_backend"):
        # the transport's connection pool is not where it was: never hand out an unguarded client
        raise RuntimeError(f"{http.__name__} {http.__version__}: cannot guard its connections")
    pool._network_backend = _GuardedBackend(guard, pool._network_backend, core)

    async def check_request(request: Any) -> None:
        guard.check(str(request.url))

    return http.AsyncClient(
        transport=transport,
        follow_redirects=False,
        trust_env=False,
        event_hooks={"request": [check_request]},
        **options,
    )


class _GuardedBackend:
    """An httpcore network backend that resolves the host itself, refuses when any address is
    not public (unless the guard allows private ones there), and connects to the addresses it
    checked, so no second lookup can answer something else. TLS still verifies the host name:
    httpcore takes it from the URL, not from what it connected to."""

    def __init__(self, guard: Guard, inner: Any, core: Any):
        self._guard = guard
        self._inner = inner
        self._core = core  # httpcore or httpcore2: its exception classes

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's backend interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> Any:
        options: dict[str, Any] = {
            "timeout": timeout,
            "local_address": local_address,
            "socket_options": socket_options,
        }
        if self._guard.may_be_private(host, port):
            return await self._inner.connect_tcp(host, port, **options)
        addresses = await self._resolve(host, port, timeout)
        if not all(is_public(address) for address in addresses):
            # which address is not said: a tenant must not map the operator's network with it
            raise errors.DestinationNotAllowed(
                f"{host} resolves to a private, loopback or link-local address"
            )
        failure: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(str(address), port, **options)
            except (self._core.ConnectError, self._core.ConnectTimeout) as exc:
                failure = exc  # try the next address, as a resolver-driven connect would
        assert failure is not None
        raise failure

    async def _resolve(self, host: str, port: int, limit_s: float | None) -> list[IPAddress]:
        try:
            with anyio.fail_after(limit_s):
                found = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except TimeoutError as exc:
            raise self._core.ConnectTimeout(f"resolving {host} timed out") from exc
        except OSError as exc:
            raise self._core.ConnectError(f"cannot resolve {host}: {exc}") from exc
        addresses: list[IPAddress] = []
        for *_, sockaddr in found:
            address = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise self._core.ConnectError(f"cannot resolve {host}")
        return addresses

    async def connect_unix_socket(self, path: str, *args: Any, **kwargs: Any) -> Any:
        raise errors.DestinationNotAllowed("unix sockets are not a destination")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)
