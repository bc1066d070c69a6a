"""Agent definitions (DESIGN §10): what a tenant or the operator says an agent is (its model,
tools and MCP servers), validated as they come in and as they are read back."""

from __future__ import annotations

import enum
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema


class ScriptedToolCall(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class ScriptedStep(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = ""
    tool_calls: list[ScriptedToolCall] = Field(default_factory=list)


# Validation context under which stored records are read back: only they may carry sealed
# secrets (a client cannot hand one in).
STORED = {"stored": True}

# The longest an interrupt may wait for its answer. Its expiry is a datetime, and none past
# the year 9999 can be made: a ttl of 1e12 s failed every turn that paused (internal_error).
# A year is longer than any honest wait; for no expiry at all, leave the ttl out.
MAX_INTERRUPT_TTL_S = 366 * 24 * 3600


def _interrupt_ttl(value: float | None, info: ValidationInfo) -> float | None:
    if value is None or value <= MAX_INTERRUPT_TTL_S:
        return value
    if (info.context or {}).get("stored"):
        return float(MAX_INTERRUPT_TTL_S)  # stored before the bound: it reads, at the bound
    raise ValueError(f"at most {MAX_INTERRUPT_TTL_S} s (a year); leave it out for no expiry")


InterruptTtl = Annotated[
    float | None,
    Field(gt=0, json_schema_extra={"maximum": MAX_INTERRUPT_TTL_S}),
    AfterValidator(_interrupt_ttl),
]


def sealed_from_store(value: str | None, info: ValidationInfo, field: str) -> str | None:
    """A `<field>_sealed` value is read back from the store only: a request gives `field`."""
    if value is not None and not (info.context or {}).get("stored"):
        raise ValueError(f"{field}_sealed is not a field agents may set: give {field}")
    return value


class ModelSpec(BaseModel):
    """Which model runs the agent. `scripted` needs no LLM; `openai` is any Chat Completions API;
    `anthropic` is Anthropic's Messages API.

    `api_key` is the tenant's own key: write-only. It is sealed before it is stored (into
    `api_key_sealed`) and neither field is ever dumped: no API answer, event or log shows it.
    """

    # hide_input_in_errors: a validation error must not echo an api_key back
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)
    provider: Literal["scripted", "openai", "anthropic"] = "scripted"
    # HTTP providers
    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = Field(
        default=None, description="an environment variable of the server holding the key"
    )
    api_key: SecretStr | None = Field(
        default=None,
        exclude=True,
        min_length=1,
        max_length=4096,
        description="your own key (write-only: stored encrypted, never returned)",
    )
    api_key_sealed: SkipJsonSchema[str | None] = Field(default=None, exclude=True)
    params: dict[str, Any] = Field(default_factory=dict)
    max_retries: int = Field(
        default=2,
        ge=0,
        le=10,
        description="transient failures before the first token (429, 5xx, overloaded, "
        "connection reset) are retried this many times, with backoff",
    )
    # scripted
    steps: list[ScriptedStep] = Field(default_factory=list)
    reply: str = "echo"
    tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    token_delay_ms: float = Field(default=0, ge=0, le=60_000)
    fail: str | None = Field(default=None, description="scripted: fail the model call with this")

    @field_validator("api_key_sealed")
    @classmethod
    def _stored_only(cls, value: str | None, info: ValidationInfo) -> str | None:
        return sealed_from_store(value, info, "api_key")

    @model_validator(mode="after")
    def _provider_fields(self) -> ModelSpec:
        if self.provider in ("openai", "anthropic") and not self.model:
            raise ValueError(f"model.model is required for provider {self.provider!r}")
        if self.provider == "scripted" and self.api_key is not None:
            raise ValueError("model.api_key is for providers that call an API, not 'scripted'")
        if self.api_key is not None and self.api_key_env is not None:
            raise ValueError("give model.api_key or model.api_key_env, not both")
        return self

    @property
    def has_own_key(self) -> bool:
        return self.api_key is not None or self.api_key_sealed is not None


class ToolPolicy(enum.StrEnum):
    AUTO = "auto"
    APPROVE = "approve"
    DENY = "deny"


class ToolSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    policy: ToolPolicy = ToolPolicy.AUTO
    editable: bool = Field(default=False, description="approvers may edit the arguments")
    interrupt_ttl_s: InterruptTtl = Field(
        default=None, description="expiry of this tool's interrupts (else the agent's)"
    )


MCP_SERVER_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$")  # an HTTP token (RFC 9110)


class McpServerSpec(BaseModel):
    """An MCP server an agent uses (DESIGN §10). A bare `name` refers to a server the operator
    declared (`TETHER_MCP_SERVERS`); with a `url`, it is the tenant's own streamable HTTP
    server. `headers` are write-only, like `model.api_key`: sealed before they are stored
    (into `headers_sealed`), never dumped."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)
    name: str = Field(pattern=MCP_SERVER_NAME_PATTERN)
    transport: Literal["http"] | None = Field(
        default=None, description="'http' (streamable HTTP) for a server of your own"
    )
    url: str | None = Field(default=None, max_length=2048)
    headers: dict[str, SecretStr] | None = Field(
        default=None,
        exclude=True,
        max_length=32,
        description="sent with every request (write-only: stored encrypted, never returned); "
        "values may reference the server's environment variables the operator allows, ${NAME}",
    )
    headers_sealed: SkipJsonSchema[str | None] = Field(default=None, exclude=True)

    @field_validator("headers_sealed")
    @classmethod
    def _stored_only(cls, value: str | None, info: ValidationInfo) -> str | None:
        return sealed_from_store(value, info, "headers")

    @field_validator("headers")
    @classmethod
    def _header_names(cls, value: dict[str, SecretStr] | None) -> dict[str, SecretStr] | None:
        for name, secret in (value or {}).items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"{name[:128]!r} is not a valid HTTP header name")
            text = secret.get_secret_value()
            if len(text) > 8192 or any(c in text for c in "\r\n\0"):
                raise ValueError(f"the value of header {name!r} is too long or holds a line break")
        return value

    @model_validator(mode="after")
    def _transport(self) -> McpServerSpec:
        if self.url is not None and self.transport is None:
            self.transport = "http"
        if self.transport == "http" and self.url is None:
            raise ValueError(f"MCP server {self.name!r}: transport 'http' needs a url")
        if self.url is None and self.headers is not None:
            raise ValueError(
                f"MCP server {self.name!r}: headers are for a server of your own (with a url); "
                "a server the operator declared comes with its own"
            )
        return self

    @property
    def declared(self) -> bool:
        """A server the operator declared, named only."""
        return self.url is None


AGENT_NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"


class AgentSpec(BaseModel):
    """The body of an agent definition (DESIGN §7)."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)
    name: str = Field(min_length=1, max_length=128, pattern=AGENT_NAME_PATTERN)
    instructions: str = ""
    model: ModelSpec = Field(default_factory=ModelSpec)
    tools: list[ToolSpec] = Field(
        default_factory=list,
        description="Python tools by name, MCP tools as `<server>.<tool>` or a pattern "
        "(`gh.*`), each with its policy",
    )
    mcp_servers: list[McpServerSpec] = Field(default_factory=list, max_length=32)
    max_steps: int = Field(default=20, ge=1, le=10_000)
    turn_timeout_s: float = Field(default=600, gt=0, le=7 * 24 * 3600)
    interrupt_ttl_s: InterruptTtl = None
    on_expire: Literal["deny", "fail"] = "deny"
    metadata: dict[str, Any] = Field(default_factory=dict)

    def stored(self) -> dict[str, Any]:
        """The form the store keeps: the public dump plus the sealed key (never a plain one)."""
        assert self.model.api_key is None, "seal the agent's api_key before storing it"
        data = self.model_dump(mode="json")
        if self.model.api_key_sealed is not None:
            data["model"]["api_key_sealed"] = self.model.api_key_sealed
        for server, dumped in zip(self.mcp_servers, data["mcp_servers"], strict=True):
            assert server.headers is None, "seal the MCP server's headers before storing them"
            if server.headers_sealed is not None:
                dumped["headers_sealed"] = server.headers_sealed
        return data

    @classmethod
    def from_stored(cls, data: dict[str, Any]) -> AgentSpec:
        return cls.model_validate(data, context=STORED)
