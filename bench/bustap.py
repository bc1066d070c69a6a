"""A listener on cluster mode's Redis bus: what is published on a session's channel, in the
order Redis delivers it, to count the live tokens of a turn published after its terminal event.

A worker that keeps streaming a turn that has ended shows here and nowhere else: every reader
of the API drops the deltas of a turn whose end it has passed (tether/streaming.py), so the
clients never see them, but the worker still spent them (and the model call still ran). A
session's committed events and its live deltas share one channel (tether/bus/redis.py), and
one subscriber connection gets a channel's messages in the order Redis received them, so
"after" is Redis's own order, whichever process published.

The messages are read in the wire format of tether/bus/redis.py (`{"k": "e", "events": [...]}`
and `d <turn> <message> <offset> <length>` + the delta's SSE JSON). Anything else is counted
as `undecodable`, and a stop whose terminal event was never seen makes its figure unsound
rather than 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from tether.bus import keys

TERMINAL = frozenset({"turn.completed", "turn.failed", "turn.cancelled"})
SUBSCRIBE_TIMEOUT_S = 5.0


@dataclass(slots=True)
class Published:
    """One message seen on a session's channel; `at` is its arrival (time.monotonic())."""

    at: float
    events: list[tuple[str, str | None]] = field(default_factory=list)  # (type, turn id)
    delta_turn: str | None = None  # a live delta: its turn
    delta_tokens: int = 0  # and its tokens (one per space, as everywhere in bench/)


@dataclass(slots=True)
class AfterEnd:
    """What a session's channel carried after its turns ended."""

    terminal_seen: bool = False
    messages: int = 0  # live deltas published after their turn's terminal event
    tokens: int = 0
    last_after_s: float | None = None  # the last of them, seconds after the terminal event


def after_end(log: list[Published]) -> AfterEnd:
    """Deltas of a turn that came after that turn's terminal event, in channel order."""
    out = AfterEnd()
    ended: dict[str, float] = {}  # turn -> arrival of its terminal event
    for item in log:
        for type_, turn in item.events:
            if type_ in TERMINAL and turn is not None:
                ended.setdefault(turn, item.at)
                out.terminal_seen = True
        if item.delta_turn is not None and item.delta_turn in ended:
            out.messages += 1
            out.tokens += item.delta_tokens
            out.last_after_s = item.at - ended[item.delta_turn]
    return out


def decode(data: str, at: float) -> Published | None:
    """A message of tether's Redis bus; None when it is not in the format we know: events as
    `{"k": "e", "events": [...]}`, a delta as `d <turn> <message> <offset> <length>` then, on
    the next line, its SSE frame's JSON past `{"seq":N,` (tether/bus/redis.py)."""
    try:
        if data.startswith("d "):
            head, _, wire = data.partition("\n")
            _, turn, _message, _offset, _length = head.split(" ")
            text = json.loads("{" + wire)["data"]["delta"]
            return Published(at, delta_turn=turn, delta_tokens=str(text).count(" "))
        raw = json.loads(data)
        if raw["k"] == "e":
            events = [(str(e["type"]), e.get("turn_id")) for e in raw["events"]]
            return Published(at, events=events)
    except (ValueError, KeyError, TypeError):
        pass
    return None


class BusTap:
    """Usage: `tap = BusTap(url, prefix)`; `await tap.watch(session_id)` before the session's
    turn starts; read `tap.log`; `await tap.close()`."""

    def __init__(self, url: str, prefix: str) -> None:
        self.names = keys.Names(prefix)
        self._redis = aioredis.from_url(url, decode_responses=True)
        self._pubsub = self._redis.pubsub()
        self._confirmed: dict[str, asyncio.Future[None]] = {}
        self._reader: asyncio.Task[None] | None = None
        self.log: defaultdict[str, list[Published]] = defaultdict(list)  # by session
        self.undecodable = 0

    async def watch(self, session_id: str) -> None:
        """Subscribe to the session's channel; returns once Redis confirmed it, so everything
        published afterwards is seen."""
        channel = self.names.session(session_id)
        confirmed = self._confirmed[channel] = asyncio.get_running_loop().create_future()
        await self._pubsub.subscribe(channel)
        if self._reader is None:  # a pubsub connection can only be read once subscribed
            self._reader = asyncio.create_task(self._read())
        await asyncio.wait(
            {confirmed, self._reader},
            timeout=SUBSCRIBE_TIMEOUT_S,
            return_when=asyncio.FIRST_COMPLETED,
        )
        self._check_reader()
        if not confirmed.done():
            raise TimeoutError(f"the bus tap: no confirmation of {channel}")

    def _check_reader(self) -> None:
        """Raise what stopped the reader: a tap that stopped listening would count 0."""
        if self._reader is not None and self._reader.done() and not self._reader.cancelled():
            exc = self._reader.exception()
            raise RuntimeError(f"the bus tap stopped reading: {exc!r}") from exc

    async def _read(self) -> None:
        prefix = self.names.session("")
        while True:
            message: dict[str, Any] | None = await self._pubsub.get_message(timeout=1.0)
            if message is None:
                continue
            at = time.monotonic()
            channel = str(message["channel"])
            if message["type"] == "subscribe":
                confirmed = self._confirmed.get(channel)
                if confirmed is not None and not confirmed.done():
                    confirmed.set_result(None)
            elif message["type"] == "message":
                item = decode(str(message["data"]), at)
                if item is None:
                    self.undecodable += 1
                else:
                    self.log[channel.removeprefix(prefix)].append(item)

    async def close(self) -> None:
        """Stop listening; raises if the reader had stopped by itself."""
        try:
            self._check_reader()
        finally:
            await self._close()

    async def _close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        with contextlib.suppress(Exception):
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        await self._redis.aclose()
