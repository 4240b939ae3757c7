"""The only code that speaks HTTP to OMI: envelope, errors, retries and the attempt hook.

One ``requests.Session`` (safe to share between the pipeline's threads) sends JSON with the
``x-api-key`` header, or (``auth="bearer"``) with a Bearer token fetched once from
``GET /api/auth?apiKey=`` and fetched again once when OMI says it expired. A call succeeds only
on HTTP 2xx with ``status_code == 9999``; everything else becomes one of the error classes
below, each knowing whether it is worth retrying. Retries (tenacity) happen here and nowhere
else: transport errors and 5xx with full jitter, a cap per wait and a cap on total time; a rate
limit (429 or ``rate_limit_exceeded``) is retried until ``RetryPolicy.rate_limit_total`` seconds
have passed since the first refusal (300 s by default), and only then is it the row's error
(``rate_limited``). Every attempt, first or retry, waits its turn at the shared
:class:`~omi_batch.ratelimit.AdaptiveLimiter` and tells it how OMI answered.

An *execute* that timed out or was reset may have been applied by OMI. Retrying it is safe (a
transfer applied twice moves nothing the second time), so it is retried like anything else, and
every attempt is reported to ``on_attempt`` with ``outcome_unknown=True`` so the ledger says so.
"""

from omi_batch.client.endpoints import OmiClient
from omi_batch.client.envelope import AGENTS_PATH, AUTH_PATH, TICKET_PATH, TRANSFER_PATH
from omi_batch.client.errors import ApiError, AuthError, RateLimited, ServerError, TransportError
from omi_batch.client.values import Agent, Attempt, RetryPolicy, TransferResult

__all__ = ["AGENTS_PATH", "AUTH_PATH", "TICKET_PATH", "TRANSFER_PATH", "Agent", "ApiError", "Attempt",
           "AuthError", "OmiClient", "RateLimited", "RetryPolicy", "ServerError", "TransferResult",
           "TransportError"]  # fmt: skip
