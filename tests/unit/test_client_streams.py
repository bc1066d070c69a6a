"""The SDK's stream resumption, without I/O: what a stream yields for the frames it receives
across reconnects. (The same, through a real server and a cutting proxy, is in
tests/integration/test_sdk_streams.py.)"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from tether.client import _streams, models

SID = "01arz3ndektsv4rrffq69g5fav.local"
TURN = "turn_01arz3ndektsv4rrffq69g5fav"


def durable(seq: int, type: str, turn_id: str | None = TURN, **data: Any) -> models.Event:
    return models.Event(
        seq=seq,
        type=type,
        session_id=SID,
        turn_id=turn_id,
        created_at="2026-01-01T00:00:00Z",  # type: ignore[arg-type]
        data=data,
    )


def delta(seq: int, offset: int, text: str, message_id: str = "msg_a") -> models.Event:
    return models.Event(
        seq=seq,
        type="message.delta",
        session_id=SID,
        turn_id=TURN,
        data={"message_id": message_id, "offset": offset, "delta": text},
    )


def completed(seq: int, content: str, message_id: str = "msg_a") -> models.Event:
    message = {
        "id": message_id,
        "session_id": SID,
        "turn_id": TURN,
        "seq": 2,
        "role": "assistant",
        "content": content,
        "created_at": "2026-01-01T00:00:00Z",
    }
    return durable(seq, "message.completed", message=message)


def text_of(events: list[models.Event]) -> str:
    return "".join(e.delta or "" for e in events)


def feed_all(
    cursor: _streams.Cursor | _streams.TurnRecord, frames: list[models.Event]
) -> list[models.Event]:
    """What a stream hands out for `frames`, read to the end."""
    out = []
    for frame in frames:
        for event in cursor.take(frame):
            cursor.passed(event)
            out.append(event)
    return out


def test_durable_events_seen_before_a_reconnect_are_not_yielded_again() -> None:
    cursor = _streams.Cursor()
    first = feed_all(cursor, [durable(1, "turn.queued"), durable(2, "turn.started")])
    # the reconnect asked for after=2, but a replay from the start gives them again
    again = feed_all(cursor, [durable(1, "turn.queued"), durable(2, "turn.started")])
    later = feed_all(cursor, [durable(3, "turn.completed")])
    assert [e.seq for e in first + again + later] == [1, 2, 3]
    assert cursor.after == 3


def test_text_resent_from_offset_zero_after_a_reconnect_is_cut_to_what_is_new() -> None:
    cursor = _streams.Cursor()
    before = feed_all(cursor, [delta(2, 0, "Hel"), delta(2, 3, "lo ")])
    after = feed_all(cursor, [delta(2, 0, "Hello wor"), delta(2, 9, "ld")])
    assert text_of(before + after) == "Hello world"
    assert [e.data["offset"] for e in before + after] == [0, 3, 6, 9]


def test_a_delta_past_the_text_seen_means_text_went_missing() -> None:
    cursor = _streams.Cursor()
    feed_all(cursor, [delta(2, 0, "Hel")])
    with pytest.raises(_streams.Gap):
        cursor.take(delta(2, 5, "world"))
    # the reconnect brings the text so far from 0: nothing is lost
    assert text_of(feed_all(cursor, [delta(2, 0, "Hello world")])) == "lo world"


def test_a_message_that_completed_while_away_gets_its_tail_once() -> None:
    cursor = _streams.Cursor()
    seen = feed_all(cursor, [delta(2, 0, "Hello")])
    seen += feed_all(cursor, [completed(3, "Hello world"), delta(3, 5, " world")])
    assert text_of(seen) == "Hello world"
    assert [e.type for e in seen] == ["message.delta", "message.delta", "message.completed"]
    assert seen[1].data["offset"] == 5


def test_a_reader_that_stops_between_a_tail_and_its_completion_gets_the_completion_next() -> None:
    """A frame can make two events: the tail of a message that completed while the stream was
    away, then the completion. A reader that stops after the tail (a break, Ctrl-C) has not
    been given the completion: the stream that follows must give it, and no text twice."""
    record = _streams.TurnRecord(SID, _streams.Cursor(turn_id=TURN))
    seen = feed_all(record, [durable(2, "turn.started"), delta(2, 0, "Hello")])
    tail, completion = record.take(completed(3, "Hello world"))
    record.passed(tail)  # handed out; the reader stops there
    seen.append(tail)
    rest = record.rest()
    assert rest.cursor.after == 2, "resumes before the completion it never gave"
    # the next stream replays from after=2: the completion, and a stale delta of the message
    seen += feed_all(rest, [completion, delta(3, 0, "Hello world")])
    assert text_of(seen) == "Hello world"
    assert [e.type for e in seen] == [
        "turn.started",
        "message.delta",
        "message.delta",
        "message.completed",
    ]
    assert rest.final_text() == "Hello world"


def test_text_taken_but_never_handed_out_comes_again() -> None:
    """A delta taken from a frame and not handed out (the reader was interrupted before it
    got it) is not counted: the text comes again, from where the reader is."""
    cursor = _streams.Cursor()
    seen = feed_all(cursor, [delta(2, 0, "Hel")])
    cursor.take(delta(2, 3, "lo"))  # never passed
    follower = cursor.copy()
    seen += feed_all(follower, [delta(2, 0, "Hello"), completed(3, "Hello!")])
    assert text_of(seen) == "Hello!"
    assert [e.data["offset"] for e in seen if e.delta] == [0, 3, 5]


def test_a_message_never_streamed_comes_whole_before_its_completion() -> None:
    cursor = _streams.Cursor()
    seen = feed_all(cursor, [completed(3, "all of it")])
    assert text_of(seen) == "all of it"
    assert seen[0].seq == 2  # the point it would resume from, as for live deltas


def test_a_turn_filter_drops_other_turns_but_moves_the_resume_point() -> None:
    cursor = _streams.Cursor(turn_id=TURN)
    seen = feed_all(
        cursor,
        [
            durable(1, "turn.queued", turn_id="turn_other"),
            durable(2, "session.updated", turn_id=None),
            durable(3, "turn.queued"),
        ],
    )
    assert [e.seq for e in seen] == [3]
    assert cursor.after == 3


def test_a_turn_record_learns_its_turn_and_ends_on_the_terminal_event() -> None:
    record = _streams.TurnRecord(SID, _streams.Cursor(), body={}, idempotency_key="k")
    assert record.request().method == "POST"
    feed_all(record, [durable(1, "turn.queued")])
    assert record.turn_id == TURN
    assert record.request().method == "GET"
    assert record.request().headers["Last-Event-ID"] == "1"
    feed_all(record, [completed(2, "done")])
    assert not record.over
    feed_all(record, [durable(3, "turn.cancelled")])
    assert record.over
    assert record.final_text() == "done"


def test_a_waiting_marker_ends_the_stream_only_if_the_turn_still_waits() -> None:
    record = _streams.TurnRecord(SID, _streams.Cursor(turn_id=TURN))
    feed_all(record, [durable(4, "interrupt.created", turn_waiting=True)])
    assert record.waiting_seen
    turn: dict[str, Any] = {
        "id": TURN,
        "session_id": SID,
        "seq": 1,
        "status": "queued",  # answered meanwhile: go on
        "input": [],
        "on_busy": "enqueue",
        "attempt": 1,
        "step": 1,
        "usage": {},
        "created_at": "2026-01-01T00:00:00Z",
    }
    record.still_waiting(models.Turn.model_validate(turn))
    assert not record.over
    feed_all(record, [durable(9, "interrupt.created", turn_waiting=True)])
    record.still_waiting(models.Turn.model_validate({**turn, "status": "waiting"}))
    assert record.over


def test_importing_the_sdk_does_not_import_the_server() -> None:
    code = (
        "import sys, tether.client; "
        "bad = sorted({m.split('.')[0] for m in sys.modules} & "
        "{'fastapi', 'sqlalchemy', 'starlette', 'uvicorn', 'alembic', 'asyncpg', 'redis'}); "
        "server = sorted(m for m in sys.modules if m.startswith(('tether.api', 'tether.store', "
        "'tether.service', 'tether.node', 'tether.worker', 'tether.runtime'))); "
        "print(bad + server)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
