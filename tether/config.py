"""One Settings object. Nothing else in the package reads the environment."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Literal

from cryptography.fernet import Fernet
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url

from tether import destinations, errors

# Comma-separated in the environment ("A,B"), a list in code.
CommaList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    """Every knob of a Tether process: env vars `TETHER_<NAME>` or CLI flags."""

    # hide_input_in_errors: a refused setting may be a secret; its error must not print it
    model_config = SettingsConfigDict(
        env_prefix="TETHER_", extra="ignore", hide_input_in_errors=True
    )

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
    provider_key_envs: CommaList = Field(
        default=["OPENAI_API_KEY", "ANTHROPIC_API_KEY"],
        description="environment variables an agent may name as model.api_key_env",
    )
    provider_base_urls: CommaList = Field(
        default=["https://api.openai.com/v1", "https://api.anthropic.com"],
        description="URL prefixes a server-held provider key may be sent to (these may be "
        "private addresses); openai_base_url is always one of them",
    )
    secret_key: SecretStr | None = Field(
        default=None,
        description="Fernet key sealing tenants' own provider keys at rest; several, comma-"
        "separated, for rotation (the first seals, any opens). Embedded mode makes one in the "
        "data dir when unset; cluster mode then refuses tenants' own keys",
    )
    tools: str | None = Field(
        default=None,
        description="your tools: 'package.module:attr', a ToolRegistry or a function that "
        "registers tools on the one it is given",
    )
    demo_agent: bool = True
    agents_file: Path | None = None
    mcp_servers: Path | None = Field(
        default=None,
        description="YAML file declaring the MCP servers agents may name (stdio commands, "
        "trusted HTTP servers); see docs/mcp.md",
    )
    mcp_allow_private: bool = Field(
        default=False,
        description="let agents' own HTTP MCP servers be on private, loopback or link-local "
        "addresses",
    )
    mcp_header_envs: CommaList = Field(
        default=[],
        description="environment variables the headers of agents' own HTTP MCP servers may "
        "reference as ${NAME} (the operator's declared servers may reference any)",
    )
    mcp_connect_timeout_s: float = Field(
        default=30.0, gt=0, description="time for an MCP server to start and answer"
    )
    mcp_max_connections: int = Field(
        default=4, ge=1, description="calls in flight at once per MCP server (and tenant)"
    )
    webhook_allow_private: bool = Field(
        default=False,
        description="let webhook endpoints be on private, loopback or link-local addresses",
    )
    webhook_retry_for_s: float = Field(
        default=24 * 3600.0,
        gt=0,
        description="a failing webhook delivery is retried for this long, then marked failed",
    )
    webhook_timeout_s: float = Field(
        default=10.0, gt=0, le=300, description="a webhook receiver's time to answer"
    )
    webhook_backoff_s: float = Field(
        default=5.0, gt=0, description="wait before a failed webhook delivery's first retry"
    )
    webhook_backoff_max_s: float = Field(
        default=3600.0, gt=0, description="longest wait between retries (doubling, jittered)"
    )
    webhook_keep_s: float = Field(
        default=7 * 24 * 3600.0,
        gt=0,
        description="finished webhook deliveries (and their attempts) are kept this long",
    )
    webhook_concurrency: int = Field(
        default=32,
        ge=0,
        description="webhook deliveries in flight at once in a process that runs workers; 0: "
        "this process delivers none",
    )
    log_level: str = "info"

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("provider_key_envs", "provider_base_urls", "mcp_header_envs", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("provider_base_urls", "openai_base_url")
    @classmethod
    def _destination(cls, value: list[str] | str | None) -> list[str] | str | None:
        for url in [value] if isinstance(value, str) else value or []:
            try:
                destinations.parse(url)
            except errors.DestinationNotAllowed as exc:
                raise ValueError(exc.message) from exc
        return value

    @field_validator("secret_key")
    @classmethod
    def _fernet_keys(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            for key in value.get_secret_value().split(","):
                try:
                    Fernet(key.strip())
                except ValueError:
                    raise ValueError(
                        "TETHER_SECRET_KEY must be Fernet keys (32 url-safe base64-encoded "
                        "bytes), comma-separated: make one with `python -c 'from "
                        "cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'`"
                    ) from None
        return value

    @property
    def resolved_store_url(self) -> str:
        if self.store_url:
            return self.store_url
        return f"sqlite:///{(self.data_dir / 'tether.db').resolve()}"

    @property
    def embedded(self) -> bool:
        """One process on a SQLite file (else cluster mode: PostgreSQL, any number of nodes)."""
        return make_url(self.resolved_store_url).get_backend_name() == "sqlite"

    @property
    def provider_destinations(self) -> list[str]:
        """Where a server-held provider key may be sent (DESIGN §8)."""
        extra = [self.openai_base_url] if self.openai_base_url else []
        return [*self.provider_base_urls, *extra]

    def environment_key(self, env_var: str) -> str | None:
        """A provider key the operator put in the environment. The only other place the
        environment is read; which variables may be read is runtime/credentials.py's rule
        (and, for MCP servers' `${NAME}` references, runtime/mcp_servers.py's)."""
        return os.environ.get(env_var)

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

    @property
    def webhook_lease_s(self) -> float:
        """How long a process holds a webhook delivery it sends: past its timeout, with a
        margin for the store; after that another process may send it again."""
        return 2 * self.webhook_timeout_s + 1
