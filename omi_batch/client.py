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

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import math
import os
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import requests
import tenacity
import urllib3.exceptions
from requests.adapters import HTTPAdapter

from omi_batch import __version__ as _version
from omi_batch.config import DEFAULT_AUTH, Secret, parse_auth, scrub
from omi_batch.errors import EXIT_CONFIG, ConfigError, OmiBatchError, UsageError
from omi_batch.ratelimit import AdaptiveLimiter, Ticket
from omi_batch.verdicts import read_count

log = logging.getLogger("omi_batch.client")

TRANSFER_PATH = "/api/v3/agent/conversation/transfer"
TICKET_PATH = "/api/v3/agent/ticket/transfer"
AUTH_PATH = "/api/auth"
AGENTS_PATH = "/api/agent/list"
SUCCESS = 9999

# Vendor codes that mean "your key, its rights or the account": an operator has to act, retrying
# is useless (tenant_disabled and individual_package_expired are account problems).
AUTH_CODES = frozenset(
    {
        "api_key_invalid",
        "api_key_is_required",
        "token_expired",
        "auth_invalid",
        "permission_denied",
        "tenant_disabled",
        "individual_package_expired",
    }
)
# A Bearer token refused with one of these (or HTTP 401) is fetched again, once per request.
REFRESH_CODES = frozenset({"token_expired", "auth_invalid"})
TICKETS_DENIED = "your key lacks the permission to assign other agents' tickets"
RATE_LIMIT_CODES = frozenset({"rate_limit_exceeded"})
# Where a preview may carry its count (see docs/design.md, "client"); first match wins.

_EXCERPT = 160  # characters of a non-JSON answer quoted in an error
_CHANNEL = re.compile(r"^[A-Za-z0-9_-]{1,40}$")


# --------------------------------------------------------------------------- errors


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


# --------------------------------------------------------------------------- values


@dataclass(frozen=True)
class RetryPolicy:
    """How long to keep trying. Waits use full jitter: uniform(0, min(max_wait, base * 2**(n-1)))
    before attempt n+1, raised to ``Retry-After`` when OMI sent one. The attempts' own time plus
    the waits never exceed ``max_total`` seconds: a wait that would pass it stops the retries.

    A rate limit is not counted there: once OMI has refused a call for rate, the call is retried
    (paced by the limiter, which honours ``Retry-After``) until ``rate_limit_total`` seconds have
    passed since that first refusal, however many attempts that takes."""

    max_attempts: int = 5
    base: float = 0.5
    max_wait: float = 30.0
    max_total: float = 120.0
    rate_limit_total: float = 300.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if min(self.base, self.max_wait, self.max_total, self.rate_limit_total) < 0:
            raise ValueError("base, max_wait, max_total and rate_limit_total must not be negative")

    def wait(
        self, attempt_number: int, rng: random.Random, retry_after: float | None = None
    ) -> float:
        """Seconds to wait after attempt ``attempt_number`` (1-based) failed."""
        ceiling = min(self.max_wait, self.base * 2 ** min(attempt_number - 1, 60))
        wait = rng.uniform(0.0, ceiling)
        if retry_after is not None:
            wait = max(wait, retry_after)
        return wait


@dataclass(frozen=True)
class TransferResult:
    """What a transfer call returned. ``count`` is None when only a requestId came back (the
    count then arrives in the callback). ``envelope`` is OMI's answer as parsed (no headers)."""

    request_id: str | None
    count: int | None
    http_status: int
    envelope: dict


@dataclass(frozen=True)
class Agent:
    """One agent of OMI's directory. ``is_active``/``is_deleted`` are None when not given."""

    email: str
    is_active: bool | None
    is_deleted: bool | None
    name: str | None = None


@dataclass(frozen=True)
class Attempt:
    """One HTTP attempt, passed to ``on_attempt`` after it ends, success or not. No secrets."""

    endpoint: str
    number: int
    started_at: str
    elapsed_ms: float
    http_status: int | None
    vendor_code: str | None
    error: str | None  # None on success, else auth/rate_limited/server/transport/api/config
    request_id: str | None
    wait_s: float | None  # wait before the next attempt; None when this was the last
    context: dict = field(default_factory=dict)
    message: str | None = None  # the error's one-line message (never holds a secret)
    outcome_unknown: bool = False  # sent, but no answer: OMI may have applied it


# --------------------------------------------------------------------------- the envelope


def _excerpt(content: bytes, secrets: Sequence[str]) -> str:
    """A short, printable, secret-free quote of an answer body."""
    text = content[: _EXCERPT * 4].decode("utf-8", errors="replace")
    text = scrub(text, list(secrets))
    text = " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())
    if len(text) > _EXCERPT:
        text = text[: _EXCERPT - 1] + "…"
    return text or "(empty body)"


