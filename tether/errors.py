"""One exception root. Each error has a stable `code`; api/errors.py maps families to HTTP."""

from __future__ import annotations

from typing import Any


class TetherError(Exception):
    """Something went wrong in Tether."""

    code = "internal_error"

    def __init__(self, message: str | None = None, *, details: dict[str, Any] | None = None):
        super().__init__(message or (self.__doc__ or self.code).strip())
        self.message = message or (self.__doc__ or self.code).strip()
        self.details = details


# --- the caller asked for something malformed (400 / 422) ---------------------------------


class InvalidRequest(TetherError):
    """The request is invalid."""

    code = "invalid_request"


class InvalidId(InvalidRequest):
    """The id is not well formed."""

    code = "invalid_id"


class Unprocessable(InvalidRequest):
    """The request is well formed but cannot be processed as it is (422)."""

    code = "unprocessable"


class InvalidAgent(Unprocessable):
    """The agent definition is invalid."""

    code = "invalid_agent"


class InvalidModelParams(InvalidAgent):
    """The model's params are not ones its provider accepts."""

    code = "invalid_model_params"


class ProviderNotAllowed(InvalidAgent):
    """The operator's configuration does not allow this model provider setting."""

    code = "provider_not_allowed"


class ProviderKeyEnvNotAllowed(ProviderNotAllowed):
    """This environment variable is not one agents may name as `api_key_env`."""

    code = "provider_key_env_not_allowed"


class ProviderBaseUrlNotAllowed(ProviderNotAllowed):
    """A server-held key may not be sent to this base URL."""

    code = "provider_base_url_not_allowed"


class SecretKeyMissing(ProviderNotAllowed):
    """This server cannot store secrets: no secret key is configured."""

    code = "secret_key_missing"


class InvalidWebhook(Unprocessable):
    """The webhook endpoint is invalid."""

    code = "invalid_webhook"


class DestinationNotAllowed(Unprocessable):
    """Tether may not send requests to this destination."""

    code = "destination_not_allowed"


class UnstorableInput(Unprocessable):
    """The input holds something that cannot be stored and read back as valid UTF-8 JSON."""

    code = "unstorable_input"


class InvalidText(UnstorableInput):
    """Text must be valid Unicode without U+0000: no lone surrogate, no NUL."""

    code = "invalid_text"


class NestingTooDeep(UnstorableInput):
    """The JSON is nested deeper than Tether stores."""

    code = "nesting_too_deep"


class InvalidNumber(UnstorableInput):
    """NaN and Infinity are not JSON numbers."""

    code = "invalid_number"


class MetadataTooLarge(UnstorableInput):
    """The metadata is larger than Tether stores."""

    code = "metadata_too_large"


class IdempotencyKeyReused(Unprocessable):
    """This Idempotency-Key was used with another request."""

    code = "idempotency_key_reused"


# --- who is asking (401 / 403) -----------------------------------------------------------


class Unauthorized(TetherError):
    """A valid API key is required: `Authorization: Bearer <key>`."""

    code = "unauthorized"


class Forbidden(TetherError):
    """This API key's role does not allow this."""

    code = "forbidden"


# --- too much at once (429) ---------------------------------------------------------------


class TooManyRequests(TetherError):
    """A limit of your tenant is reached; retry later."""

    code = "rate_limited"

    def __init__(self, message: str | None = None, *, retry_after_s: int = 1):
        super().__init__(message)
        self.retry_after_s = retry_after_s


# --- the target does not exist (404) ------------------------------------------------------


class NotFound(TetherError):
    """No such object."""

    code = "not_found"


# --- the target exists but is not in a state that allows this (409) -----------------------


class Conflict(TetherError):
    """The object is not in a state that allows this."""

    code = "conflict"


class SessionBusy(Conflict):
    """The session has an active turn and on_busy is `reject`."""

    code = "session_busy"


class SessionClosed(Conflict):
    """The session is closed and accepts no new turns."""

    code = "session_closed"


