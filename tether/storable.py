"""What Tether can store and read back: text that is valid Unicode, JSON that is valid JSON
and not nested deeper than a limit (DESIGN §8 "Input").

Two uses, one definition:
- `check` refuses a value at the edge (api/input_guard.py calls it on every request body), so
  nothing unstorable is ever written;
- `loads_stored` reads a stored JSON document back (the store's engines use it for every JSON
  column), repairing what an older version or a bug may have stored, so no stored row can make
  a read fail for a whole tenant.

Why each rule:
- A lone surrogate (U+D800..U+DFFF not in a pair) is representable in a Python str and in a
  JSON escape, but not in UTF-8: SQLite's driver and every response fail on it, PostgreSQL
  refuses it in JSONB.
- U+0000 is valid JSON and UTF-8, but PostgreSQL stores it in neither `text` nor `jsonb`:
  refused on every backend, so both answer the same.
- NaN and Infinity are accepted by Python's parser but are not JSON: no response can hold them.
- Nesting: see MAX_DEPTH.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from tether import errors

# How deep a JSON body may nest (an object or array is one level; a scalar in the top-level
# object sits at depth 1). Honest documents stay under ten; 64 leaves room for any of them,
# while everything that renders a stored value wraps it a few levels deeper again (a page of
# sessions, a session, its metadata): pydantic gives up serializing at 255 levels and
# Python's json at about 1000, so a value under 64 renders anywhere.
MAX_DEPTH = 64

# A stored value read back deeper than this (only an older version could have written one)
# has its deepest parts replaced by null, so that reading it cannot fail.
READ_DEPTH = 128


class _Found(Exception):
    """Raised from deep in a value, collecting the path to it on the way up."""

    def __init__(self, kind: type[errors.UnstorableInput], reason: str):
        self.kind = kind
        self.reason = reason
        self.path: list[str | int] = []


def _has_surrogate(text: str) -> bool:
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _check_text(text: str) -> None:
    if "\x00" in text:
        raise _Found(errors.InvalidText, "text must not contain U+0000 (NUL)")
    if _has_surrogate(text):
        lone = next(c for c in text if "\ud800" <= c <= "\udfff")
        raise _Found(
            errors.InvalidText, f"text must be valid Unicode: U+{ord(lone):04X} is a lone surrogate"
        )


def _walk(value: Any, depth: int, max_depth: int) -> None:
    if isinstance(value, str):
        _check_text(value)
    elif isinstance(value, dict | list):
        if depth >= max_depth:
            raise _Found(errors.NestingTooDeep, f"JSON nested deeper than {max_depth} levels")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            try:
                if isinstance(key, str):
                    _check_text(key)  # a key's own problem: its path ends at the key
                _walk(item, depth + 1, max_depth)
            except _Found as found:
                found.path.append(key)
                raise
    elif isinstance(value, float) and not math.isfinite(value):
        raise _Found(errors.InvalidNumber, f"{value} is not a JSON number")


def json_path(parts: list[str | int]) -> str:
    """`$.metadata.a[0]` from the parts of a path, outermost first."""
    out = "$"
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{printable(part)}"
    return out


def printable(text: str, limit: int = 64) -> str:
    """`text` as it can be shown in a message, and stored: lone surrogates and NULs escaped,
    at most `limit` characters of it."""
    shown = text[:limit].encode("utf-8", "backslashreplace").decode("utf-8")
    return shown.replace("\x00", "\\x00")


def check(value: Any, where: str = "body", max_depth: int = MAX_DEPTH) -> None:
    """Raise the UnstorableInput for the first thing in `value` (parsed JSON, or text) that
    cannot be stored and read back; its message and `details` say where."""
    try:
        _walk(value, 0, max_depth)
    except _Found as found:
        path = json_path(list(reversed(found.path)))
        shown = path if len(path) <= 80 else path[:77] + "..."
        raise found.kind(
            f"{where} {shown}: {found.reason}", details={"in": where, "path": path}
        ) from None


def parse(raw: bytes | str) -> Any:
    """Parse a JSON body and `check` it. Not JSON at all: ValueError (the route then answers
    as it always does); too deep for the parser itself: NestingTooDeep."""
    try:
        value = json.loads(raw)
    except RecursionError:
        raise errors.NestingTooDeep(
            f"body $: JSON nested deeper than {MAX_DEPTH} levels",
            details={"in": "body", "path": "$"},
        ) from None
    check(value)
    return value


# --- reading back ------------------------------------------------------------------------------

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # in a str, any surrogate is a lone one


def sanitize(value: Any, max_depth: int = READ_DEPTH, _depth: int = 0) -> Any:
    """`value` made renderable: lone surrogates replaced by U+FFFD, non-finite
    numbers and parts deeper than `max_depth` by None. Unchanged parts are not copied."""
    if isinstance(value, str):
        return _clean_text(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict | list):
        if _depth >= max_depth:
            return None
        if isinstance(value, list):
            items = [sanitize(v, max_depth, _depth + 1) for v in value]
            return value if all(a is b for a, b in zip(items, value, strict=True)) else items
        cleaned = {
            _clean_text(k) if isinstance(k, str) else k: sanitize(v, max_depth, _depth + 1)
            for k, v in value.items()
        }
        same = len(cleaned) == len(value) and all(
            k in value and cleaned[k] is value[k] for k in cleaned
        )
        return value if same else cleaned
    return value


def _clean_text(text: str) -> str:
    return _LONE_SURROGATE.sub("\ufffd", text) if _has_surrogate(text) else text


def _suspicious(text: str) -> bool:
    """Whether a stored document may hold something `sanitize` repairs. Cheap (scans in C),
    so the common document is parsed and returned as it is."""
    if "\\ud" in text or "\\uD" in text:
        return True  # a surrogate's escape (most likely half of a valid pair)
    if "NaN" in text or "Infinity" in text:
        return True
    return text.count("[") + text.count("{") > READ_DEPTH


def loads_stored(text: str) -> Any:
    """A JSON column's value as stored, made renderable (see `sanitize`). A document too deep
    for the parser itself reads as None."""
    try:
        value = json.loads(text)
    except RecursionError:
        return None
    return sanitize(value) if _suspicious(text) else value


def check_metadata(metadata: dict[str, Any] | None, what: str, limit: int) -> None:
    """Metadata rides along with every read of its object: bounded (DESIGN §8)."""
    if not metadata:
        return
    size = len(json.dumps(metadata, ensure_ascii=False, separators=(",", ":")).encode())
    if size > limit:
        raise errors.MetadataTooLarge(
            f"{what} metadata is {size} bytes as JSON; the limit is {limit}",
            details={"size": size, "limit": limit},
        )