def _short(value: Any, secrets: Sequence[str], limit: int = 300) -> str | None:
    if value is None or value == "":
        return None
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = " ".join(scrub(text, list(secrets)).split())
    return text[: limit - 1] + "…" if len(text) > limit else text


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header: a number of seconds or an HTTP date. None if absent
    or unreadable; never negative."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def check_envelope(
    http_status: int,
    content: bytes,
    headers: Mapping[str, str] | None = None,
    *,
    endpoint: str | None = None,
    secrets: Sequence[str] = (),
) -> dict:
    """The parsed envelope of a successful answer, or the matching ApiError raised.

    Success is HTTP 2xx with ``status_code == 9999``. The vendor code is the top-level
    ``message``, else ``payload.error`` / ``payload.message``.
    """
    headers = headers or {}
    retry_after = parse_retry_after(headers.get("Retry-After"))
    try:
        envelope = json.loads(content) if content else None
    except (ValueError, UnicodeDecodeError):
        envelope = None
        parsed = False
    else:
        parsed = isinstance(envelope, dict)

    code: str | None = None
    text = ""
    if parsed:
        payload = envelope.get("payload")
        inner = payload if isinstance(payload, dict) else {}
        candidates = [
            _short(envelope.get("message"), secrets, 100),
            _short(inner.get("error"), secrets),
            _short(inner.get("message"), secrets),
        ]
        found = [c for c in candidates if c]
        code = found[0] if found else None
        text = "; ".join(c for c in found[1:] if c != code)
        ok_envelope = envelope.get("status_code") == SUCCESS
    elif content and envelope is not None:
        text = f"not an OMI envelope: {_excerpt(content, secrets)}"
        ok_envelope = False
    else:
        text = f"answer is not JSON: {_excerpt(content, secrets)}"
        ok_envelope = False

    if 200 <= http_status < 300 and ok_envelope:
        return envelope

    if not parsed:
        code = "not_json" if envelope is None else "bad_envelope"
    elif code is None:
        code = "bad_envelope" if "status_code" not in envelope else None
        if code is None and 200 <= http_status < 300:
            code = f"status_code_{envelope.get('status_code')}"

    kwargs = {"endpoint": endpoint, "retry_after": retry_after}
    if http_status == 429 or code in RATE_LIMIT_CODES:
        raise RateLimited(http_status, code, text, **kwargs)
    if http_status in (401, 403) or code in AUTH_CODES:
        raise AuthError(http_status, code, text or _auth_hint(code), **kwargs)
    if http_status >= 500:
        raise ServerError(http_status, code, text, **kwargs)
    if 300 <= http_status < 400 and not text:
        location = headers.get("Location")
        text = f"redirected to {scrub(location, list(secrets))}" if location else "redirected"
    raise ApiError(http_status, code, text, **kwargs)


def _auth_hint(code: str | None) -> str:
    if code == "api_key_is_required":
        return "no API key was sent (set OMI_API_KEY)"
    if code == "api_key_invalid":
        return "the API key was refused (check OMI_API_KEY and OMI_BASE_URL)"
    if code == "token_expired":
        return "the credential has expired"
    return "the API key may not do this (check its rights in the OMI web app)"


def _transfer_result(http_status: int, envelope: dict, secrets: Sequence[str]) -> TransferResult:
    return _any_transfer_result(http_status, envelope, secrets, TRANSFER_PATH)


def _ticket_result(http_status: int, envelope: dict, secrets: Sequence[str]) -> TransferResult:
    return _any_transfer_result(http_status, envelope, secrets, TICKET_PATH)


def _any_transfer_result(
    http_status: int, envelope: dict, secrets: Sequence[str], endpoint: str
) -> TransferResult:
    payload = envelope.get("payload")
    try:
        count = read_count(payload)
    except ApiError as exc:
        text = scrub(exc.text, list(secrets))
        raise ApiError(http_status, exc.code, text, endpoint=endpoint) from None
    request_id = _request_id(payload)
    if request_id is not None:  # an id is taken from the answer too: never let it carry a secret
        request_id = scrub(request_id, list(secrets))
    return TransferResult(request_id, count, http_status, envelope)


def _request_id(payload: Any) -> str | None:
    if isinstance(payload, dict):
        value = payload.get("requestId", payload.get("request_id"))
        if value is not None and value != "":
            return str(value)
    return None


# --------------------------------------------------------------------------- transport errors


