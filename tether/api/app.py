"""The ASGI app factory. The lifespan owns the Node; nothing opens at import."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

import tether
from tether import logs
from tether.api import admin, console, errors, health, sse, tenant, v1, webhooks
from tether.api.compat import (
    agent_threads,
    common,
    factory,
    gumloop,
    truefoundry,
    truefoundry_drafts,
    truefoundry_edge,
)
from tether.api.input_guard import InputGuard
from tether.api.limits import BodyLimit
from tether.api.request_id import RequestId
from tether.api.stream_guard import EndRevokedStreams
from tether.config import Settings
from tether.node import Node
from tether.runtime.tools import ToolRegistry


class App(FastAPI):
    """FastAPI, handing SSE answers the server's own `send` (api/sse.py)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope[sse.DIRECT_SEND] = send
        await super().__call__(scope, receive, send)


def create_app(
    settings: Settings | None = None,
    tools: ToolRegistry | None = None,
    *,
    node: Node | None = None,
) -> FastAPI:
    """`node`: one already started (`tether serve` starts it before it serves, see
    tether/startup.py); the app stops it when it ends. Without it, the lifespan starts one."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        logs.protect()  # whoever configured logging: no secret in any line
        the_node = node or Node(settings, tools)
        if node is None:
            await the_node.start()
        app.state.node = the_node
        try:
            yield
        finally:
            await the_node.stop()

    app = App(
        title="Tether",
        version=tether.__version__,
        description="Stateful agent execution: sessions, turns, live streams, control.",
        lifespan=lifespan,
    )
    errors.install(app)
    app.include_router(health.router)
    app.include_router(v1.router)
    app.include_router(tenant.router)
    app.include_router(admin.router)
    app.include_router(webhooks.router)
    app.include_router(gumloop.router, include_in_schema=False)  # its contract: docs/compat
    app.include_router(factory.router, include_in_schema=False)
    app.include_router(truefoundry.router)
    app.include_router(truefoundry_drafts.router)
    app.include_router(agent_threads.router)
    console.install(app)
    app.add_middleware(EndRevokedStreams)
    app.add_middleware(  # inside BodyLimit: it reads only bodies already found small enough
        InputGuard,
        answers=[
            (gumloop.PREFIX, common.answer_with(gumloop.render)),
            (factory.PREFIX, common.answer_with(factory.render)),
            (truefoundry.ROOT, truefoundry_edge.from_exception),
        ],
        default=errors.answer,
    )
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestId)
    return app
