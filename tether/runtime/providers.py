"""Which Model runs an agent, and whether the operator's settings let it run (DESIGN §8, §10)."""

from __future__ import annotations

from tether import domain, errors
from tether.config import Settings
from tether.runtime import credentials, openai_chat
from tether.runtime.model import Model
from tether.runtime.scripted import ScriptedModel
from tether.sealing import Sealer


def check(spec: domain.ModelSpec, settings: Settings) -> None:
    """At agent creation: refuse (InvalidAgent family, 422) what this model could not run
    under these settings: a key or destination the operator does not allow, params the
    provider does not take."""
    if spec.provider == "openai":
        credentials.check(openai_chat.PROVIDER, spec, settings)
        openai_chat.check_params(spec.params)


def model_for(spec: domain.ModelSpec, settings: Settings, sealer: Sealer, tenant: str) -> Model:
    """At turn start: the same checks (the settings may have changed since the agent was
    made), as turn failures; nothing is sent when they refuse."""
    if spec.provider == "openai":
        try:
            openai_chat.check_params(spec.params)
        except errors.InvalidModelParams as exc:
            raise errors.ProviderRejected(exc.message) from exc
        try:
            access = credentials.resolve(openai_chat.PROVIDER, spec, settings, sealer, tenant)
        except (errors.ProviderNotAllowed, errors.DestinationNotAllowed) as exc:
            raise errors.ProviderRefused(exc) from exc
        return openai_chat.OpenAIChatModel(spec, access, settings.provider_timeout_s)
    return ScriptedModel(spec)
