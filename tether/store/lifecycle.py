"""Every change of a turn's status (DESIGN §2-4), each one move of `machines.TurnMove` made in a
session write: sessions opened and closed, turns queued and stopped, a holder's checkpoints
(a step, a pause, an end), leases recovered, interrupts answered or expired.

Whatever way a turn ends, `ended` makes its transcript valid for the next model call (or
removes it, for a rollback) and says so, in the transaction of the end.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Row,
    String,
    bindparam,
    func,
    insert,
    select,
    update,
)

from tether import domain, errors, ids, machines, storable, views
from tether.domain import EventType, TurnStatus
from tether.machines import TurnMove
from tether.store import guards, interrupts, rows, steers, tool_runs, webhooks
from tether.store.base import Database
from tether.store.leases import RELEASED, Unstartable, fenced, holder_write, refused
from tether.store.schema import (
    Json,
    UTCDateTime,
    messages,
    sessions,
    turns,
)
from tether.store.session_write import IS_HELD, IS_UNFINISHED, SessionWrite
from tether.webhooks.records import WebhookEvent

INVALID_TURN = "invalid_turn"  # reason and error code of a turn that could never be started
# a session's turns, oldest first (statements built once: building costs more than running)
_UNFINISHED = (
    select(turns).where(turns.c.session_id == bindparam("sid"), IS_UNFINISHED).order_by(turns.c.seq)
)
_ANY_UNFINISHED = (
    select(turns.c.id).where(turns.c.session_id == bindparam("sid"), IS_UNFINISHED).limit(1)
)
_QUEUED = (
    select(turns)
    .where(
        turns.c.session_id == bindparam("sid"),
        guards.status_in(turns.c.status, {TurnStatus.QUEUED}),
    )
    .order_by(turns.c.seq)
)


def _step(move: machines.Move[TurnStatus]) -> Any:
    """A holder's checkpoint making `move`: the step's usage and counters with it."""
    return fenced(move).values(
        step=turns.c.step + bindparam("step_inc"),
        usage=bindparam("usage", type_=Json),
        run_time_s=bindparam("run_time"),
    )


# One statement per move a checkpoint may make, built once (the hot path: one per step).
_INSERT_TURN = insert(turns)
_CHECKPOINT = _step(TurnMove.CHECKPOINT)  # no RETURNING: the row count says enough
_PAUSE = _step(TurnMove.PAUSE).values(**RELEASED).returning(*turns.c)
_END = {
    move.target: _step(move)
    .values(
        reason=func.coalesce(bindparam("reason", type_=String), turns.c.reason),
        error=bindparam("error", type_=Json),
        finished_at=bindparam("now", type_=UTCDateTime),
        claim_token=None,  # the worker id stays: who ran it
        lease_expires_at=None,
    )
    .returning(*turns.c)
    for move in (TurnMove.COMPLETE, TurnMove.FAIL, TurnMove.END_STOPPED)
}


class Lifecycle:
    def __init__(self, db: Database):
        self.db = db

    # --- sessions and turns ------------------------------------------------------------------

    async def create_session(
        self,
        tenant_id: str,
        agent_id: str,
        zone: str,
        metadata: dict[str, Any],
        first_input: list[dict[str, Any]] | None,
    ) -> tuple[str, domain.Turn | None]:
        """A new idle session (with its first turn queued, given `first_input`): its id."""
        session_id = ids.new_session_id(zone)
        now = domain.utcnow()
        await self.db.write(
            lambda conn: conn.execute(
                insert(sessions).values(
                    id=session_id,
                    tenant_id=tenant_id,
                    agent_id=agent_id,
                    status=domain.SessionStatus.IDLE.value,
                    metadata=metadata,
                    created_at=now,
                    updated_at=now,
                )
            )
        )
        turn = None
        if first_input is not None:
            queued = await self.create_turn(
                tenant_id, session_id, first_input, domain.OnBusy.ENQUEUE
            )
            turn = queued.turn
        return session_id, turn

    async def close_session(self, tenant_id: str, session_id: str) -> None:
        """Accept no new turns; queued turns are cancelled. A running turn finishes."""

        def body(sw: SessionWrite) -> None:
            if sw.closed:
                return
            sw.conn.execute(
                update(sessions).where(sessions.c.id == session_id).values(closed_at=sw.now)
            )
            sw.closed = True
            for row in sw.conn.execute(_QUEUED, {"sid": sw.id}).all():
                stop_turn(sw, rows.turn(row), domain.StopMode.INTERRUPT, "session_closed")
            webhooks.enqueue_closed(sw)

        await self.db.session_write(session_id, body, tenant_id)

    async def create_turn(
        self,
        tenant_id: str,
        session_id: str,
        input: list[dict[str, Any]],
        on_busy: domain.OnBusy,
    ) -> domain.Queued:
        """Queue a turn. With on_busy interrupt/rollback, the turns ahead of it are stopped in
        the same transaction."""

        def body(sw: SessionWrite) -> domain.Queued:
            after = sw.event_seq
            if sw.closed:
                raise errors.SessionClosed(f"session {session_id} is closed")
            to_wake: list[str] = []
            if on_busy is domain.OnBusy.REJECT and _unfinished(sw):
                raise errors.SessionBusy(f"session {session_id} has an active turn")
            if on_busy in (domain.OnBusy.INTERRUPT, domain.OnBusy.ROLLBACK):
                mode = domain.StopMode(on_busy.value)
                to_wake = stop_all(sw, mode, "superseded_by_new_turn")
            return domain.Queued(queue_turn(sw, input, on_busy), to_wake, after)

        return await self.db.session_write(session_id, body, tenant_id)

    async def steer(
        self, tenant_id: str, session_id: str, input: list[dict[str, Any]]
    ) -> domain.Steered:
        """Store `input` as a steer (DESIGN §3) of the turn under way: the active turn
        (running or waiting), else the head of the queue (as extra input). A turn being
        stopped reaches no boundary any more: the next in line takes it. With nothing
        unfinished it is a new queued turn, as `enqueue` makes. Its messages' ids are fixed
        now: the transcript shows them once the steer is delivered."""
        messages = [{"id": ids.new("msg"), **item} for item in input]
        message_ids = [m["id"] for m in messages]

        def body(sw: SessionWrite) -> domain.Steered:
            if sw.closed:
                raise errors.SessionClosed(f"session {session_id} is closed")
            unfinished = sw.conn.execute(_UNFINISHED, {"sid": sw.id}).all()
            target = next((r for r in unfinished if r.status != TurnStatus.CANCELLING), None)
            if target is None:
                return domain.Steered(
                    queue_turn(sw, messages, domain.OnBusy.STEER), message_ids, joined=False
                )
            steers.add(sw, target.id, messages)
            return domain.Steered(rows.turn(target), message_ids, joined=True)

        return await self.db.session_write(session_id, body, tenant_id)

    # --- control: stop, interrupt, rollback (DESIGN §3) ---------------------------------------

    async def stop(
        self,
        tenant_id: str,
        session_id: str,
        turn_id: str | None,
        mode: domain.StopMode,
        scope: domain.StopScope,
        reason: str,
    ) -> tuple[domain.Turn | None, list[str], int]:
        """Write a stop. The target is `turn_id`, or the session's active turn, or else the
        head of its queue. A queued or waiting turn is cancelled at once; a running one
        becomes `cancelling` and its executor must be woken (the ids answered). Stopping a
        finished turn or an idle session changes nothing. Answers the target as it now is,
        the turns to wake and the session's last event seq after the write."""

        def body(sw: SessionWrite) -> tuple[domain.Turn | None, list[str], int]:
            if turn_id is not None:
                row = sw.conn.execute(
                    select(turns).where(turns.c.id == turn_id, turns.c.session_id == sw.id)
                ).first()
                if row is None:
                    raise errors.NotFound(f"turn {turn_id} not found")
                target: domain.Turn | None = rows.turn(row)
            else:
                target = _target(sw)
            to_wake: list[str] = []
            if target is not None and (wake := stop_turn(sw, target, mode, reason)):
                to_wake.append(wake)
            if scope is domain.StopScope.ALL:
                to_wake += stop_all(sw, mode, reason)
            if target is not None:
                row = sw.conn.execute(select(turns).where(turns.c.id == target.id)).one()
                target = rows.turn(row)
            return target, to_wake, sw.event_seq

        return await self.db.session_write(session_id, body, tenant_id, urgent=True)

    # --- the holder's side: a step, a pause, an end (DESIGN §5) -----------------------------

    async def checkpoint(
        self,
        turn: domain.Turn,
        token: str,
        checkpoint: domain.Checkpoint,
        run_time_s: float,
        *,
        urgent: bool = False,
    ) -> list[domain.Message]:
        """Commit one step of a turn held under `token`, all or nothing: its messages, the
        calls it starts and the results of those that ran, its usage and step counter, the
        events describing them, and the turn's pause or end. StopRequested if a stop was
        written meanwhile, LeaseLost if the token no longer holds the turn. `urgent`: the end
        of a stopped turn, which must not wait behind other turns' checkpoints.

        At a step boundary the steers pending for the turn join its transcript, and are
        answered (the loop's next model call must see them): then a final answer does not
        end the turn, it is committed as a step and the loop goes on."""
        cp = checkpoint
        params: dict[str, Any] = {
            "tid": turn.id,
            "token": token,
            "step_inc": 1 if cp.step_done else 0,
            "usage": cp.usage.as_dict(),
            "run_time": run_time_s,
        }

        def body(sw: SessionWrite) -> list[domain.Message]:
            pending = steers.pending(sw, turn.id) if cp.boundary else []
            end = cp.end
            if end is not None and end.status is TurnStatus.COMPLETED and pending:
                end = None  # steered: the answer is a step, and the model is called again
            row: Row[Any] | None = None
            if end is None and not cp.waits:  # a step: the hot path, no RETURNING
                if sw.conn.execute(_CHECKPOINT, params).rowcount != 1:
                    refused(sw.conn, turn.id, token)
            elif end is None:
                row = sw.conn.execute(_PAUSE, params).first()
            else:
                error = end.error
                ending = {
                    "now": sw.now,
                    "reason": end.reason,
                    "error": {"code": error.code, "message": error.message} if error else None,
                }
                row = sw.conn.execute(_END[end.status], {**params, **ending}).first()
            if row is None and (end is not None or cp.waits):
                refused(sw.conn, turn.id, token)
            for message in cp.messages:
                sw.add_message(message)
            tool_runs.start(sw, turn.id, cp.started)
            tool_runs.record_results(sw, turn.id, cp.results)
            if cp.waits:
                assert row is not None
                tool_runs.pause(sw, turn.id, cp.asks)
                waiting = rows.turn(row)
                asked = interrupts.create(sw, waiting, cp.asks)
                webhooks.enqueue(
                    sw,
                    WebhookEvent.TURN_WAITING,
                    {
                        "turn": views.turn(waiting),
                        "interrupts": [views.interrupt(i) for i in asked],
                    },
                )
            elif row is not None:
                if row.reason is None and row.status == TurnStatus.CANCELLED:
                    row = _with_stop_reason(sw, row)  # a requested stop ends on its terms
                ended(sw, row, cp.interrupted)
            if end is None and not cp.waits:
                return steers.deliver(sw, turn.id, pending)
            return []

        return await holder_write(self.db, turn, body, urgent=urgent)

    async def unstartable(self, failed: Unstartable, max_attempts: int) -> TurnStatus | None:
        """Count a failed start of a queued turn as one of its attempts (DESIGN §2); at
        `max_attempts` the turn ends `failed`, reason and code `invalid_turn`. A transaction of
        its own. Answers the turn's status now (None: it left the queue meanwhile)."""

        def body(sw: SessionWrite) -> TurnStatus | None:
            queued = (turns.c.id == failed.turn_id) & guards.guard(turns.c.status, TurnMove.CLAIM)
            attempt = sw.conn.execute(select(turns.c.attempt).where(queued)).scalar()
            if attempt is None:
                return None
            attempt = max(attempt, 1)  # the first claim makes it 1, failed or not
            if attempt < max_attempts:
                sw.conn.execute(update(turns).where(queued).values(attempt=attempt + 1))
                return TurnStatus.QUEUED
            why = storable.printable(f"{type(failed.error).__name__}: {failed.error}", 300)
            message = f"the turn could not be started (attempts: {attempt}): {why}"
            row = sw.conn.execute(
                guards.update(turns, TurnMove.UNSTARTABLE)
                .where(turns.c.id == failed.turn_id)
                .values(
                    attempt=attempt,
                    reason=INVALID_TURN,
                    error={"code": INVALID_TURN, "message": message},
                    finished_at=sw.now,
                )
                .returning(*turns.c)
            ).one()
            ended(sw, row)
            return TurnStatus.FAILED

        try:
            return await self.db.session_write(failed.session_id, body)
        except errors.NotFound:
            return None  # the session was deleted meanwhile

    # --- expired leases ------------------------------------------------------------------------

    async def recover_lease(
        self, session_id: str, turn_id: str, max_attempts: int, now: datetime
    ) -> TurnStatus | None:
        """Return an expired lease (DESIGN §2): running -> queued (resume) or failed
        `worker_lost` after max attempts; cancelling -> cancelled."""

        def body(sw: SessionWrite) -> TurnStatus | None:
            row = sw.conn.execute(
                select(turns).where(turns.c.id == turn_id, IS_HELD, turns.c.lease_expires_at < now)
            ).first()
            if row is None:
                return None  # renewed or ended meanwhile
            current = rows.turn(row)
            extra: dict[str, Any] = {}
            if current.status is TurnStatus.RUNNING and current.attempt < max_attempts:
                move = TurnMove.REQUEUE
                extra = {"attempt": current.attempt + 1}
            elif current.status is TurnStatus.RUNNING:
                move = TurnMove.FAIL
                message = f"worker lost {current.attempt} times"
                extra = {
                    "reason": "worker_lost",
                    "error": {"code": "worker_lost", "message": message},
                    "finished_at": sw.now,
                }
            else:
                move = TurnMove.END_STOPPED
                stop = row.stop or {}
                extra = {"reason": stop.get("reason", "client_cancelled"), "finished_at": sw.now}
            # Conditional on the lease as we read it: a heartbeat that renewed it since (it
            # does not take the session lock) keeps the turn.
            updated = sw.conn.execute(
                guards.update(turns, move)
                .where(
                    turns.c.id == turn_id,
                    turns.c.claim_token == row.claim_token,
                    turns.c.lease_expires_at < now,
                )
                .values(**RELEASED, **extra)
                .returning(*turns.c)
            ).first()
            if updated is None:
                return None
            if move is TurnMove.REQUEUE:
                resumed = {"turn": views.turn(rows.turn(updated)), "resumed": True}
                sw.event(EventType.TURN_QUEUED, turn_id, resumed)
            else:
                ended(sw, updated)
            return move.target

        try:
            return await self.db.session_write(session_id, body)
        except errors.NotFound:
            return None  # the session was deleted meanwhile

    # --- interrupts answered or expired (DESIGN §4) -------------------------------------------

    async def respond(
        self, interrupt: domain.Interrupt, response: Any, resolved_by: str | None
    ) -> tuple[domain.Interrupt, bool]:
        """Record the answer (the first answer wins); a turn with nothing left pending goes
        back to the queue to resume. Answers the interrupt and whether the turn resumes."""

        def body(sw: SessionWrite) -> tuple[domain.Interrupt, bool]:
            resolved = interrupts.resolve(sw, interrupt.id, response, resolved_by)
            return resolved, _resume_if_settled(sw, resolved.turn_id)

        return await self.db.session_write(interrupt.session_id, body, interrupt.tenant_id)

    async def expire(self, session_id: str, interrupt_id: str, now: datetime) -> None:
        """A pending interrupt past its time becomes `expired` (never a human denial); the
        agent's on_expire applies: `deny` resumes the turn (the call is not run), `fail` ends
        it `failed` with reason approval_expired."""
        with contextlib.suppress(errors.NotFound):  # its session was deleted meanwhile
            await self.db.session_write(
                session_id, functools.partial(_expire, interrupt_id=interrupt_id, now=now)
            )


