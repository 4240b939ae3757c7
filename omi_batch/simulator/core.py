"""The simulator's state: agents (and their directory), conversations, tickets, transfers,
faults, scripted answers, events, stats. ``Simulator`` holds it; what each endpoint does to it
is in ``operations``, the worker that applies transfers and sends callbacks in ``delivery``,
loading a fixture in ``fixtures``.

Everything mutable sits behind one lock (``Simulator._cond``) so the WSGI app can run in many
threads. Random faults come from ``random.Random(seed)`` so a run can be repeated; request ids
are real UUIDs so two runs never share one (a ledger may outlive a simulator).
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omi_batch.config import Secret
from omi_batch.errors import NotFound, UsageError
from omi_batch.simulator.delivery import _Worker
from omi_batch.simulator.fixtures import _iso, _parse_time, load_fixture
from omi_batch.simulator.gate import (
    AUTH_MODES,
    RATE_LIMIT_ANSWERS,
    Credentials,
    TokenBucket,
    parse_rate_limit,
)
from omi_batch.simulator.model import (
    CALLBACK_TIMEOUT,
    DAY_SECONDS,
    DIRECTORY_SHAPES,
    EVENT_LIMIT,
    PREVIEW_FIELDS,
    PREVIEW_MODES,
    SCRIPT_KEYS,
    Faults,
)
from omi_batch.simulator.operations import Operations

if TYPE_CHECKING:
    from omi_batch.serving import Running


class Simulator(Operations):
    """A stand-in for OMI's API: agents, conversations, tickets, transfers and their callbacks.

    ``fixture`` is a path or a dict (None: the built-in sample); ``api_key`` is the only
    accepted key; ``preview_mode`` "sync" puts the count in the response, "async" sends it in a
    callback; ``preview_field`` is where a sync preview puts it ("number": the payload itself).
    ``now`` pins the calendar clock (default: the real time).

    Rate limit: ``rate_limit`` "RPS[:BURST]" is a token bucket over every request of every
    endpoint, never disclosed; a refused request is answered by ``rate_limit_retry_after``:
    "header" (429 with ``Retry-After`` in whole seconds), "none" (429 without it) or
    "envelope" (200, -9999 ``rate_limit_exceeded``), and nothing is applied.

    Auth: ``auth`` "api-key" (``x-api-key`` only), "bearer" (``Authorization: Bearer`` with a
    token from ``GET /api/auth?apiKey=``, only) or "both"; ``directory_auth`` is the same for
    the agent directory (default "bearer", as the vendor documents it). Tokens live
    ``token_lifetime`` seconds; ``refuse_token_after`` N: the (N+1)th token is refused.

    Directory: ``GET /api/agent/list`` answers in ``directory_shape`` "items", "data" or "list".
    Tickets: ``ticket_window_days`` (None: every open ticket, however old), ``ticket_callbacks``
    False: OMI sends no callback for tickets; ``ticket_preview_mode`` (None: as conversations).
    """

    def __init__(
        self,
        fixture: str | Path | dict | None = None,
        api_key: str | Secret = "sim-key",
        preview_mode: str = "sync",
        preview_field: str = "updatedRecords",
        faults: Faults | None = None,
        seed: int = 0,
        window_days: int = 183,
        now: datetime | str | None = None,
        *,
        rate_limit: str | float | None = None,
        rate_limit_retry_after: str = "header",
        auth: str = "api-key",
        directory_auth: str = "bearer",
        token_lifetime: float = DAY_SECONDS,
        token_expires_in: bool = True,
        refuse_token_after: int | None = None,
        directory_shape: str = "items",
        ticket_window_days: int | None = None,
        ticket_callbacks: bool = True,
        ticket_preview_mode: str | None = None,
    ):
        if preview_mode not in PREVIEW_MODES:
            raise UsageError(f"preview_mode must be one of {', '.join(PREVIEW_MODES)}")
        if ticket_preview_mode not in (None, *PREVIEW_MODES):
            raise UsageError(f"ticket_preview_mode must be one of {', '.join(PREVIEW_MODES)}")
        for name, value in (("auth", auth), ("directory_auth", directory_auth)):
            if value not in AUTH_MODES:
                raise UsageError(f"{name} must be one of {', '.join(AUTH_MODES)}, not {value!r}")
        if rate_limit_retry_after not in RATE_LIMIT_ANSWERS:
            raise UsageError(
                f"rate_limit_retry_after must be one of {', '.join(RATE_LIMIT_ANSWERS)}"
            )
        if directory_shape not in DIRECTORY_SHAPES:
            raise UsageError(f"directory_shape must be one of {', '.join(DIRECTORY_SHAPES)}")
        if ticket_window_days is not None and ticket_window_days < 1:
            raise UsageError("ticket_window_days must be at least 1 (or None: no window)")
        if preview_field not in PREVIEW_FIELDS:
            raise UsageError(f"preview_field must be one of {', '.join(PREVIEW_FIELDS)}")
        if window_days < 1:
            raise UsageError("window_days must be at least 1")
        self._credentials = Credentials(
            api_key if isinstance(api_key, Secret) else Secret(api_key),
            token_lifetime,
            refuse_token_after,
        )
        self.preview_mode = preview_mode
        self.preview_field = preview_field
        self.faults = faults if faults is not None else Faults()
        self.window_days = window_days
        self._bucket: TokenBucket | None = parse_rate_limit(rate_limit)
        self.rate_limit_retry_after = rate_limit_retry_after
        self.auth = auth
        self.directory_auth = directory_auth
        self.token_expires_in = token_expires_in
        self.directory_shape = directory_shape
        self.ticket_window_days = ticket_window_days
        self.ticket_callbacks = ticket_callbacks
        self.ticket_preview_mode = ticket_preview_mode
        self._stats = {"requests": 0, "admitted": 0, "refused": 0}
        self._fixed_now = None if now is None else _parse_time(now, "now")
        self._agents, self._conversations, self._tickets = load_fixture(fixture, self.now())
        self._by_id = {c["id"]: c for c in self._conversations}
        self._by_uuid = {c["uuid"]: c for c in self._conversations}
        self._messages: dict[str, list[dict]] = {}
        self._rng = random.Random(seed)
        self._cond = threading.Condition(threading.RLock())
        self._events: deque[dict] = deque(maxlen=EVENT_LIMIT)
        self._script: deque[dict] = deque()
        self._jobs: list[tuple] = []
        self._seq = itertools.count()
        self._in_flight = 0
        self._group_due = 0.0  # when the current group of reordered callbacks goes out
        self._group_size = 0
        self._worker: _Worker | None = None
        self._stopping = threading.Event()

    def __repr__(self) -> str:
        return (
            f"Simulator(agents={len(self._agents)}, conversations={len(self._conversations)}, "
            f"tickets={len(self._tickets)}, preview_mode={self.preview_mode!r}, "
            f"preview_field={self.preview_field!r}, auth={self.auth!r}, "
            f"rate_limit={self.rate_limit!r})"
        )

    # ----------------------------------------------------------------- public API

    def now(self) -> datetime:
        """The simulator's clock: ``now`` if pinned, else the real UTC time."""
        return self._fixed_now or datetime.now(UTC)

    @property
    def agents(self) -> dict[str, str]:
        """email → name of every agent OMI knows (former agents included)."""
        return {email: agent["name"] for email, agent in self._agents.items()}

    @property
    def directory(self) -> list[dict]:
        """Every agent as the directory lists it: ``{"email", "name", "is_active", "is_deleted"}``."""
        return [
            {"email": e, "name": a["name"], "is_active": a["active"], "is_deleted": a["deleted"]}
            for e, a in self._agents.items()
        ]

    @property
    def tickets(self) -> list[dict]:
        """A copy of every ticket: ``{"id", "assignee", "status", "created_at"}``."""
        with self._cond:
            return [
                {
                    "id": t["id"],
                    "assignee": t["assignee"],
                    "status": t["status"],
                    "created_at": _iso(t["created"]),
                }
                for t in self._tickets
            ]

    @property
    def rate_limit(self) -> str | None:
        """The hidden limit as "RPS:BURST" (None: no limit); settable while running."""
        bucket = self._bucket
        return None if bucket is None else f"{bucket.rate:g}:{bucket.burst}"

    @rate_limit.setter
    def rate_limit(self, spec: str | float | None) -> None:
        self._bucket = parse_rate_limit(spec)

    @property
    def refuse_token_after(self) -> int | None:
        """Tokens issued before ``/api/auth`` refuses every other (None: never); settable."""
        return self._credentials.refuse_token_after

    @refuse_token_after.setter
    def refuse_token_after(self, count: int | None) -> None:
        self._credentials.refuse_token_after = count

    @property
    def stats(self) -> dict[str, int]:
        """Counts so far: ``requests`` (all), ``admitted`` and ``refused`` by the rate limit
        (every unscripted request is admitted when there is none), ``tokens_issued``."""
        with self._cond:
            return dict(self._stats, tokens_issued=self._credentials.issued)

    def expire_tokens(self) -> int:
        """Make every token issued so far expired (a test's "24 hours later"); how many."""
        return self._credentials.expire_all()

    @property
    def conversations(self) -> list[dict]:
        """A copy of every conversation: ``{"id", "members", "created_at"}``."""
        with self._cond:
            return [
                {"id": c["id"], "members": list(c["members"]), "created_at": _iso(c["created"])}
                for c in self._conversations
            ]

    @property
    def events(self) -> list[dict]:
        """Every request and callback so far, in order (a copy)."""
        with self._cond:
            return [dict(e) for e in self._events]

    def script(self, *answers: dict) -> None:
        """Queue exact answers for the next API requests, in order, whatever the endpoint.

        Keys: ``status`` (default 200), ``body`` (dict → JSON, str, bytes), ``headers``,
        ``delay`` (seconds), ``reset`` (close the connection, no answer), ``apply`` (process
        the request for real first: an execute is applied and its callback sent).
        """
        for answer in answers:
            if not isinstance(answer, dict) or not set(answer) <= SCRIPT_KEYS:
                raise UsageError(f"a scripted answer is a dict with keys {sorted(SCRIPT_KEYS)}")
        with self._cond:
            self._script.extend(dict(a) for a in answers)

    def count(
        self,
        source: str,
        target: str,
        conv_ids: list[str] | tuple[str, ...] | None = None,
        replace: bool = False,
    ) -> int:
        """How many conversations a preview of this transfer would count right now."""
        source, target = self._known(source), self._known(target)
        with self._cond:
            return len(
                self._changes(source, target, tuple(conv_ids) if conv_ids else None, replace)
            )

    def count_tickets(self, source: str, target: str) -> int:
        """How many tickets a preview of this ticket transfer would count right now."""
        source, target = self._known(source), self._known(target)
        with self._cond:
            return len(self._ticket_changes(source, target))

    def _known(self, email: str) -> str:
        email = email.strip().lower()
        if email not in self._agents:
            raise NotFound(f"no agent {email} in the simulator")
        return email

    def wait_idle(self, timeout: float = 10) -> bool:
        """True once no transfer or callback is pending or in flight; False after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._jobs or self._in_flight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.5))
            return True

    def start(self, host: str = "127.0.0.1", port: int = 0, *, threads: int = 32) -> Running:
        """Serve the API with waitress in a daemon thread; returns a handle with ``url``, ``stop()``."""
        from omi_batch.simulator.server import start

        return start(self, host, port, threads=threads)

    def close(self) -> None:
        """Stop the worker (pending callbacks are dropped) and wake every sleeping answer."""
        self._stopping.set()
        with self._cond:
            worker, self._worker = self._worker, None
            self._jobs.clear()
            if worker:
                worker.stopping = True
            self._cond.notify_all()
        if worker and worker is not threading.current_thread():
            worker.join(timeout=CALLBACK_TIMEOUT + 3)

    # ----------------------------------------------------------------- used by the app

    @property
    def lock(self) -> threading.Condition:
        """The one lock over all state (re-entrant)."""
        return self._cond

    def check_auth(self, api_key: str | None, authorization: str | None, mode: str) -> str | None:
        """None if the request's credentials pass ``mode``, else the error code (HTTP 401)."""
        return self._credentials.check(mode, api_key, authorization)

    def issue_token(self, presented: str | None) -> tuple[dict | None, str | None]:
        """``GET /api/auth``: (the payload, None) for the right key, else (None, error code)."""
        token, error = self._credentials.issue(presented)
        if token is None:
            return None, error
        payload: dict[str, Any] = {
            "access_token": token,
            "access_type": "api_key",
            "token_type": "Bearer",
        }
        if self.token_expires_in:
            payload["expires_in"] = int(self._credentials.token_lifetime)
        return payload, None

    def admit(self) -> float:
        """Count one request against the hidden rate limit: 0 admitted, else seconds to wait."""
        bucket = self._bucket
        wait = bucket.take() if bucket is not None else 0.0
        with self._cond:
            self._stats["refused" if wait else "admitted"] += 1
        return wait

    def count_request(self) -> None:
        with self._cond:
            self._stats["requests"] += 1

    def next_scripted(self) -> dict | None:
        with self._cond:
            return self._script.popleft() if self._script else None

    def draw(self, rate: float) -> bool:
        """One repeatable coin toss; a rate of 0 draws nothing, so it shifts no other fault."""
        if rate <= 0:
            return False
        with self._cond:
            return self._rng.random() < rate

    def choice(self, options: list) -> Any:
        with self._cond:
            return self._rng.choice(options)

    def sleep(self, seconds: float) -> None:
        """Wait, but wake at once when the simulator stops."""
        if seconds > 0:
            self._stopping.wait(seconds)

    def record(self, event: dict) -> None:
        event.setdefault("at", datetime.now(UTC).isoformat(timespec="milliseconds"))
        with self._cond:
            self._events.append(event)
