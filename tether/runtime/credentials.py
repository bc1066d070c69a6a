"""Which key a model provider call carries, and where it may go (DESIGN §8).

A tenant is not the operator. An agent's key is one of:
- its own (`model.api_key`, sealed at rest): it may go to any base URL the destination guard
  lets through (public addresses, or the operator's allowed prefixes);
- a server-held one: the environment variable the agent names (`model.api_key_env`, only one
  of `TETHER_PROVIDER_KEY_ENVS`), else the provider's configured key, else its conventional
  variable (OPENAI_API_KEY, …). It may only go under `TETHER_PROVIDER_BASE_URLS` (plus the
  operator's configured base URL), and there private addresses are fine: the operator chose
  them.

The same rules run at agent creation (refusals are 422) and again when a turn starts (the
settings may have changed since; the turn then fails and nothing is sent). The HTTP client a
provider gets carries the guard, so every request and every address it connects to is
checked too.

Providers are described by a `Provider`, so each provider module declares its defaults and
these rules stay the same for all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pydantic import SecretStr

from tether import destinations, errors, specs
from tether.config import Settings
from tether.sealing import Sealer


@dataclass(frozen=True)
class Provider:
    """What the credential rules need to know of a model provider."""

    name: str
    default_base_url: str  # where its SDK goes when no base URL is given
    key_env: str  # the conventional environment variable of its key
    configured_key: Callable[[Settings], SecretStr | None] = lambda _: None
    configured_base_url: Callable[[Settings], str | None] = lambda _: None


@dataclass(frozen=True)
class Access:
    """How to call a provider: where, with which key, bounded by which guard."""

    base_url: str
    api_key: str | None
    guard: destinations.Guard


def base_url_of(provider: Provider, spec: specs.ModelSpec, settings: Settings) -> str:
    return spec.base_url or provider.configured_base_url(settings) or provider.default_base_url


def check(provider: Provider, spec: specs.ModelSpec, settings: Settings) -> Access:
    """Is this key-and-destination pair allowed? The answer's api_key is not filled in."""
    base_url = base_url_of(provider, spec, settings)
    allowed = tuple(settings.provider_destinations)
    if spec.api_key_env is not None and spec.api_key_env not in settings.provider_key_envs:
        raise errors.ProviderKeyEnvNotAllowed(
            f"model.api_key_env {spec.api_key_env!r} is not a variable agents may name "
            "(the operator lists them in TETHER_PROVIDER_KEY_ENVS); or give your own "
            "model.api_key",
            details={"field": "model.api_key_env"},
        )
    own = spec.has_own_key
    if not own and not any(destinations.under(base_url, prefix) for prefix in allowed):
        raise errors.ProviderBaseUrlNotAllowed(
            f"model.base_url {base_url!r} may not receive a key held by the server (the "
            "operator lists where it may go in TETHER_PROVIDER_BASE_URLS); give your own "
            "model.api_key to use another host",
            details={"field": "model.base_url"},
        )
    guard = destinations.Guard(trusted=allowed, only=None if own else allowed)
    guard.check(base_url)
    return Access(base_url, None, guard)


def resolve(
    provider: Provider,
    spec: specs.ModelSpec,
    settings: Settings,
    sealer: Sealer,
    tenant: str,
) -> Access:
    """`check`, then the key itself: opened from the agent, or read from the server."""
    access = check(provider, spec, settings)
    if spec.api_key is not None:
        key: str | None = spec.api_key.get_secret_value()
    elif spec.api_key_sealed is not None:
        key = sealer.open(tenant, spec.api_key_sealed)
    elif spec.api_key_env is not None:
        key = settings.environment_key(spec.api_key_env)
    elif (configured := provider.configured_key(settings)) is not None:
        key = configured.get_secret_value()
    else:
        key = settings.environment_key(provider.key_env)
    return Access(access.base_url, key, access.guard)
