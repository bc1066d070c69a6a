"""Which Model runs an agent, and whether the operator's settings let it run (DESIGN §8, §10)."""

from __future__ import annotations

from tether import domain, errors
from tether.config import Settings
from tether.runtime import anthropic_messages, credentials, openai_chat, provider_params, retry
from tether.runtime.model import Model
from tether.runtime.scripted import ScriptedModel
from tether.sealing import Sealer

# The HTTP providers: their credential rules and the request fields their params may set.
_HTTP: dict[str, tuple[credentials.Provider, provider_params.RequestParams]] = {
    "openai": (openai_chat.PROVIDER, openai_chat.PARAMS),
    "anthropic": (anthropic_messages.PROVIDER, anthropic_messages.PARAMS),
}


def check(spec: domain.ModelSpec, settings: Settings) -> None:
    """At agent creation: refuse (InvalidAgent family, 422) what this model could not run
    under these settings: a key or destination the operator does not allow, params the
    provider does not take."""
    if (http := _HTTP.get(spec.provider)) is not None:
        provider, params = http
        credentials.check(provider, spec, settings)
        params.check(spec.params)


def model_for(spec: domain.ModelSpec, settings: Settings, sealer: Sealer, tenant: str) -> Model:
    """At turn start: the same checks (the settings may have changed since the agent was
    made), as turn failures; nothing is sent when they refuse. HTTP providers' calls are
    retried before their first token (runtime/retry.py)."""
    if (http := _HTTP.get(spec.provider)) is None:
        return ScriptedModel(spec)  # nothing transient about a script
    provider, params = http
    try:
        params.check(spec.params)
    except errors.InvalidModelParams as exc:
        raise errors.ProviderRejected(exc.message) from exc
    try:
        access = credentials.resolve(provider, spec, settings, sealer, tenant)
    except (errors.ProviderNotAllowed, errors.DestinationNotAllowed) as exc:
        raise errors.ProviderRefused(exc) from exc
    model: Model
    if spec.provider == "anthropic":
        model = anthropic_messages.AnthropicModel(spec, access, settings.provider_timeout_s)
    else:
        model = openai_chat.OpenAIChatModel(spec, access, settings.provider_timeout_s)
    return retry.RetryingModel(model, spec.max_retries)
