"""Any OpenAI-compatible Chat Completions API, through the `openai` SDK, streamed.

Closing the stream (a stop) closes the HTTP response, so the connection to the provider is
dropped and no more tokens are produced or billed.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any

import openai
from openai.types.chat import completion_create_params

from tether import destinations, domain, errors, specs
from tether.runtime import credentials, provider_params, retry
from tether.runtime.model import Finished, ModelEvent, ModelRequest, TextDelta, UsageReport

PROVIDER = credentials.Provider(
    name="openai",
    default_base_url="https://api.openai.com/v1",
    key_env="OPENAI_API_KEY",
    configured_key=lambda settings: settings.openai_api_key,
    configured_base_url=lambda settings: settings.openai_base_url,
)

# Request fields Tether sets itself (or that would break the turn's one streamed answer):
# never taken from an agent's params.
MANAGED_PARAMS = frozenset(
    {"model", "messages", "stream", "stream_options", "tools", "functions", "function_call", "n"}
)
PARAMS = provider_params.RequestParams(
    "Chat Completions", completion_create_params.CompletionCreateParamsStreaming, MANAGED_PARAMS
)


def check_params(params: dict[str, Any]) -> None:
    """`model.params` must be Chat Completions request fields, as the SDK's own request type
    declares them (names and value types), other than those Tether sets."""
    PARAMS.check(params)


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
# + the destination guard's refusal, raised from inside the SDK's HTTP client when it connects
_CALL_ERRORS: tuple[type[Exception], ...] = (
    openai.OpenAIError,
    *_TRANSPORT_ERRORS,
    errors.DestinationNotAllowed,
)
_STREAM_ERRORS: tuple[type[Exception], ...] = (
    *_CALL_ERRORS,
    ValueError,
    KeyError,
    TypeError,
)  # + malformed chunks


def _refusal(exc: BaseException) -> errors.DestinationNotAllowed | None:
    """The guard's refusal, raised as it is or wrapped by the SDK into a connection error."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, errors.DestinationNotAllowed):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _failure(exc: Exception) -> errors.ModelError:
    """The provider's failure as a turn failure, saying whether another try may help."""
    if (refused := _refusal(exc)) is not None:
        return errors.ProviderRefused(refused)
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


def _http_client(guard: destinations.Guard, timeout_s: float) -> Any:
    """A guarded client of the HTTP library the SDK rides on."""
    try:
        import httpx2  # noqa: F401
    except ImportError:  # older SDKs ride on httpx
        return guard.httpx_client(timeout=timeout_s)
    return guard.httpx2_client(timeout=timeout_s)


class OpenAIChatModel:
    def __init__(self, spec: specs.ModelSpec, access: credentials.Access, timeout_s: float):
        assert spec.model
        self.spec = spec
        self.client = openai.AsyncOpenAI(
            api_key=access.api_key or "not-needed",
            base_url=access.base_url,
            max_retries=0,  # a retry is a new step decision, not the SDK's
            timeout=timeout_s,
            http_client=_http_client(access.guard, timeout_s),
        )

    async def aclose(self) -> None:
        await self.client.close()

    async def stream(self, request: ModelRequest) -> AsyncGenerator[ModelEvent, None]:
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
        except (TypeError, ValueError) as exc:  # the SDK refused the params before sending
            raise errors.ProviderRejected(f"the model request is invalid: {exc}") from exc
        calls: dict[int, dict[str, str]] = {}
        finish = "stop"
        chunks = 0
        try:
            content_type = stream.response.headers.get("content-type", "")
            if not content_type.lower().startswith("text/event-stream"):
                raise errors.ProviderBadResponse(
                    f"model provider answered {stream.response.status_code} with "
                    f"{content_type or 'no content type'}, not an event stream"
                )
            async for chunk in stream:
                chunks += 1
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
        if not chunks:
            raise errors.ProviderBadResponse("the model provider's event stream was empty")
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
