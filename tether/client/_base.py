"""What the sync and async clients share: configuration, headers, and the retry policy."""

from __future__ import annotations

import json
import os
import random
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

import tether
from tether.client import _calls, errors

DEFAULT_URL = "http://127.0.0.1:8700"
USER_AGENT = f"tether-python/{tether.__version__}"


@dataclass(frozen=True, slots=True)
class Config:
    """How a client talks to the server."""

    base_url: str
    api_key: str | None
    timeout: float  # seconds for a plain call (connect, read, write)
    max_retries: int  # extra attempts of a call that may be retried
    stream_timeout: float  # seconds of silence after which a stream reconnects
    max_reconnects: int  # consecutive stream reconnects without a new event before giving up

    @classmethod
    def build(
        cls,
        base_url: str | None,
        api_key: str | None,
        timeout: float,
        max_retries: int,
        stream_timeout: float,
        max_reconnects: int,
    ) -> Config:
        url = base_url or os.environ.get("TETHER_URL") or DEFAULT_URL
        key = api_key if api_key is not None else os.environ.get("TETHER_API_KEY") or None
        if max_retries < 0 or max_reconnects < 0:
            raise ValueError("max_retries and max_reconnects must be >= 0")
        return cls(url.rstrip("/"), key, timeout, max_retries, stream_timeout, max_reconnects)

    def headers(self) -> dict[str, str]:
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def http_timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0))

    def stream_http_timeout(self) -> httpx.Timeout:
        # the server sends a keep-alive every TETHER_SSE_PING_S (15 s by default): a longer
        # silence means a dead connection, to be replaced
        return httpx.Timeout(self.timeout, read=self.stream_timeout)


def new_idempotency_key() -> str:
    return f"sdk-{uuid.uuid4().hex}"


def json_body(value: Any) -> tuple[bytes, dict[str, str]]:
    """`value` as a JSON request body, and its content type. What JSON cannot hold (NaN,
    Infinity, a lone surrogate in a string) is sent all the same, for the server to refuse
    with the error that says what and where (`InvalidNumber`, `InvalidText`), as for any other
    input it cannot store, rather than a bare ValueError here."""
    try:
        body = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:  # a lone surrogate: as an escape (\ud800), which JSON allows
        body = json.dumps(value, separators=(",", ":")).encode()
    return body, {"Content-Type": "application/json"}


def request_args(config: Config, call: _calls.Call[Any], key: str | None) -> dict[str, Any]:
    """httpx.request(...) arguments for `call`."""
    headers = {"Idempotency-Key": key} if key else {}
    args: dict[str, Any] = {"params": dict(call.params), "headers": headers}
    if call.json is not None:
        args["content"], content_type = json_body(call.json)
        headers.update(content_type)
    if call.timeout is not None:
        args["timeout"] = httpx.Timeout(config.timeout, read=call.timeout)
    return args


def retryable(call: _calls.Call[Any], failure: Exception) -> bool:
    """May `call` be sent again after `failure`? Only when a repeat cannot do anything twice:
    the first attempt never reached the server, or the call is safe to repeat (a read, a stop,
    a create carrying an Idempotency-Key)."""
    safe = call.retry is _calls.Retry.SAFE or call.creates
    if isinstance(failure, httpx.ConnectError | httpx.ConnectTimeout):
        return True  # nothing was sent
    if isinstance(failure, httpx.TransportError):
        return safe
    if isinstance(failure, errors.IdempotencyKeyInFlight):
        return call.creates  # our own earlier attempt is still being answered: wait for it
    if isinstance(failure, errors.APIError):
        return safe and failure.status in (502, 503, 504)
    return False


def backoff_s(attempt: int, retry_after: float | None = None, cap: float = 4.0) -> float:
    """Exponential backoff with jitter, or the server's Retry-After when it gave one."""
    if retry_after is not None:
        return min(retry_after, 30.0)
    return float(min(cap, 0.05 * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0))


def retry_after_of(failure: Exception | None) -> float | None:
    return failure.retry_after if isinstance(failure, errors.APIError) else None
