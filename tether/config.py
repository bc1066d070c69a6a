"""One Settings object. Nothing else in the package reads the environment."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of a Tether process: env vars `TETHER_<NAME>` or CLI flags."""

    model_config = SettingsConfigDict(env_prefix="TETHER_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8700
    data_dir: Path = Path("./tether-data")
    store_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default is a SQLite file in data_dir"
    )
    store_pool_size: int = Field(
        default=20, ge=1, description="PostgreSQL connections per process (and as many again)"
    )
    bus_url: str | None = Field(
        default=None, description="redis://host:port/db for cluster mode; default in-process"
    )
    bus_prefix: str = Field(
        default="tether",
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="prefix of every Redis key and channel (deployments sharing one Redis)",
    )
    zone: str = Field(default="local", pattern=r"^[a-z0-9-]{1,32}$")

    workers: int = Field(default=128, ge=0, description="concurrent turn executors")
    lease_ttl_s: float = Field(default=15.0, gt=0)
    poll_interval_s: float = Field(default=1.0, gt=0, description="worker backstop poll")
    reaper_interval_s: float = Field(default=2.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    shutdown_grace_s: float = Field(
        default=10.0, ge=0, description="on SIGTERM, running turns get this long to finish"
    )

    auth: Literal["auto", "required", "disabled"] = Field(
        default="auto",
        description="auto: API keys are required as soon as one exists; disabled: loopback only",
    )
    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    max_metadata_bytes: int = Field(
        default=16 * 1024,
        ge=256,
        description="largest session or agent metadata, as compact UTF-8 JSON (else 422)",
    )
    max_running_turns_per_tenant: int | None = Field(default=None, ge=1)
    max_queued_turns_per_tenant: int | None = Field(default=None, ge=1)
    max_streams_per_tenant: int | None = Field(default=None, ge=1)
    sse_ping_s: float = Field(default=15.0, gt=0)
    openai_api_key: SecretStr | None = Field(
        default=None, description="default key for provider 'openai' (else OPENAI_API_KEY)"
    )
    openai_base_url: str | None = None
    provider_timeout_s: float = Field(default=120.0, gt=0)
    tools: str | None = Field(
        default=None,
        description="your tools: 'package.module:attr', a ToolRegistry or a function that "
        "registers tools on the one it is given",
    )
    demo_agent: bool = True
    agents_file: Path | None = None
    log_level: str = "info"

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @property
    def resolved_store_url(self) -> str:
        if self.store_url:
            return self.store_url
        return f"sqlite:///{(self.data_dir / 'tether.db').resolve()}"

    def provider_api_key(self, env_var: str | None) -> str | None:
        """A model provider's key: from the agent's `api_key_env`, else this config, else the
        conventional OPENAI_API_KEY. The only other place the environment is read."""
        if env_var:
            return os.environ.get(env_var)
        if self.openai_api_key:
            return self.openai_api_key.get_secret_value()
        return os.environ.get("OPENAI_API_KEY")

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @property
    def heartbeat_interval_s(self) -> float:
        return self.lease_ttl_s / 3
