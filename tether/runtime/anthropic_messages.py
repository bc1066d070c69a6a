"""Anthropic's Messages API through the official `anthropic` SDK, streamed (DESIGN §10).

- The agent's `instructions` are the system prompt; its tools are offered with their JSON
  schemas; `model.params` go into the request as they are (`max_tokens` defaults to 4096).
- The answer streams as text deltas; each `tool_use` block becomes a tool call when it closes
  (parallel calls are several blocks); `stop_reason` becomes the finish reason.
- Usage counts input, output and prompt-cache tokens (`message_start` has the input side,
  `message_delta` the cumulative totals).
- The answer's content blocks are kept as the API returned them (`thinking` with its
  `signature`, `redacted_thinking`, text, tool_use) and sent back verbatim when the transcript
  goes to Anthropic again: with extended thinking, a tool-use step is valid only if its
  thinking blocks come back unchanged.
- Closing the stream (a stop) closes the HTTP response: the connection is dropped and the
  model stops producing (and billing) tokens.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

import anthropic
import httpx2
from anthropic.types import message_create_params

from tether import domain, errors, specs
from tether.runtime import credentials, provider_params, retry
from tether.runtime.model import (
    Finished,
    ModelEvent,
    ModelRequest,
    ProviderContent,
    ReasoningDelta,
    TextDelta,
    UsageReport,
)

NAME = "anthropic"
DEFAULT_MAX_TOKENS = 4096

PROVIDER = credentials.Provider(
    name=NAME, default_base_url="https://api.anthropic.com", key_env="ANTHROPIC_API_KEY"
)
# Request fields Tether sets itself: never taken from an agent's params.
PARAMS = provider_params.RequestParams(
    "Messages",
    message_create_params.MessageCreateParamsStreaming,
    frozenset({"model", "messages", "system", "tools", "stream"}),
)

# stop_reason -> the finish reasons the other providers use
_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "tool_use": "tool_calls",
    "max_tokens": "length",
}
# error.type values that are worth another try, whatever the HTTP status (an `error` event in
# a 200 stream carries the type only)
_TRANSIENT_TYPES = {"overloaded_error", "api_error", "rate_limit_error", "timeout_error"}


# --- the request -------------------------------------------------------------------------


def _own_blocks(message: domain.Message) -> list[dict[str, Any]] | None:
    data = message.provider_data
    if data and data.get("provider") == NAME and isinstance(data.get("content"), list):
        return list(data["content"])
    return None


def _assistant_blocks(message: domain.Message) -> list[dict[str, Any]]:
    if (blocks := _own_blocks(message)) is not None:
        return blocks
    out: list[dict[str, Any]] = []
    if message.content:
        out.append({"type": "text", "text": message.content})
    out += [
        {"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments}
        for c in message.tool_calls
    ]
    return out


def request_messages(request: ModelRequest) -> tuple[str, list[dict[str, Any]]]:
    """The system prompt and the transcript in Messages form: tool results are `tool_result`
    blocks of a user message (first in it, as the API wants), and consecutive messages of one
    role are one message."""
    system = [request.instructions] if request.instructions else []
    out: list[dict[str, Any]] = []
    for m in request.messages:
        if m.role == "system":
            if m.content:
                system.append(m.content)
            continue
        if m.role == "assistant":
            role, blocks = "assistant", _assistant_blocks(m)
        elif m.role == "tool":
            role = "user"
            blocks = [
                {"type": "tool_result", "tool_use_id": m.tool_call_id, "content": m.content or ""}
            ]
        else:
            role, blocks = "user", [{"type": "text", "text": m.content or ""}]
        if not blocks:
            continue  # an empty answer (e.g. stopped before its first token) says nothing
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    return "\n\n".join(system), out


def request_body(model: str, request: ModelRequest) -> dict[str, Any]:
    system, messages = request_messages(request)
    body: dict[str, Any] = {"max_tokens": DEFAULT_MAX_TOKENS, **request.params}
    body.update(model=model, messages=messages, stream=True)
    if system:
        body["system"] = system
    if request.tools:
        body["tools"] = [
            {
                "name": t["name"],
                "description": t.get("description") or "",
                "input_schema": t.get("parameters") or {"type": "object", "properties": {}},
            }
            for t in request.tools
        ]
    return body


# --- failures ----------------------------------------------------------------------------

_TRANSPORT_ERRORS: tuple[type[Exception], ...] = (OSError, httpx2.TransportError)
_TIMEOUT_ERRORS: tuple[type[Exception], ...] = (
    TimeoutError,
    anthropic.APITimeoutError,
    httpx2.TimeoutException,
)
_CALL_ERRORS: tuple[type[Exception], ...] = (anthropic.AnthropicError, *_TRANSPORT_ERRORS)
# + what malformed events raise while they are decoded
_STREAM_ERRORS: tuple[type[Exception], ...] = (*_CALL_ERRORS, ValueError, KeyError, TypeError)


def _refusal(exc: BaseException) -> errors.DestinationNotAllowed | None:
    """The destination guard's refusal, raised as it is or wrapped by the SDK."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, errors.DestinationNotAllowed):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def failure(exc: Exception) -> errors.ModelError:
    """The provider's failure as a turn failure, saying whether another try may help."""
    if (refused := _refusal(exc)) is not None:
        return errors.ProviderRefused(refused)
    if isinstance(exc, _TIMEOUT_ERRORS):
        return errors.ProviderTimeout(f"model provider timed out: {exc}")
    if isinstance(exc, anthropic.APIStatusError):
        kind = exc.type or ""
        status = exc.status_code
        detail = f"model provider answered {status} {kind or 'error'}: {exc.api_message or exc}"
        asked = retry.retry_after_s(exc.response.headers)
        if status >= 500 or kind in ("overloaded_error", "api_error"):
            return errors.ProviderUnavailable(detail, retryable=True, retry_after_s=asked)
        transient = status in (408, 429) or kind in _TRANSIENT_TYPES
        if status < 400 and not kind:  # an error event without a type: unreadable
            return errors.ProviderBadResponse(detail)
        return errors.ProviderRejected(detail, retryable=transient, retry_after_s=asked)
    if isinstance(exc, (anthropic.APIConnectionError, *_TRANSPORT_ERRORS)):
        return errors.ProviderUnavailable(f"model provider unreachable: {exc}", retryable=True)
    return errors.ProviderBadResponse(f"unreadable model provider answer: {exc}")


