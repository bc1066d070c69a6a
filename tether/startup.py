"""Starting `tether serve` and `tether worker`: claim what the process needs before doing any
work, and refuse in one line.

`serve` binds and listens first: with the port taken it stops there, before a worker could
claim a turn. Then it starts the node (data dir lock, store, exposure check, workers), then
hands the bound socket to uvicorn; "tether serving on …" is printed once uvicorn accepts
connections. Any refusal on the way (bad settings, port taken, data dir locked, read-only or
not a directory, store unreachable, unsafe exposure) is one line on stderr and exit status 2,
never a traceback (`--log-level debug` logs it).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pydantic
import uvicorn
from sqlalchemy.engine import make_url

from tether import errors, logs
from tether.config import Settings

if TYPE_CHECKING:
    from tether import node

# tether.node and tether.api are imported once the settings are good and the socket is bound:
# they take a second or two to import, and a refusal before them should be quick.

log = logging.getLogger("tether.startup")

REFUSED = 2  # the exit status of a refusal
INTERRUPTED = 130  # Ctrl-C, as shells report it
_BACKLOG = 2048  # uvicorn's default
# An idle connection is closed by the client first: longer than clients' idle pools (httpx
# 5 s, aiohttp 15 s) and load balancers' (60 s). At uvicorn's 5 s, a request an httpx client
# sent on a connection idle for 5 s could meet the server's close: a ReadError, not a retry.
KEEP_ALIVE_S = 75
# Allocations between collections of the youngest generation (700 by default), then how many
# of those before the next generation's (10, 10). 5,000 gave the throughput of 20,000 (short
# turns 240 -> ~380/s with the rest of this change) with shorter pauses (a stop's tail).
GC_THRESHOLDS = (5_000, 20, 20)


class Refusal(Exception):
    """The process cannot start as configured; the message says why, in one line."""


def serve(options: dict[str, Any]) -> int:
    """Run the server until it is told to stop; answers the exit status."""
    try:
        settings = settings_from(options)
        _configure_logging(settings)
        listeners = bind(settings.host, settings.port, _BACKLOG)
    except Refusal as exc:
        return refuse(exc)
    from tether import node
    from tether.api import create_app

    try:
        the_node = node.Node(settings)  # loads the operator's tools
    except Exception as exc:
        _close(listeners)
        return refuse(exc)
    config = uvicorn.Config(
        create_app(settings, node=the_node),
        log_config=None,  # ours (tether/logs.py): uvicorn's lines are redacted too
        log_level=logging.getLogger().level,
        access_log=False,
        timeout_graceful_shutdown=5,
        timeout_keep_alive=KEEP_ALIVE_S,
        backlog=_BACKLOG,
    )
    server = _Server(config, announce=_serving_line(settings))
    try:
        with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
            return runner.run(_serve(the_node, server, listeners))
    except KeyboardInterrupt:  # Ctrl-C before uvicorn handles signals: while starting
        return INTERRUPTED


async def _serve(
    the_node: node.Node, server: uvicorn.Server, listeners: list[socket.socket]
) -> int:
    try:
        await the_node.start()
    except Exception as exc:
        _close(listeners)
        return refuse(exc)
    tune_gc()
    try:
        await server.serve(sockets=listeners)
    finally:
        await the_node.stop()  # done already by the app's lifespan, unless uvicorn failed first
    return 0


def work(options: dict[str, Any]) -> int:
    """Run a cluster worker until SIGTERM or SIGINT; answers the exit status."""
    try:
        settings = settings_from(options)
        if make_url(settings.resolved_store_url).get_backend_name() != "postgresql":
            raise Refusal(
                "tether worker needs a PostgreSQL store (--store postgresql://…); "
                "on SQLite, `tether serve` runs the workers itself"
            )
        _configure_logging(settings)
        from tether import node

        the_node = node.Node(settings, api=False)
    except Exception as exc:
        return refuse(exc)
    try:
        # the loop `serve` runs on too (uvloop where installed): a worker's every token
        # passes it a few times
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(_work(the_node))
    except KeyboardInterrupt:
        return INTERRUPTED


def tune_gc() -> None:
    """Once started: what starting made lives as long as the process, so it leaves the
    cyclic collector's view (gc.freeze), and collections come less often. A turn's objects
    are freed by their reference counts; the collector found little, but with 500 streams
    it ran ~900 times in 6 s, six of them full passes of ~100 ms each with the event loop
    stopped (a stall of every stream, a late first token for the turns starting)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    return uvicorn.Config(app="tether.api:create_app", loop="auto").get_loop_factory()


