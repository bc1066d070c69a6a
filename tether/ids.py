"""Identifiers: lowercase Crockford ULIDs with a type prefix; session ids carry their zone."""

from __future__ import annotations

import re

from ulid import ULID

from tether import errors

_ULID = r"[0-9a-hjkmnp-tv-z]{26}"
ZONE_PATTERN = r"[a-z0-9-]{1,32}"
SESSION_PATTERN = rf"^{_ULID}\.{ZONE_PATTERN}$"


def pattern(prefix: str) -> str:
    return rf"^{prefix}_{_ULID}$"


_PREFIXED = {
    prefix: re.compile(rf"^{prefix}_{_ULID}$")
    for prefix in ("agt", "turn", "msg", "int", "key", "aud", "whk", "dlv")
}
_SESSION = re.compile(SESSION_PATTERN)


def new_ulid() -> str:
    return str(ULID()).lower()


def new(prefix: str) -> str:
    return f"{prefix}_{new_ulid()}"


def new_session_id(zone: str) -> str:
    return f"{new_ulid()}.{zone}"


def valid(prefix: str, value: str) -> bool:
    return _PREFIXED[prefix].match(value) is not None


def check(prefix: str, value: str) -> str:
    """Return `value` if it is a well-formed id of this kind, else raise InvalidId."""
    if not _PREFIXED[prefix].match(value):
        raise errors.InvalidId(f"{value!r} is not a valid {prefix}_ id")
    return value


def check_session(value: str) -> str:
    if not _SESSION.match(value):
        raise errors.InvalidId(f"{value!r} is not a valid session id (<ulid>.<zone>)")
    return value


def zone_of(session_id: str) -> str:
    return session_id.rpartition(".")[2]
