"""Which Model runs an agent."""

from __future__ import annotations

from tether import domain
from tether.config import Settings
from tether.runtime import anthropic_messages, retry
from tether.runtime.model import Model
from tether.runtime.openai_chat import OpenAIChatModel
from tether.runtime.scripted import ScriptedModel


def model_for(spec: domain.ModelSpec, settings: Settings) -> Model:
    """The agent's model, its calls retried before their first token (runtime/retry.py)."""
    model: Model
    if spec.provider == "openai":
        if spec.base_url is None and settings.openai_base_url:
            spec = spec.model_copy(update={"base_url": settings.openai_base_url})
        model = OpenAIChatModel(
            spec, settings.provider_api_key(spec.api_key_env), settings.provider_timeout_s
        )
    elif spec.provider == "anthropic":
        key_env = spec.api_key_env or anthropic_messages.KEY_ENV
        model = anthropic_messages.AnthropicModel(
            spec, settings.provider_api_key(key_env), settings.provider_timeout_s
        )
    else:
        return ScriptedModel(spec)  # nothing transient about a script
    return retry.RetryingModel(model, spec.max_retries)
