"""Which Model runs an agent, and whether the operator's settings let it run (DESIGN §8, §10)."""

from __future__ import annotations

import importlib
from types import ModuleType

from tether import domain, errors
from tether.config import Settings
from tether.runtime import credentials, provider_params, retry
from tether.runtime.model import Model
from tether.runtime.scripted import ScriptedModel
from tether.sealing import Sealer

# The HTTP providers' modules, imported when first used: their SDKs take over half of an idle
# server's memory (some 60 MB) and seconds to import, and many servers never call them.
_MODULES = {
    "openai": "tether.runtime.openai_chat",
    "anthropic": "tether.runtime.anthropic_messages",
}


def _module(provider: str) -> ModuleType | None:
    name = _MODULES.get(provider)
    return importlib.import_module(name) if name is not None else None


def _http(provider: str) -> tuple[credentials.Provider, provider_params.RequestParams] | None:
    """An HTTP provider's credential rules and the request fields its params may set."""
    module = _module(provider)
    return (module.PROVIDER, module.PARAMS) if module is not None else None


def check(spec: domain.ModelSpec, settings: Settings) -> None:
    """At agent creation: refuse (InvalidAgent family, 422) what this model could not run
    under these settings: a key or destination the operator does not allow, params the
    provider does not take."""
    if (http := _http(spec.provider)) is not None:
        provider, params = http
        credentials.check(provider, spec, settings)
        params.check(spec.params)


def model_for(spec: domain.ModelSpec, settings: Settings, sealer: Sealer, tenant: str) -> Model:
    """At turn start: the same checks (the settings may have changed since the agent was
    made), as turn failures; nothing is sent when they refuse. HTTP providers' calls are
    retried before their first token (runtime/retry.py)."""
    if (http := _http(spec.provider)) is None:
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
    module = _module(spec.provider)
    assert module is not None
    model: Model
    if spec.provider == "anthropic":
        model = module.AnthropicModel(spec, access, settings.provider_timeout_s)
    else:
        model = module.OpenAIChatModel(spec, access, settings.provider_timeout_s)
    return retry.RetryingModel(model, spec.max_retries)
