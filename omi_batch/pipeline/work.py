"""The plumbing every pipeline phase shares: the client, attempts riding with their row's step,
the worker pool, waits woken by callbacks, slow-down events."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from omi_batch import callbacks
from omi_batch.client import (
    Attempt,
    AuthError,
    OmiClient,
    RetryPolicy,
    TransferResult,
    TransportError,
)
from omi_batch.config import Secret, Settings
from omi_batch.ledger import Ledger, os_user
from omi_batch.ledger import now as ledger_now
from omi_batch.ledger.fields import as_dict
from omi_batch.ledger.serial import Queued, SerialLedger
from omi_batch.pipeline.outcome import Progress
from omi_batch.ratelimit import DEFAULT_CEILING, AdaptiveLimiter, SlowDown
from omi_batch.states import TICKETS, base_phase, kind_of, kinds_of, phase_of

now_iso = ledger_now  # one clock format for the whole ledger
who = os_user


def transfer_kind(row: dict) -> str:
    """The kind of a ledger transfer, or of the first transfer of a plan's row (its scope)."""
    return row.get("kind") or kinds_of(row.get("scope"))[0]


class Work:
    """State and plumbing shared by the preview and execute sides of ``Pipeline``."""

    def __init__(
        self,
        ledger: Ledger | SerialLedger,
        settings: Settings,
        *,
        client: OmiClient | None = None,
        concurrency: int = 4,
        rate: float = DEFAULT_CEILING,
        timeout: float = 30.0,
        wait: float = 60.0,
        webhook_url: str | None = None,
        webhook_secret: Secret | None = None,
        progress: Progress | None = None,
        poll_interval: float = 0.05,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] | None = None,
    ):
        self.ledger = ledger if isinstance(ledger, SerialLedger) else SerialLedger(ledger)
        self.settings = settings
        self.concurrency = concurrency
        self.wait = wait
        self.timeout = timeout
        self.progress = progress or Progress()
        self.poll_interval = poll_interval
        # One limiter for every request of this pipeline, retries included; ``rate`` is its
        # ceiling (see omi_batch.ratelimit). Each slow-down is one ledger event.
        self.limiter = AdaptiveLimiter(rate, on_slow_down=self._slowed_down)
        self.progress.rate = lambda: self.limiter.rate
        self._events_batch: str | None = None  # the batch a slow-down is recorded in
        self._early_slow_downs: list[SlowDown] = []  # before that batch exists
        self.webhook_url = webhook_url or settings.webhook_url
        self.webhook_secret = webhook_secret or settings.webhook_secret
        self._client = client
        self._client_options: dict = {}
        if retry is not None:
            self._client_options["retry"] = retry
        if sleep is not None:
            self._client_options["sleep"] = sleep
        self._stop = threading.Event()
        self._stop_reason: BaseException | None = None
        # Woken by notify() when a callback lands (an in-process receiver calls it), so a wait
        # ends at once instead of at the next poll; polling stays for an external receiver.
        # Each wait has its own Event, so a callback wakes only the wait for its row.
        self._waiters: dict[tuple, list[threading.Event]] = {}
        self._waiters_lock = threading.Lock()
        self._pending = threading.local()  # successful attempts waiting for their row's step
        self._early: list[tuple] = []  # preflight attempts made before their batch existed

    @property
    def client(self) -> OmiClient:
        if self._client is None:
            self.settings.require_api()
            self._client = OmiClient(
                self.settings.base_url, self.settings.api_key, timeout=self.timeout,
                on_attempt=self._record_attempt, pool_size=max(4, self.concurrency),
                auth=self.settings.auth, limiter=self.limiter,
                **self._client_options,
            )  # fmt: skip
        return self._client

    def close(self) -> None:
        """Commit what is still queued, then close the client."""
        try:
            self.ledger.flush()
        finally:
            if self._client is not None:
                self._client.close()

    def _record_attempt(self, attempt: Attempt) -> None:
        """Store a failed attempt at once; hold a successful one (always a call's last) so the
        step that follows writes it in the same transaction (see :meth:`_step`)."""
        context = attempt.context or {}
        batch_id = context.get("batch_id")
        data = as_dict(attempt)  # its fields as they are: no deep copy, thousands a minute
        data.pop("context", None)
        if not batch_id:
            if base_phase(context.get("phase")) == "preflight":  # stored by create_batch later
                self._early.append((context.get("row"), context["phase"], data))
            return
        if attempt.error is None and context.get("row") is not None:
            pending = getattr(self._pending, "attempts", None)
            if pending is None:
                pending = self._pending.attempts = []
            pending.append((batch_id, context["row"], context.get("phase"), data))
            return
        self.ledger.record_attempt(batch_id, context.get("row"), context.get("phase"), data)

    def _take_attempts(self) -> list[tuple]:
        """This thread's held attempts, handed over (and forgotten here)."""
        pending = getattr(self._pending, "attempts", None) or []
        self._pending.attempts = []
        return pending

    def _flush_attempts(self) -> None:
        """Store held attempts on their own (a step that would have carried them failed)."""
        for batch_id, row, phase, data in self._take_attempts():
            self.ledger.record_attempt(batch_id, row, phase, data)

    def _step(
        self, batch_id: str, number: int, *, event: str, soon: bool = False, **options: object
    ) -> Queued | None:
        """One transfer's step (``kind=``, conversations by default) and this thread's held
        attempts for that transfer, in one transaction. ``soon``: a step nothing waits on (a
        preview's result, a 202), queued for the next group commit without waiting for it;
        the phase's end commits it (:meth:`_pool`) and raises its refusal, if any."""
        held = self._take_attempts()
        kind = options.get("kind") or "conversations"
        mine = [a for a in held if a[0] == batch_id and a[1] == number and kind_of(a[2]) == kind]
        self._pending.attempts = [a for a in held if a not in mine]
        phase = mine[-1][2] if mine else options.pop("phase", None)
        options.pop("phase", None)
        if soon:
            return self.ledger.record_step_soon(batch_id, number, event=event, phase=phase,
                                                attempts=[a[3] for a in mine], **options)  # fmt: skip
        try:
            self.ledger.record_step(batch_id, number, event=event, phase=phase,
                                    attempts=[a[3] for a in mine], **options)  # fmt: skip
        except BaseException:
            self._pending.attempts = mine + self._pending.attempts
            raise
        return None

    def _callback(self, batch_id: str, row: int, phase: str) -> dict | None:
        if not (self.webhook_url and self.webhook_secret):
            return None
        return callbacks.callback_config(
            self.webhook_url, self.webhook_secret, batch_id, row, phase
        )

    def _send(
        self,
        row: dict,
        *,
        preview: bool,
        phase: str,
        batch_id: str | None = None,
        callback: bool = False,
    ) -> TransferResult:
        """One transfer of ``row``'s kind (its conversations, or its tickets) to OMI, its
        attempts recorded under ``phase`` named for the kind (``tickets-execute``); with
        ``callback``, the URL and credential of that very transfer."""
        kind = transfer_kind(row)
        context = {"batch_id": batch_id, "row": row.get("row"), "phase": phase_of(kind, phase)}
        config = None
        if callback and batch_id:  # a reconcile's preview is called back as a preview
            called = phase_of(kind, "preview" if preview else "execute")
            config = self._callback(batch_id, row["row"], called)
        if kind == TICKETS:
            return self.client.transfer_tickets(
                row["source_email"], row["target_email"], preview=preview, callback=config,
                context=context,
            )  # fmt: skip
        return self.client.transfer_conversations(
            row["source_email"], row["target_email"], preview=preview,
            replace_existing_members=bool(row["replace_existing_members"]),
            conv_ids=list(row["conv_ids"]) or None, callback=config, context=context,
        )  # fmt: skip

    def _map(self, work: Callable[[dict], None], rows: Iterable[dict], phase: str) -> None:
        """Run ``work`` over rows on ``concurrency`` threads, each taking the next row from one
        shared feed (no task or future per row); stop early when OMI refuses the key or stops
        answering."""
        rows = list(rows)
        feed, lock = iter(rows), threading.Lock()

        def worker() -> None:
            try:
                while not self._stop.is_set():
                    with lock:
                        row = next(feed, None)
                    if row is None:
                        return
                    self._guarded(work, row, phase)
            except BaseException:
                self.stop()  # the other workers stop too, as when a row fails alone
                raise

        self._pool(phase, len(rows), [worker] * min(self.concurrency, len(rows)))

    def _pool(self, phase: str, total: int, tasks: list[Callable[[], None]]) -> None:
        """Run ``tasks`` on ``concurrency`` threads with a progress bar of ``total`` steps; on
        any error (or Ctrl-C) cancel what has not started and stop the rest."""
        self.progress.start(phase, total)

        def run(task: Callable[[], None]) -> None:
            try:
                task()
            finally:  # the pool's thread ends with the phase: its connection need not stay open
                self.ledger.close_thread_connection()

        try:
            with ThreadPoolExecutor(self.concurrency, thread_name_prefix=phase) as pool:
                futures = [pool.submit(run, task) for task in tasks]
                try:
                    for future in futures:
                        future.result()
                except BaseException:
                    self.stop()
                    for future in futures:
                        future.cancel()
                    raise
        finally:
            self.progress.done(phase)
            refused = self.ledger.flush()  # the steps nothing waited on: committed now
        if self._stop_reason is not None:
            raise self._stop_reason
        if refused:
            raise refused[0]

    def _guarded(self, work: Callable[[dict], None], row: dict, phase: str) -> None:
        if self._stop.is_set():
            return
        try:
            work(row)
        except (AuthError, TransportError) as error:
            if self._stop_reason is None:
                self._stop_reason = error
            self.stop()
        finally:
            self.progress.advance(phase)

    def notify(self, batch_id: str | None = None, row: int | None = None) -> None:
        """A callback was stored for ``(batch_id, row)`` (None: for anything): the wait for that
        row looks at the ledger again now; the other waits are not woken."""
        with self._waiters_lock:
            if row is None:
                events = [e for waiting in self._waiters.values() for e in waiting]
            else:
                events = list(self._waiters.get((batch_id, int(row)), ()))
        for event in events:
            event.set()

    def stop(self) -> None:
        """Ask every worker to stop at its next check (Ctrl-C); waits end at once."""
        self._stop.set()
        self.notify()

    def _wait_for(self, check: Callable[[], object], seconds: float, key: tuple) -> object:
        """Check until ``check`` returns something truthy or ``seconds`` pass; woken early by
        :meth:`notify` for ``key`` (batch, row), and polling every ``poll_interval`` for a
        receiver in another process."""
        deadline = time.monotonic() + seconds
        event = threading.Event()
        with self._waiters_lock:
            self._waiters.setdefault(key, []).append(event)
        try:
            while True:
                event.clear()  # before the check: a notify after it is seen by the wait below
                result = check()
                left = deadline - time.monotonic()
                if result or left <= 0 or self._stop.is_set():
                    return result
                event.wait(min(left, self.poll_interval))
        finally:
            with self._waiters_lock:
                waiting = self._waiters[key]
                waiting.remove(event)
                if not waiting:
                    del self._waiters[key]

    def _slowed_down(self, event: SlowDown) -> None:
        """One ledger event per slow-down (not per refused request)."""
        batch_id = self._events_batch
        if batch_id is None:
            self._early_slow_downs.append(event)
            return
        self.ledger.log("slowed_down", batch_id=batch_id, **_slow_down(event))

    def _record_slow_downs(self, batch_id: str) -> None:
        """From now on slow-downs go to ``batch_id``; the ones before it was known too."""
        self._events_batch = batch_id
        early, self._early_slow_downs = self._early_slow_downs, []
        for event in early:
            self.ledger.log("slowed_down", batch_id=batch_id, **_slow_down(event))


def _slow_down(event: SlowDown) -> dict:
    """A slow-down as a ledger event's data."""
    return {
        "number": event.number,
        "rate_before": round(event.rate_before, 3),
        "rate_after": round(event.rate_after, 3),
        "retry_after": event.retry_after,
        "reason": event.reason,
    }
