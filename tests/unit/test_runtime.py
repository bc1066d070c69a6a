from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tether import domain, errors, specs
from tether.runtime import model as m
from tether.runtime.scripted import ScriptedModel
from tether.runtime.tools import ToolArgumentsError, ToolContext, ToolRegistry, builtin_registry


def _msg(role: str, content: str | None = None, **kw: Any) -> domain.Message:
    return domain.Message(
        id="msg_x",
        session_id="s",
        turn_id="t",
        seq=0,
        role=role,  # type: ignore[arg-type]
        content=content,
        **kw,
    )


async def _collect(model: ScriptedModel, messages: list[domain.Message]) -> list[m.ModelEvent]:
    return [e async for e in model.stream(m.ModelRequest("", messages))]


async def test_scripted_steps_then_reply() -> None:
    spec = specs.ModelSpec(
        steps=[
            specs.ScriptedStep(
                text="a b",
                tool_calls=[
                    specs.ScriptedToolCall(name="sleep", arguments={"seconds": 1}),
                    specs.ScriptedToolCall(name="get_time"),
                ],
            )
        ],
        reply="echo",
    )
    model = ScriptedModel(spec)
    first = await _collect(model, [_msg("user", "hi you")])
    assert [e.text for e in first if isinstance(e, m.TextDelta)] == ["a ", "b"]
    calls = [e for e in first if isinstance(e, domain.ToolCall)]
    assert [(c.name, c.arguments) for c in calls] == [("sleep", {"seconds": 1}), ("get_time", {})]
    assert isinstance(first[-1], m.Finished)
    assert first[-1].reason == "tool_calls"
    # the script position comes from the transcript: after one assistant message, the reply
    second = await _collect(model, [_msg("user", "hi you"), _msg("assistant", "a b")])
    assert "".join(e.text for e in second if isinstance(e, m.TextDelta)) == "hi you"


async def test_scripted_token_count_and_failure() -> None:
    out = await _collect(ScriptedModel(specs.ModelSpec(reply="x y", tokens=5)), [_msg("user", "q")])
    assert [e.text for e in out if isinstance(e, m.TextDelta)] == ["x ", "y ", "x ", "y ", "x "]
    usage = next(e for e in out if isinstance(e, m.UsageReport))
    assert usage.output_tokens == 5
    with pytest.raises(errors.ModelError, match="boom"):
        await _collect(ScriptedModel(specs.ModelSpec(fail="boom")), [_msg("user", "q")])


async def test_tool_schema_from_type_hints() -> None:
    registry = ToolRegistry()

    async def search(
        ctx: ToolContext, query: str, limit: int = 5, tags: list[str] | None = None
    ) -> dict[str, Any]:
        """Search things."""
        return {"query": query, "limit": limit, "turn": ctx.turn_id}

    tool = registry.register(search)
    schema = tool.parameters
    assert schema["required"] == ["query"]
    assert schema["properties"]["limit"] == {"default": 5, "title": "Limit", "type": "integer"}
    assert "ctx" not in schema["properties"]
    assert schema["additionalProperties"] is False
    assert tool.description == "Search things."
    out = await tool.call({"query": "q"}, ToolContext("s", "t1", "c"))
    assert out == '{"query": "q", "limit": 5, "turn": "t1"}'
    with pytest.raises(ToolArgumentsError):
        await tool.call({"limit": "many"}, ToolContext("s", "t", "c"))
    with pytest.raises(TypeError, match="async"):
        registry.register(lambda: None)  # type: ignore[arg-type, return-value]


async def test_builtin_sleep_is_cancellable() -> None:
    tool = builtin_registry().get("sleep")
    assert tool is not None
    task = asyncio.create_task(tool.call({"seconds": 60}, ToolContext("s", "t", "c")))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
