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
from typing import Protocol

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


@dataclass(slots=True)
class Agent:
    spec: domain.AgentSpec
    model: m.Model
    tools: ToolRegistry


@dataclass(slots=True)
class ToolRun:
    call: domain.ToolCall
    result: domain.Message | None = None  # set when the tool finished
    outcome: str = "not_run"  # not_run -> running -> completed | error


@dataclass
class Progress:
    """What the step in flight has produced, for whoever has to stop it."""

    message_id: str | None = None  # the assistant message being streamed
    text: list[str] = field(default_factory=list)
    tool_calls: list[domain.ToolCall] = field(default_factory=list)
    tools: list[ToolRun] = field(default_factory=list)  # the tool batch being run
    usage: domain.Usage = field(default_factory=domain.Usage)

    def reset(self) -> None:
        self.message_id = None
        self.text = []
        self.tool_calls = []
        self.tools = []


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
) -> None:
    """Run `turn` to its end from wherever its checkpoint left it."""
    progress = progress or Progress()
    step = turn.step
    progress.usage = domain.Usage(**turn.usage.as_dict())
    offered = [
        tool.spec()
        for t in agent.spec.tools
        if t.policy is not domain.ToolPolicy.DENY and (tool := agent.tools.get(t.name))
    ]
    while True:
        progress.reset()
        turn_messages = [msg for msg in transcript if msg.turn_id == turn.id]
        pending = pending_tool_calls(turn_messages)
        if step >= agent.spec.max_steps:
            raise errors.MaxStepsExceeded(f"no final answer after {step} steps")
        if pending:
            await io.tools_started(pending)
            runs = await _run_tools(agent, turn, pending, progress)
            results = [r.result for r in runs if r.result is not None]
            await io.tool_results(results, [r.outcome for r in runs])
            transcript.extend(results)
            step += 1
            continue

        message = await _model_step(io, turn, transcript, agent, offered, progress)
        transcript.append(message)
        step += 1
        if not message.tool_calls:
            await io.complete(message, progress.usage)
            return
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
                progress.usage.input_tokens += event.input_tokens
                progress.usage.output_tokens += event.output_tokens
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
    )


async def _run_tools(
    agent: Agent, turn: domain.Turn, calls: list[domain.ToolCall], progress: Progress
) -> list[ToolRun]:
    """Run a batch of tool calls in parallel. If the batch is cancelled, each tool is
    cancelled and given a short grace period; those that do not finish are abandoned."""
    progress.tools = runs = [ToolRun(call) for call in calls]
    tasks = [asyncio.create_task(_run_tool(agent, turn, run)) for run in runs]
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
    return runs


async def _run_tool(agent: Agent, turn: domain.Turn, run: ToolRun) -> None:
    """Run one tool call; any failure becomes a tool result the model can read."""
    call = run.call
    allowed = {t.name: t.policy for t in agent.spec.tools}
    tool = agent.tools.get(call.name)
    run.outcome = "running"
    outcome = "completed"
    if tool is None or call.name not in allowed:
        content, outcome = f"Error: no tool named {call.name!r} is available.", "error"
    elif allowed[call.name] is not domain.ToolPolicy.AUTO:
        content, outcome = f"Error: tool {call.name!r} is not allowed to run.", "error"
    else:
        ctx = ToolContext(turn.session_id, turn.id, call.id)
        try:
            content = await tool.call(call.arguments, ctx)
        except ToolArgumentsError as exc:
            content, outcome = f"Error: invalid arguments for {call.name}: {exc}", "error"
        except Exception as exc:  # a tool's bug is the model's information, not a crash
            content, outcome = f"Error: {type(exc).__name__}: {exc}", "error"
    run.result = tool_result(turn, call, content)
    run.outcome = outcome


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
