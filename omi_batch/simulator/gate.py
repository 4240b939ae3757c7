"""What the simulator checks before any endpoint runs (``Gate``): a scripted answer, its hidden
rate limit and its credentials (the API key, and Bearer tokens from ``GET /api/auth``).

Both keep their state behind their own small lock and read ``time.monotonic()``, so a pinned
calendar clock (``Simulator(now=...)``) never stops a bucket from refilling or a token from
expiring.
"""

from __future__ import annotations

import hmac
import math
import secrets
import threading
import time
from collections import deque
from typing import Any

from omi_batch.config import Secret
from omi_batch.errors import UsageError
from omi_batch.simulator.model import SCRIPT_KEYS

AUTH_MODES = ("api-key", "bearer", "both")
RATE_LIMIT_ANSWERS = ("header", "none", "envelope")


class TokenBucket:
    """A token bucket of ``rate`` tokens per second holding at most ``burst``; starts full.

    A refused request takes no token, so refusals never push the limit further away.
    """

    def __init__(self, rate: float, burst: int):
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"TokenBucket(rate={self.rate:g}, burst={self.burst})"

    def take(self) -> float:
        """0 if a token was taken, else the seconds until the next one is there."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            if self._tokens >= 1:
                self._tokens -= 1
                return 0.0
            return (1 - self._tokens) / self.rate


def parse_rate_limit(spec: str | float | None) -> TokenBucket | None:
    """``"RPS[:BURST]"`` (e.g. ``"20"``, ``"2.5:5"``) as a bucket; None or ``""`` is no limit.

    BURST defaults to one second's worth of requests (at least 1).
    """
    if spec is None or spec == "":
        return None
    text = str(spec).strip()
    rate_text, _, burst_text = text.partition(":")
    try:
        rate = float(rate_text)
        burst = int(burst_text) if burst_text else None
    except ValueError:
        raise UsageError(f"rate_limit is RPS[:BURST], e.g. 20 or 20:5, not {text!r}") from None
    if burst is None and math.isfinite(rate):
        burst = max(1, math.floor(rate))
    if not math.isfinite(rate) or rate <= 0 or burst is None or burst < 1:
        raise UsageError(f"rate_limit needs RPS > 0 and BURST >= 1, not {text!r}")
    return TokenBucket(rate, burst)


def retry_after_seconds(wait: float) -> int:
    """``Retry-After`` is whole seconds: the wait rounded up, at least 1."""
    return max(1, math.ceil(wait))


class Credentials:
    """The one API key and the Bearer tokens issued for it. Never shows either."""

    def __init__(
        self,
        api_key: Secret,
        token_lifetime: float,
        refuse_token_after: int | None,
    ):
        if not math.isfinite(token_lifetime) or token_lifetime <= 0:
            raise UsageError(f"token_lifetime must be seconds > 0, not {token_lifetime!r}")
        if refuse_token_after is not None and refuse_token_after < 0:
            raise UsageError(f"refuse_token_after must be >= 0, not {refuse_token_after!r}")
        self._api_key = api_key
        self.token_lifetime = token_lifetime
        self.refuse_token_after = refuse_token_after
        self.issued = 0
        self._tokens: dict[str, float] = {}  # token → monotonic expiry
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Credentials(issued={self.issued}, token_lifetime={self.token_lifetime:g})"

    def key_error(self, presented: str | None) -> str | None:
        """None if ``presented`` is the API key, else the vendor's error code."""
        if not presented:
            return "api_key_is_required"
        if not hmac.compare_digest(presented.encode(), self._api_key.value.encode()):
            return "api_key_invalid"
        return None

    def issue(self, presented: str | None) -> tuple[str | None, str | None]:
        """(a new token, None) for the right key, else (None, the error code)."""
        error = self.key_error(presented)
        if error:
            return None, error
        with self._lock:
            if self.refuse_token_after is not None and self.issued >= self.refuse_token_after:
                return None, "api_key_invalid"
            self.issued += 1
            token = secrets.token_urlsafe(32)
            self._tokens[token] = time.monotonic() + self.token_lifetime
            return token, None

    def token_error(self, presented: str | None) -> str | None:
        """None if ``presented`` is a live token; ``token_expired`` or ``auth_invalid``."""
        if not presented:
            return "auth_invalid"
        with self._lock:
            expiry = self._tokens.get(presented)
        if expiry is None:
            return "auth_invalid"
        return "token_expired" if time.monotonic() >= expiry else None

    def expire_all(self) -> int:
        """Make every token issued so far expired now; returns how many there were."""
        with self._lock:
            now = time.monotonic()
            for token in self._tokens:
                self._tokens[token] = min(self._tokens[token], now)
            return len(self._tokens)

    def check(self, mode: str, api_key: str | None, authorization: str | None) -> str | None:
        """None if the request's credentials pass ``mode``, else the error code (HTTP 401).

        ``api-key``: only ``x-api-key``; ``bearer``: only ``Authorization: Bearer``; ``both``:
        either (a Bearer header, when sent, decides).
        """
        scheme, _, token = (authorization or "").strip().partition(" ")
        bearer = token.strip() if scheme.lower() == "bearer" else None
        if mode == "api-key":
            return self.key_error(api_key)
        if mode == "bearer":
            return self.token_error(bearer)
        if bearer is not None:
            return self.token_error(bearer)
        return self.key_error(api_key)


