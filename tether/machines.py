"""The state machines of DESIGN §2: the one definition of which status may follow which, for
turns, interrupts and tool calls.

Each machine is the list of its moves. A move is a guarded write: it sets `target` only where
the status is one of `sources`, and changes nothing elsewhere. Every status write in the store
names one of these moves (store/guards.py applies them), so the machines can be read here and
nowhere else. A terminal state is in no move's sources: it absorbs, and the first terminal
write wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from tether.domain import InterruptStatus, SteerStatus, ToolRunStatus, TurnStatus
from tether.webhooks.records import DeliveryStatus, EndpointStatus

S = TypeVar(
    "S", TurnStatus, InterruptStatus, ToolRunStatus, SteerStatus, DeliveryStatus, EndpointStatus
)


@dataclass(frozen=True, slots=True)
class Move(Generic[S]):
    name: str
    sources: frozenset[S]
    target: S


def _move(name: str, sources: set[S], target: S) -> Move[S]:
    return Move(name, frozenset(sources), target)


_Q, _R, _W = TurnStatus.QUEUED, TurnStatus.RUNNING, TurnStatus.WAITING
_CANCELLING = TurnStatus.CANCELLING


class TurnMove:
    """How a turn's status may change, and why."""

    CLAIM = _move("claim", {_Q}, _R)  # a worker takes the head of a session's queue
    # a step committed under the claim token; a stop written meanwhile makes it refused
    CHECKPOINT = _move("checkpoint", {_R}, _R)
    PAUSE = _move("pause", {_R}, _W)  # waits on interrupts, holding no worker
    RESUME = _move("resume", {_W}, _Q)  # every interrupt answered: back to the queue
    # handed back by a worker shutting down, or its lease expired with attempts left
    REQUEUE = _move("requeue", {_R}, _Q)
    COMPLETE = _move("complete", {_R}, TurnStatus.COMPLETED)
    FAIL = _move("fail", {_R}, TurnStatus.FAILED)  # the executor failed, or lost its lease
    EXPIRE = _move("expire", {_W}, TurnStatus.FAILED)  # an interrupt expired, on_expire fail
    # its claim failed as often as a turn may be attempted: data it cannot start with
    UNSTARTABLE = _move("unstartable", {_Q}, TurnStatus.FAILED)
    STOP = _move("stop", {_R}, _CANCELLING)  # a stop written for a turn an executor holds
    # the executor ends its turn stopped (or a timeout); or its lease expired while stopping
    END_STOPPED = _move("end_stopped", {_R, _CANCELLING}, TurnStatus.CANCELLED)
    CANCEL = _move("cancel", {_Q, _W}, TurnStatus.CANCELLED)  # no executor: it ends at once


class InterruptMove:
    RESOLVE = _move("resolve", {InterruptStatus.PENDING}, InterruptStatus.RESOLVED)
    EXPIRE = _move("expire", {InterruptStatus.PENDING}, InterruptStatus.EXPIRED)
    CANCEL = _move("cancel", {InterruptStatus.PENDING}, InterruptStatus.CANCELLED)


_STARTED, _PAUSED = ToolRunStatus.STARTED, ToolRunStatus.PAUSED


class ToolRunMove:
    """A ledger move also creates the row of a call not yet in the ledger."""

    # a call runs; again after a crash only if it is idempotent or was approved again
    START = _move("start", {_STARTED, _PAUSED}, _STARTED)
    PAUSE = _move("pause", {_STARTED, _PAUSED}, _PAUSED)
    FINISH = _move("finish", {_STARTED, _PAUSED}, ToolRunStatus.FINISHED)


class SteerMove:
    """A steer is settled once: in the transaction of the boundary that delivers it, or of
    the change that leaves its turn without another boundary (its end, or its stop)."""

    DELIVER = _move("deliver", {SteerStatus.PENDING}, SteerStatus.DELIVERED)
    CONVERT = _move("convert", {SteerStatus.PENDING}, SteerStatus.CONVERTED)


_PENDING, _SENDING = DeliveryStatus.PENDING, DeliveryStatus.SENDING


class DeliveryMove:
    """A webhook delivery (DESIGN §9): claimed like a turn, sent, and then delivered, retried
    later or given up. `failed` is not quite terminal: a person may send it again."""

    CLAIM = _move("claim", {_PENDING}, _SENDING)  # a dispatcher takes it under a lease
    DELIVER = _move("deliver", {_SENDING}, DeliveryStatus.DELIVERED)  # a 2xx answered
    BACK_OFF = _move("back_off", {_SENDING}, _PENDING)  # it failed: again after a backoff
    GIVE_UP = _move("give_up", {_SENDING}, DeliveryStatus.FAILED)  # window over, 410, …
    # its holder died or shut down: its lease expired, or it handed it back
    RELEASE = _move("release", {_SENDING}, _PENDING)
    DROP = _move("drop", {_PENDING}, DeliveryStatus.FAILED)  # the endpoint disabled or deleted
    RETRY = _move("retry", {DeliveryStatus.FAILED}, _PENDING)  # a person asked: send it again


_ENABLED, _DISABLED = EndpointStatus.ENABLED, EndpointStatus.DISABLED


class EndpointMove:
    DISABLE = _move("disable", {_ENABLED}, _DISABLED)  # by PATCH, or the receiver's 410
    ENABLE = _move("enable", {_DISABLED}, _ENABLED)
    DELETE = _move("delete", {_ENABLED, _DISABLED}, EndpointStatus.DELETED)  # kept for the log


def moves_of(machine: type) -> tuple[Move[Any], ...]:
    return tuple(m for m in vars(machine).values() if isinstance(m, Move))


def transitions(machine: type) -> dict[Any, frozenset[Any]]:
    """from -> the statuses that may follow it: the table, read off the moves."""
    moves = moves_of(machine)
    statuses = {s for m in moves for s in (*m.sources, m.target)}
    return {s: frozenset(m.target for m in moves if s in m.sources) for s in statuses}


TURN_TRANSITIONS: dict[TurnStatus, frozenset[TurnStatus]] = transitions(TurnMove)


def sources_of(target: TurnStatus) -> tuple[TurnStatus, ...]:
    """The states from which a turn may move to `target`."""
    return tuple(s for s in TurnStatus if target in TURN_TRANSITIONS.get(s, frozenset()))
