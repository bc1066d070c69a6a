"""The agent loop: model step, tool step, model step… until a final answer.

The loop knows nothing of stores or leases. Whoever runs it supplies a `TurnIO` that makes each
step durable (a checkpoint per step, DESIGN §5) and carries live deltas. Resuming is the same
code as starting: the loop reads where the turn's transcript stopped and goes on from there.

While a step is in flight, `Progress` holds what it produced so far (partial text, which tool
calls finished), so a stop can record exactly what happened (DESIGN §3).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from tether import domain, errors, ids
from tether.runtime import model as m
from tether.runtime.tools import ToolArgumentsError, ToolContext, ToolRegistry

# How long cancelled tools get to clean up before the turn ends without them.
TOOL_CANCEL_GRACE_S = 0.5


class TurnIO(Protocol):
    def delta(self, message_id: str, offset: int, text: str) -> None:
        """A live text delta: streamed, not stored."""

    async def model_step(self, message: domain.Message, usage: domain.Usage) -> None:
        """Commit an assistant message with tool calls: one step."""

    async def tools_started(self, calls: Sequence[domain.ToolCall]) -> None:
        """Record that these calls are about to run."""

    async def tool_results(
        self, results: Sequence[domain.Message], outcomes: Sequence[str]
    ) -> None:
        """Commit the results of a batch of tool calls: one step."""

    async def complete(self, message: domain.Message, usage: domain.Usage) -> None:
        """Commit the final answer and end the turn `completed`."""

    async def pause(
        self,
        results: Sequence[domain.Message],
        outcomes: Sequence[str],
        requests: Sequence[domain.InterruptRequest],
    ) -> None:
        """Commit the finished calls of the batch and the interrupts it waits on; the turn
        becomes `waiting` and holds no worker."""


@dataclass
class Resume:
    """What the store knows of an earlier attempt of the turn's tool calls."""

    interrupts: dict[str, list[domain.Interrupt]] = field(default_factory=dict)  # by call id
    started: set[str] = field(default_factory=set)  # left `started` by a crash


Outcome = Literal["completed", "paused"]


@dataclass(slots=True)
class Agent:
    spec: domain.AgentSpec
    model: m.Model
    tools: ToolRegistry


@dataclass(slots=True)
class ToolRun:
    call: domain.ToolCall
    result: domain.Message | None = None  # set when the tool finished
    outcome: str = "not_run"  # not_run -> running -> completed | error | paused | ...
    arguments: dict[str, Any] | None = None  # to run with (an approver may have edited them)
    pause: domain.InterruptRequest | None = None  # what the tool asked, if it paused


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
        self.message_id = None
        self.text = []
        self.tool_calls = []
        self.tools = []
        self.provider_data = None


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
    resume: Resume | None = None,
) -> Outcome:
    """Run `turn` from wherever its checkpoint left it, to its end or to a pause."""
    progress = progress or Progress()
    resume = resume or Resume()
    step = turn.step
    progress.usage = domain.Usage(**turn.usage.as_dict())
    offered = [
        tool.spec()
        for name in dict.fromkeys(t.name for t in agent.spec.tools)  # each tool once
        if (entry := tool_spec(agent, name))
        and entry.policy is not domain.ToolPolicy.DENY
        and (tool := agent.tools.get(name))
    ]
    while True:
        progress.reset()
        turn_messages = [msg for msg in transcript if msg.turn_id == turn.id]
        pending = pending_tool_calls(turn_messages)
        if step >= agent.spec.max_steps:
            raise errors.MaxStepsExceeded(f"no final answer after {step} steps")
        if pending:
            runs, requests = await _tool_step(io, agent, turn, pending, progress, resume)
            done = [r for r in runs if r.result is not None]
            results = [r.result for r in done if r.result is not None]
            if any(r.outcome == "paused" for r in runs):
                await io.pause(results, [r.outcome for r in done], requests)
                return "paused"
            await io.tool_results(results, [r.outcome for r in done])
            transcript.extend(results)
            step += 1
            resume = Resume()  # what was asked before concerns the calls just finished
            continue

        message = await _model_step(io, turn, transcript, agent, offered, progress)
        transcript.append(message)
        step += 1
        if not message.tool_calls:
            await io.complete(message, progress.usage)
            return "completed"
        await io.model_step(message, progress.usage)


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
    stream = agent.model.stream(request)
    try:
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
    finally:
        # On a stop this closes the provider's stream at once (its HTTP connection with it),
        # not whenever the generator is garbage collected.
        await stream.aclose()  # type: ignore[attr-defined]
    return partial_message(turn, progress, domain.MessageStatus.COMPLETED)