# --- the answer --------------------------------------------------------------------------


@dataclass
class _Usage:
    """Cumulative counts as the stream reports them; each report is turned into increments."""

    seen: dict[str, int] = field(default_factory=dict)

    def update(self, usage: dict[str, Any]) -> UsageReport | None:
        increments: dict[str, int] = {}
        for name in (
            "input_tokens",
            "output_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
        ):
            value = usage.get(name)
            if isinstance(value, int) and value > self.seen.get(name, 0):
                increments[name] = value - self.seen.get(name, 0)
                self.seen[name] = value
        if not increments:
            return None
        return UsageReport(
            input_tokens=increments.get("input_tokens", 0),
            output_tokens=increments.get("output_tokens", 0),
            cache_creation_input_tokens=increments.get("cache_creation_input_tokens", 0),
            cache_read_input_tokens=increments.get("cache_read_input_tokens", 0),
        )


@dataclass
class _Answer:
    """The content blocks being streamed, by index, and what the stream said so far."""

    blocks: dict[int, dict[str, Any]] = field(default_factory=dict)
    partial_json: dict[int, str] = field(default_factory=dict)
    stop_reason: str | None = None
    stopped: bool = False  # message_stop arrived
    usage: _Usage = field(default_factory=_Usage)

    def start(self, index: int, block: dict[str, Any]) -> None:
        self.blocks[index] = block
        if block.get("type") in ("tool_use", "server_tool_use"):
            self.partial_json[index] = ""

    def delta(self, index: int, delta: dict[str, Any]) -> ModelEvent | None:
        block = self.blocks[index]
        kind = delta.get("type")
        if kind == "text_delta":
            block["text"] = block.get("text", "") + delta["text"]
            return TextDelta(delta["text"])
        if kind == "thinking_delta":
            block["thinking"] = block.get("thinking", "") + delta["thinking"]
            return ReasoningDelta(delta["thinking"])
        if kind == "signature_delta":
            block["signature"] = block.get("signature", "") + delta["signature"]
        elif kind == "input_json_delta":
            self.partial_json[index] = self.partial_json.get(index, "") + delta["partial_json"]
        elif kind == "citations_delta":
            block.setdefault("citations", []).append(delta["citation"])
        return None

    def stop(self, index: int) -> domain.ToolCall | None:
        block = self.blocks[index]
        if index in self.partial_json:
            raw = self.partial_json.pop(index)
            try:
                arguments = json.loads(raw) if raw else block.get("input") or {}
            except ValueError as exc:
                raise errors.ProviderBadResponse(
                    f"tool call {block.get('name')!r} has malformed arguments"
                ) from exc
            if not isinstance(arguments, dict):
                raise errors.ProviderBadResponse(f"tool call {block.get('name')!r} arguments")
            block["input"] = arguments
        if block.get("type") != "tool_use":
            return None
        if not block.get("id") or not block.get("name"):
            raise errors.ProviderBadResponse("incomplete tool call in the model's answer")
        return domain.ToolCall(block["id"], block["name"], block["input"])

    def content(self) -> list[dict[str, Any]]:
        return [self.blocks[i] for i in sorted(self.blocks)]


