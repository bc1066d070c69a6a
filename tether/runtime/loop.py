"""The agent loop: model step, tool step, model step… until a final answer.

The loop knows nothing of stores or leases. Whoever runs it supplies a `TurnIO` that makes each
step durable (a checkpoint per step, DESIGN §5) and carries live deltas. Resuming is the same
code as starting: the loop reads where the turn's transcript stopped and goes on from there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from tether import domain, errors, ids
from tether.runtime import model as m
from tether.runtime.tools import ToolArgumentsError, ToolContext, ToolRegistry


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
) -> None:
    """Run `turn` to its end from wherever its checkpoint left it."""
    step = turn.step
    usage = domain.Usage(**turn.usage.as_dict())
    offered = [
        tool.spec()
        for t in agent.spec.tools
        if t.policy is not domain.ToolPolicy.DENY and (tool := agent.tools.get(t.name))
    ]
    while True:
        turn_messages = [msg for msg in transcript if msg.turn_id == turn.id]
        pending = pending_tool_calls(turn_messages)
        if step >= agent.spec.max_steps:
            raise errors.MaxStepsExceeded(f"no final answer after {step} steps")
        if pending:
            await io.tools_started(pending)
            ran = await asyncio.gather(*(_run_tool(agent, turn, c) for c in pending))
            results = [r for r, _ in ran]
            await io.tool_results(results, [o for _, o in ran])
            transcript.extend(results)
            step += 1
            continue

        message, step_usage = await _model_step(io, turn, transcript, agent, offered)
        usage.add(step_usage)
        transcript.append(message)
        step += 1
        if not message.tool_calls:
            await io.complete(message, usage)
            return
        await io.model_step(message, usage)


async def _model_step(
    io: TurnIO,
    turn: domain.Turn,
    transcript: list[domain.Message],
    agent: Agent,
    offered: list[dict[str, object]],
) -> tuple[domain.Message, domain.Usage]:
    message_id = ids.new("msg")
    request = m.ModelRequest(
        instructions=agent.spec.instructions,
        messages=transcript,
        tools=offered,
        params=agent.spec.model.params,
    )
    text: list[str] = []
    offset = 0
    calls: list[domain.ToolCall] = []
    usage = domain.Usage(model_calls=1)
    stream = agent.model.stream(request)
    try:
        async for event in stream:
            if isinstance(event, m.TextDelta):
                if event.text:
                    io.delta(message_id, offset, event.text)
                    offset += len(event.text)
                    text.append(event.text)
            elif isinstance(event, domain.ToolCall):
                calls.append(event)
            elif isinstance(event, m.UsageReport):
                usage.input_tokens += event.input_tokens
                usage.output_tokens += event.output_tokens
    finally:
        # On cancel this closes the provider's stream at once, not at garbage collection.
        await stream.aclose()  # type: ignore[attr-defined]
    message = domain.Message(
        id=message_id,
        session_id=turn.session_id,
        turn_id=turn.id,
        seq=0,  # numbered by the store
        role="assistant",
        content="".join(text) or None,
        tool_calls=calls,
    )
    return message, usage


async def _run_tool(
    agent: Agent, turn: domain.Turn, call: domain.ToolCall
) -> tuple[domain.Message, str]:
    """Run one tool call; any failure becomes a tool result the model can read."""
    allowed = {t.name: t.policy for t in agent.spec.tools}
    tool = agent.tools.get(call.name)
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
    result = domain.Message(
        id=ids.new("msg"),
        session_id=turn.session_id,
        turn_id=turn.id,
        seq=0,
        role="tool",
        content=content,
        tool_call_id=call.id,
        name=call.name,
    )
    return result, outcome