def partial_message(
    turn: domain.Turn, progress: Progress, status: domain.MessageStatus
) -> domain.Message:
    """The assistant message of the model step in flight, as far as it got."""
    return domain.Message(
        id=progress.message_id or ids.new("msg"),
        session_id=turn.session_id,
        turn_id=turn.id,
        seq=0,  # numbered by the store
        role="assistant",
        content="".join(progress.text) or None,
        tool_calls=list(progress.tool_calls),
        status=status,
        # an interrupted answer's blocks are incomplete (unsigned thinking): never sent back
        provider_data=progress.provider_data if status is domain.MessageStatus.COMPLETED else None,
    )


async def _tool_step(
    io: TurnIO,
    agent: Agent,
    turn: domain.Turn,
    calls: list[domain.ToolCall],
    progress: Progress,
    resume: Resume,
) -> tuple[list[ToolRun], list[domain.InterruptRequest]]:
    """Decide each call (run, answer without running, or wait for a human), run those that
    may run, in parallel, and collect what they ask."""
    progress.tools = runs = [ToolRun(call) for call in calls]
    requests: list[domain.InterruptRequest] = []
    for run in runs:
        if (request := _gate(agent, turn, run, resume)) is not None:
            requests.append(request)
    runnable = [r for r in runs if r.outcome == "not_run"]
    if runnable:
        await io.tools_started([r.call for r in runnable])
        await _run_tools(agent, turn, runnable, resume)
        requests += [r.pause for r in runnable if r.pause is not None]
    return runs, requests


def _gate(
    agent: Agent, turn: domain.Turn, run: ToolRun, resume: Resume
) -> domain.InterruptRequest | None:
    """May this call run now? Sets `run` to answered, paused or runnable (outcome stays
    not_run); answers the interrupt to create when it must wait for a human."""
    call = run.call
    spec = tool_spec(agent, call.name)
    tool = agent.tools.get(call.name)
    if tool is None or spec is None:
        return _answer(turn, run, f"Error: no tool named {call.name!r} is available.", "error")
    if spec.policy is domain.ToolPolicy.DENY:
        return _answer(turn, run, f"Error: tool {call.name!r} is not allowed to run.", "error")
    unknown = call.id in resume.started and not tool.idempotent
    if spec.policy is domain.ToolPolicy.AUTO:
        if unknown:
            return _answer(
                turn,
                run,
                "Outcome unknown: the tool may have run before a crash; it was not run again.",
                "unknown",
            )
        run.arguments = dict(call.arguments)
        return None
    # policy approve: runs only with a persisted approval of this very call and arguments
    approvals = [i for i in resume.interrupts.get(call.id, []) if i.type == "approval"]
    latest = approvals[-1] if approvals else None
    needs_fresh = unknown and (latest is None or latest.request.get("reason") != "outcome_unknown")
    if latest is None or needs_fresh:
        run.outcome = "paused"
        request: dict[str, Any] = {
            "tool_name": call.name,
            "arguments": call.arguments,
            "editable": spec.editable,
        }
        if unknown:
            request["reason"] = "outcome_unknown"
        ttl = spec.interrupt_ttl_s or agent.spec.interrupt_ttl_s
        return domain.InterruptRequest("approval", call.id, call.name, request, ttl)
    if latest.status is domain.InterruptStatus.PENDING:
        run.outcome = "paused"
        return None
    if latest.status is domain.InterruptStatus.EXPIRED:
        return _answer(turn, run, "Not run: the approval request expired unanswered.", "expired")
    valid = (
        latest.status is domain.InterruptStatus.RESOLVED
        and latest.tenant_id == turn.tenant_id
        and latest.turn_id == turn.id
        and latest.tool_call_id == call.id
        and latest.request.get("arguments") == call.arguments
        and isinstance(latest.response, dict)
    )
    if not valid:
        return _answer(turn, run, "Not run: no valid approval for this call.", "not_run")
    response = latest.response
    if response.get("decision") != "approve":
        why = f": {response['reason']}" if response.get("reason") else ""
        return _answer(turn, run, f"Denied by the approver{why}. The tool did not run.", "denied")
    edited = response.get("arguments")
    run.arguments = dict(edited if spec.editable and isinstance(edited, dict) else call.arguments)
    return None