def _as_dict(obj: Any) -> dict[str, Any]:
    """An SDK object as the JSON the API sent: only the fields it set."""
    if isinstance(obj, dict):
        return obj
    data = obj.to_dict(mode="json", exclude_unset=True)
    assert isinstance(data, dict)
    return data


def _events(answer: _Answer, event: dict[str, Any]) -> list[ModelEvent]:
    """What one stream event means for the turn."""
    kind = event.get("type")
    out: list[ModelEvent] = []
    if kind == "message_start":
        report = answer.usage.update(event["message"].get("usage") or {})
        out += [report] if report else []
    elif kind == "content_block_start":
        answer.start(event["index"], dict(event["content_block"]))
    elif kind == "content_block_delta":
        if (delta_event := answer.delta(event["index"], event["delta"])) is not None:
            out.append(delta_event)
    elif kind == "content_block_stop":
        if (call := answer.stop(event["index"])) is not None:
            out.append(call)
    elif kind == "message_delta":
        answer.stop_reason = event.get("delta", {}).get("stop_reason") or answer.stop_reason
        report = answer.usage.update(event.get("usage") or {})
        out += [report] if report else []
    elif kind == "message_stop":
        answer.stopped = True
    return out


class AnthropicModel:
    def __init__(self, spec: specs.ModelSpec, access: credentials.Access, timeout_s: float):
        assert spec.model
        self.spec = spec
        self.client = anthropic.AsyncAnthropic(
            # Always explicit: given no key or base URL, the SDK would read them (and profiles,
            # federation settings) from the worker's environment, whoever defined the agent.
            api_key=access.api_key or "not-set",
            base_url=access.base_url,
            max_retries=0,  # retries are runtime/retry.py's: they know about stops
            timeout=timeout_s,
            # every request, and every address it connects to, checked by the guard
            http_client=access.guard.httpx2_client(timeout=timeout_s),
        )

    async def aclose(self) -> None:
        await self.client.close()

    async def stream(self, request: ModelRequest) -> AsyncGenerator[ModelEvent, None]:
        assert self.spec.model
        body = request_body(self.spec.model, request)
        try:
            stream: anthropic.AsyncStream[Any] = await self.client.messages.create(**body)
        except _CALL_ERRORS as exc:
            raise failure(exc) from exc
        except (TypeError, ValueError) as exc:  # the SDK refused the params before sending
            raise errors.ProviderRejected(f"the model request is invalid: {exc}") from exc
        answer = _Answer()
        try:
            async for raw in stream:
                for event in _events(answer, _as_dict(raw)):
                    yield event
        except _STREAM_ERRORS as exc:
            raise failure(exc) from exc
        finally:
            await stream.close()
        if not answer.stopped:
            raise errors.ProviderBadResponse(
                "the model provider's stream ended before message_stop", retryable=not answer.blocks
            )
        yield ProviderContent(NAME, answer.content())
        reason = answer.stop_reason or "end_turn"
        yield Finished(_FINISH.get(reason, reason))