def _chain(exc: BaseException) -> list[BaseException]:
    """Every exception wrapped inside a requests exception (args, .reason, causes), bounded."""
    seen: list[BaseException] = []
    todo: list[BaseException] = [exc]
    while todo and len(seen) < 20:
        current = todo.pop()
        if any(current is s for s in seen):
            continue
        seen.append(current)
        for nxt in (getattr(current, "reason", None), current.__cause__, current.__context__):
            if isinstance(nxt, BaseException):
                todo.append(nxt)
        todo.extend(a for a in current.args if isinstance(a, BaseException))
    return seen


def _transport_error(
    exc: requests.RequestException, endpoint: str, timeouts: tuple[float, float]
) -> TransportError:
    """Our own words for a requests failure (its text may carry URLs; we never quote it)."""
    chain = _chain(exc)
    types = tuple(type(e) for e in chain)

    def has(*classes: type) -> bool:
        return any(issubclass(t, classes) for t in types)

    text = str(exc)
    if isinstance(exc, requests.exceptions.SSLError):
        return TransportError("tls", "the TLS handshake failed", endpoint=endpoint)
    if isinstance(exc, requests.ConnectTimeout) and not has(ConnectionRefusedError):
        return TransportError(
            "connect_timeout",
            f"no connection within {timeouts[0]:g} s",
            endpoint=endpoint,
        )
    if has(ConnectionRefusedError) or "Connection refused" in text:
        return TransportError("connection_refused", "connection refused", endpoint=endpoint)
    if has(socket.gaierror, urllib3.exceptions.NameResolutionError):
        return TransportError("dns", "the host name could not be resolved", endpoint=endpoint)
    if isinstance(exc, requests.ReadTimeout) or (
        has(TimeoutError, urllib3.exceptions.TimeoutError)
        and not has(urllib3.exceptions.NewConnectionError)
    ):
        return TransportError(
            "timeout",
            f"no answer within {timeouts[1]:g} s (it may have been applied)",
            endpoint=endpoint,
            outcome_unknown=True,
        )
    if has(urllib3.exceptions.NewConnectionError):  # never connected: nothing was sent
        return TransportError("connection", "no connection could be made", endpoint=endpoint)
    if (
        has(ConnectionResetError, ConnectionAbortedError, BrokenPipeError)
        or has(http.client.RemoteDisconnected, http.client.IncompleteRead)
        or isinstance(exc, requests.exceptions.ChunkedEncodingError)
        or "Connection aborted" in text
    ):
        return TransportError(
            "connection_reset",
            "the connection was closed without an answer (it may have been applied)",
            endpoint=endpoint,
            outcome_unknown=True,
        )
    return TransportError(
        "connection",
        f"{type(exc).__name__} (it may have been applied)",
        endpoint=endpoint,
        outcome_unknown=True,
    )


# --------------------------------------------------------------------------- the client


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _QueryScrub(logging.Filter):
    """Hides the API key that ``GET /api/auth?apiKey=`` carries from urllib3's own debug lines
    (it logs every request line, query string included)."""

    _KEY = re.compile(r"(apiKey=)[^&\s\"']+", re.IGNORECASE)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.args = tuple(
                self._KEY.sub(r"\1***", a) if isinstance(a, str) else a
                for a in (record.args if isinstance(record.args, tuple) else (record.args,))
            )
        if isinstance(record.msg, str) and "apiKey=" in record.msg:
            record.msg = self._KEY.sub(r"\1***", record.msg)
        return True


_SCRUB = _QueryScrub()
for _name in ("urllib3.connectionpool", "urllib3.connection", "requests"):
    if _SCRUB not in logging.getLogger(_name).filters:
        logging.getLogger(_name).addFilter(_SCRUB)


class _Call:
    """Bookkeeping for one logical call across its attempts (one per call: thread-safe)."""

    __slots__ = (
        "endpoint", "context", "pending", "spent", "attempts", "reached", "secrets", "auth",
        "token", "refreshed", "refresh_pending", "limited", "limited_for", "free_attempts",
        "waited", "denied", "fallback",
    )  # fmt: skip

    def __init__(self, endpoint: str, context: dict, secrets: list[str], auth: str | None):
        self.endpoint = endpoint
        self.context = context
        self.secrets = secrets  # every credential value of this call, scrubbed from answers
        self.auth = auth  # "api-key", "bearer", or None (the token request itself)
        self.token: Secret | None = None  # the Bearer token the last attempt sent
        self.refreshed = False  # a new token was fetched for this call (at most once)
        self.refresh_pending = False  # fetch a new token before the next attempt
        self.attempts = 0
        self.free_attempts = 0  # rate-limited and token-refresh attempts: not in max_attempts
        self.reached = False  # some attempt may have reached OMI (so may have been applied)
        self.pending: dict | None = None  # the attempt not yet reported to on_attempt
        self.spent = 0.0  # seconds inside attempts, before any rate limit
        self.waited = 0.0  # seconds of retry waits, before any rate limit
        self.limited = False  # OMI has refused this call for rate at least once
        self.limited_for = 0.0  # seconds since that first refusal (attempts, waits, pacing)
        self.denied: str | None = None  # this endpoint's permission_denied is the row's error
        self.fallback = False  # api-key refused here: try a Bearer token once (directory)


