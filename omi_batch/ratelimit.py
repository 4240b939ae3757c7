"""One adaptive rate limiter shared by every thread and every attempt (retries included).

OMI documents no rate limit, and it may differ per tenant, so the limiter finds it (issue 13):

- **Pacing.** Senders are spaced evenly at the current rate (a token bucket holding one token:
  no bursts). ``--rate`` is the *ceiling*; the limiter starts at ``min(ceiling, 5)`` req/s.
- **Slow start.** Until OMI first refuses a request, each success raises the rate by a quarter
  (up to the ceiling), so a generous limit is reached within a few dozen requests.
- **Multiplicative decrease.** A refusal (HTTP 429 or ``rate_limit_exceeded``) slows *every*
  sender at once: the rate becomes ``decrease`` (0.7) times the lower of the current rate and
  the rate actually sent over the last second. Requests sent before that slow-down that are
  refused too do not slow it down again: one slow-down per congestion event, as TCP counts one
  loss per window. A ``Retry-After`` pauses every sender until it has passed.
- **Additive increase.** After a slow-down each success adds a fixed step, chosen so that the
  rate climbs back to where it was refused in about ``recovery`` (40) successes, then keeps
  probing at the same step: a cycle spans tens of requests whatever the limit, so refusals stay
  a few per cent of the requests and the mean rate stays near the limit.

Anchors: TCP's AIMD and slow start (RFC 5681), the AWS SDKs' adaptive retry mode (a client-side
token bucket whose rate drops on throttling, measured against the rate actually sent), and the
client-side throttling chapter of Google's SRE book (the client backs off before the server must
refuse). Clock and sleep are injectable so tests neither wait nor guess.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("omi_batch.ratelimit")

DEFAULT_CEILING = 20.0  # req/s: polite by default; --rate raises it
DEFAULT_START = 5.0  # req/s, or the ceiling when that is lower
DEFAULT_FLOOR = 1.0  # req/s at least (a Retry-After may still pause longer)
SLOW_START_GAIN = 0.25  # each success before the first refusal: rate * (1 + gain)
DECREASE = 0.7
RECOVERY = 40  # successes to climb back to the rate that was refused
WINDOW = 1.0  # seconds over which the rate actually sent is measured
NAP = 0.05  # seconds a waiting sender sleeps at most before it looks again
_MAX_LOOKS = 10_000_000  # bounded all the same


@dataclass(frozen=True)
class Ticket:
    """One permission to send: when it was granted, under which slow-down, after what wait."""

    sent_at: float
    epoch: int
    waited: float


@dataclass(frozen=True)
class SlowDown:
    """One slow-down, as handed to the ``on_slow_down`` hook (once per slow-down)."""

    number: int
    rate_before: float
    rate_after: float
    retry_after: float | None
    reason: str  # the refusal's one-line text (never holds a secret: it is our own words)


class AdaptiveLimiter:
    """An AIMD rate limiter for every request to OMI; thread-safe, one per process run.

    ``acquire()`` blocks until this sender may send and returns a :class:`Ticket`; report the
    answer with ``succeeded(ticket)`` or ``refused(ticket, retry_after)``; other failures
    (5xx, timeouts) change nothing. ``rate`` is the current rate, ``slow_downs`` how many
    times it was lowered; ``on_slow_down`` is called once per slow-down, outside the lock.
    """

    def __init__(
        self,
        ceiling: float = DEFAULT_CEILING,
        *,
        start: float | None = None,
        floor: float = DEFAULT_FLOOR,
        decrease: float = DECREASE,
        recovery: int = RECOVERY,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        on_slow_down: Callable[[SlowDown], None] | None = None,
    ):
        if not ceiling > 0:
            raise ValueError("the rate ceiling must be above 0 requests per second")
        if not 0 < decrease < 1:
            raise ValueError("decrease must be between 0 and 1")
        if recovery < 1:
            raise ValueError("recovery must be at least 1 request")
        self.ceiling = float(ceiling)
        self.floor = min(float(floor), self.ceiling)
        start = min(self.ceiling, DEFAULT_START) if start is None else float(start)
        self._rate = max(self.floor, min(self.ceiling, start))
        self.decrease = decrease
        self.recovery = recovery
        self.on_slow_down = on_slow_down
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self._tokens = 1.0  # a bucket of one token: evenly spaced, no bursts
        self._stamp = clock()
        self._paused_until = 0.0
        self._epoch = 0  # raised by each slow-down: tells requests sent before it from after
        self._slow_start = True
        self._step = 0.0  # the additive increase per success, set at each slow-down
        self._sent: deque[float] = deque(maxlen=4096)
        self._slow_downs = 0
        self._refused = 0

    def __repr__(self) -> str:
        return (f"AdaptiveLimiter(rate={self.rate:.3g}, ceiling={self.ceiling:g}, "
                f"slow_downs={self.slow_downs})")  # fmt: skip

    @property
    def rate(self) -> float:
        """The current rate, requests per second."""
        with self._lock:
            return self._rate

    @property
    def slow_downs(self) -> int:
        """How many times the rate was lowered (one per congestion event, not per refusal)."""
        with self._lock:
            return self._slow_downs

    @property
    def refusals(self) -> int:
        """How many refusals were reported (each refused attempt counts)."""
        with self._lock:
            return self._refused

    def acquire(self) -> Ticket:
        """Wait for this sender's turn: one request per ``1/rate`` seconds across every
        sender, never inside a pause. A waiting sender looks again at least every
        ``NAP`` seconds, so a rate that rose meanwhile lets it go sooner."""
        waited = 0.0
        for _ in range(_MAX_LOOKS):
            with self._lock:
                now = self._clock()
                wait = self._wait(now)
                if wait <= 0:
                    self._tokens -= 1.0
                    self._sent.append(now)
                    return Ticket(now, self._epoch, waited)
            nap = min(wait, NAP)
            self._sleep(nap)
            waited += nap
        with self._lock:  # pragma: no cover - a safety net against a clock that never moves
            return Ticket(self._clock(), self._epoch, waited)

    def _wait(self, now: float) -> float:
        """Seconds until a sender may go (0: now); refills the one-token bucket (lock held)."""
        if now < self._paused_until:
            self._stamp = self._paused_until
            return self._paused_until - now
        self._tokens = min(1.0, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens >= 1.0 - 1e-9:
            return 0.0
        return (1.0 - self._tokens) / self._rate

    def succeeded(self, ticket: Ticket) -> None:
        """OMI answered (anything but a refusal): speed up a little."""
        with self._lock:
            if ticket.epoch != self._epoch:  # sent before the last slow-down: says nothing new
                return
            if self._slow_start:
                self._rate = min(self.ceiling, self._rate * (1.0 + SLOW_START_GAIN))
            else:
                self._rate = min(self.ceiling, self._rate + self._step)

    def refused(self, ticket: Ticket, retry_after: float | None = None, reason: str = "") -> None:
        """OMI refused this request for rate: slow everyone down (once per congestion event);
        a ``retry_after`` pauses every sender until it has passed."""
        event: SlowDown | None = None
        with self._lock:
            self._refused += 1
            now = self._clock()
            if retry_after is not None and retry_after > 0:
                self._paused_until = max(self._paused_until, now + retry_after)
            if ticket.epoch == self._epoch:  # sent after the last slow-down: a new event
                before = self._rate
                sent = sum(1 for t in self._sent if now - WINDOW <= t <= now) / WINDOW
                basis = min(before, sent) if sent > 0 else before
                after = max(self.floor, basis * self.decrease)
                self._step = basis * (1.0 - self.decrease) / self.recovery
                self._rate = after
                self._slow_start = False
                self._slow_downs += 1
                self._tokens = min(self._tokens, 0.0)  # the next sender waits 1/rate
                self._epoch += 1
                event = SlowDown(self._slow_downs, before, after, retry_after, reason)
        if event is None:
            return
        log.info(
            "OMI asked us to slow down: %.3g -> %.3g requests/s%s",
            event.rate_before,
            event.rate_after,
            f", pausing {event.retry_after:g} s" if event.retry_after else "",
        )
        if self.on_slow_down is not None:
            try:
                self.on_slow_down(event)
            except Exception:  # noqa: BLE001 - the hook is the caller's; sending goes on
                log.warning("on_slow_down hook failed", exc_info=True)
