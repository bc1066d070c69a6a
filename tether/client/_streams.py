"""Streams that resume themselves, without I/O: what to request next, and which of the frames
that come back to yield. The sync and async streams only carry the requests out.

A connection may drop anywhere. The next one asks for the events after the last durable seq
seen (`Last-Event-ID`), so every durable event is yielded exactly once. Text deltas carry the
char offset of their text in its message, so the part already yielded is cut off a repeated
delta, and a delta that would leave a hole (one went missing) makes the stream reconnect: the
server then sends the message's text so far from offset 0. A message that completed while the
stream was away gets its missing tail as one last delta before its `message.completed`. So the
text yielded for a message is its final text: no gap, no duplicate.

The cursor moves as each event is handed out (`passed`), not as its frame arrives: a frame
may make two events (a message's tail, then its completion), and a reader that stops between
them (a `break`, Ctrl-C, a stop) must get the second from the next stream (`follow()`), not
lose it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

from tether.client import _base, _calls, errors, models


class Gap(Exception):
    """A delta starts past the text yielded so far: some text went missing; reconnect."""


@dataclass(slots=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    json: Any = None


@dataclass
class Cursor:
    """Where a stream stands: the last durable seq, and the text yielded per message."""

    after: int = 0
    turn_id: str | None = None  # only this turn's events (None: all of the session's)
    sent: dict[str, int] = field(default_factory=dict)  # message id -> chars yielded
    completed: set[str] = field(default_factory=set)  # messages whose final text is out

    def copy(self) -> Cursor:
        return Cursor(self.after, self.turn_id, dict(self.sent), set(self.completed))

    def take(self, event: models.Event) -> list[models.Event]:
        """The events to yield for one frame received (none, it, or a filled-in delta and
        it). Each is to be `passed` as it is handed out; a frame with nothing to yield moves
        the cursor past it at once."""
        if not event.durable:
            return self._delta(event)
        if event.seq <= self.after:
            return []  # seen before the connection dropped
        if self.turn_id is not None and event.turn_id != self.turn_id:
            self.after = event.seq
            return []
        message = event.message if event.type == "message.completed" else None
        if message is not None and message.role == "assistant":
            text = message.content or ""
            done = self.sent.get(message.id, 0)
            if done < len(text):  # streamed while we were away: the tail, once
                return [_delta(event, message.id, done, text[done:]), event]
        return [event]

    def passed(self, event: models.Event) -> None:
        """`event` (from `take`) is handed out: the stream now stands after it."""
        if not event.durable:
            message_id = str(event.data["message_id"])
            end = int(event.data["offset"]) + len(event.delta or "")
            self.sent[message_id] = max(self.sent.get(message_id, 0), end)
            return
        self.after = max(self.after, event.seq)
        message = event.message if event.type == "message.completed" else None
        if message is not None and message.role == "assistant":
            done = self.sent.get(message.id, 0)
            self.sent[message.id] = max(done, len(message.content or ""))
            self.completed.add(message.id)

    def _delta(self, event: models.Event) -> list[models.Event]:
        if self.turn_id is not None and event.turn_id != self.turn_id:
            return []
        message_id = str(event.data.get("message_id", ""))
        text = event.delta or ""
        offset = int(event.data.get("offset", 0))
        if message_id in self.completed:
            return []
        done = self.sent.get(message_id, 0)
        if offset + len(text) <= done:
            return []
        if offset > done:
            raise Gap(f"text of {message_id} resumes at {offset}, {done} chars seen")
        return [_delta(event, message_id, done, text[done - offset :])]


def _delta(event: models.Event, message_id: str, offset: int, text: str) -> models.Event:
    return models.Event(
        seq=event.seq if not event.durable else event.seq - 1,
        type="message.delta",
        session_id=event.session_id,
        turn_id=event.turn_id,
        data={"message_id": message_id, "offset": offset, "delta": text},
    )


def reconnect_delay(config: _base.Config, failure: Exception | None, failures: int) -> float:
    """How long to wait before the stream's next connection; raises when it gives up (too many
    attempts in a row without a new event, or a refusal that a retry will not change)."""
    if failures > config.max_reconnects or not _may_reconnect(failure):
        if isinstance(failure, httpx.TransportError):
            raise errors.connection_error(failure, config.base_url) from failure
        if failure is not None:
            raise failure
        raise errors.APIConnectionError("the stream kept ending early; giving up")
    return _base.backoff_s(failures, _base.retry_after_of(failure))


def _may_reconnect(failure: Exception | None) -> bool:
    if failure is None or isinstance(failure, httpx.TransportError | Gap):
        return True  # dropped, or ended by the server before our end
    if isinstance(failure, errors.IdempotencyKeyInFlight | errors.RateLimited):
        return True  # our own create still being answered; or a stream limit not yet freed
    return isinstance(failure, errors.APIError) and failure.status in (502, 503, 504)


def parse(data: str) -> models.Event:
    return models.Event.model_validate_json(data)


def events_request(session_id: str, cursor: Cursor) -> Request:
    """The session's events after the cursor (SSE)."""
    headers = {"Accept": "text/event-stream", "Last-Event-ID": str(cursor.after)}
    return Request("GET", _calls.events_path(session_id), headers)