# --- inside a session write ----------------------------------------------------------------


def stop_turn(
    sw: SessionWrite, turn: domain.Turn, mode: domain.StopMode, reason: str
) -> str | None:
    """Stop one turn; answers its id if an executor must act."""
    stop = {"mode": mode.value, "reason": reason}
    if turn.status in TurnMove.STOP.sources:
        row = sw.conn.execute(
            guards.update(turns, TurnMove.STOP)
            .where(turns.c.id == turn.id)
            .values(stop=stop)
            .returning(*turns.c)
        ).one()
        data = {"turn": views.turn(rows.turn(row)), **stop}
        sw.event(EventType.TURN_CANCELLING, turn.id, data)
        _convert_steers(sw, turn.id)  # a stopping turn reaches no boundary any more
        return turn.id
    if turn.status in domain.HELD:
        return turn.id  # already stopping: wake it again, the first stop's terms stand
    if turn.status in TurnMove.CANCEL.sources:  # no executor holds it: it ends here
        if turn.status is TurnStatus.WAITING:  # only a waiting turn has pending interrupts
            interrupts.cancel_pending(sw, turn.id)
        row = sw.conn.execute(
            guards.update(turns, TurnMove.CANCEL)
            .where(turns.c.id == turn.id)
            .values(stop=stop, reason=reason, finished_at=sw.now, **RELEASED)
            .returning(*turns.c)
        ).one()
        ended(sw, row)
    return None


