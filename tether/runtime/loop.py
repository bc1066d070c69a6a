"""The agent loop: model step, tool step, model step… until a final answer.

The loop knows nothing of stores or leases. Whoever runs it supplies a `TurnIO`: `commit`
makes each step durable (one `domain.Checkpoint` per step, DESIGN §5), `delta` carries live
text. Resuming is the same code as starting: the loop reads where the turn's transcript
stopped and goes on from there.

While a step is in flight, `Progress` holds what it produced so far (partial text, which tool
calls finished), so a stop can record exactly what happened (DESIGN §3): `Progress.ended`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from tether import domain, errors, ids, specs
from tether.runtime import model as m
from tether.runtime.toolbox import Toolbox
from tether.runtime.tools import ToolArgumentsError, ToolContext, ToolError

# How long cancelled tools get to clean up before the turn ends without them.
TOOL_CANCEL_GRACE_S = 0.5
Outcome = domain.ToolOutcome


class TurnIO(Protocol):
    def delta(self, message_id: str, offset: int, text: str) -> None:
        """A live text delta: streamed, not stored."""

    async def commit(self, checkpoint: domain.Checkpoint) -> list[domain.Message]:
        """Make one step durable (with the turn's pause or end, if it has one). At a step
        boundary, answers the steers' messages that joined the transcript with it: then a
        final answer did not end the turn."""

    def tool_progress(
        self, call: domain.ToolCall, progress: float, total: float | None, message: str | None
    ) -> None:
        """A running tool's progress report: written apart, best effort; returns at once."""


@dataclass(slots=True)
class Agent:
    spec: specs.AgentSpec
    model: m.Model
    tools: Toolbox


class RunState(enum.Enum):
    WAITING = "waiting"  # not reached yet, or may run
    RUNNING = "running"
    PAUSED = "paused"  # waits on an interrupt
    DONE = "done"  # has its result


@dataclass(slots=True)
class ToolRun:
    call: domain.ToolCall
    state: RunState = RunState.WAITING
    result: domain.ToolResult | None = None  # set when the call is settled
    arguments: dict[str, Any] | None = None  # to run with (an approver may have edited them)
    pause: domain.InterruptRequest | None = None  # what it waits on, if it asks


@dataclass
class Progress:
    """What the step in flight has produced, for whoever has to stop it."""

    message_id: str | None = None  # the assistant message being streamed
    text: list[str] = field(default_factory=list)
    tool_calls: list[domain.ToolCall] = field(default_factory=list)
    tools: list[ToolRun] = field(default_factory=list)  # the tool batch being run
    usage: domain.Usage = field(default_factory=domain.Usage)
    provider_data: dict[str, Any] | None = None  # the whole answer in the provider's form

    def reset(self) -> None:
        """The step in flight was committed: nothing of it is left to record."""
        self.message_id = None
        self.text = []
        self.tool_calls = []
        self.tools = []
        self.provider_data = None

    def message(self, turn: domain.Turn, status: domain.MessageStatus) -> domain.Message:
        """The assistant message of the model step in flight, as far as it got."""
        return domain.Message(
            id=self.message_id or ids.new("msg"),
            session_id=turn.session_id,
            turn_id=turn.id,
            seq=0,  # numbered by the store
            role="assistant",
            content="".join(self.text) or None,
            tool_calls=list(self.tool_calls),
            status=status,
            # an interrupted answer's blocks are incomplete (unsigned thinking): never sent back
            provider_data=self.provider_data if status is domain.MessageStatus.COMPLETED else None,
        )

    def ended(self, turn: domain.Turn, end: domain.TurnEnd) -> domain.Checkpoint:
        """The turn's last checkpoint when it ends in the middle of a step: a stopped turn
        keeps its partial text (marked interrupted) and the results of the calls that
        finished; the calls still running are `interrupted`. The store gives every other
        call of the turn its `not_run` result with the end."""
        checkpoint = domain.Checkpoint(usage=self.usage, end=end)
        if end.status is not domain.TurnStatus.CANCELLED:
            return checkpoint  # a failure keeps what was committed, nothing in flight
        if self.message_id and (self.text or self.tool_calls):
            checkpoint.messages.append(self.message(turn, domain.MessageStatus.INTERRUPTED))
        for run in self.tools:
            if run.result is not None:
                checkpoint.results.append(run.result)
            elif run.state is RunState.RUNNING:
                checkpoint.interrupted.append(run.call.id)
        return checkpoint


def pending_tool_calls(turn_messages: Sequence[domain.Message]) -> list[domain.ToolCall]:
    """The tool calls of the turn's last assistant message that have no result yet."""
    answered = {msg.tool_call_id for msg in turn_messages if msg.role == "tool"}
    for msg in reversed(turn_messages):
        if msg.role == "assistant":
            return [c for c in msg.tool_calls if c.id not in answered]
    return []


async def run_turn(
    io: TurnIO,
    turn: domain.Turn,
    transcript: list[domain.Message],
    agent: Agent,
    progress: Progress | None = None,
    resume: domain.ResumeState | None = None,
) -> None:
    """Run `turn` from wherever its checkpoint left it, to its end or to a pause; each step
    is committed through `io` before the next begins."""
    progress = progress or Progress()
    resume = resume or domain.ResumeState()
    step = turn.step
    progress.usage = domain.Usage(**turn.usage.as_dict())

    async def commit(checkpoint: domain.Checkpoint) -> list[domain.Message]:
        steered = await io.commit(checkpoint)
        progress.reset()
        return steered

    max_steps = agent.spec.max_steps
    while True:
        turn_messages = [msg for msg in transcript if msg.turn_id == turn.id]
        pending = pending_tool_calls(turn_messages)
        if step >= max_steps:
            raise errors.MaxStepsExceeded(f"no final answer after {step} steps")
        await agent.tools.refresh()  # MCP servers' tools: cached, unless they changed
        if pending:
            runs = await _tool_step(io, agent, turn, pending, progress, resume)
            results = [r.result for r in runs if r.result is not None]
            if any(r.state is RunState.PAUSED for r in runs):
                asks = [r.pause for r in runs if r.pause is not None]
                await commit(
                    domain.Checkpoint(progress.usage, results=results, waits=True, asks=asks)
                )
                return
            step += 1
            done = domain.Checkpoint(
                progress.usage, step_done=True, results=results, boundary=step < max_steps
            )
            steered = await commit(done)
            transcript.extend(r.message for r in results)
            transcript.extend(steered)
            resume = domain.ResumeState()  # what was asked before concerns the calls just done
            continue

        offered = agent.tools.offered()
        message = await _model_step(io, turn, transcript, agent, offered, progress)
        transcript.append(message)
        step += 1
        end = None if message.tool_calls else domain.TurnEnd(domain.TurnStatus.COMPLETED)
        # A boundary where the transcript is valid for a model call (no call left without a
        # result) and another model call may be made: steers join the turn here.
        boundary = end is not None and step < max_steps
        steered = await commit(
            domain.Checkpoint(progress.usage, True, messages=[message], end=end, boundary=boundary)
        )
        transcript.extend(steered)
        if end is not None and not steered:
            return


async def _model_step(
    io: TurnIO,
    turn: domain.Turn,
    transcript: list[domain.Message],
    agent: Agent,
    offered: list[dict[str, object]],
    progress: Progress,
) -> domain.Message:
    progress.message_id = message_id = ids.new("msg")
    request = m.ModelRequest(
        instructions=agent.spec.instructions,
        messages=transcript,
        tools=offered,
        params=agent.spec.model.params,
    )
    offset = 0
    progress.usage.model_calls += 1
    # On a stop, closing closes the provider's stream at once (its HTTP connection with it),
    # not whenever the generator is garbage collected.
    async with contextlib.aclosing(agent.model.stream(request)) as stream:
        async for event in stream:
            if isinstance(event, m.TextDelta):
                if event.text:
                    io.delta(message_id, offset, event.text)
                    offset += len(event.text)
                    progress.text.append(event.text)
            elif isinstance(event, domain.ToolCall):
                progress.tool_calls.append(event)
            elif isinstance(event, m.UsageReport):
                progress.usage.add(
                    domain.Usage(
                        input_tokens=event.input_tokens,
                        output_tokens=event.output_tokens,
                        cache_creation_input_tokens=event.cache_creation_input_tokens,
                        cache_read_input_tokens=event.cache_read_input_tokens,
                    )
                )
            elif isinstance(event, m.ProviderContent):
                progress.provider_data = event.as_dict()
    return progress.message(turn, domain.MessageStatus.COMPLETED)


async def _tool_step(
    io: TurnIO,
    agent: Agent,
    turn: domain.Turn,
    calls: list[domain.ToolCall],
    progress: Progress,
    resume: domain.ResumeState,
) -> list[ToolRun]:
    """Decide each call (run, answer without running, or wait for a human), mark those that
    may run `started` in one checkpoint, and run them in parallel."""
    progress.tools = runs = [ToolRun(call) for call in calls]
    for run in runs:
        _gate(agent, turn, run, resume)
    runnable = [r for r in runs if r.state is RunState.WAITING]
    if runnable:
        await io.commit(domain.Checkpoint(progress.usage, started=[r.call for r in runnable]))
        await _run_tools(io, agent, turn, runnable, resume)
    return runs


def _gate(agent: Agent, turn: domain.Turn, run: ToolRun, resume: domain.ResumeState) -> None:
    """May this call run now? Settles it without running (a result), pauses it (with the
    interrupt to create, unless one is pending), or leaves it WAITING, with the arguments to
    run it with."""
    call = run.call
    spec = agent.tools.entry(call.name)
    tool = agent.tools.get(call.name)
    if tool is None or spec is None:
        if call.id in resume.started:  # it may have run before a crash, when it was there
            _settle(
                turn,
                run,
                "Outcome unknown: the tool may have run before a crash; it "
                f"is not available now. {agent.tools.missing(call.name)}",
                "unknown",
            )
        else:
            _settle(turn, run, agent.tools.missing(call.name), "error")
        return
    if spec.policy is specs.ToolPolicy.DENY:
        _settle(turn, run, f"Error: tool {call.name!r} is not allowed to run.", "error")
        return
    unknown = call.id in resume.started and not tool.idempotent  # it may have run: a crash
    if spec.policy is specs.ToolPolicy.APPROVE:
        _gate_approval(agent, turn, run, resume, spec, unknown=unknown)
    elif unknown:
        _settle(
            turn,
            run,
            "Outcome unknown: the tool may have run before a crash; it was not run again.",
            "unknown",
        )
    else:
        run.arguments = dict(call.arguments)


def _gate_approval(
    agent: Agent,
    turn: domain.Turn,
    run: ToolRun,
    resume: domain.ResumeState,
    spec: specs.ToolSpec,
    *,
    unknown: bool,
) -> None:
    """Policy `approve`: the call runs only with a persisted approval of this very call and
    arguments."""
    call = run.call
    approvals = [i for i in resume.interrupts.get(call.id, []) if i.type == "approval"]
    latest = approvals[-1] if approvals else None
    needs_fresh = unknown and (latest is None or latest.request.get("reason") != "outcome_unknown")
    if latest is None or needs_fresh:
        request: dict[str, Any] = {
            "tool_name": call.name,
            "arguments": call.arguments,
            "editable": spec.editable,
        }
        if unknown:
            request["reason"] = "outcome_unknown"
        run.state = RunState.PAUSED
        run.pause = _interrupt(agent, call, "approval", request)
        return
    if latest.status is domain.InterruptStatus.PENDING:
        run.state = RunState.PAUSED  # asked already: no new interrupt
        return
    if latest.status is domain.InterruptStatus.EXPIRED:
        _settle(turn, run, "Not run: the approval request expired unanswered.", "expired")
        return
    valid = (
        latest.status is domain.InterruptStatus.RESOLVED
        and latest.tenant_id == turn.tenant_id
        and latest.turn_id == turn.id
        and latest.tool_call_id == call.id
        and latest.request.get("arguments") == call.arguments
        and isinstance(latest.response, dict)
    )
    if not valid:
        _settle(turn, run, "Not run: no valid approval for this call.", "not_run")
        return
    response = latest.response
    if response.get("decision") != "approve":
        why = f": {response['reason']}" if response.get("reason") else ""
        _settle(turn, run, f"Denied by the approver{why}. The tool did not run.", "denied")
        return
    edited = response.get("arguments")
    run.arguments = dict(edited if spec.editable and isinstance(edited, dict) else call.arguments)


def _settle(turn: domain.Turn, run: ToolRun, content: str, outcome: str) -> None:
    """The call has its result: `content` for the model, `outcome` for the events."""
    message = domain.Message.tool_result(turn.session_id, turn.id, run.call, content)
    run.result = domain.ToolResult(message, Outcome(outcome))
    run.state = RunState.DONE


def _interrupt(
    agent: Agent, call: domain.ToolCall, type: str, request: dict[str, Any]
) -> domain.InterruptRequest:
    spec = agent.tools.entry(call.name)
    ttl = (spec.interrupt_ttl_s if spec else None) or agent.spec.interrupt_ttl_s
    return domain.InterruptRequest(type, call.id, call.name, request, ttl, agent.spec.on_expire)


async def _run_tools(
    io: TurnIO, agent: Agent, turn: domain.Turn, runs: list[ToolRun], resume: domain.ResumeState
) -> None:
    """Run tool calls in parallel. If the batch is cancelled, each tool is cancelled and given
    a short grace period; those that do not finish are abandoned."""
    tasks = [asyncio.create_task(_run_tool(io, agent, turn, run, resume)) for run in runs]
    try:
        # asyncio.wait, not gather: a cancelled gather waits for its children to finish
        await asyncio.wait(tasks)
    except asyncio.CancelledError:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait(tasks, timeout=TOOL_CANCEL_GRACE_S)
        raise
    for task in tasks:
        task.result()  # a tool's failure is already its result; this only re-raises bugs


async def _run_tool(
    io: TurnIO, agent: Agent, turn: domain.Turn, run: ToolRun, resume: domain.ResumeState
) -> None:
    """Run one tool call; any failure becomes a tool result the model can read."""
    call = run.call
    tool = agent.tools.get(call.name)
    assert tool is not None
    assert run.arguments is not None
    run.state = RunState.RUNNING

    def report(progress: float, total: float | None, message: str | None) -> None:
        io.tool_progress(call, progress, total, message)

    ctx = ToolContext(
        turn.session_id,
        turn.id,
        call.id,
        resume.interrupts.get(call.id, []),
        report=report,
        tenant_id=turn.tenant_id,
    )
    outcome = "completed"
    try:
        content = await tool.call(run.arguments, ctx)
    except errors.PauseRequested as pause:
        run.state = RunState.PAUSED
        run.pause = _interrupt(agent, call, pause.type, pause.request)
        return
    except errors.InterruptExpired as exc:
        content, outcome = f"Not answered: {exc.message}.", "expired"
    except ToolArgumentsError as exc:
        content, outcome = f"Error: invalid arguments for {call.name}: {exc}", "error"
    except ToolError as exc:  # the tool's own error result (an MCP server's, say)
        content, outcome = str(exc), "error"
    except Exception as exc:  # a tool's bug is the model's information, not a crash
        content, outcome = f"Error: {type(exc).__name__}: {exc}", "error"
    _settle(turn, run, content, outcome)