def _session_for(base_url: str) -> requests.Session:
    """A Session whose environment settings (HTTP(S)_PROXY, NO_PROXY, REQUESTS_CA_BUNDLE /
    CURL_CA_BUNDLE) are read once, here, for ``base_url``, instead of on every request.

    requests reads os.environ (and ~/.netrc) for each request when ``trust_env`` is on, about a
    quarter of the client's CPU (issue 5). Every request goes to the one host of ``base_url``,
    so resolving its proxies at start-up gives the same answer; a change to the environment
    after the client is built is not seen (restart to pick it up). .netrc is not consulted:
    OMI authenticates with ``x-api-key`` or a Bearer token, never with Basic credentials."""
    session = requests.Session()
    session.trust_env = False
    session.proxies = requests.utils.get_environ_proxies(base_url)
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle:
        session.verify = bundle
    return session


class OmiClient:
    """A client for the OMI endpoints omi-batch uses. Share one between threads; close it once.

    ``timeout`` is the read timeout per request, ``connect_timeout`` the connect timeout.
    ``auth`` is ``"api-key"`` (the x-api-key header) or ``"bearer"`` (a token from
    ``GET /api/auth``, kept in memory only). ``limiter`` paces every attempt (None: no pacing;
    the pipeline always gives one). ``on_attempt`` is called in the calling thread after every
    attempt; a failing hook is logged and ignored. ``sleep`` and ``rng`` are injectable so tests
    neither wait nor guess.
    """

    def __init__(
        self,
        base_url: str,
        api_key: Secret,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
        retry: RetryPolicy = RetryPolicy(),  # noqa: B008 (frozen, so a shared default is safe)
        on_attempt: Callable[[Attempt], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        pool_size: int = 16,
        rng: random.Random | None = None,
        auth: str = DEFAULT_AUTH,
        limiter: AdaptiveLimiter | None = None,
    ):
        base_url = (base_url or "").strip().rstrip("/")
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"the OMI base URL must start with http:// or https://: {base_url!r}")
        if isinstance(api_key, str):
            api_key = Secret(api_key)
        if not isinstance(api_key, Secret) or not api_key:
            raise ConfigError("no OMI API key given (set OMI_API_KEY)")
        if timeout <= 0 or connect_timeout <= 0:
            raise ValueError("timeouts must be positive")
        self.base_url = base_url
        self._api_key = api_key
        self.auth = parse_auth(auth)
        self.limiter = limiter
        self.timeout = float(timeout)
        self.connect_timeout = float(connect_timeout)
        self.retry = retry
        self.on_attempt = on_attempt
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._token: Secret | None = None
        self._token_lock = threading.Lock()
        self._directory_auth = self.auth  # becomes "bearer" if the directory refuses the key
        self._session = _session_for(base_url)
        # max_retries=0: urllib3 never retries on its own, so every attempt is one we record.
        adapter = HTTPAdapter(
            pool_connections=2, pool_maxsize=max(1, pool_size), max_retries=0, pool_block=True
        )
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._session.headers.update(
            {"Accept": "application/json", "User-Agent": f"omi-batch/{_version}"}
        )

    def __repr__(self) -> str:
        return f"OmiClient(base_url={self.base_url!r})"

    def __enter__(self) -> OmiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the pooled connections."""
        self._session.close()

    # ----------------------------------------------------------------------- endpoints

    def transfer_conversations(
        self,
        source_email: str,
        target_email: str,
        *,
        preview: bool,
        replace_existing_members: bool = False,
        conv_ids: Sequence[str] | None = None,
        callback: dict | None = None,
        context: dict | None = None,
    ) -> TransferResult:
        """Preview (count only) or execute one transfer. Execute answers 202 with a requestId;
        the result comes later by callback to ``callback["url"]``."""
        body: dict[str, Any] = {
            "sourceEmail": source_email,
            "targetEmail": target_email,
            "previewChanges": bool(preview),
            "replaceExistingMembers": bool(replace_existing_members),
        }
        if conv_ids:
            body["convIds"] = [str(c) for c in conv_ids]
        if callback:
            body["callbackResultConfig"] = callback
        return self._post(TRANSFER_PATH, body, context=context, parse=_transfer_result)

    def transfer_tickets(
        self,
        source_email: str,
        target_email: str,
        *,
        preview: bool,
        context: dict | None = None,
        callback: dict | None = None,
    ) -> TransferResult:
        """Preview or execute the move of a source agent's tickets to the target, with the
        conversation transfer's envelope and count variants. A key without the permission to
        assign other agents' tickets gets an ApiError ``permission_denied`` for this row, not
        an AuthError: the same key may move conversations."""
        body: dict[str, Any] = {
            "sourceEmail": source_email,
            "targetEmail": target_email,
            "previewChanges": bool(preview),
        }
        if callback:
            body["callbackResultConfig"] = callback
        return self._post(
            TICKET_PATH, body, context=context, parse=_ticket_result, denied=TICKETS_DENIED
        )

    def list_agents(
        self,
        keyword: str | None = None,
        size: int = 50,
        *,
        max_pages: int = 400,
        context: dict | None = None,
    ) -> Iterator[Agent]:
        """Every agent of OMI's directory (those matching ``keyword``), page after page until an
        empty page. The directory is documented with a Bearer token: in api-key mode the key is
        sent first and, if OMI refuses it there, a token is fetched once and used from then on.
        ApiError ``directory_too_large`` after ``max_pages`` pages (a bound, not a guess)."""
        size = max(1, int(size))
        seen: set[str] = set()
        for page in range(1, max_pages + 1):
            params: dict[str, Any] = {"page": page, "size": size}
            if keyword:
                params["keyword"] = keyword
            agents = self._request(
                "GET", AGENTS_PATH, None, params=params, context=context, parse=_agents_page,
                auth=self._directory_auth, fallback=self._directory_auth == "api-key",
            )  # fmt: skip
            fresh = [a for a in agents if a.email not in seen]
            if not fresh:  # an empty page, or OMI ignoring ``page`` and repeating itself
                return
            seen.update(a.email for a in fresh)
            yield from fresh
        raise ApiError(
            None, "directory_too_large",
            f"more than {max_pages} pages of {size} agents", endpoint=AGENTS_PATH,
        )  # fmt: skip

    def new_room(
        self,
        channel: str = "livetalk",
        *,
        uuid: str = "",
        guest_info: dict | None = None,
        context: dict | None = None,
    ) -> dict:
        """Open a conversation as a guest (test data); returns the payload."""
        body = {"uuid": uuid, "guest_info": guest_info or {}}
        path = f"/api/social/{_channel(channel)}/new_room"
        return self._post(path, body, context=context, parse=_dict_payload)

    def guest_send_message(
        self,
        channel: str = "livetalk",
        *,
        uuid: str,
        content: str,
        multimedias: list[dict] | None = None,
        context: dict | None = None,
    ) -> dict:
        """Send a message as the guest of conversation ``uuid``; returns the stored message."""
        body: dict[str, Any] = {"uuid": uuid, "content": content}
        if multimedias:
            body["multimedias"] = multimedias
        path = f"/api/social/{_channel(channel)}/guest_send_message"
        return self._post(path, body, context=context, parse=_dict_payload)

    def list_messages(
        self, conv_id: str, *, page: int = 1, size: int = 15, context: dict | None = None
    ) -> list:
        """One page of a conversation's messages."""
        return self._post(
            "/api/social/message/list",
            {"conv_id": conv_id},
            params={"page": int(page), "size": int(size)},
            context=context,
            parse=_list_payload,
        )

    # ----------------------------------------------------------------------- bearer tokens

    def _bearer(self, call: _Call) -> Secret:
        """The current Bearer token, fetched now if there is none (one thread fetches)."""
        with self._token_lock:
            if self._token is None:
                self._token = self._fetch_token(call)
            return self._token

    def _refresh(self, call: _Call) -> None:
        """Forget the token ``call`` was refused with and fetch a new one, unless another
        thread already did. A refused refresh raises AuthError (exit 3)."""
        with self._token_lock:
            if self._token is None or self._token == call.token:
                self._token = None
                self._token = self._fetch_token(call)

    def _fetch_token(self, call: _Call) -> Secret:
        """``GET /api/auth?apiKey=KEY``: the key travels in the query string, so the URL is
        never quoted (not in a log, an exception or an attempt) and the key is scrubbed from
        the answer."""
        try:
            token = self._request(
                "GET", AUTH_PATH, None, params={"apiKey": self._api_key.value},
                context=call.context, parse=_token_payload, auth=None,
            )  # fmt: skip
        except AuthError as error:
            raise AuthError(
                error.http_status, error.code,
                f"OMI refused to give a Bearer token for the API key: {error.text or error.code}",
                endpoint=AUTH_PATH,
            ) from None  # fmt: skip
        except ApiError as error:
            if error.retryable or isinstance(error, TransportError):
                raise
            raise AuthError(
                error.http_status, error.code or "bad_token",
                f"OMI's answer to the token request is not usable: {error.text or error.code}",
                endpoint=AUTH_PATH,
            ) from None  # fmt: skip
        call.secrets[:] = _longest_first([*call.secrets, token.value])
        return token

    # ----------------------------------------------------------------------- machinery

    def _post(
        self,
        path: str,
        body: dict,
        *,
        params: dict | None = None,
        context: dict | None = None,
        parse: Callable[[int, dict, Sequence[str]], Any] | None = None,
        denied: str | None = None,
    ) -> Any:
        """POST ``body`` with retries (see :meth:`_request`)."""
        return self._request(
            "POST", path, body, params=params, context=context, parse=parse, denied=denied
        )

    def _request(
        self,
        method: str,
        path: str,
        body: dict | None,
        *,
        params: dict | None = None,
        context: dict | None = None,
        parse: Callable[[int, dict, Sequence[str]], Any] | None = None,
        denied: str | None = None,
        auth: str | None | object = ...,
        fallback: bool = False,
    ) -> Any:
        """Send with retries; returns ``parse(status, envelope, secrets)`` (default: the pair)
        or raises the last error. ``parse`` runs inside the attempt, so its errors are recorded
        too; ``secrets`` are the values it must scrub from any text it raises. ``denied`` makes
        ``permission_denied`` (or a 403) this call's own ApiError with that text; ``fallback``
        retries once with a Bearer token when the x-api-key is refused."""
        mode = self.auth if auth is ... else auth
        call = _Call(path, dict(context or {}), self._secrets(body), mode)  # type: ignore[arg-type]
        call.denied, call.fallback = denied, fallback
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(lambda e: getattr(e, "retryable", False)),
            wait=lambda rs: self._wait(rs, call),
            stop=lambda rs: self._stop(rs, call),
            before_sleep=lambda rs: self._before_sleep(rs, call),
            sleep=self._sleep,
            reraise=True,
        )
        try:
            return retrying(self._attempt, call, method, path, body, params, parse)
        except ApiError as error:
            if call.reached:  # an earlier attempt may have been applied: never forget it
                error.outcome_unknown = True
            raise
        finally:
            self._report(call, wait_s=None)

    def _secrets(self, body: dict | None) -> list[str]:
        """The values no text taken from an answer may keep: the API key, the Bearer token,
        every callback header value sent in ``body`` (``X-Omi-Batch-Token``), and any
        credential in the callback URL (user:password, query values), since OMI may echo any
        of them."""
        found = [self._api_key.value]
        token = self._token
        if token is not None:
            found.append(token.value)
        config = body.get("callbackResultConfig") if isinstance(body, dict) else None
        if isinstance(config, dict):
            headers = config.get("headers")
            if isinstance(headers, dict):
                found.extend(str(v) for v in headers.values() if v)
            url = config.get("url")
            if isinstance(url, str) and url:
                found.extend(v for v in _url_secrets(url) if len(v) >= 8)  # not "1", "en"
        return _longest_first(found)

    def _wait(self, rs: tenacity.RetryCallState, call: _Call) -> float:
        exc = rs.outcome.exception() if rs.outcome else None
        if isinstance(exc, AuthError):  # a token refresh: at once
            return 0.0
        if isinstance(exc, RateLimited) and self.limiter is not None:
            return 0.0  # the limiter paces the retry and honours Retry-After for every sender
        number = rs.attempt_number - call.free_attempts if not call.limited else rs.attempt_number
        return self.retry.wait(max(1, number), self._rng, getattr(exc, "retry_after", None))

    def _stop(self, rs: tenacity.RetryCallState, call: _Call) -> bool:
        exc = rs.outcome.exception() if rs.outcome else None
        upcoming = rs.upcoming_sleep or 0.0
        if isinstance(exc, AuthError):  # retryable only for its one token refresh
            return False
        if isinstance(exc, RateLimited):
            return call.limited_for + upcoming > self.retry.rate_limit_total
        if rs.attempt_number - call.free_attempts >= self.retry.max_attempts:
            return True
        return call.spent + call.waited + upcoming > self.retry.max_total

    def _before_sleep(self, rs: tenacity.RetryCallState, call: _Call) -> None:
        wait = rs.upcoming_sleep or 0.0
        if call.limited:
            call.limited_for += wait
        else:
            call.waited += wait
        self._report(call, wait_s=wait)

    def _headers(self, call: _Call) -> dict[str, str]:
        if call.auth == "bearer":
            call.token = self._bearer(call)
            return {"Authorization": f"Bearer {call.token.value}"}
        if call.auth == "api-key":
            return {"x-api-key": self._api_key.value}
        return {}

    def _attempt(
        self,
        call: _Call,
        method: str,
        path: str,
        body: dict | None,
        params: dict | None,
        parse: Callable[[int, dict, Sequence[str]], Any] | None,
    ) -> Any:
        if call.refresh_pending:  # outside the attempt's record: it is its own request
            call.refresh_pending = False
            self._refresh(call)
        headers = self._headers(call)
        ticket: Ticket | None = self.limiter.acquire() if self.limiter is not None else None
        if ticket is not None and call.limited:
            call.limited_for += ticket.waited
        call.attempts += 1
        number = call.attempts
        started_at = _now_iso()
        start = time.monotonic()
        record: dict[str, Any] = {
            "number": number,
            "started_at": started_at,
            "http_status": None,
            "vendor_code": None,
            "error": None,
            "request_id": None,
            "message": None,
            "outcome_unknown": False,
        }
        try:
            # The failure is raised outside the ``except``: requests' exception quotes the URL
            # (the API key, for /api/auth), so it must not even ride along as __context__.
            failure: Exception | None = None
            try:
                response = self._session.request(
                    method,
                    self.base_url + path,
                    json=body,
                    params=params,
                    headers=headers,
                    timeout=(self.connect_timeout, self.timeout),
                    allow_redirects=False,
                )
            except (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema):
                failure = ConfigError(f"the OMI base URL is not usable: {self.base_url!r}")
            except requests.RequestException as exc:
                failure = _transport_error(exc, path, (self.connect_timeout, self.timeout))
            if failure is not None:
                raise failure
            record["http_status"] = response.status_code
            try:
                envelope = check_envelope(
                    response.status_code,
                    response.content,
                    response.headers,
                    endpoint=path,
                    secrets=call.secrets,
                )
            except RateLimited as exc:
                if ticket is not None:
                    self.limiter.refused(ticket, exc.retry_after, str(exc))  # type: ignore[union-attr]
                if not call.limited:
                    call.limited = True
                call.free_attempts += 1
                raise
            except AuthError as exc:
                if ticket is not None:
                    self.limiter.succeeded(ticket)  # type: ignore[union-attr]
                raise self._auth_failure(call, exc) from None
            except ServerError:
                raise
            except ApiError:
                if ticket is not None:
                    self.limiter.succeeded(ticket)  # type: ignore[union-attr]
                raise
            if ticket is not None:
                self.limiter.succeeded(ticket)  # type: ignore[union-attr]
            if call.fallback and call.auth == "bearer":  # the directory took the token
                self._directory_auth = "bearer"
            request_id = _request_id(envelope.get("payload"))
            record["request_id"] = None if request_id is None else scrub(request_id, call.secrets)
            if parse is None:
                return response.status_code, envelope
            return parse(response.status_code, envelope, call.secrets)
        except ApiError as exc:
            if exc.reached:
                call.reached = True
            record.update(
                vendor_code=exc.code,
                error=exc.kind,
                message=scrub(str(exc), call.secrets),
                outcome_unknown=exc.reached,
            )
            raise
        except ConfigError as exc:
            record.update(error="config", message=str(exc))
            raise
        except Exception as exc:  # a bug of ours: still recorded, never with its text
            record.update(error="internal", message=type(exc).__name__)
            raise
        finally:
            elapsed = time.monotonic() - start
            if call.limited:
                call.limited_for += elapsed
            else:
                call.spent += elapsed
            record["elapsed_ms"] = round(elapsed * 1000.0, 3)
            call.pending = record
            log.debug(
                "%s %s attempt %d: %s in %.0f ms%s",
                method,
                path,
                number,
                record["http_status"] if record["http_status"] is not None else "no answer",
                record["elapsed_ms"],
                f" ({record['error']} {record['vendor_code']})" if record["error"] else "",
            )

    def _auth_failure(self, call: _Call, exc: AuthError) -> ApiError:
        """What a refused credential means for this call: this row's own error (``denied``),
        one more attempt with a new or first Bearer token, or the AuthError that stops the run."""
        if call.denied and (exc.code == "permission_denied" or exc.http_status == 403):
            return ApiError(
                exc.http_status, "permission_denied", call.denied, endpoint=exc.endpoint
            )
        if call.refreshed:
            return exc
        if call.auth == "bearer" and (exc.http_status == 401 or exc.code in REFRESH_CODES):
            call.refreshed = call.refresh_pending = True
        elif call.auth == "api-key" and call.fallback:
            call.auth, call.refreshed = "bearer", True  # the first token is fetched next
        else:
            return exc
        call.free_attempts += 1
        exc.retryable = True  # this instance only: one more attempt
        return exc

    def _report(self, call: _Call, *, wait_s: float | None) -> None:
        """Hand the pending attempt to on_attempt, once; never let the hook break the call."""
        record, call.pending = call.pending, None
        if record is None:
            return
        if self.on_attempt is None:
            return
        attempt = Attempt(
            endpoint=call.endpoint,
            wait_s=wait_s,
            context=dict(call.context),
            **record,
        )
        try:
            self.on_attempt(attempt)
        except Exception:  # noqa: BLE001 - the hook is the caller's; the request goes on
            log.warning(
                "on_attempt hook failed for %s attempt %d",
                call.endpoint,
                record["number"],
                exc_info=True,
            )