def stop_all(sw: SessionWrite, mode: domain.StopMode, reason: str) -> list[str]:
    """Stop every unfinished turn of the session, the turns its stopped turns' steers
    become included; answers the executors to wake."""
    woken: list[str] = []
    seen: set[str] = set()
    while True:
        made = sw.turn_seq
        for r in sw.conn.execute(_UNFINISHED, {"sid": sw.id}).all():
            if r.id not in seen:
                seen.add(r.id)
                if wake := stop_turn(sw, rows.turn(r), mode, reason):
                    woken.append(wake)
        if sw.turn_seq == made:  # no steer became a turn: nothing more to stop
            return woken


def ended(sw: SessionWrite, row: Row[Any], interrupted: Collection[str] = ()) -> None:
    """A turn reached a terminal state in this transaction: make its transcript valid for
    the next model call (or remove it, for a rollback), then say so. `interrupted`: the calls
    its executor had running."""
    turn = rows.turn(row)
    rolled_back = (
        turn.status is TurnStatus.CANCELLED
        and (row.stop or {}).get("mode") == domain.StopMode.ROLLBACK.value
    )
    if rolled_back:
        sw.conn.execute(update(messages).where(messages.c.turn_id == turn.id).values(hidden=True))
        sw.rolled_back.add(turn.id)  # and those written in this transaction
    if turn.status is not TurnStatus.COMPLETED:
        tool_runs.close(sw, turn.id, interrupted)
    data: dict[str, Any] = {"turn": views.turn(turn)}
    if rolled_back:
        data["rolled_back"] = True
    ending = domain.TERMINAL_EVENT[turn.status]
    sw.event(ending, turn.id, data)
    webhooks.enqueue(sw, WebhookEvent(ending.value), data)  # turn.completed|failed|cancelled
    _convert_steers(sw, turn.id)


