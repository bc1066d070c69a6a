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
class UsageReport:
    input_tokens: int
    output_tokens: int


@dataclass(slots=True)
class Finished:
    reason: str  # "stop" | "tool_calls" | "length" | ...


ModelEvent = TextDelta | domain.ToolCall | UsageReport | Finished


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
