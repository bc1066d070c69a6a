"""The Model seam: one streamed call per step. Providers turn their wire format into these."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any, Protocol

from tether import domain


@dataclass(slots=True)
class TextDelta:
    text: str


@dataclass(slots=True)
class ReasoningDelta:
    """The model's visible reasoning (Anthropic's thinking), streamed; not part of the answer's
    text."""

    text: str


@dataclass(slots=True)
class UsageReport:
    """Tokens to add to the turn's usage (several reports per call add up)."""

    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


@dataclass(slots=True)
class ProviderContent:
    """The whole answer in the provider's own form, at the end of the stream: kept on the
    assistant message and sent back verbatim when the transcript goes to the same provider."""

    provider: str
    content: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return {"provider": self.provider, "content": self.content}


@dataclass(slots=True)
class Finished:
    reason: str  # "stop" | "tool_calls" | "length" | ...


ModelEvent = TextDelta | ReasoningDelta | domain.ToolCall | UsageReport | ProviderContent | Finished


@dataclass(slots=True)
class ModelRequest:
    instructions: str
    messages: list[domain.Message]
    tools: list[dict[str, Any]] = field(default_factory=list)  # JSON-schema function specs
    params: dict[str, Any] = field(default_factory=dict)


class Model(Protocol):
    def stream(self, request: ModelRequest) -> AsyncGenerator[ModelEvent, None]:
        """Stream one model response. Closing the iterator early must release the call
        (for HTTP providers: drop the connection so no more tokens are produced)."""
        ...

    async def aclose(self) -> None:
        """Release the provider's connections."""
        ...
