"""Hypothesis strategies for what a hostile tenant or a bad byte sends: lone surrogates, NUL
and other odd characters (in values and in keys), JSON nested far past any sane depth,
integers past every machine width, and cursors that look almost right.

Two families, because the input guard (tether/api/input_guard.py) refuses one of them at the
edge: *unstorable* values (a lone surrogate, a NUL, nesting past 64 levels) must be refused
with 4xx and leave nothing stored; *storable but nasty* values (valid Unicode of every odd
kind, nesting just under the limit, huge numbers, SSE's own line breaks) get past the guard
into storage, which is where a read can later break. Strategies mix both, mostly the second.

What can travel where: a JSON body can carry anything JSON can spell (`"\\ud800"` is valid
JSON text for a lone surrogate); a URL carries only UTF-8 (percent-encoded, NUL included), so
no lone surrogate; a header value carries Latin-1 without control characters.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from hypothesis import strategies as st

SURROGATES = st.characters(categories=["Cs"])
# valid Unicode that careless code still trips on: all of it is stored and must read back
STORABLE_ODD = st.sampled_from(
    [
        "\x1f",
        "\x7f",
        "\x85",
        "²",  # '²'.isdigit() is True, int('²') raises
        "٣",  # an Arabic-Indic 3: int() takes it
        "\U0001d7d8",  # a mathematical double-struck 0
        "\u202e",  # right-to-left override
        "\ufeff",
        "\uffff",
        "\U0010ffff",
        "e\u0301",
        "'",
        '"',
        "\\",
        "%",
        "/",
        "..",
        "\n",
        "\r",  # an SSE line break of its own, as are \n and \r\n
        "\r\n",
        "\n\ndata: x\nid: 9\n\n",  # what an SSE frame would look like, were it not escaped
        "\u2028",  # a line separator: a line break to some JSON readers
        "\U0001f600",  # outside the BMP: a surrogate pair in JSON escapes, valid
        "\ufdd0",  # a noncharacter, still valid UTF-8
        "\\u0000",  # the six characters of an escaped NUL, not a NUL
    ]
)
ODD_CHARACTERS = st.one_of(STORABLE_ODD, st.just("\x00"))
HUGE_INTEGERS = st.sampled_from(
    [
        2**31 - 1,
        2**31,
        2**53,
        2**53 + 1,
        2**63 - 1,
        2**63,
        2**64,
        -(2**31) - 1,
        -(2**63) - 1,
        10**30,
        -(10**30),
        10**1000,  # Python refuses int <-> str past 4,300 digits: stay under
    ]
)
INTEGERS = st.one_of(HUGE_INTEGERS, st.integers())
FLOATS = st.one_of(
    st.sampled_from([1e308, -1e308, 5e-324, -0.0, 0.1, 1.5]),
    st.floats(allow_nan=False, allow_infinity=False),  # JSON has no NaN nor Infinity
)


# a number of seconds (an expiry, a timeout) from the sensible to what no datetime can add
DURATIONS = st.one_of(
    st.sampled_from([1e-9, 0.5, 3600, 86400 * 365, 2**31, 1e12, 2**63, 1e308, 10**30]),
    st.floats(min_value=0, exclude_min=True, allow_infinity=False),
)


def storable_text(max_parts: int = 6) -> st.SearchStrategy[str]:
    """Strings of valid Unicode without NUL, mixing ordinary text with odd characters."""
    plain = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=6)
    part = st.one_of(plain, STORABLE_ODD)
    return st.lists(part, min_size=1, max_size=max_parts).map("".join)


def unstorable_text(max_parts: int = 6) -> st.SearchStrategy[str]:
    """Strings with at least one lone surrogate or NUL among ordinary and odd text."""
    bad = st.one_of(SURROGATES, st.just("\x00"))
    part = st.one_of(st.text(max_size=6), SURROGATES, ODD_CHARACTERS)
    return st.builds(
        lambda head, poison, tail: head + poison + tail,
        st.lists(part, max_size=max_parts // 2).map("".join),
        bad,
        st.lists(part, max_size=max_parts // 2).map("".join),
    )


def text(max_parts: int = 6) -> st.SearchStrategy[str]:
    """Nasty strings, three in four of them storable (the guard lets them through)."""
    good = storable_text(max_parts)
    return st.one_of(good, good, good, unstorable_text(max_parts))


def url_text(max_parts: int = 6) -> st.SearchStrategy[str]:
    """What a URL can carry: odd characters, NUL, non-ASCII digits; no lone surrogate."""
    part = st.one_of(st.text(max_size=6).filter(_encodable), ODD_CHARACTERS)
    return st.lists(part, min_size=1, max_size=max_parts).map("".join)


def _encodable(value: str) -> bool:
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def sendable(value: str) -> bool:
    return all(" " <= c <= "~" or "\xa0" <= c <= "\xff" for c in value) and value == value.strip()


# a header value as HTTP clients can send it: Latin-1 without control characters or outer
# spaces (UTF-8 bytes of other text arrive as their Latin-1 reading, as a server decodes them)
HEADER_TEXT = st.one_of(
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF)),
    url_text().map(lambda s: s.encode().decode("latin-1")),
).filter(sendable)


def _opaque(*parts: Any) -> str:
    """An opaque cursor as a keyset list encodes it (base64url JSON, the inbox's), holding
    `parts`."""
    return base64.urlsafe_b64encode(json.dumps(list(parts)).encode()).decode().rstrip("=")


_INT_ID = "int_01arz3ndektsv4rrffq69g5fav"
# opaque cursors well formed but for their values: times no store holds, other types
OPAQUE_CURSORS = [
    _opaque("0001-01-01T00:00:00+14:00", "0001-01-01T00:00:00+14:00", _INT_ID),
    _opaque("9999-12-31T23:59:59-14:00", "9999-12-31T23:59:59-14:00", _INT_ID),
    _opaque("2030-01-01T00:00:00", "2030-01-01T00:00:00", _INT_ID),
    _opaque(10**30, None, [_INT_ID]),
    _opaque("2030-01-01T00:00:00+00:00", "2030-01-01T00:00:00+00:00", "\x00"),
]

# Every query parameter and position header of every operation is swept with each of these
# (tests/acceptance/fuzz.py `sweep`): the edge values a probe tries first.
EDGE_VALUES = [
    "99999999999999999999",
    str(2**31 - 1),
    str(2**31),
    str(2**53 + 1),
    str(2**63 - 1),
    str(2**63),
    "9" * 5000,
    "²",
    "٣",
    "-1",
    "+5",
    " 5",
    "5_0",
    "5.0",
    "0",
    "",
    "garbage",
    "nope",
    "\x00",
    "turn_01arz3ndektsv4rrffq69g5fav",
    "01arz3ndektsv4rrffq69g5fav.local",
    *OPAQUE_CURSORS,
]

# digits a careless parser takes for a number: too big for 32 or 64 bits or for int(), or
# not ASCII ('²'.isdigit() is True; int('٣') is 3)
NUMERIC_LOOKALIKES = st.one_of(
    st.sampled_from(
        [
            "99999999999999999999",
            str(2**31),
            str(2**32),
            str(2**53 + 1),
            str(2**63),
            str(2**64),
            "9" * 5000,
            "²",
            "٣",
            "1²",
            "\U0001d7d8",  # a mathematical 0
        ]
    ),
    HUGE_INTEGERS.map(str),
)
CURSORS = st.one_of(
    NUMERIC_LOOKALIKES,
    st.sampled_from(
        [
            "%C2%B2",
            "-1",
            "+5",
            " 5",
            "5_0",
            "5.0",
            "0x10",
            "1e3",
            "",
            "null",
            "agt_01arz3ndektsv4rrffq69g5fav",
            "01arz3ndektsv4rrffq69g5fav.local",
            "3:msg_01arz3ndektsv4rrffq69g5fav:99999999999999",
            *OPAQUE_CURSORS,
        ]
    ),
    INTEGERS.map(str),
    url_text(),
)


def nested(depth: int, leaf: Any, kind: str) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value] if kind == "list" else {"a": value}
    return value


# Around the input guard's 64 levels (storable.MAX_DEPTH; a field is already a level or two
# down), and far past the 256 levels a validator would allow, under what json.dumps manages on
# the client: the first are mostly stored and must render wherever they are wrapped.
_DEPTHS = st.one_of(st.integers(55, 66), st.integers(55, 66), st.integers(200, 700))
DEEP = st.builds(nested, _DEPTHS, st.sampled_from([None, 1, "x"]), st.just("list"))
DEEP_OBJECTS = st.builds(nested, _DEPTHS, st.just("x"), st.just("dict"))

LEAVES = st.one_of(st.none(), st.booleans(), INTEGERS, FLOATS, text())
JSON: st.SearchStrategy[Any] = st.one_of(
    st.recursive(
        LEAVES,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(text(), children, max_size=4),
        ),
        max_leaves=12,
    ),
    DEEP,
    DEEP_OBJECTS,
)
# what a metadata-like field (a JSON object) may hold
OBJECTS = st.one_of(
    st.dictionaries(text(), JSON, max_size=4),
    DEEP_OBJECTS,
    st.builds(lambda key, value: {key: value}, text(), DEEP),
)


@st.composite
def mutated(draw: st.DrawFn, value: Any) -> Any:
    """`value` with one spot along a random path replaced, or a key added, with nasty JSON."""
    if isinstance(value, dict) and value and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(value)))
        return {**value, key: draw(mutated(value[key]))}
    if isinstance(value, list) and value and draw(st.booleans()):
        at = draw(st.integers(0, len(value) - 1))
        return [*value[:at], draw(mutated(value[at])), *value[at + 1 :]]
    if isinstance(value, dict) and draw(st.booleans()):
        return {**value, draw(text()): draw(JSON)}
    if isinstance(value, str) and draw(st.booleans()):
        return draw(text())
    return draw(JSON)


@st.composite
def poisoned(draw: st.DrawFn, value: Any) -> Any:
    """`value` kept in shape but for one spiked spot: a string gets a lone surrogate or an
    odd character, an object an extra key holding deep nesting or nasty JSON, a number a huge
    value. One spot only, so that a body the schema allows still passes validation and the
    poison reaches what stores it, as a hostile tenant's would."""
    if isinstance(value, dict) and value and draw(st.integers(0, 3)):
        key = draw(st.sampled_from(sorted(value)))
        return {**value, key: draw(poisoned(value[key]))}
    if isinstance(value, list) and value and draw(st.integers(0, 3)):
        at = draw(st.integers(0, len(value) - 1))
        return [*value[:at], draw(poisoned(value[at])), *value[at + 1 :]]
    if isinstance(value, dict):
        return {**value, draw(text()): draw(st.one_of(DEEP, DEEP_OBJECTS, JSON))}
    if isinstance(value, str):
        at = draw(st.integers(0, len(value)))
        return value[:at] + draw(st.one_of(SURROGATES, ODD_CHARACTERS)) + value[at:]
    if isinstance(value, int) and not isinstance(value, bool):
        return draw(HUGE_INTEGERS)
    return value
