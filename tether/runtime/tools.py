"""Tools: async Python functions whose JSON-schema parameters come from their type hints."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, get_type_hints

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from tether import domain, errors

# progress, total (None: unknown), message; returns at once (the report is written apart)
ReportProgress = Callable[[float, float | None, str | None], None]


def _no_progress(progress: float, total: float | None, message: str | None) -> None:
    return None


@dataclass(slots=True)
class ToolContext:
    """Handed to a tool that declares a parameter of this type.

    `ask` and `interrupt` pause the turn until someone answers; the worker is released
    meanwhile. On resume the tool is called again from the start and each `ask` returns, in
    order, the answer it got: a tool should ask before it does anything it must not repeat.
    `progress` reports how far the tool got (a `tool.progress` event; best effort)."""

    session_id: str
    turn_id: str
    tool_call_id: str
    answers: list[domain.Interrupt] = field(default_factory=list)  # this call's, in order
    report: ReportProgress = _no_progress
    tenant_id: str = ""
    _asked: int = 0

    def progress(
        self, progress: float, total: float | None = None, message: str | None = None
    ) -> None:
        """How far the tool got (`total` None: unknown). Returns at once."""
        self.report(progress, total, message)

    async def ask(self, request: dict[str, Any]) -> Any:
        """Ask a question; returns the answer (any JSON)."""
        return await self.interrupt("question", request)

    async def interrupt(self, type: str, request: dict[str, Any]) -> Any:
        """Pause with a custom interrupt; returns its response."""
        index, self._asked = self._asked, self._asked + 1
        previous = [a for a in self.answers if a.type != "approval"]
        if index < len(previous):
            answer = previous[index]
            if answer.status is domain.InterruptStatus.RESOLVED:
                return answer.response
            if answer.status is domain.InterruptStatus.EXPIRED:
                raise errors.InterruptExpired(f"the {type} interrupt expired unanswered")
        raise errors.PauseRequested(type, request)


class ToolArgumentsError(ValueError):
    """The model called a tool with arguments that do not match its schema."""


class ToolError(Exception):
    """A tool's own error result: its message is what the model reads (outcome `error`)."""


@dataclass(slots=True)
class Tool:
    name: str
    description: str
    fn: Callable[..., Awaitable[Any]]
    arguments: type[BaseModel]
    context_param: str | None
    idempotent: bool

    @property
    def parameters(self) -> dict[str, Any]:
        schema = self.arguments.model_json_schema()
        schema.pop("title", None)
        return schema

    def spec(self) -> dict[str, Any]:
        """The function spec offered to the model."""
        return {"name": self.name, "description": self.description, "parameters": self.parameters}

    async def call(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        try:
            parsed = self.arguments.model_validate(arguments)
        except ValidationError as exc:
            raise ToolArgumentsError(str(exc)) from exc
        kwargs = {name: getattr(parsed, name) for name in type(parsed).model_fields}
        if self.context_param:
            kwargs[self.context_param] = ctx
        result = await self.fn(**kwargs)
        return result if isinstance(result, str) else json.dumps(result, default=str)


class ToolRegistry:
    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}

    def register(
        self,
        fn: Callable[..., Awaitable[Any]],
        *,
        name: str | None = None,
        description: str | None = None,
        idempotent: bool = False,
    ) -> Tool:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"tool {fn.__name__} must be an async function")
        hints = get_type_hints(fn)
        fields: dict[str, Any] = {}
        context_param = None
        for param in inspect.signature(fn).parameters.values():
            annotation = hints.get(param.name, Any)
            if annotation is ToolContext:
                context_param = param.name
                continue
            default = ... if param.default is inspect.Parameter.empty else param.default
            fields[param.name] = (annotation, default)
        tool_name = name or fn.__name__
        arguments = create_model(
            f"{tool_name}_arguments", __config__=ConfigDict(extra="forbid"), **fields
        )
        tool = Tool(
            name=tool_name,
            description=(description or inspect.getdoc(fn) or "").strip(),
            fn=fn,
            arguments=arguments,
            context_param=context_param,
            idempotent=idempotent,
        )
        self._tools[tool.name] = tool
        return tool

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def names(self) -> list[str]:
        return sorted(self._tools)


# --- built-in tools -------------------------------------------------------------------------


async def sleep(seconds: float) -> str:
    """Wait for the given number of seconds (cancellable), then say so."""
    await asyncio.sleep(max(0.0, seconds))
    return f"slept {seconds} seconds"


async def get_time() -> str:
    """The current UTC time, ISO 8601."""
    return datetime.now(UTC).isoformat()


async def ask_user(ctx: ToolContext, question: str) -> Any:
    """Ask the user a question and wait for the answer."""
    return await ctx.ask({"question": question})


async def custom_interrupt(ctx: ToolContext, type: str, request: dict[str, Any]) -> Any:
    """Pause the turn with an interrupt of your own type; returns its response."""
    return await ctx.interrupt(type, request)


def builtin_registry() -> ToolRegistry:
    registry = ToolRegistry()
    registry.register(sleep, idempotent=True)
    registry.register(get_time, idempotent=True)
    registry.register(ask_user, idempotent=True)
    registry.register(custom_interrupt, idempotent=True)
    return registry


def load_tools(spec: str, registry: ToolRegistry) -> ToolRegistry:
    """Add the tools named by 'package.module:attr' to `registry`: `attr` is a ToolRegistry
    (its tools are added) or a function called with the registry."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise errors.InvalidRequest(f"tools must be 'package.module:attr', not {spec!r}")
    try:
        target = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise errors.InvalidRequest(f"cannot load tools {spec!r}: {exc}") from exc
    if isinstance(target, ToolRegistry):
        registry._tools.update(target._tools)
    elif callable(target):
        target(registry)
    else:
        raise errors.InvalidRequest(f"{spec!r} is neither a ToolRegistry nor a function")
    return registry
