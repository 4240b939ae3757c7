"""The machinery under every call: one pooled ``requests.Session``, the attempt loop (tenacity:
waits, stop rules, the shared rate limit), Bearer tokens, transport errors, and the report of
each attempt to ``on_attempt``."""

from __future__ import annotations

import http.client
import logging
import os
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import requests
import tenacity
import urllib3.exceptions
from requests.adapters import HTTPAdapter

from omi_batch import __version__ as _version
from omi_batch.client.envelope import (
    AUTH_PATH,
    REFRESH_CODES,
    _longest_first,
    _request_id,
    _token_payload,
    _url_secrets,
    check_envelope,
)
from omi_batch.client.errors import ApiError, AuthError, RateLimited, ServerError, TransportError
from omi_batch.client.values import Attempt, RetryPolicy
from omi_batch.config import DEFAULT_AUTH, Secret, parse_auth, scrub
from omi_batch.errors import ConfigError
from omi_batch.ratelimit import AdaptiveLimiter, Ticket

log = logging.getLogger("omi_batch.client")


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


def _key_header_refused(exc: AuthError) -> AuthError:
    """A 401 to the ``x-api-key`` header, told with what was sent: OMI's own pages document
    the header, its own client a Bearer token, so the other mode is the first thing to try."""
    hint = ("the key was sent in the x-api-key header; if this OMI wants a Bearer token "
            "instead, set OMI_AUTH=bearer")  # fmt: skip
    if exc.code == "api_key_is_required":  # "no API key was sent" is not what happened
        text = f"OMI saw no API key: {hint}"
    else:
        text = f"{exc.text} ({hint})" if exc.text else hint
    refused = AuthError(exc.http_status, exc.code, text, endpoint=exc.endpoint)
    refused.outcome_unknown, refused.reached = exc.outcome_unknown, exc.reached
    return refused


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


class Transport:
    """Sending one logical call to OMI across its attempts; ``OmiClient`` holds one and adds
    the endpoints. The options are described on ``OmiClient``."""

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
        self._token_refused: AuthError | None = None  # OMI refused the key a token: final
        self._token_lock = threading.Lock()
        self.directory_auth = self.auth  # becomes "bearer" if the directory refuses the key
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
        return f"Transport(base_url={self.base_url!r})"

    def close(self) -> None:
        """Close the pooled connections."""
        self._session.close()

    # ----------------------------------------------------------------------- bearer tokens

    def _bearer(self, call: _Call) -> Secret:
        """The current Bearer token, fetched now if there is none (one thread fetches)."""
        with self._token_lock:
            if self._token is None:
                self._token = self._fetch_token_once(call)
            return self._token

    def _fetch_token_once(self, call: _Call) -> Secret:
        """:meth:`_fetch_token` (token lock held), unless OMI already refused the key: then
        that refusal again, without asking (one refused key call per run, not one per
        thread)."""
        refused = self._token_refused
        if refused is not None:
            raise AuthError(refused.http_status, refused.code, refused.text,
                            endpoint=AUTH_PATH)  # fmt: skip
        try:
            return self._fetch_token(call)
        except AuthError as error:
            self._token_refused = error
            raise

    def _refresh(self, call: _Call) -> None:
        """Forget the token ``call`` was refused with and fetch a new one, unless another
        thread already did. A refused refresh raises AuthError (exit 3)."""
        with self._token_lock:
            if self._token is None or self._token == call.token:
                self._token = None
                self._token = self._fetch_token_once(call)

    def _fetch_token(self, call: _Call) -> Secret:
        """``GET /api/auth?apiKey=KEY``: the key travels in the query string, so the URL is
        never quoted (not in a log, an exception or an attempt) and the key is scrubbed from
        the answer."""
        try:
            token = self.request(
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
        return token  # scrubbed from every answer of the calls that send it (_headers)

    # ----------------------------------------------------------------------- machinery

    def post(
        self,
        path: str,
        body: dict,
        *,
        params: dict | None = None,
        context: dict | None = None,
        parse: Callable[[int, dict, Sequence[str]], Any] | None = None,
        denied: str | None = None,
    ) -> Any:
        """POST ``body`` with retries (see :meth:`request`)."""
        return self.request(
            "POST", path, body, params=params, context=context, parse=parse, denied=denied
        )

    def request(
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
        if isinstance(exc, RateLimited):  # a Retry-After past the budget: give up now
            upcoming = max(upcoming, exc.retry_after or 0.0)
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
            if call.token.value not in call.secrets:  # another thread's refresh: scrub it too
                call.secrets[:] = _longest_first([*call.secrets, call.token.value])
            return {"Authorization": f"Bearer {call.token.value}"}
        if call.auth == "api-key":
            return {"x-api-key": self._api_key.value}
        return {}

    def _send(
        self, method: str, path: str, body: dict | None, params: dict | None, headers: dict
    ) -> requests.Response:
        """``Session.request`` without its per-call merging: the request is prepared with the
        session's headers, cookies and hooks as they are and sent through ``Session.send``
        (the session's proxies and verify still apply there). The merging (seven settings,
        each through requests' runtime-checked protocols, and new cookie jars every call) was
        about a tenth of the client's CPU per request."""
        session = self._session
        prepared = requests.PreparedRequest()
        prepared.prepare(
            method=method,
            url=self.base_url + path,
            headers={**session.headers, **headers},
            params=params,
            json=body,
            cookies=session.cookies,
            hooks=session.hooks,
        )
        return session.send(
            prepared, timeout=(self.connect_timeout, self.timeout), allow_redirects=False
        )

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
                response = self._send(method, path, body, params, headers)
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
                if ticket is not None:  # a pause longer than the budget would freeze the run
                    pause = exc.retry_after
                    if pause is not None:
                        pause = min(pause, self.retry.rate_limit_total)
                    self.limiter.refused(ticket, pause, str(exc))  # type: ignore[union-attr]
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
                self.directory_auth = "bearer"
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
        elif call.auth == "api-key" and exc.http_status == 401 and exc.code != "api_key_invalid":
            return _key_header_refused(exc)  # not "wrong key": perhaps the wrong mode
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
