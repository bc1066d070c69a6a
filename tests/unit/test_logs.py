"""Secrets never reach a log line (DESIGN §8): the redaction every handler applies."""

from __future__ import annotations

import io
import logging

import pytest

from tether import logs

KEY = "tth_0123456789ab_Zx9-abc_DEF123ghiJKL456mnoPQR789stuVWX012yz"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            f'127.0.0.1:5000 - "WebSocket /compat/agent-threads/ws?access_token={KEY}" [accepted]',
            '127.0.0.1:5000 - "WebSocket /compat/agent-threads/ws?access_token=[redacted]"'
            " [accepted]",
        ),
        (f"key {KEY} used", "key tth_0123456789ab_[redacted] used"),
        ("bad key tth_nonsense-here", "bad key tth_[redacted]"),
        (f"Authorization: Bearer {KEY}", "Authorization: Bearer [redacted]"),
        ("(b'authorization', b'Bearer sk-live-123')", "(b'authorization', b'Bearer [redacted]')"),
        ("authorization: Basic dXNlcjpwYXNz", "authorization: Basic [redacted]"),
        ("{'x-api-key': 'sk-ant-123'}", "{'x-api-key': '[redacted]'}"),
        ("GET /x?a=1&api_key=s3cret&b=2", "GET /x?a=1&api_key=[redacted]&b=2"),
        ("postgresql://tether:pw@db:5432/t", "postgresql://tether:[redacted]@db:5432/t"),
        ("turn turn_01arz3 completed in 3 steps", "turn turn_01arz3 completed in 3 steps"),
    ],
)
def test_redact(line: str, expected: str) -> None:
    assert logs.redact(line) == expected
    assert logs.redact(expected) == expected, "redacting twice changes nothing"


def _emit(logger_name: str, *args: object, exc: BaseException | None = None) -> str:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(logs.RedactSecrets())
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        if exc is None:
            logger.info(*args)  # type: ignore[arg-type]
        else:
            try:
                raise exc
            except type(exc):
                logger.exception(*args)  # type: ignore[arg-type]
    finally:
        logger.removeHandler(handler)
    return out.getvalue()


def test_the_filter_redacts_arguments_tracebacks_and_keeps_numbers() -> None:
    # uvicorn's WebSocket line: the path comes as an argument, not in the format string
    line = _emit("t.ws", '%s - "WebSocket %s" [accepted]', "1.2.3.4:1", f"/ws?access_token={KEY}")
    assert KEY not in line and "access_token=[redacted]" in line
    assert _emit("t.num", "%d streams, %.1f s", 3, 2.5).strip() == "3 streams, 2.5 s"
    mapped = _emit("t.map", "key %(key)s", {"key": KEY})
    assert KEY not in mapped and "tth_0123456789ab_[redacted]" in mapped
    failed = _emit("t.exc", "failed", exc=ValueError(f"bad header Bearer {KEY}"))
    assert "Traceback" in failed and "ValueError" in failed
    assert KEY not in failed and "Bearer [redacted]" in failed
    as_bytes = _emit("t.bytes", "headers %s", [(b"authorization", f"Bearer {KEY}".encode())])
    assert KEY not in as_bytes


def test_protect_covers_handlers_others_installed() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    uvicorn_error = logging.getLogger("uvicorn.error")
    uvicorn_error.addHandler(handler)
    try:
        logs.protect()
        logs.protect()  # idempotent
        assert sum(isinstance(f, logs.RedactSecrets) for f in handler.filters) == 1
        uvicorn_error.warning("ws %s", f"/ws?access_token={KEY}")
    finally:
        uvicorn_error.removeHandler(handler)
    assert KEY not in out.getvalue()
    assert "access_token=[redacted]" in out.getvalue()