class Gate:
    """What every request passes before its endpoint: the scripted answers queued, the hidden
    rate limit (``bucket``, None: none), the credentials in ``auth`` mode (``directory_auth``
    for the directory); and the counts of it all."""

    def __init__(
        self,
        credentials: Credentials,
        bucket: TokenBucket | None,
        *,
        auth: str,
        directory_auth: str,
        rate_limit_retry_after: str,
        token_expires_in: bool,
    ):
        for name, value in (("auth", auth), ("directory_auth", directory_auth)):
            if value not in AUTH_MODES:
                raise UsageError(f"{name} must be one of {', '.join(AUTH_MODES)}, not {value!r}")
        if rate_limit_retry_after not in RATE_LIMIT_ANSWERS:
            raise UsageError(
                f"rate_limit_retry_after must be one of {', '.join(RATE_LIMIT_ANSWERS)}"
            )
        self.credentials = credentials
        self.bucket = bucket
        self.auth = auth
        self.directory_auth = directory_auth
        self.rate_limit_retry_after = rate_limit_retry_after
        self.token_expires_in = token_expires_in
        self._stats = {"requests": 0, "admitted": 0, "refused": 0}
        self._script: deque[dict] = deque()
        self._lock = threading.Lock()

    @property
    def stats(self) -> dict[str, int]:
        """``requests``, ``admitted`` and ``refused`` by the rate limit, ``tokens_issued``."""
        with self._lock:
            return dict(self._stats, tokens_issued=self.credentials.issued)

    def script(self, answers: tuple[dict, ...]) -> None:
        """Queue exact answers for the next requests (keys: SCRIPT_KEYS)."""
        for answer in answers:
            if not isinstance(answer, dict) or not set(answer) <= SCRIPT_KEYS:
                raise UsageError(f"a scripted answer is a dict with keys {sorted(SCRIPT_KEYS)}")
        with self._lock:
            self._script.extend(dict(a) for a in answers)

    def next_scripted(self) -> dict | None:
        """Count the request; the scripted answer queued for it, if any."""
        with self._lock:
            self._stats["requests"] += 1
            return self._script.popleft() if self._script else None

    def admit(self) -> float:
        """Count one request against the hidden rate limit: 0 admitted, else seconds to wait."""
        bucket = self.bucket
        wait = bucket.take() if bucket is not None else 0.0
        with self._lock:
            self._stats["refused" if wait else "admitted"] += 1
        return wait

    def check_auth(
        self, api_key: str | None, authorization: str | None, *, directory: bool = False
    ) -> str | None:
        """None if the request's credentials pass (the directory's mode for ``directory``),
        else the error code (HTTP 401)."""
        mode = self.directory_auth if directory else self.auth
        return self.credentials.check(mode, api_key, authorization)

    def issue_token(self, presented: str | None) -> tuple[dict | None, str | None]:
        """``GET /api/auth``: (the payload, None) for the right key, else (None, error code)."""
        token, error = self.credentials.issue(presented)
        if token is None:
            return None, error
        payload: dict[str, Any] = {
            "access_token": token,
            "access_type": "api_key",
            "token_type": "Bearer",
        }
        if self.token_expires_in:
            payload["expires_in"] = int(self.credentials.token_lifetime)
        return payload, None
