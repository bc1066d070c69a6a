"""`model.params` checked against the request type a provider's SDK declares (DESIGN §8).

An agent's `params` go into the provider request as they are, so they are checked when the
agent is created (422 `invalid_model_params`) and again when a turn starts: each name must be a
field of the SDK's streaming request type, not one Tether sets itself, and each value must
match the type the SDK declares for that field.
"""

from __future__ import annotations

import functools
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter, ValidationError

from tether import errors


@dataclass(frozen=True)
class RequestParams:
    api: str  # the API's name, for messages ("Chat Completions", "Messages")
    request_type: Any  # the SDK's TypedDict of a streaming request
    managed: frozenset[str]  # fields Tether sets: never taken from params

    @functools.cached_property
    def declared(self) -> dict[str, Any]:
        """The fields agents may set, with the value types the SDK declares for them."""
        hints = typing.get_type_hints(self.request_type)
        return {name: hint for name, hint in hints.items() if name not in self.managed}

    @functools.cache  # noqa: B019 - a few module-level instances, for the process's life
    def _value_schema(self, name: str) -> TypeAdapter[Any]:
        return TypeAdapter(self.declared[name])  # one field at a time: the whole type is slow

    def check(self, params: dict[str, Any]) -> None:
        managed = sorted(set(params) & self.managed)
        if managed:
            raise errors.InvalidModelParams(
                f"model.params may not set {', '.join(managed)}: Tether sets them",
                details={"params": managed},
            )
        unknown = sorted(set(params) - set(self.declared))
        if unknown:
            raise errors.InvalidModelParams(
                f"model.params has fields the {self.api} API does not take: {', '.join(unknown)}",
                details={"params": unknown, "accepted": sorted(self.declared)},
            )
        problems: list[str] = []
        for name, value in params.items():
            try:
                self._value_schema(name).validate_python(value)
            except ValidationError as exc:
                problems += [
                    ".".join(map(str, [name, *e["loc"]])) + f": {e['msg']}"
                    for e in exc.errors(include_input=False)
                ]
        if problems:
            raise errors.InvalidModelParams(
                f"model.params: {'; '.join(problems[:5])}", details={"errors": problems}
            )
