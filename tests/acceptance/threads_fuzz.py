"""The agent-threads WebSocket's part of the fuzz campaign (tests/acceptance/fuzz.py;
run by test_compat_schemathesis.py). It has no OpenAPI and no seed contract, so Hypothesis
makes its client messages directly, out of nasty data (tests/acceptance/nasty.py):
subscriptions to real streams, to other tenants' and to made-up ones, with `afterSeq` values
of every JSON type and size; unsubscriptions; pongs; handshakes again; messages of unknown
types; JSON nested past any limit, lone surrogates (escaped, as JSON text may spell them),
text that is not JSON.

Every answer must be a message the protocol knows, an error only `INVALID_MESSAGE` or
`UNKNOWN_STREAM` (a `REPLAY_FAILED` is this surface's 5xx), every replay must end, and the
connection must stay open: after every message a marker (a message of an unknown type) comes
back as its `INVALID_MESSAGE`, and the server still answers a handshake at the end."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from websockets.sync.client import ClientConnection, connect

from tests.acceptance import fuzz, nasty

MAX_SEQ = 2**53 - 1  # what the JavaScript client holds exactly: afterSeq's bound
KNOWN = {"server-hello", "event", "replay-end", "error", "ping"}
ERRORS_ALLOWED = {"INVALID_MESSAGE", "UNKNOWN_STREAM"}


@st.composite
def messages(draw: st.DrawFn, streams: list[str]) -> str:
    """A client message as sent on the wire: half of them subscriptions, most of those to a
    real stream, each with one nasty spot at most."""
    valid_after = st.one_of(st.none(), st.integers(0, MAX_SEQ), st.just(MAX_SEQ))
    nasty_after = st.one_of(
        nasty.INTEGERS, nasty.FLOATS, st.booleans(), nasty.NUMERIC_LOOKALIKES, nasty.JSON
    )
    real = st.sampled_from(streams)
    made_up = st.one_of(
        real.map(str.upper),
        st.just("session:01arz3ndektsv4rrffq69g5fav.local"),  # no such session
        nasty.text().map(lambda s: "session:" + s),
        nasty.text(),
        nasty.JSON,
    )
    roll = draw(st.sampled_from(range(20)))
    if roll < 10:  # a subscription: a real stream from a valid position, or one nasty spot
        stream = draw(made_up if roll < 2 else real)
        after = draw(nasty_after if roll in (2, 3, 4) else valid_after)
        message: Any = {"type": "subscribe", "streamId": stream}
        if after is not None or draw(st.booleans()):
            message["afterSeq"] = after
    elif roll < 12:
        message = {"type": "unsubscribe", "streamId": draw(st.one_of(real, made_up))}
    elif roll == 12:
        message = {"type": "hello", "version": draw(st.sampled_from([1, 1.0]))}
    elif roll == 13:
        message = {"type": "pong", **draw(st.dictionaries(nasty.text(), nasty.JSON, max_size=2))}
    elif roll < 16:
        message = {"type": draw(nasty.text()), "streamId": draw(st.one_of(real, made_up))}
    elif roll < 18:
        message = draw(nasty.JSON)
    elif roll == 18:
        return draw(nasty.storable_text())  # not JSON
    else:
        return '{"type": "subscribe", "streamId": "x", "afterSeq": 1e400}'  # Infinity
    return json.dumps(message)  # ensure_ascii: a lone surrogate goes as its JSON escape


class Session:
    """One connection: sends a message, then a marker, and reads until the marker's answer,
    checking every frame on the way (and answering pings, or the server would hang up)."""

    def __init__(self, ws: ClientConnection, failures: list[str]):
        self.ws = ws
        self.failures = failures
        self.seen: dict[str, int] = {}
        self.markers = 0

    def exchange(self, raw: str) -> None:
        self.markers += 1
        marker = f"fuzz-marker-{self.markers}"
        self.ws.send(raw)
        self.ws.send(json.dumps({"type": marker}))
        while True:
            frame = self.ws.recv(timeout=30)
            try:
                message = json.loads(frame)
                kind = message["type"]
            except (ValueError, TypeError, KeyError):
                self.failures.append(f"{raw[:200]!r} -> a frame that is no message: {frame!r:.300}")
                continue
            self.seen[kind] = self.seen.get(kind, 0) + 1
            if kind == "ping":
                self.ws.send(json.dumps({"type": "pong"}))
            elif kind not in KNOWN:
                self.failures.append(f"{raw[:200]!r} -> unknown message {message!r:.300}")
            elif kind == "error" and message.get("code") not in ERRORS_ALLOWED:
                self.failures.append(f"{raw[:200]!r} -> {message!r:.300}")
            elif kind == "error" and marker in message.get("message", ""):
                return


def run(url: str, key: str, streams: list[str]) -> tuple[str, list[str]]:
    """`fuzz.CASES` messages on one connection; (the run's record, its failures)."""
    socket = url.replace("http", "ws", 1) + f"/compat/agent-threads/ws?access_token={key}"
    failures: list[str] = []
    # no protocol-level keepalive: its pings draw from the global `random` on the client's
    # own thread, which Hypothesis takes for a strategy using it (the server pings in JSON)
    with connect(socket, open_timeout=30, close_timeout=5, max_size=None, ping_interval=None) as ws:
        ws.send(json.dumps({"type": "hello", "version": 1}))
        assert json.loads(ws.recv(timeout=30))["type"] == "server-hello"
        session = Session(ws, failures)

        @given(raw=messages(streams))
        @settings(
            max_examples=fuzz.CASES,
            deadline=None,
            database=None,
            phases=[Phase.generate],  # the connection's state moves on: no replay
            suppress_health_check=list(HealthCheck),
        )
        def one(raw: str) -> None:
            session.exchange(raw)

        one()
        ws.send(json.dumps({"type": "hello", "version": 1}))  # still open, still answering
        session.exchange(json.dumps({"type": "pong"}))
    if session.seen.get("server-hello", 0) < 2:
        failures.append("no answer to a handshake after the run")
    if session.markers < fuzz.CASES:
        failures.append(f"only {session.markers} messages made it")
    if not session.seen.get("replay-end"):
        failures.append("no subscription replayed")
    shown = ", ".join(f"{kind} {n}" for kind, n in sorted(session.seen.items()))
    record = f"fuzz agent-threads: {session.markers} cases ({shown}), {len(failures)} failures"
    return record, failures
