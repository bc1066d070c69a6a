"""Any OpenAI-compatible Chat Completions API, through the `openai` SDK, streamed.

Closing the stream (a stop) closes the HTTP response, so the connection to the provider is
dropped and no more tokens are produced or billed.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import openai

from tether import domain, errors
from tether.runtime import retry
from tether.runtime.model import Finished, ModelEvent, ModelRequest, TextDelta, UsageReport


def chat_messages(request: ModelRequest) -> list[dict[str, Any]]:
    """The transcript in Chat Completions form."""
    out: list[dict[str, Any]] = []
    if request.instructions:
        out.append({"role": "system", "content": request.instructions})
    for m in request.messages:
        if m.role == "tool":
            out.append({"role": "tool", "tool_call_id": m.tool_call_id, "content": m.content or ""})
        elif m.role == "assistant":
            msg: dict[str, Any] = {"role": "assistant", "content": m.content}
            if m.tool_calls:
                msg["tool_calls"] = [
                    {
                        "id": c.id,
                        "type": "function",
                        "function": {"name": c.name, "arguments": json.dumps(c.arguments)},
                    }
                    for c in m.tool_calls
                ]
            out.append(msg)
        else:
            out.append({"role": m.role, "content": m.content or ""})
    return out


# The SDK's transport (httpx2, its own httpx) can leak its errors while a stream is read.
_TRANSPORT_ERRORS: tuple[type[Exception], ...] = (OSError,)
_TIMEOUT_ERRORS: tuple[type[Exception], ...] = (TimeoutError, openai.APITimeoutError)
try:
    import httpx2

    _TRANSPORT_ERRORS += (httpx2.TransportError,)
    _TIMEOUT_ERRORS += (httpx2.TimeoutException,)
except ImportError:  # older SDKs ride on httpx
    import httpx

    _TRANSPORT_ERRORS += (httpx.TransportError,)
    _TIMEOUT_ERRORS += (httpx.TimeoutException,)
_CALL_ERRORS: tuple[type[Exception], ...] = (openai.OpenAIError, *_TRANSPORT_ERRORS)
_STREAM_ERRORS: tuple[type[Exception], ...] = (
    *_CALL_ERRORS,
    ValueError,
    KeyError,
    TypeError,
)  # + malformed chunks


def _failure(exc: Exception) -> errors.ModelError:
    """The provider's failure as a turn failure, saying whether another try may help."""
    if isinstance(exc, _TIMEOUT_ERRORS):
        return errors.ProviderTimeout(f"model provider timed out: {exc}")
    if isinstance(exc, openai.APIStatusError):
        detail = f"model provider answered {exc.status_code}: {exc.message}"
        asked = retry.retry_after_s(exc.response.headers)
        if exc.status_code >= 500:
            return errors.ProviderUnavailable(detail, retryable=True, retry_after_s=asked)
        transient = exc.status_code in (408, 429)
        return errors.ProviderRejected(detail, retryable=transient, retry_after_s=asked)
    if isinstance(exc, (openai.APIConnectionError, *_TRANSPORT_ERRORS)):
        return errors.ProviderUnavailable(f"model provider unreachable: {exc}", retryable=True)
    return errors.ProviderBadResponse(f"unreadable model provider answer: {exc}")


class OpenAIChatModel:
    def __init__(self, spec: domain.ModelSpec, api_key: str | None, timeout_s: float):
        assert spec.model
        self.spec = spec
        self.client = openai.AsyncOpenAI(
            api_key=api_key or "not-needed",
            base_url=spec.base_url,
            max_retries=0,  # a retry is a new step decision, not the SDK's
            timeout=timeout_s,
        )

    async def aclose(self) -> None:
        await self.client.close()

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        body: dict[str, Any] = {
            **request.params,
            "model": self.spec.model,
            "messages": chat_messages(request),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.tools:
            body["tools"] = [{"type": "function", "function": t} for t in request.tools]
        try:
            stream: openai.AsyncStream[Any] = await self.client.chat.completions.create(**body)
        except _CALL_ERRORS as exc:
            raise _failure(exc) from exc
        calls: dict[int, dict[str, str]] = {}
        finish = "stop"
        try:
            async for chunk in stream:
                if chunk.usage:
                    yield UsageReport(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
                for choice in chunk.choices:
                    delta = choice.delta
                    if delta.content:
                        yield TextDelta(delta.content)
                    for call in delta.tool_calls or []:
                        acc = calls.setdefault(call.index, {"id": "", "name": "", "args": ""})
                        acc["id"] = call.id or acc["id"]
                        if call.function:
                            acc["name"] += call.function.name or ""
                            acc["args"] += call.function.arguments or ""
                    finish = choice.finish_reason or finish
        except _STREAM_ERRORS as exc:
            raise _failure(exc) from exc
        finally:
            await stream.close()
        for index in sorted(calls):
            acc = calls[index]
            try:
                arguments = json.loads(acc["args"] or "{}")
            except ValueError as exc:
                raise errors.ProviderBadResponse(
                    f"tool call {acc['name']!r} has malformed arguments"
                ) from exc
            if not acc["id"] or not acc["name"] or not isinstance(arguments, dict):
                raise errors.ProviderBadResponse("incomplete tool call in the model's answer")
            yield domain.ToolCall(acc["id"], acc["name"], arguments)
        yield Finished(finish)