class TurnNotFinished(Conflict):
    """A fork must start from a finished turn: this one (or one before it) is still
    unfinished."""

    code = "turn_not_finished"


class IdempotencyKeyInFlight(Conflict):
    """A request with this Idempotency-Key is still being processed."""

    code = "idempotency_key_in_flight"


class AlreadyExists(Conflict):
    """An object with that name already exists."""

    code = "already_exists"


class DeliveryNotFailed(Conflict):
    """Only a failed webhook delivery can be sent again."""

    code = "delivery_not_failed"


class EndpointDisabled(Conflict):
    """The webhook endpoint is disabled."""

    code = "webhook_disabled"


# --- the service cannot answer now (503) --------------------------------------------------


class Unavailable(TetherError):
    """The service is temporarily unavailable."""

    code = "unavailable"

    def __init__(self, message: str | None = None, *, retry_after_s: int = 1):
        super().__init__(message)
        self.retry_after_s = retry_after_s


# --- control flow inside a worker: never reach a client -----------------------------------


class LeaseLost(TetherError):
    """This worker no longer holds the turn: another holder or a terminal state won."""

    code = "lease_lost"


class StopRequested(TetherError):
    """A stop was requested for this turn: end it `cancelled`, recording what happened."""

    code = "stop_requested"


class InterruptNotPending(Conflict):
    """The interrupt is no longer pending: answered, expired or cancelled."""

    code = "interrupt_not_pending"


class ArgumentsNotEditable(Unprocessable):
    """This tool does not allow approvers to edit its arguments."""

    code = "arguments_not_editable"


# --- control flow raised by tools: the turn pauses, or learns its question expired --------


class PauseRequested(TetherError):
    """A tool needs outside input before it can go on."""

    code = "pause_requested"

    def __init__(self, type: str, request: dict[str, Any]):
        super().__init__(f"pause for a {type!r} interrupt")
        self.type = type
        self.request = request


class InterruptExpired(TetherError):
    """The interrupt expired before anyone answered it."""

    code = "interrupt_expired"


# --- how a turn ended badly: recorded on the turn, not raised to clients ------------------


class TurnFailure(TetherError):
    """The turn failed."""

    code = "turn_failed"
    reason = "turn_failed"  # the turn's reason code; `code` may be more specific


class ModelError(TurnFailure):
    """The model provider failed."""

    code = "model_error"
    reason = "model_error"

    def __init__(
        self,
        message: str | None = None,
        *,
        retryable: bool = False,
        retry_after_s: float | None = None,
        details: dict[str, Any] | None = None,
    ):
        super().__init__(message, details=details)
        self.retryable = retryable  # transient: worth another try if nothing was streamed yet
        self.retry_after_s = retry_after_s  # what the provider asked us to wait, if it did


class ProviderRejected(ModelError):
    """The model provider refused the request (4xx)."""

    code = "provider_rejected"


class ProviderUnavailable(ModelError):
    """The model provider failed to answer (5xx or connection error)."""

    code = "provider_unavailable"


class ProviderTimeout(ModelError):
    """The model provider did not answer in time."""

    code = "provider_timeout"


class ProviderBadResponse(ModelError):
    """The model provider's answer could not be understood."""

    code = "provider_bad_response"


class ProviderRefused(ModelError):
    """The operator's configuration does not allow this model call; nothing was sent."""

    code = "provider_not_allowed"

    def __init__(self, cause: TetherError):
        super().__init__(cause.message, details=cause.details)
        self.code = cause.code  # the refusal's own code, as agent creation would answer it


class ProviderKeyUnavailable(ModelError):
    """The agent's own provider key cannot be read (the server's secret key is missing or
    changed)."""

    code = "provider_key_unavailable"


class MaxStepsExceeded(TurnFailure):
    """The turn used all its steps without a final answer."""

    code = "max_steps"
    reason = "max_steps"
