"""How a transcript becomes a Messages API request."""

from __future__ import annotations

from typing import Any

from tether import domain
from tether.runtime import anthropic_messages
from tether.runtime import model as m


def _msg(role: str, content: str | None = None, **kw: Any) -> domain.Message:
    return domain.Message(
        id="msg_x",
        session_id="s",
        turn_id="t",
        seq=0,
        role=role,
        content=content,
        **kw,  # type: ignore[arg-type]
    )


def test_roles_merge_and_tool_results_come_first() -> None:
    call = domain.ToolCall("toolu_1", "get_time", {})
    request = m.ModelRequest(
        "be brief",
        [
            _msg("system", "extra rule"),
            _msg("user", "one"),
            _msg("user", "two"),
            _msg("assistant", "checking", tool_calls=[call]),
            _msg("tool", "12:00", tool_call_id="toolu_1", name="get_time"),
            _msg("user", "and now?"),
            _msg("assistant", None),  # stopped before its first token: says nothing
        ],
        tools=[{"name": "get_time", "description": "the time", "parameters": {"type": "object"}}],
        params={"max_tokens": 10, "metadata": {"user_id": "u"}},
    )
    body = anthropic_messages.request_body("claude-x", request)
    assert body["system"] == "be brief\n\nextra rule"
    assert body["max_tokens"] == 10
    assert body["metadata"] == {"user_id": "u"}
    assert body["tools"] == [
        {"name": "get_time", "description": "the time", "input_schema": {"type": "object"}}
    ]
    assert body["messages"] == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "checking"},
                {"type": "tool_use", "id": "toolu_1", "name": "get_time", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "12:00"},
                {"type": "text", "text": "and now?"},
            ],
        },
    ]


def test_own_blocks_are_sent_verbatim_and_others_ignored() -> None:
    blocks = [
        {"type": "thinking", "thinking": "hmm", "signature": "sig"},
        {"type": "text", "text": "hi"},
    ]
    ours = _msg("assistant", "hi", provider_data={"provider": "anthropic", "content": blocks})
    theirs = _msg("assistant", "yo", provider_data={"provider": "openai", "content": [{"x": 1}]})
    _, messages = anthropic_messages.request_messages(
        m.ModelRequest("", [_msg("user", "a"), ours, _msg("user", "b"), theirs])
    )
    assert messages[1]["content"] == blocks
    assert messages[3]["content"] == [{"type": "text", "text": "yo"}]
    assert anthropic_messages.request_body("c", m.ModelRequest("", []))["max_tokens"] == 4096
