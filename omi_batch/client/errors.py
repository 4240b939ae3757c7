"""The client's errors: each says whether it is worth retrying and whether OMI may have
applied the request (``outcome_unknown``)."""

from __future__ import annotations

from omi_batch.errors import EXIT_CONFIG, OmiBatchError


class ApiError(OmiBatchError):
    """OMI answered, but not with success: HTTP >= 400, a non-9999 envelope, or no JSON.

    ``http_status`` is None when no answer came (see TransportError). ``code`` is the vendor's
    code (``api_key_invalid``, ``user_not_found``, ...) or ours (``not_json``, ``bad_count``).
    """

    retryable = False
    kind = "api"
    # True when this attempt or an earlier one of the same call may have reached OMI (a timeout
    # or reset after sending, a 5xx): an execute may then have been applied. The client sets it
    # on the error it finally raises (see ``OmiClient._post``); ``reached`` is this attempt's own.
    outcome_unknown = False
    reached = False

    def __init__(
        self,
        http_status: int | None,
        code: str | None,
        text: str = "",
        *,
        endpoint: str | None = None,
        retry_after: float | None = None,
    ):
        self.http_status = http_status
        self.code = code
        self.text = text
        self.endpoint = endpoint
        self.retry_after = retry_after
        super().__init__(self._message())

    def _message(self) -> str:
        status = "" if self.http_status is None else f" {self.http_status}"
        code = f" {self.code}" if self.code else ""
        text = f": {self.text}" if self.text and self.text != self.code else ""
        return f"OMI answered{status}{code}{text}"


class AuthError(ApiError):
    """The API key is missing, wrong, expired or lacks the right. Nothing was changed."""

    exit_code = EXIT_CONFIG
    kind = "auth"


class RateLimited(ApiError):
    """OMI asked us to slow down (429 or ``rate_limit_exceeded``); ``retry_after`` in seconds."""

    retryable = True
    kind = "rate_limited"


class ServerError(ApiError):
    """OMI (or a load balancer before it) failed with a 5xx: it may have started the work."""

    retryable = True
    kind = "server"
    outcome_unknown = True
    reached = True


class TransportError(ApiError):
    """No answer: timeout, connection refused or reset, DNS failure. OMI may be unreachable.

    ``code`` says which (``timeout``, ``connect_timeout``, ``connection_refused``,
    ``connection_reset``, ``dns``, ``connection``). ``outcome_unknown`` is True when the request
    may have reached OMI (a read timeout or a reset), so a transfer may have been applied.
    """

    exit_code = EXIT_CONFIG
    retryable = True
    kind = "transport"

    def __init__(
        self,
        code: str,
        text: str,
        *,
        endpoint: str | None = None,
        outcome_unknown: bool = False,
    ):
        self.outcome_unknown = outcome_unknown
        self.reached = outcome_unknown  # this attempt's own; outcome_unknown may grow later
        super().__init__(None, code, text, endpoint=endpoint)

    def _message(self) -> str:
        return f"OMI unreachable ({self.code}): {self.text}"
