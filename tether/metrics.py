"""Prometheus metrics. One registry per process, scraped at /metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

TURNS_STARTED = Counter("tether_turns_started_total", "Turn executions started (attempts)")
TURNS_FINISHED = Counter("tether_turns_finished_total", "Turns ended", ["status"])
SSE_CONNECTIONS = Gauge("tether_sse_connections", "Open SSE connections")
HTTP_REQUESTS = Counter(
    "tether_http_requests_total", "HTTP requests answered", ["method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "tether_http_request_seconds",
    "HTTP request latency to the first byte of the answer",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
