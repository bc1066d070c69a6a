"""SSE frames are encoded once and shared; a delta relayed by the Redis bus keeps its bytes."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from tether import domain, streaming
from tether.bus.base import Committed, Delta
from tether.bus.redis import decode_delta, encode_delta

SID = "01jabcdefghjkmnpqrstvwxyz0.local"


def _parse(frame: bytes) -> tuple[str, str, dict[str, object]]:
    lines = frame.decode().split("\n")
    assert frame.endswith(b"\n\n") and len(lines) == 5
    return lines[0], lines[1], json.loads(lines[2].removeprefix("data: "))


def test_a_delta_frame_is_the_sse_of_its_payload_and_made_once_per_seq() -> None:
    delta = Delta(SID, "turn_1", "msg_1", 3, 'say "é"\n')
    frame = delta.sse(7)
    assert _parse(frame) == (
        "id: 7",
        "event: message.delta",
        {
            "seq": 7,
            "type": "message.delta",
            "session_id": SID,
            "turn_id": "turn_1",
            "data": {"message_id": "msg_1", "offset": 3, "delta": 'say "é"\n'},
        },
    )
    assert delta.sse(7) is frame  # a second reader at the same point shares the bytes
    assert streaming.delta_frame(7, delta).payload == _parse(frame)[2]


def test_a_relayed_delta_is_sent_as_it_came_and_decoded_only_when_cut() -> None:
    sent = Delta(SID, "turn_1", "msg_1", 10, "héllo wörld ")
    relayed = decode_delta(SID, encode_delta(sent))
    assert relayed.encoded and relayed.end == sent.end
    assert relayed.sse(4) == sent.sse(4)
    assert relayed.text == sent.text  # decoded on demand (a reader that must cut it)


def test_an_event_frame_is_encoded_once_for_every_reader() -> None:
    event = domain.Event(
        SID, 5, domain.EventType.TURN_STARTED, "turn_1", {"attempt": 1}, datetime.now(UTC)
    )
    item = Committed([event])
    first = streaming.event_frame(event, item.sse).sse()
    second = streaming.event_frame(event, item.sse).sse()
    assert first is second
    assert _parse(first)[2] == event.as_dict()
