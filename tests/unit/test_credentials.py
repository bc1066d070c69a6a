"""Provider credentials (runtime/credentials.py), sealed tenant keys (sealing.py), model params
(openai_chat.check_params) and the settings behind them."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from pydantic import ValidationError

from tether import errors, specs
from tether.config import Settings
from tether.runtime import credentials, openai_chat
from tether.sealing import Sealer

CLUSTER_STORE = "postgresql://tether@127.0.0.1:1/tether"  # never connected to here


def _model(**fields: Any) -> specs.ModelSpec:
    return specs.ModelSpec.model_validate({"provider": "openai", "model": "m", **fields})


def _check(settings: Settings, **fields: Any) -> credentials.Access:
    return credentials.check(openai_chat.PROVIDER, _model(**fields), settings)


def test_defaults_send_server_keys_only_to_official_hosts(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.provider_key_envs == ["OPENAI_API_KEY", "ANTHROPIC_API_KEY"]
    assert _check(settings).base_url == "https://api.openai.com/v1"
    _check(settings, api_key_env="OPENAI_API_KEY")
    _check(settings, base_url="https://api.openai.com/v1/")
    with pytest.raises(errors.ProviderKeyEnvNotAllowed):
        _check(settings, api_key_env="DATABASE_PASSWORD")
    for url in ("https://evil.example/v1", "https://api.openai.com.evil.com/v1"):
        with pytest.raises(errors.ProviderBaseUrlNotAllowed):
            _check(settings, base_url=url)
        with pytest.raises(errors.ProviderBaseUrlNotAllowed):
            _check(settings, base_url=url, api_key_env="OPENAI_API_KEY")


def test_configured_base_url_is_allowed_and_is_the_default(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, openai_base_url="http://10.0.0.7:8000/v1")
    assert _check(settings).base_url == "http://10.0.0.7:8000/v1"  # private: the operator's


def test_own_key_goes_to_public_hosts_or_allowed_prefixes(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, provider_base_urls=["http://127.0.0.1:9000/v1"])
    access = _check(settings, api_key="sk-own", base_url="https://llm.example/v1")
    assert access.guard.only is None
    _check(settings, api_key="sk-own", base_url="http://127.0.0.1:9000/v1")
    with pytest.raises(errors.DestinationNotAllowed):
        _check(settings, api_key="sk-own", base_url="http://127.0.0.1:9001/v1")
    with pytest.raises(errors.DestinationNotAllowed):
        _check(settings, api_key="sk-own", base_url="http://169.254.169.254/v1")
    with pytest.raises(errors.DestinationNotAllowed):
        _check(settings, api_key="sk-own", base_url="file:///etc/passwd")


def test_resolve_reads_the_key_from_where_the_rules_say(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-conventional")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-named")
    settings = Settings(data_dir=tmp_path)
    sealer = Sealer(settings)

    def key(**fields: Any) -> str | None:
        return credentials.resolve(
            openai_chat.PROVIDER, _model(**fields), settings, sealer, "acme"
        ).api_key

    assert key() == "sk-conventional"
    assert key(api_key_env="ANTHROPIC_API_KEY") == "sk-named"
    assert key(api_key="sk-own") == "sk-own"
    sealed = sealer.seal("acme", "sk-sealed")
    stored = specs.ModelSpec.model_validate(
        {"provider": "openai", "model": "m", "api_key_sealed": sealed}, context=specs.STORED
    )
    assert credentials.resolve(openai_chat.PROVIDER, stored, settings, sealer, "acme").api_key == (
        "sk-sealed"
    )
    configured = Settings(data_dir=tmp_path, openai_api_key="sk-configured")
    assert (
        credentials.resolve(openai_chat.PROVIDER, _model(), configured, sealer, "acme").api_key
        == "sk-configured"
    )


def test_settings_read_comma_separated_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TETHER_PROVIDER_KEY_ENVS", "A_KEY, B_KEY,")
    monkeypatch.setenv("TETHER_PROVIDER_BASE_URLS", "https://a.example/v1,http://10.0.0.1:80")
    settings = Settings()
    assert settings.provider_key_envs == ["A_KEY", "B_KEY"]
    assert settings.provider_destinations == ["https://a.example/v1", "http://10.0.0.1:80"]
    monkeypatch.setenv("TETHER_PROVIDER_BASE_URLS", "ftp://a.example")
    with pytest.raises(ValidationError, match="only http and https"):
        Settings()


def test_secret_key_must_be_fernet_keys() -> None:
    with pytest.raises(ValidationError, match="Fernet") as refused:
        Settings(secret_key="hunter2")
    assert "hunter2" not in str(refused.value)
    Settings(secret_key=f"{Fernet.generate_key().decode()},{Fernet.generate_key().decode()}")


# --- sealing ----------------------------------------------------------------------------------


def test_embedded_seals_with_a_key_file_made_on_first_need(tmp_path: Path) -> None:
    sealer = Sealer(Settings(data_dir=tmp_path))
    key_file = tmp_path / "secret.key"
    assert not key_file.exists()
    sealed = sealer.seal("acme", "sk-tenant-secret")
    assert "sk-tenant-secret" not in sealed
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    again = Sealer(Settings(data_dir=tmp_path))  # a restart
    assert again.open("acme", sealed) == "sk-tenant-secret"
    with pytest.raises(errors.ProviderKeyUnavailable, match="another tenant"):
        again.open("globex", sealed)
    assert key_file.read_bytes() == again._file_keys(create=True)[0]  # never overwritten


def test_configured_key_seals_and_rotates(tmp_path: Path) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    sealed = Sealer(Settings(data_dir=tmp_path, secret_key=old)).seal("acme", "sk-1")
    assert not (tmp_path / "secret.key").exists()
    rotated = Sealer(Settings(data_dir=tmp_path, secret_key=f"{new},{old}"))
    assert rotated.open("acme", sealed) == "sk-1"
    with pytest.raises(errors.ProviderKeyUnavailable, match="changed"):
        Sealer(Settings(data_dir=tmp_path, secret_key=new)).open("acme", sealed)


def test_cluster_without_secret_key_refuses_to_seal(tmp_path: Path) -> None:
    sealer = Sealer(Settings(data_dir=tmp_path, store_url=CLUSTER_STORE))
    with pytest.raises(errors.SecretKeyMissing, match="TETHER_SECRET_KEY"):
        sealer.seal("acme", "sk-1")
    with pytest.raises(errors.ProviderKeyUnavailable):
        sealer.open("acme", "gAAAA-anything")
    assert not (tmp_path / "secret.key").exists()


def test_model_spec_keeps_api_key_write_only() -> None:
    spec = specs.AgentSpec.model_validate(
        {"name": "a", "model": {"provider": "openai", "model": "m", "api_key": "sk-x"}}
    )
    assert "sk-x" not in spec.model_dump_json()
    assert "api_key" not in spec.model_dump(mode="json")["model"]
    with pytest.raises(ValidationError) as info:  # an error never echoes the key
        specs.AgentSpec.model_validate(
            {"name": "a", "model": {"provider": "openai", "api_key": "sk-x", "bad": 1}}
        )
    assert "sk-x" not in str(info.value)
    with pytest.raises(ValidationError, match="not a field agents may set"):
        specs.ModelSpec.model_validate({"provider": "openai", "model": "m", "api_key_sealed": "x"})
    with pytest.raises(ValidationError, match="not both"):
        _model(api_key="k", api_key_env="OPENAI_API_KEY")
    with pytest.raises(ValidationError, match="scripted"):
        specs.ModelSpec.model_validate({"provider": "scripted", "api_key": "k"})


# --- model params -----------------------------------------------------------------------------


def test_params_the_sdk_declares_are_accepted() -> None:
    openai_chat.check_params(
        {
            "temperature": 0.2,
            "max_tokens": 100,
            "stop": ["\n"],
            "tool_choice": "auto",
            "response_format": {"type": "json_object"},
        }
    )


@pytest.mark.parametrize(
    ("params", "mentions"),
    [
        ({"temprature": 0.5}, "temprature"),
        ({"extra_body": {"stream": False}}, "extra_body"),
        ({"stream": False}, "Tether sets"),
        ({"model": "other"}, "Tether sets"),
        ({"messages": []}, "Tether sets"),
        ({"tools": []}, "Tether sets"),
        ({"n": 2}, "Tether sets"),
        ({"temperature": "hot"}, "temperature"),
        ({"max_tokens": "lots"}, "max_tokens"),
    ],
)
def test_params_the_provider_does_not_take_are_refused(
    params: dict[str, Any], mentions: str
) -> None:
    with pytest.raises(errors.InvalidModelParams, match=mentions):
        openai_chat.check_params(params)
