"""Which Model runs an agent, and whether the operator's settings let it run (DESIGN §8, §10).

The HTTP providers' modules are imported when an agent first names them: each SDK (openai,
anthropic) costs a second or more of CPU to import, which every `tether` process, CLI
commands included, would otherwise pay at start."""

from __future__ import annotations

from tether import errors, specs
from tether.config import Settings
from tether.runtime import credentials, provider_params, retry
from tether.runtime.model import Model
from tether.runtime.scripted import ScriptedModel
from tether.sealing import Sealer


def _rules(provider: str) -> tuple[credentials.Provider, provider_params.RequestParams] | None:
    """An HTTP provider's credential rules and the request fields its params may set."""
    if provider == "openai":
        from tether.runtime import openai_chat

        return openai_chat.PROVIDER, openai_chat.PARAMS
    if provider == "anthropic":
        from tether.runtime import anthropic_messages

        return anthropic_messages.PROVIDER, anthropic_messages.PARAMS
    return None


def check(spec: specs.ModelSpec, settings: Settings) -> None:
    """At agent creation: refuse (InvalidAgent family, 422) what this model could not run
    under these settings: a key or destination the operator does not allow, params the
    provider does not take."""
    if (rules := _rules(spec.provider)) is not None:
        provider, params = rules
        credentials.check(provider, spec, settings)
        params.check(spec.params)


def model_for(spec: specs.ModelSpec, settings: Settings, sealer: Sealer, tenant: str) -> Model:
    """At turn start: the same checks (the settings may have changed since the agent was
    made), as turn failures; nothing is sent when they refuse. HTTP providers' calls are
    retried before their first token (runtime/retry.py)."""
    if (rules := _rules(spec.provider)) is None:
        return ScriptedModel(spec)  # nothing transient about a script
    provider, params = rules
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
        from tether.runtime import anthropic_messages

        model = anthropic_messages.AnthropicModel(spec, access, settings.provider_timeout_s)
    else:
        from tether.runtime import openai_chat

        model = openai_chat.OpenAIChatModel(spec, access, settings.provider_timeout_s)
    return retry.RetryingModel(model, spec.max_retries)