def queue_turn(
    sw: SessionWrite,
    input: list[dict[str, Any]],
    on_busy: domain.OnBusy,
    origin: dict[str, Any] | None = None,
) -> domain.Turn:
    """A new turn at the end of the session's queue. Input items may carry the `id` their
    message will have (a steer's). `origin`: more for its `turn.queued` event."""
    sw.turn_seq += 1
    turn = domain.Turn(
        id=ids.new("turn"),
        session_id=sw.id,
        tenant_id=sw.tenant_id,
        seq=sw.turn_seq,
        status=TurnStatus.QUEUED,
        input=input,
        on_busy=on_busy.value,
        attempt=0,
        step=0,
        usage=domain.Usage(),
        run_time_s=0.0,
        reason=None,
        error=None,
        created_at=sw.now,
        started_at=None,
        finished_at=None,
    )
    sw.conn.execute(_INSERT_TURN, rows.TURN.values(turn))
    sw.event(EventType.TURN_QUEUED, turn.id, {"turn": views.turn(turn), **(origin or {})})
    return turn


def _convert_steers(sw: SessionWrite, turn_id: str) -> None:
    """`turn_id` reaches no step boundary any more: each of its pending steers becomes a
    new queued turn, as if it had been sent with `enqueue` (in a closed session, one
    cancelled at once: a closed session runs no new turn)."""

    def queue(messages: list[dict[str, Any]]) -> domain.Turn:
        origin = {"from_steer": {"turn_id": turn_id}}
        turn = queue_turn(sw, messages, domain.OnBusy.STEER, origin)
        if sw.closed:
            stop_turn(sw, turn, domain.StopMode.INTERRUPT, "session_closed")
        return turn

    steers.convert(sw, turn_id, queue)