def _longest_first(values: Sequence[str]) -> list[str]:
    """Distinct non-empty secrets, the longest first, so one containing another goes whole."""
    return sorted({v for v in values if v}, key=len, reverse=True)


def _url_secrets(url: str) -> list[str]:
    """Credential-like parts of a callback URL: its password and its query values."""
    from urllib.parse import parse_qsl, urlsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    found = [parts.password] if parts.password else []
    found.extend(value for _, value in parse_qsl(parts.query) if value)
    return found


def _channel(channel: str) -> str:
    if not _CHANNEL.match(channel or ""):
        raise UsageError(f"not a channel name: {channel!r}")
    return channel


def _dict_payload(http_status: int, envelope: dict, secrets: Sequence[str]) -> dict:
    payload = envelope.get("payload")
    if not isinstance(payload, dict):
        raise ApiError(http_status, "bad_payload", "the answer's payload is not an object")
    return payload


def _list_payload(http_status: int, envelope: dict, secrets: Sequence[str]) -> list:
    """A message list: the payload itself, or the list inside it (shapes vary by channel)."""
    payload = envelope.get("payload")
    if payload is None:
        return []
    if isinstance(payload, list):
        return payload
    if isinstance(payload, dict):
        for key in ("items", "messages", "data", "docs"):
            if isinstance(payload.get(key), list):
                return payload[key]
    raise ApiError(http_status, "bad_payload", "the message list is not a list")


