"""Which Model runs an agent."""

from __future__ import annotations

from tether import domain
from tether.config import Settings
from tether.runtime.model import Model
from tether.runtime.openai_chat import OpenAIChatModel
from tether.runtime.scripted import ScriptedModel


def model_for(spec: domain.ModelSpec, settings: Settings) -> Model:
    if spec.provider == "openai":
        if spec.base_url is None and settings.openai_base_url:
            spec = spec.model_copy(update={"base_url": settings.openai_base_url})
        return OpenAIChatModel(
            spec, settings.provider_api_key(spec.api_key_env), settings.provider_timeout_s
        )
    return ScriptedModel(spec)