@dataclass
class TurnRecord:
    """What a turn's stream has seen: the turn's latest state, its finished messages, its
    pending interrupts, and whether the stream is over (the turn ended or waits)."""

    session_id: str
    cursor: Cursor
    body: dict[str, Any] | None = None  # the create to (re)send until the turn id is known
    idempotency_key: str | None = None
    turn: models.Turn | None = None
    messages: list[models.Message] = field(default_factory=list)
    interrupts: dict[str, models.Interrupt] = field(default_factory=dict)  # pending ones
    waiting_seen: bool = False  # a turn_waiting marker was just yielded: is it still waiting?
    over: bool = False

    @property
    def turn_id(self) -> str | None:
        return self.cursor.turn_id

    def request(self) -> Request:
        if self.turn_id is None:
            assert self.body is not None
            assert self.idempotency_key is not None
            headers = {"Accept": "text/event-stream", "Idempotency-Key": self.idempotency_key}
            return Request("POST", _calls.turns_path(self.session_id), headers, self.body)
        return events_request(self.session_id, self.cursor)

    def rest(self) -> TurnRecord:
        """A record to follow the rest of the turn from where this one stopped."""
        if self.turn_id is None:
            raise errors.TetherClientError("the turn is not known yet: nothing to follow")
        return TurnRecord(self.session_id, self.cursor.copy(), turn=self.turn)

    def take(self, event: models.Event) -> list[models.Event]:
        if self.cursor.turn_id is None and event.durable and event.turn_id:
            # the create's own stream carries this turn's events only: its first names it
            self.cursor.turn_id = event.turn_id
        return self.cursor.take(event)

    def passed(self, event: models.Event) -> None:
        self.cursor.passed(event)
        if (turn := event.turn) is not None:
            self.turn = turn
        if (message := event.message) is not None:
            self.messages.append(message)
        if (interrupt := event.interrupt) is not None:
            if interrupt.pending:
                self.interrupts[interrupt.id] = interrupt
            else:
                self.interrupts.pop(interrupt.id, None)
        if event.terminal:
            self.over = True
        elif event.turn_waiting:
            self.waiting_seen = True

    def still_waiting(self, turn: models.Turn) -> None:
        """After a turn_waiting marker: the turn as it is now. A stream ends on a waiting
        turn; one already answered goes on (to its end, whose event is still to come)."""
        self.waiting_seen = False
        self.turn = turn
        if turn.status == "waiting":
            self.over = True

    def final_text(self) -> str:
        """The text of the turn's last assistant message (its answer, or the partial text
        of a stopped turn)."""
        for message in reversed(self.messages):
            if message.role == "assistant" and message.content:
                return message.content
        return ""