def _token_payload(http_status: int, envelope: dict, secrets: Sequence[str]) -> Secret:
    """The Bearer token in ``/api/auth``'s payload (``access_token``), as a Secret."""
    payload = envelope.get("payload")
    token = payload.get("access_token") if isinstance(payload, dict) else None
    if not isinstance(token, str) or not token.strip():
        raise ApiError(http_status, "bad_token", "the answer has no access_token")
    return Secret(token.strip())


AGENT_LIST_KEYS = ("items", "data", "content", "docs", "rows", "list", "agents", "records")


def _agents_page(http_status: int, envelope: dict, secrets: Sequence[str]) -> list[Agent]:
    """One directory page, read tolerantly: the items are the payload itself or the first list
    under a usual key (one level deeper too, e.g. ``payload.data.items``); an item's email is
    ``identify_info`` or ``email``; items without one are skipped."""
    items = _find_list(envelope.get("payload"))
    if items is None:
        raise ApiError(http_status, "bad_payload", "the agent list is not a list")
    agents = []
    for item in items:
        if not isinstance(item, dict):
            continue
        email = next(
            (
                item[k]
                for k in ("identify_info", "email", "identifyInfo")
                if isinstance(item.get(k), str)
            ),
            None,
        )
        if not email or "@" not in email:
            continue
        name = next(
            (item[k] for k in ("name", "full_name", "fullname", "fullName") if item.get(k)), None
        )
        agents.append(
            Agent(
                email=email.strip().lower(),
                is_active=_flag(item, "is_active", "isActive", "active"),
                is_deleted=_flag(item, "is_deleted", "isDeleted", "deleted"),
                name=scrub(str(name), list(secrets)) if name else None,
            )
        )
    return agents


def _find_list(payload: Any, depth: int = 0) -> list | None:
    if payload is None:
        return []
    if isinstance(payload, list):
        return payload
    if isinstance(payload, dict) and depth < 2:
        for key in AGENT_LIST_KEYS:
            if key in payload:
                found = _find_list(payload[key], depth + 1)
                if found is not None:
                    return found
    return None


def _flag(item: dict, *names: str) -> bool | None:
    """A yes/no field, tolerant of 0/1 and "true"/"false"; None when absent or unreadable."""
    for name in names:
        value = item.get(name)
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
            return value.strip().lower() in ("true", "1")
    return None
