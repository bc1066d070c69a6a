"""Hypothesis strategies for what a hostile tenant or a bad byte sends: lone surrogates, NUL
and other odd characters (in values and in keys), JSON nested far past any sane depth,
integers past every machine width, and cursors that look almost right.

What can travel where: a JSON body can carry anything JSON can spell (`"\\ud800"` is valid
JSON text for a lone surrogate); a URL carries only UTF-8 (percent-encoded, NUL included), so
no lone surrogate; a header value carries Latin-1 without control characters.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

SURROGATES = st.characters(categories=["Cs"])
ODD_CHARACTERS = st.sampled_from(
    [
        "\x00",
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
    ]
)
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


def text(max_parts: int = 6) -> st.SearchStrategy[str]:
    """Strings that mix ordinary text with lone surrogates and odd characters."""
    part = st.one_of(st.text(max_size=6), SURROGATES, ODD_CHARACTERS)
    return st.lists(part, min_size=1, max_size=max_parts).map("".join)


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


# Past the 256 levels a validator would allow, under what json.dumps manages on the client.
DEEP = st.builds(nested, st.integers(200, 700), st.sampled_from([None, 1, "x"]), st.just("list"))
DEEP_OBJECTS = st.builds(nested, st.integers(200, 700), st.just("x"), st.just("dict"))

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
        return value[:at] + draw(st.one_of(SURROGATES, SURROGATES, ODD_CHARACTERS)) + value[at:]
    if isinstance(value, int) and not isinstance(value, bool):
        return draw(HUGE_INTEGERS)
    return value
