"""The SDK's exceptions: one root, a class per HTTP status, and subclasses for the error codes a
program is likely to handle (`except SessionBusy:`). Built from the server's error body
`{"error": {"code", "message", "details"?}}`; an unknown code still gets its status's class."""

from __future__ import annotations

from typing import Any

import httpx


class TetherClientError(Exception):
    """Something went wrong talking to Tether."""


class APIConnectionError(TetherClientError):
    """The server could not be reached, or the connection broke before an answer came."""

    def __init__(self, message: str, *, url: str | None = None):
        super().__init__(message)
        self.message = message
        self.url = url


class APITimeoutError(APIConnectionError):
    """The server did not answer in time."""


class APIError(TetherClientError):
    """The server answered with an error: `status`, stable `code`, `message`, `details`."""

    status: int = 0

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: Any = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(f"{message} ({status} {code})")
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.request_id = request_id
        self.retry_after = retry_after


class BadRequest(APIError):
    """400: the request is malformed (bad JSON, a malformed id)."""


class InvalidId(BadRequest):
    """400 `invalid_id`: an id in the path is not well formed."""


class Unauthorized(APIError):
    """401: no API key, or a key that is unknown or revoked."""


class Forbidden(APIError):
    """403: this key's role does not allow the call."""


class NotFound(APIError):
    """404: no such object (or it belongs to another tenant)."""


class Conflict(APIError):
    """409: the object is not in a state that allows this."""


class SessionBusy(Conflict):
    """409 `session_busy`: the session has an active turn and `on_busy` was `reject`."""


class SessionClosed(Conflict):
    """409 `session_closed`: the session accepts no new turns."""


class InterruptNotPending(Conflict):
    """409 `interrupt_not_pending`: the interrupt was already answered, expired or cancelled."""


class TurnNotFinished(Conflict):
    """409 `turn_not_finished`: a fork must start from a finished turn."""


class IdempotencyKeyInFlight(Conflict):
    """409 `idempotency_key_in_flight`: the first request with this key is still running."""


class AlreadyExists(Conflict):
    """409 `already_exists`: an object with that name exists."""


class PayloadTooLarge(APIError):
    """413: the request body is over the server's limit."""


class Unprocessable(APIError):
    """422: the request is well formed but invalid."""


class ValidationError(Unprocessable):
    """422 `validation_error`: fields are missing or have wrong values (see `details`)."""


class InvalidAgent(Unprocessable):
    """422 `invalid_agent`: the agent definition is refused."""


class InvalidModelParams(InvalidAgent):
    """422 `invalid_model_params`: the model's `params` are not ones its provider accepts."""


class ProviderNotAllowed(InvalidAgent):
    """422 `provider_not_allowed` (and the codes below): the server's operator does not allow
    this model provider setting."""


class ProviderKeyEnvNotAllowed(ProviderNotAllowed):
    """422 `provider_key_env_not_allowed`: `model.api_key_env` is not a variable agents may
    name (the operator lists them); give your own `model.api_key` instead."""


class ProviderBaseUrlNotAllowed(ProviderNotAllowed):
    """422 `provider_base_url_not_allowed`: a key held by the server may not go to this
    `model.base_url`; give your own `model.api_key` to use another host."""


class SecretKeyMissing(ProviderNotAllowed):
    """422 `secret_key_missing`: this server cannot store your own `model.api_key` (its
    operator configured no secret key); name a server-held key with `model.api_key_env`."""


class DestinationNotAllowed(Unprocessable):
    """422 `destination_not_allowed`: Tether may not send requests to this URL (a loopback
    or private address, credentials in it, not http(s), …)."""


class UnstorableInput(Unprocessable):
    """422: the input holds something that cannot be stored and read back as valid JSON;
    `details` says where (`{"in": "body", "path": "$.metadata.k"}`). One of the four below."""


class InvalidText(UnstorableInput):
    """422 `invalid_text`: text with U+0000 (NUL) or a lone surrogate (not valid Unicode)."""


class NestingTooDeep(UnstorableInput):
    """422 `nesting_too_deep`: JSON nested deeper than the server stores."""


class InvalidNumber(UnstorableInput):
    """422 `invalid_number`: NaN or Infinity, which are not JSON numbers."""


class MetadataTooLarge(UnstorableInput):
    """422 `metadata_too_large`: `metadata` over the server's size limit (`details` has the
    `size` and the `limit`, in bytes of JSON)."""


class IdempotencyKeyReused(Unprocessable):
    """422 `idempotency_key_reused`: this Idempotency-Key was used with another request."""


class ArgumentsNotEditable(Unprocessable):
    """422 `arguments_not_editable`: the tool does not let approvers edit its arguments."""


class RateLimited(APIError):
    """429: a limit of your tenant is reached; `retry_after` says when to try again."""


class ServerError(APIError):
    """5xx: the server failed."""


class ServiceUnavailable(ServerError):
    """503: the server cannot answer now; `retry_after` says when to try again."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: Unprocessable,
    429: RateLimited,
    503: ServiceUnavailable,
}

_BY_CODE: dict[str, type[APIError]] = {
    "invalid_id": InvalidId,
    "session_busy": SessionBusy,
    "session_closed": SessionClosed,
    "interrupt_not_pending": InterruptNotPending,
    "turn_not_finished": TurnNotFinished,
    "idempotency_key_in_flight": IdempotencyKeyInFlight,
    "already_exists": AlreadyExists,
    "validation_error": ValidationError,
    "invalid_agent": InvalidAgent,
    "invalid_model_params": InvalidModelParams,
    "provider_not_allowed": ProviderNotAllowed,
    "provider_key_env_not_allowed": ProviderKeyEnvNotAllowed,
    "provider_base_url_not_allowed": ProviderBaseUrlNotAllowed,
    "secret_key_missing": SecretKeyMissing,
    "destination_not_allowed": DestinationNotAllowed,
    "unstorable_input": UnstorableInput,
    "invalid_text": InvalidText,
    "nesting_too_deep": NestingTooDeep,
    "invalid_number": InvalidNumber,
    "metadata_too_large": MetadataTooLarge,
    "idempotency_key_reused": IdempotencyKeyReused,
    "arguments_not_editable": ArgumentsNotEditable,
}


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: not something this server sends


def from_response(response: httpx.Response) -> APIError:
    """The most specific exception for an error answer (its body must have been read)."""
    status = response.status_code
    try:
        body = response.json()["error"]
        code, message, details = str(body["code"]), str(body["message"]), body.get("details")
    except (ValueError, KeyError, TypeError):
        code, message, details = "http_error", response.text[:200] or response.reason_phrase, None
    cls = _BY_CODE.get(code) or _BY_STATUS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else APIError
    return cls(
        status,
        code,
        message,
        details=details,
        request_id=response.headers.get("x-request-id"),
        retry_after=_retry_after(response),
    )


def connection_error(exc: httpx.TransportError, url: str) -> APIConnectionError:
    """A transport failure, said in one line."""
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(f"Tether at {url} did not answer in time", url=url)
    if isinstance(exc, httpx.ConnectError):
        why = str(exc) or "connection refused"
        return APIConnectionError(f"cannot reach Tether at {url}: {why}", url=url)
    why = str(exc) or type(exc).__name__
    return APIConnectionError(f"the connection to Tether at {url} broke: {why}", url=url)
