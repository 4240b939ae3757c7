"""What the client takes and gives back: the retry policy, a transfer's result, a directory
agent, and the ``Attempt`` reported after every HTTP attempt."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


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
