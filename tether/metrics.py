"""Prometheus metrics. One registry per process, scraped at /metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

TURNS_STARTED = Counter("tether_turns_started_total", "Turn executions started (attempts)")
TURNS_FINISHED = Counter("tether_turns_finished_total", "Turns ended", ["status"])
SSE_CONNECTIONS = Gauge("tether_sse_connections", "Open SSE connections")
