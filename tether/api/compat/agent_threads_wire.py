"""agent-threads stream events from Tether's events (docs/compat/agent-threads.md).

Pure translation, no I/O. One Tether event becomes zero or more agent-threads `StoredEvent`s
`{seq, timestamp, streamId, event: {kind, payload}}` whose `event` is a `StreamEvent` of the
package's core kinds (`user-message`, `step-started`, `text-delta`, `tool-call`,
`tool-result`, `step-finished`, `error`) or one of ours (`interrupt`, `interrupt-resolved`,
`turn-finished`).

Sequence numbers. The client drops any event whose seq is not above the last it saw, and
resumes with `afterSeq`; so every event needs its own seq, the live text deltas too, and the
seq must say where to resume. In decimal, `seq = tether_seq * STRIDE + slot`:
- slot < FANOUT: the slot-th event made from Tether event `tether_seq`;
- slot >= FANOUT: a text delta after event `tether_seq`, ending at char `slot - FANOUT` of
  the message being streamed.
So `afterSeq // STRIDE` is the Tether event to replay after and, inside a message, the chars
the client already has. The text of a message reaches a client exactly once, in deltas and
then, at its completion, whatever of it the deltas did not carry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tether import domain, streaming

STRIDE = 10**9  # < 2**53 / STRIDE: nine million Tether events per session
MAX_SEQ = 2**53 - 1  # Number.MAX_SAFE_INTEGER: the largest seq a JavaScript client holds exactly
FANOUT = 10**4  # events made from one Tether event; deltas start above this slot
STREAM_PREFIX = "session:"


def stream_id(session_id: str) -> str:
    return f"{STREAM_PREFIX}{session_id}"


@dataclass(slots=True, frozen=True)
class Resume:
    """Where `afterSeq` points. `replay_after` is the Tether event to replay after: the one
    before it when the subscriber may have seen only some of the events made from it; `chars`
    is how much of the message streaming then the subscriber has."""

    after_seq: int
    replay_after: int
    chars: int

    @classmethod
    def of(cls, after_seq: int) -> Resume:
        tether_seq, slot = divmod(after_seq, STRIDE)
        if slot >= FANOUT:
            return cls(after_seq, tether_seq, slot - FANOUT)
        return cls(after_seq, max(0, tether_seq - 1), 0)


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _event(kind: str, **payload: Any) -> dict[str, Any]:
    return {"kind": kind, "payload": payload}


@dataclass(slots=True)
class Mapper:
    """Translates one subscriber's events, in order. Keeps what exactly-once text needs:
    the chars of each message this subscriber has, and the chars it had before resuming."""

    stream: str
    resume: Resume
    last_seq: int = 0
    delivered: dict[str, int] = field(default_factory=dict)  # message id -> chars sent
    _resume_pending: bool = True  # the next message's first `resume.chars` were seen

    def __post_init__(self) -> None:
        self._resume_pending = self.resume.chars > 0
        self.last_seq = self.resume.after_seq

    def frame(self, frame: streaming.Frame) -> list[dict[str, Any]]:
        """A frame from streaming.Feed: a durable event or a live delta."""
        if frame.type == domain.EventType.MESSAGE_DELTA:
            data = frame.payload["data"]
            return self._delta(frame.seq, data["message_id"], data["offset"], data["delta"])
        return self.durable(frame.payload)

    def durable(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """A stored event (`Event.as_dict()`)."""
        made = self._translate(event)[: FANOUT - 1]
        base = event["seq"] * STRIDE
        out = []
        for slot, stream_event in enumerate(made):
            out += self._stored(base + slot, event["created_at"], stream_event)
        return out

    def _stored(self, seq: int, timestamp: str, stream_event: dict[str, Any]) -> list[Any]:
        if seq <= self.last_seq:
            return []  # the subscriber has it already
        self.last_seq = seq
        return [
            {"seq": seq, "timestamp": timestamp, "streamId": self.stream, "event": stream_event}
        ]

    def _claim_resumed(self, message_id: str) -> None:
        """The first message after a resume mid-message is that message: its first chars
        are with the subscriber already."""
        if self._resume_pending:
            self._resume_pending = False
            self.delivered[message_id] = max(self.delivered.get(message_id, 0), self.resume.chars)

    def _delta(self, after: int, message_id: str, offset: int, text: str) -> list[Any]:
        self._claim_resumed(message_id)
        have = self.delivered.get(message_id, 0)
        end = offset + len(text)
        if end <= have or end >= STRIDE - FANOUT:
            return []  # sent already, or past what a seq can say (the completion carries it)
        fresh = text[max(0, have - offset) :]
        out = self._stored(after * STRIDE + FANOUT + end, _now(), _event("text-delta", delta=fresh))
        if out:
            self.delivered[message_id] = end
        return out

    def _translate(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        kind, data, turn_id = event["type"], event["data"], event["turn_id"]
        if kind == domain.EventType.TURN_STARTED:
            return [_event("step-started", stepIndex=0, turnId=turn_id)]
        if kind == domain.EventType.MESSAGE_COMPLETED:
            return self._message(data["message"])
        if kind == domain.EventType.INTERRUPT_CREATED:
            i = data["interrupt"]
            return [
                _event(
                    "interrupt",
                    id=i["id"],
                    threadId=i["session_id"],
                    turnId=i["turn_id"],
                    type=i["type"],
                    toolCallId=i["tool_call_id"],
                    toolName=i["tool_name"],
                    request=i["request"],
                    step=i["step"],
                    createdAt=i["created_at"],
                )
            ]
        if kind in (domain.EventType.INTERRUPT_RESOLVED, domain.EventType.INTERRUPT_EXPIRED):
            i = data["interrupt"]
            return [
                _event("interrupt-resolved", id=i["id"], status=i["status"], response=i["response"])
            ]
        if kind in (
            domain.EventType.TURN_COMPLETED,
            domain.EventType.TURN_FAILED,
            domain.EventType.TURN_CANCELLED,
        ):
            turn = data["turn"]
            out = []
            if turn["error"]:
                out.append(_event("error", turnId=turn_id, **turn["error"]))
            finished = {"turnId": turn_id, "status": turn["status"], "reason": turn["reason"]}
            out.append(_event("turn-finished", **finished))
            return out
        return []  # turn.queued, tool.*, session.updated: nothing the stream's readers use

    def _message(self, message: dict[str, Any]) -> list[dict[str, Any]]:
        role = message["role"]
        if role == "user":
            return [_event("user-message", content=message["content"] or "")]
        if role == "tool":
            return [
                _event(
                    "tool-result",
                    toolCallId=message["tool_call_id"],
                    toolName=message["name"],
                    output=message["content"],
                    isError=False,
                )
            ]
        if role != "assistant":
            return []
        self._claim_resumed(message["id"])
        text = message["content"] or ""
        rest = text[self.delivered.get(message["id"], 0) :]
        self.delivered[message["id"]] = len(text)
        out = [_event("text-delta", delta=rest)] if rest else []
        out += [
            _event("tool-call", toolCallId=c["id"], toolName=c["name"], input=c["arguments"])
            for c in message["tool_calls"]
        ]
        finish = "tool-calls" if message["tool_calls"] else "stop"
        if message["status"] == domain.MessageStatus.INTERRUPTED:
            finish = "interrupted"
        out.append(_event("step-finished", finishReason=finish, messageId=message["id"]))
        return out
