"""Logging for Tether processes, with secrets taken out of every line (DESIGN §8).

Secrets reach log lines without anyone meaning to: uvicorn logs a WebSocket's path with its
query string (`?access_token=tth_…`, the documented way for agent-threads clients), a library
at debug level logs request headers. So the redaction is a filter on the handlers, the place
every line passes whichever logger made it, rather than care at each call site:
- Tether keys (`tth_<prefix>_<secret>`): the secret goes, the public prefix stays (it names
  the key in `tether keys list`);
- token-like query parameters (`access_token=`, `api_key=`, `token=`, …);
- credentials after an auth scheme (`Bearer …`, `Basic …`) and API-key header values;
- passwords in URLs (`scheme://user:…@host`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

REDACTED = "[redacted]"
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# loggers whose handlers are set up by others (uvicorn's log config) besides the root's
_WATCHED_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi", "tether")

_KEY = re.compile(r"tth_[A-Za-z0-9_\-]+")
_KEY_PREFIX = re.compile(r"tth_([0-9a-f]{12})_")
_QUERY_SECRET = re.compile(
    r"(?i)\b((?:access_|refresh_|id_)?token|api[_-]?key|apikey|secret|password|passwd)="
    r"[^&\s'\"#]+"
)
_AUTH_SCHEME = re.compile(
    r"(?i)\b(bearer|basic|digest)(\s+)(?!\[redacted\])[A-Za-z0-9._~+/=\-]+(?:\[redacted\])?"
)
_KEY_HEADER = re.compile(
    r"(?i)\b(x-api-key|api-key|x-auth-token)(['\"]?\s*[:=,]\s*b?['\"]?)[^'\"\s,)]+"
)
_URL_PASSWORD = re.compile(r"(://[^:/@\s]+):[^@\s/]+@")


def _key(match: re.Match[str]) -> str:
    token = match.group(0)
    prefix = _KEY_PREFIX.match(token)
    if prefix is None:
        return f"tth_{REDACTED}"
    if token == prefix.group(0) and match.string.startswith(REDACTED, match.end()):
        return token  # redacted already
    return f"{prefix.group(0)}{REDACTED}"


def redact(text: str) -> str:
    """`text` without the secrets it may hold."""
    if not text:
        return text
    text = _KEY.sub(_key, text)
    text = _QUERY_SECRET.sub(rf"\1={REDACTED}", text)
    text = _AUTH_SCHEME.sub(rf"\1\2{REDACTED}", text)
    text = _KEY_HEADER.sub(rf"\1\2{REDACTED}", text)
    return _URL_PASSWORD.sub(rf"\1:{REDACTED}@", text)


def _redact_arg(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, int | float | bool) or value is None:
        return value  # keeps %d and %f working
    shown = str(value)
    cleaned = redact(shown)
    return value if cleaned == shown else cleaned


class RedactSecrets(logging.Filter):
    """Takes secrets out of a record's message, arguments, traceback and stack."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        elif record.msg is not None and not isinstance(record.msg, int | float):
            record.msg = redact(str(record.msg))
        if isinstance(record.args, Mapping):
            record.args = {k: _redact_arg(v) for k, v in record.args.items()}
        elif record.args:
            record.args = tuple(_redact_arg(a) for a in record.args)  # its shape kept: uvicorn's
            # access formatter unpacks it
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def protect() -> None:
    """Put the redaction on every handler of the root logger and of the loggers uvicorn
    configures (idempotent): whoever set logging up, our lines and theirs pass it."""
    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in _WATCHED_LOGGERS)]
    for logger in loggers:
        for handler in logger.handlers:
            if not any(isinstance(f, RedactSecrets) for f in handler.filters):
                handler.addFilter(RedactSecrets())


def configure(level: str) -> None:
    """One handler on stderr for the process, redacting; uvicorn's loggers propagate to it.
    An unknown level is a ValueError."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}: debug, info, warning, error, critical")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(_FORMAT))
    handler.addFilter(RedactSecrets())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(numeric)
    # each migration step is news only when debugging (it would bury a refusal's one line)
    logging.getLogger("alembic").setLevel(max(numeric, logging.WARNING))
    protect()
