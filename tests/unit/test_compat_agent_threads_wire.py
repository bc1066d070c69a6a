"""agent-threads sequence numbers: every event its own seq, resumable anywhere, the text of a
message exactly once whatever the subscriber saw before."""

from __future__ import annotations

from typing import Any

import pytest

from tether import errors, streaming
from tether.api.compat import agent_threads
from tether.api.compat import agent_threads_wire as wire

SID = "01arz3ndektsv4rrffq69g5fav.local"
STREAM = wire.stream_id(SID)


def event(seq: int, type: str, turn_id: str | None = "turn_1", **data: Any) -> dict[str, Any]:
    return {
        "seq": seq,
        "type": type,
        "session_id": SID,
        "turn_id": turn_id,
        "created_at": "2026-01-01T00:00:00Z",
        "data": data,
    }


def assistant(text: str, calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    message = {
        "id": "msg_a",
        "session_id": SID,
        "turn_id": "turn_1",
        "role": "assistant",
        "content": text,
        "tool_calls": calls or [],
        "tool_call_id": None,
        "name": None,
        "status": "completed",
    }
    return event(5, "message.completed", message=message)


def delta(after: int, offset: int, text: str) -> streaming.Frame:
    payload = {"data": {"message_id": "msg_a", "offset": offset, "delta": text}}
    return streaming.Frame(after, "message.delta", payload, "turn_1")


def texts(stored: list[dict[str, Any]]) -> str:
    return "".join(
        s["event"]["payload"]["delta"] for s in stored if s["event"]["kind"] == "text-delta"
    )


@pytest.mark.parametrize(
    ("after_seq", "replay_after", "chars"),
    [
        (0, 0, 0),
        (7 * wire.STRIDE, 6, 0),  # the first event made from 7: replay 7 again, skip what it had
        (7 * wire.STRIDE + 2, 6, 0),
        (7 * wire.STRIDE + wire.FANOUT + 12, 7, 12),  # 12 chars into the message after 7
    ],
)
def test_resume_points(after_seq: int, replay_after: int, chars: int) -> None:
    resume = wire.Resume.of(after_seq)
    assert (resume.replay_after, resume.chars) == (replay_after, chars)


def test_seqs_increase_and_text_arrives_once() -> None:
    mapper = wire.Mapper(STREAM, wire.Resume.of(0))
    out = mapper.durable(event(4, "turn.started", attempt=1))
    out += mapper.frame(delta(4, 0, "hello "))
    out += mapper.frame(delta(4, 0, "hello wor"))  # a coalesced repeat: only "wor" is new
    out += mapper.durable(assistant("hello world", [{"id": "c1", "name": "t", "arguments": {}}]))
    out += mapper.frame(delta(4, 9, "ld"))  # late, after the completion: dropped
    seqs = [s["seq"] for s in out]
    assert seqs == sorted(set(seqs))
    assert texts(out) == "hello world"
    kinds = [s["event"]["kind"] for s in out]
    assert kinds == [
        "step-started",
        "text-delta",
        "text-delta",
        "text-delta",
        "tool-call",
        "step-finished",
    ]


def test_resume_mid_message_sends_the_rest_only() -> None:
    first = wire.Mapper(STREAM, wire.Resume.of(0))
    seen = first.durable(event(4, "turn.started", attempt=1))
    seen += first.frame(delta(4, 0, "hello "))
    cut = seen[-1]["seq"]
    # the subscriber is gone; the message completes; it comes back with afterSeq=cut
    again = wire.Mapper(STREAM, wire.Resume.of(cut))
    rest = again.durable(assistant("hello world"))
    assert all(s["seq"] > cut for s in rest)
    assert texts(seen) + texts(rest) == "hello world"


def test_resume_mid_message_while_it_still_streams() -> None:
    cut = 4 * wire.STRIDE + wire.FANOUT + len("hel")
    again = wire.Mapper(STREAM, wire.Resume.of(cut))
    out = again.frame(delta(4, 0, "hello"))  # the partial so far, coalesced
    out += again.durable(assistant("hello there"))
    assert texts(out) == "lo there"


@pytest.mark.parametrize(
    ("raw", "ok"),
    [
        ('{"type": "hello", "version": 1}', True),
        ('{"type": "hello"}', False),
        ('{"type": "subscribe", "streamId": "s", "afterSeq": 3}', True),
        ('{"type": "subscribe", "streamId": "s", "afterSeq": 9007199254740991}', True),
        ('{"type": "subscribe", "streamId": 7}', False),
        ('{"type": "unsubscribe", "streamId": "s"}', True),
        ('{"type": "pong"}', True),
        ('{"type": "ping"}', False),
        ("[1]", False),
        ("nope", False),
    ],
)
def test_client_messages_are_checked_as_the_package_does(raw: str, ok: bool) -> None:
    assert (agent_threads.decode(raw) is not None) is ok


@pytest.mark.parametrize("after", ["-1", "true", "3.5", '"3"', "9007199254740992", "[1]"])
def test_an_after_seq_that_is_no_position_is_refused_with_a_reason(after: str) -> None:
    """The package refuses these too; Tether also says why (tether/api/cursors.py)."""
    raw = f'{{"type": "subscribe", "streamId": "s", "afterSeq": {after}}}'
    with pytest.raises(errors.InvalidRequest, match="afterSeq"):
        agent_threads.decode(raw)
