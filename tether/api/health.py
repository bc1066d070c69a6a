"""Liveness, readiness and metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tether.api.deps import node
from tether.node import Node

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "not ready"}})
async def readyz(the_node: Node = Depends(node)) -> Any:
    try:
        await the_node.service.ping()
    except Exception as exc:
        return JSONResponse(
            {"status": "unavailable", "store": f"{type(exc).__name__}"}, status_code=503
        )
    busy = the_node.worker.busy if the_node.worker else 0
    # Still ready with the bus down: everything but live streams works, and they say 503.
    bus = "ok" if the_node.service.live else "down"
    return {"status": "ready", "store": "ok", "bus": bus, "running_turns": busy}


@router.get("/metrics", response_class=Response)
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