def _answer(
    turn: domain.Turn, run: ToolRun, content: str, outcome: str
) -> domain.InterruptRequest | None:
    """Settle a call without running it. (Returns None: nothing to ask.)"""
    run.result = tool_result(turn, run.call, content)
    run.outcome = outcome
    return None


async def _run_tools(agent: Agent, turn: domain.Turn, runs: list[ToolRun], resume: Resume) -> None:
    """Run tool calls in parallel. If the batch is cancelled, each tool is cancelled and given
    a short grace period; those that do not finish are abandoned."""
    tasks = [asyncio.create_task(_run_tool(agent, turn, run, resume)) for run in runs]
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


async def _run_tool(agent: Agent, turn: domain.Turn, run: ToolRun, resume: Resume) -> None:
    """Run one tool call; any failure becomes a tool result the model can read."""
    call = run.call
    tool = agent.tools.get(call.name)
    assert tool is not None
    assert run.arguments is not None
    run.outcome = "running"
    ctx = ToolContext(turn.session_id, turn.id, call.id, resume.interrupts.get(call.id, []))
    outcome = "completed"
    try:
        content = await tool.call(run.arguments, ctx)
    except errors.PauseRequested as pause:
        run.outcome = "paused"
        run.pause = domain.InterruptRequest(
            pause.type, call.id, call.name, pause.request, agent_ttl(agent, call.name)
        )
        return
    except errors.InterruptExpired as exc:
        content, outcome = f"Not answered: {exc.message}.", "expired"
    except ToolArgumentsError as exc:
        content, outcome = f"Error: invalid arguments for {call.name}: {exc}", "error"
    except Exception as exc:  # a tool's bug is the model's information, not a crash
        content, outcome = f"Error: {type(exc).__name__}: {exc}", "error"
    run.result = tool_result(turn, call, content)
    run.outcome = outcome


_STRICTNESS = [domain.ToolPolicy.AUTO, domain.ToolPolicy.APPROVE, domain.ToolPolicy.DENY]


def tool_spec(agent: Agent, tool_name: str) -> domain.ToolSpec | None:
    """The agent's entry for a tool. Duplicate entries are refused when agents are made, but
    one stored before that rule may have them: then the strictest policy holds, so an
    approval is never skipped."""
    entries = [t for t in agent.spec.tools if t.name == tool_name]
    return max(entries, key=lambda t: _STRICTNESS.index(t.policy), default=None)


def agent_ttl(agent: Agent, tool_name: str) -> float | None:
    spec = tool_spec(agent, tool_name)
    return (spec.interrupt_ttl_s if spec else None) or agent.spec.interrupt_ttl_s


def tool_result(turn: domain.Turn, call: domain.ToolCall, content: str) -> domain.Message:
    return domain.Message(
        id=ids.new("msg"),
        session_id=turn.session_id,
        turn_id=turn.id,
        seq=0,
        role="tool",
        content=content,
        tool_call_id=call.id,
        name=call.name,
    )
