"""Request dependencies: the process's Node and the caller's tenant."""

from __future__ import annotations

from fastapi import Request

from tether import errors
from tether.node import Node
from tether.service import DEFAULT_TENANT, Service


def node(request: Request) -> Node:
    return request.app.state.node  # type: ignore[no-any-return]


def service(request: Request) -> Service:
    return node(request).service


def tenant() -> str:
    """The caller's tenant. Until API keys (DESIGN §8), everyone is the default tenant."""
    return DEFAULT_TENANT


def int_cursor(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    if not cursor.isdigit():
        raise errors.InvalidRequest(f"invalid cursor {cursor!r}")
    return int(cursor)