async def _work(the_node: node.Node) -> int:
    from tether import node

    stop = node.stop_on_signals()
    try:
        await the_node.start()
    except Exception as exc:
        return refuse(exc)
    tune_gc()
    settings = the_node.settings
    print(
        f"tether worker running (store: {safe_url(settings.resolved_store_url)}, "
        f"bus: {safe_url(settings.bus_url)}, concurrency: {settings.workers}, "
        f"zone: {settings.zone})",
        flush=True,
    )
    await node.run_worker(the_node, stop)
    return 0


def settings_from(options: dict[str, Any]) -> Settings:
    """Settings from the environment, overridden by the options given (None: not given)."""
    try:
        return Settings(**{k: v for k, v in options.items() if v is not None})
    except pydantic.ValidationError as exc:
        problems = [
            f"{error['loc'][0]} (TETHER_{str(error['loc'][0]).upper()}): {error['msg']}"
            if error["loc"]
            else error["msg"]
            for error in exc.errors()
        ]
        raise Refusal(f"invalid setting {'; '.join(problems)}") from exc


def bind(host: str, port: int, backlog: int = _BACKLOG) -> list[socket.socket]:
    """Sockets listening on host:port, one per address the host resolves to (as asyncio's
    create_server would bind them). Connections wait in the backlog until uvicorn serves
    them; holding the address from the first moment means no other process can take it."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise Refusal(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    listeners: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(found):
            listener = socket.socket(family, kind, proto)
            listeners.append(listener)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
            if family == socket.AF_INET6:  # as asyncio does: v4 gets its own socket
                listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            listener.bind(address)
            listener.listen(backlog)
    except OSError as exc:
        for listener in listeners:
            listener.close()
        reason = (exc.strerror or str(exc)).lower()
        raise Refusal(f"cannot listen on {host}:{port}: {reason}") from exc
    return listeners


def _close(listeners: list[socket.socket]) -> None:
    for listener in listeners:
        listener.close()


def refuse(exc: BaseException) -> int:
    """Say why the process cannot start, in one line on stderr; answers the exit status."""
    log.debug("start-up refused", exc_info=exc)
    print(f"tether: {one_line(exc)}", file=sys.stderr, flush=True)
    return REFUSED


def one_line(exc: BaseException) -> str:
    """`exc` in one line fit for an operator, never with a secret: our messages (written for
    them) whole; another library's, its type and first line (the rest is detail: SQL, …)."""
    if isinstance(exc, Refusal | errors.TetherError):
        text = getattr(exc, "message", None) or str(exc)
    else:
        lines = [line for line in str(exc).splitlines() if line.strip()]
        text = f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return logs.redact(" ".join(text.split()))


def _configure_logging(settings: Settings) -> None:
    try:
        logs.configure(settings.log_level)
    except ValueError as exc:
        raise Refusal(f"invalid setting log_level (TETHER_LOG_LEVEL): {exc}") from exc


def _serving_line(settings: Settings) -> str:
    return (
        f"tether serving on http://{settings.host}:{settings.port} "
        f"(store: {safe_url(settings.resolved_store_url)}, bus: {safe_url(settings.bus_url)}, "
        f"workers: {settings.workers})"
    )


def safe_url(url: str | None) -> str:
    """A URL fit for output: no password."""
    if url is None:
        return "in-process"
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return logs.redact(url)


class _Server(uvicorn.Server):
    """uvicorn's server, saying it serves only once it does."""

    def __init__(self, config: uvicorn.Config, announce: str):
        super().__init__(config)
        self.announce = announce

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and not self.should_exit:
            print(self.announce, flush=True)
