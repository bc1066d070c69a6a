"""Which Model runs an agent."""

from __future__ import annotations

from tether import domain, errors
from tether.runtime.model import Model
from tether.runtime.scripted import ScriptedModel


def model_for(spec: domain.ModelSpec) -> Model:
    if spec.provider == "scripted":
        return ScriptedModel(spec)
    raise errors.InvalidAgent(f"model provider {spec.provider!r} is not available yet")