def _unfinished(sw: SessionWrite) -> bool:
    return sw.conn.execute(_ANY_UNFINISHED, {"sid": sw.id}).first() is not None


def _target(sw: SessionWrite) -> domain.Turn | None:
    """The session's active turn, or else the head of its queue."""
    unfinished = sw.conn.execute(_UNFINISHED, {"sid": sw.id}).all()
    active = [r for r in unfinished if r.status in domain.ACTIVE]
    chosen = active[0] if active else (unfinished[0] if unfinished else None)
    return rows.turn(chosen) if chosen is not None else None


def _with_stop_reason(sw: SessionWrite, row: Row[Any]) -> Row[Any]:
    reason = (row.stop or {}).get("reason", "client_cancelled")
    return sw.conn.execute(
        update(turns).where(turns.c.id == row.id).values(reason=reason).returning(*turns.c)
    ).one()


def _resume_if_settled(sw: SessionWrite, turn_id: str) -> bool:
    """A waiting turn with nothing left pending goes back to the queue."""
    if interrupts.any_pending(sw, turn_id):
        return False
    row = sw.conn.execute(
        guards.update(turns, TurnMove.RESUME).where(turns.c.id == turn_id).returning(*turns.c)
    ).first()
    if row is None:
        return False
    sw.event(EventType.TURN_QUEUED, turn_id, {"turn": views.turn(rows.turn(row)), "resumed": True})
    return True


def _expire(sw: SessionWrite, *, interrupt_id: str, now: datetime) -> None:
    expired = interrupts.expire(sw, interrupt_id, now)
    if expired is None:
        return  # answered meanwhile
    webhooks.enqueue(sw, WebhookEvent.INTERRUPT_EXPIRED, {"interrupt": views.interrupt(expired)})
    if expired.on_expire != "fail":
        _resume_if_settled(sw, expired.turn_id)
        return
    message = f"interrupt {expired.id} expired unanswered"
    row = sw.conn.execute(
        guards.update(turns, TurnMove.EXPIRE)
        .where(turns.c.id == expired.turn_id)
        .values(
            reason="approval_expired",
            error={"code": "approval_expired", "message": message},
            finished_at=sw.now,
        )
        .returning(*turns.c)
    ).first()
    if row is not None:
        interrupts.cancel_pending(sw, expired.turn_id)
        ended(sw, row)
