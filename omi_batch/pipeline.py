"""Preview, approve, execute, wait and reconcile over a batch.

Knows nothing of click or of report layout. Talks to OMI only through ``OmiClient`` and keeps
every step in the ``Ledger``; callbacks reach the ledger through the webhook receiver (in this
process with ``--listen``, or a separate ``webhook serve``), and this module reads them back.

Honesty rules: a row is ``succeeded`` only by a SUCCESS callback or by a verifying preview that
finds nothing left to move; a row whose callback never came is ``unconfirmed``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from omi_batch import callbacks, reports
from omi_batch.client import (
    ApiError,
    Attempt,
    AuthError,
    OmiClient,
    RateLimited,
    RetryPolicy,
    TransportError,
)
from omi_batch.config import PRODUCTION_URL, STAGING_URL, Secret, Settings
from omi_batch.errors import (
    EXIT_CONFIG,
    ConfigError,
    IllegalTransition,
    InputError,
    OmiBatchError,
    UsageError,
)
from omi_batch.ledger import Ledger, os_user
from omi_batch.ledger import now as ledger_now
from omi_batch.ledger.serial import SerialLedger
from omi_batch.locks import ProcessLock
from omi_batch.ratelimit import DEFAULT_CEILING, AdaptiveLimiter, SlowDown
from omi_batch.roster import Plan, Problem
from omi_batch.states import (
    APPROVABLE,
    APPROVED,
    DECIDED,
    FAILED,
    HELD,
    PLANNED,
    PREVIEW_FAILED,
    PREVIEWED,
    SKIPPED,
    STARTED,
    TO_EXECUTE,
    count_states,
    covers,
    held_error,
    holds,
    stale_rows,
    uncovered_by,
)

log = logging.getLogger("omi_batch.pipeline")
AGENT_CODES = ("user_not_found", "agent_not_found")  # a 404 about an agent, not the endpoint


now_iso = ledger_now  # one clock format for the whole ledger
who = os_user


class Progress:
    """What the pipeline tells about long work; the CLI draws bars, a job logs, tests ignore.
    ``rate`` is set by the pipeline: the limiter's current requests per second, to show."""

    rate: Callable[[], float] | None = None

    def start(self, phase: str, total: int) -> None: ...

    def advance(self, phase: str, n: int = 1) -> None: ...

    def done(self, phase: str) -> None: ...


@dataclass
class Summary:
    """What a command did, for the CLI to print and to choose the exit code."""

    batch_id: str
    counts: dict[str, int] = field(default_factory=dict)
    reports: dict[str, Path] = field(default_factory=dict)
    due: int = 0  # execute: the rows that were to be submitted
    declined: bool = False  # execute: the person said no; nothing was sent
    sent: int = 0  # execute: rows submitted by this run
    stopped: OmiBatchError | None = None  # execute: stopped part-way after sending (exit 1)


class Unreachable(ConfigError):
    """OMI kept failing before anything was done (exit 3)."""


PROBES = 2  # more previews a 404 is tried on before OMI_BASE_URL is called wrong


class EndpointMissing(ConfigError):
    """Every preview tried answered 404, and not about an agent: OMI_BASE_URL is wrong."""


def _endpoint_missing(error: ApiError) -> bool:
    """A 404 for the endpoint itself, not an agent OMI does not know."""
    return error.http_status == 404 and error.code not in AGENT_CODES


class NothingApproved(UsageError):
    """Execute found no row ever approved (exit 2; nothing was sent)."""

    def __init__(self, batch_id: str, reports_dir: str | Path | None = None):
        report = reports.report_path(reports_dir, batch_id, "preview") if reports_dir else None
        how = f"--report {report}" if report is not None and report.exists() else "--all"
        super().__init__(f"batch {batch_id} has no approved row, so nothing was sent: approve "
                         f"first: omi-batch approve {batch_id} {how}")  # fmt: skip


class BatchBusy(UsageError):
    """Another process is executing or reconciling this batch (exit 2; nothing was sent)."""


class BatchLock(ProcessLock):
    """Held while a batch is executed or reconciled (``<ledger>.<batch>.lock``): two runs would
    each resubmit the other's in-flight ``submitted`` rows."""

    def __init__(self, ledger_path: str | os.PathLike, batch_id: str):
        # Named after the ledger's real file (symlinks resolved, as SQLite names its -wal),
        # so two spellings of one ledger take one lock (issue 12).
        super().__init__(f"{os.path.realpath(ledger_path)}.{batch_id}.lock")
        self.batch_id = batch_id

    def busy(self, holder: str) -> Exception:
        return BatchBusy(
            f"batch {self.batch_id} is being executed by another process (pid {holder}): "
            "nothing was sent; run this again once it has finished"
        )


class Pipeline:
    """One batch's work against OMI. Thread-safe; one instance per command."""

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

    # ------------------------------------------------------------------ plumbing

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
        if self._client is not None:
            self._client.close()

    def _record_attempt(self, attempt: Attempt) -> None:
        """Store a failed attempt at once; hold a successful one (always a call's last) so the
        step that follows writes it in the same transaction (see :meth:`_step`)."""
        context = attempt.context or {}
        batch_id = context.get("batch_id")
        data = asdict(attempt)
        data.pop("context", None)
        if not batch_id:
            if context.get("phase") == "preflight":  # stored by create_batch once it exists
                self._early.append((context.get("row"), data))
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

    def _step(self, batch_id: str, number: int, *, event: str, **options: object) -> None:
        """One row step and this thread's held attempts for that row, in one transaction."""
        held = self._take_attempts()
        mine = [a for a in held if a[0] == batch_id and a[1] == number]
        self._pending.attempts = [a for a in held if a not in mine]
        phase = mine[-1][2] if mine else options.pop("phase", None)
        options.pop("phase", None)
        try:
            self.ledger.record_step(batch_id, number, event=event, phase=phase,
                                    attempts=[a[3] for a in mine], **options)  # fmt: skip
        except BaseException:
            self._pending.attempts = mine + self._pending.attempts
            raise

    def _callback(self, batch_id: str, row: int, phase: str) -> dict | None:
        if not (self.webhook_url and self.webhook_secret):
            return None
        return callbacks.callback_config(
            self.webhook_url, self.webhook_secret, batch_id, row, phase
        )

    def _map(self, work: Callable[[dict], None], rows: Iterable[dict], phase: str) -> None:
        """Run ``work`` over rows on ``concurrency`` threads; stop early when OMI refuses the
        key or stops answering."""
        rows = list(rows)
        self._pool(phase, len(rows), [lambda r=row: self._guarded(work, r, phase) for row in rows])

    def _pool(self, phase: str, total: int, tasks: list[Callable[[], None]]) -> None:
        """Run ``tasks`` on ``concurrency`` threads with a progress bar of ``total`` steps; on
        any error (or Ctrl-C) cancel what has not started and stop the rest."""
        self.progress.start(phase, total)
        try:
            with ThreadPoolExecutor(self.concurrency, thread_name_prefix=phase) as pool:
                futures = [pool.submit(task) for task in tasks]
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
        if self._stop_reason is not None:
            raise self._stop_reason

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

    # ------------------------------------------------------------------ preview

    def create_batch(
        self, plan: Plan, *, options: dict | None = None, check_agents: bool = False
    ) -> str:
        """Check the key and that OMI answers (one preview, nothing moves), then (with
        ``check_agents``; the CLI's default) every source and target in OMI's agent directory,
        then the batch. Directory problems raise InputError (exit 2): nothing sent, no batch."""
        self.settings.require_api()
        if not plan.transfers:
            raise UsageError("the plan has no transfers")
        refuse_ticket_scopes(plan)
        self._early = []
        self._events_batch = None
        self.preflight(asdict(plan.transfers[0]), [asdict(t) for t in plan.transfers[1:4]])
        if check_agents:
            self.check_agents(plan)
        batch_id = self.ledger.create_batch(
            source_file=plan.source_file,
            source_sha256=plan.sha256,
            created_by=who(),
            base_url=self.settings.base_url,
            options=options or {},
            input_rows=plan.input_rows,
            warnings=[asdict(w) for w in plan.warnings],
            rows=[asdict(t) for t in plan.transfers],
        )
        early, self._early = self._early, []
        for row, data in early:  # the preflight's attempts belong to the audit trail too
            self.ledger.record_attempt(batch_id, row, "preflight", data)
        self._record_slow_downs(batch_id)
        return batch_id

    def check_agents(self, plan: Plan) -> list:
        """Look every source and target of ``plan`` up in OMI's agent directory: InputError
        (exit 2) listing each problem with its row; the one warning when the directory cannot
        be read is added to ``plan.warnings`` (and logged) and returned."""
        from omi_batch import directory

        problems, warnings = directory.check_agents(
            plan, self.client, context={"phase": "preflight", "batch_id": None, "row": None}
        )
        if problems:
            raise InputError(
                f"{len(problems)} problem(s) in OMI's agent directory: nothing was sent and no "
                "batch was created (fix the file, or --no-check-agents to skip this check)",
                problems,
            )
        for warning in warnings:
            log.warning("%s", warning.message)
            plan.warnings.append(warning)
        return warnings

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

    def preflight(self, row: dict, others: Iterable[dict] = ()) -> None:
        """One preview of ``row`` (nothing moves, nothing is written) to learn, before anything
        changes, that the key is accepted and OMI answers: AuthError or Unreachable (exit 3,
        naming the URL tried) otherwise. A 404 that is not about an agent is tried on up to
        PROBES of ``others``: 404 for each means OMI_BASE_URL names no OMI API (EndpointMissing,
        exit 3). Its attempts are kept in the ledger, phase
        ``preflight``: at once when ``row`` is a ledger row (it has a ``batch_id``), else by
        :meth:`create_batch` once the batch exists."""
        self.settings.require_api()
        context = {"phase": "preflight", "batch_id": row.get("batch_id"), "row": row.get("row")}
        try:  # the request itself here, not in a helper: execute's path to OMI stays short
            self.client.transfer_conversations(
                row["source_email"], row["target_email"], preview=True,
                replace_existing_members=bool(row["replace_existing_members"]),
                conv_ids=list(row["conv_ids"]) or None, context=context,
            )  # fmt: skip
            return
        except AuthError:
            raise
        except ApiError as failed:
            error = failed
        finally:
            self._flush_attempts()  # a held successful attempt has no step to ride with
        url = self._url(error)
        base = self.settings.base_url
        if isinstance(error, TransportError):
            raise Unreachable(f"{error}, at {url}: check OMI_BASE_URL ({base}) and that this "
                              "machine can reach it") from None  # fmt: skip
        if error.retryable:  # OMI kept answering 429/5xx: treat it as unreachable
            raise Unreachable(f"OMI is not answering: {error}") from None
        if not _endpoint_missing(error):
            return  # about this row: its own preview will record it
        tried = 1
        for other in list(others)[:PROBES]:  # an agent OMI answers 404 for is about its row
            found = self._preflight_one(other)
            tried += 1
            if found is None or not _endpoint_missing(found):
                return
        raise EndpointMissing(
            f"OMI answered 404 for every preview tried at {url}: there is no such endpoint "
            f"there. Check OMI_BASE_URL ({base}): it is the API's root, such as "
            f"{PRODUCTION_URL} (or {STAGING_URL} for staging), with no path ({tried} "
            "preview(s) tried, nothing was created)"
        )

    def _preflight_one(self, row: dict) -> ApiError | None:
        """One preview of ``row`` for :meth:`preflight`: None if OMI answered it, else the
        error (AuthError raised at once: a refused key stops everything)."""
        context = {"phase": "preflight", "batch_id": row.get("batch_id"), "row": row.get("row")}
        try:
            self.client.transfer_conversations(
                row["source_email"], row["target_email"], preview=True,
                replace_existing_members=bool(row["replace_existing_members"]),
                conv_ids=list(row["conv_ids"]) or None, context=context,
            )  # fmt: skip
        except AuthError:
            raise
        except ApiError as error:
            return error
        finally:
            self._flush_attempts()  # a held successful attempt has no step to ride with
        return None

    def _url(self, error: ApiError) -> str:
        """The URL a request that failed with ``error`` was sent to."""
        return self.settings.base_url.rstrip("/") + (error.endpoint or "")

    def preview(self, batch_id: str, *, rows: list[dict] | None = None) -> Summary:
        """Preview every planned row (or ``rows``) and write the preview reports."""
        self._record_slow_downs(batch_id)
        rows = rows if rows is not None else self.ledger.rows(batch_id, states=["planned"])
        self._map(lambda row: self._preview_row(batch_id, row), rows, "preview")
        return self.preview_summary(batch_id)

    def _preview_count(self, batch_id: str, row: dict, phase: str) -> tuple[int | None, str | None]:
        """Ask OMI how many conversations this row would move: (count, error)."""
        try:
            result = self.client.transfer_conversations(
                row["source_email"], row["target_email"], preview=True,
                replace_existing_members=bool(row["replace_existing_members"]),
                conv_ids=row["conv_ids"] or None,
                callback=self._callback(batch_id, row["row"], "preview"),
                context={"batch_id": batch_id, "row": row["row"], "phase": phase},
            )  # fmt: skip
        except AuthError:
            raise
        except TransportError as error:
            if not error.reached:  # the last attempt never reached OMI: stop (exit 3)
                raise
            return None, str(error)  # reached OMI, no answer: this row only
        except ApiError as error:
            return None, str(error)
        if result.count is not None:
            return result.count, None
        if not result.request_id:
            return None, "OMI answered the preview with neither a count nor a requestId"
        self._step(batch_id, row["row"], event="preview_requested",
                   preview_request_id=result.request_id)  # fmt: skip
        if not self._callback(batch_id, row["row"], "preview"):
            return None, ("OMI sends this preview's count by callback, and no webhook is set "
                          "(set OMI_WEBHOOK_URL and OMI_WEBHOOK_SECRET, or use --listen)")  # fmt: skip
        found = self._wait_for(
            lambda: self.ledger.find_callback(batch_id, row["row"], "preview", result.request_id),
            self.wait,
            (batch_id, row["row"]),
        )
        if not found:
            return None, f"no preview callback within {self.wait:g} s"
        if found.get("status") != "SUCCESS" or found.get("updated_records") is None:
            return None, f"OMI reported {found.get('status') or 'no status'} for the preview"
        return int(found["updated_records"]), None

    def preview_again(self, batch_id: str, rows: list[dict]) -> None:
        """Preview again ``rows`` of an existing batch (see :func:`rows_to_preview`): no new
        batch. One preflight first (a refused key or a dead API: exit 3, nothing changed); an
        approved row previewed again must be approved again (its count may have changed)."""
        if not rows:
            return
        self.preflight(rows[0], rows[1:])
        self.preview(batch_id, rows=rows)

    def _preview_row(self, batch_id: str, row: dict) -> None:
        # A count that changed is a new plan: what was approved on the old one is not kept.
        unapproved = ({"approved_at": None, "approved_by": None, "approved_how": None}
                      if row["state"] == APPROVED else {})  # fmt: skip
        try:
            count, error = self._preview_count(batch_id, row, "preview")
            if error is None:
                self._step(batch_id, row["row"], state="previewed", event="previewed",
                           conversations_previewed=count, previewed_at=now_iso(),
                           preview_error=None, **unapproved)  # fmt: skip
            else:
                self._step(batch_id, row["row"], state="preview_failed", event="preview_failed",
                           preview_error=error, previewed_at=now_iso(), **unapproved)  # fmt: skip
        finally:
            self._flush_attempts()

    def preview_summary(
        self,
        batch_id: str,
        reports_dir: str | Path | None = None,
        *,
        max_age_hours: float = 24.0,
        replace: bool | list[dict] = False,
    ) -> Summary:
        """The batch's counts, and (with ``reports_dir``) its preview and targets reports and
        review workbook; an existing preview report is kept or replaced as
        ``reports.write_preview_reports`` says."""
        rows = self.ledger.rows(batch_id)
        summary = Summary(batch_id, counts=count_states(rows))
        if reports_dir is not None:
            summary.reports = self._preview_reports(rows, batch_id, reports_dir, max_age_hours,
                                                    replace)  # fmt: skip
        return summary

    def _preview_reports(
        self,
        rows: list[dict],
        batch_id: str,
        reports_dir: str | Path,
        max_age_hours: float,
        replace: bool | list[dict] = False,
    ) -> dict[str, Path]:
        """The preview and targets CSV reports, and the review workbook beside them. Neither
        review file a person may have edited is overwritten (see
        ``reports.write_preview_reports``): an existing workbook is kept, or, after a new
        preview (``replace`` the rows before it), the new one gets a new name."""
        from omi_batch import workbook

        info = self.ledger.batch(batch_id)
        written = reports.write_preview_reports(rows, batch_id, reports_dir,
                                                info.get("warnings") or [], replace=replace)  # fmt: skip
        book = workbook.review_path(reports_dir, batch_id)
        if book.exists() and replace is not True:
            if replace is False:
                written["review_xlsx"] = book
                return written
            book = reports.free_report_path(book)
        written["review_xlsx"] = workbook.write_review_workbook(
            rows, info, book, max_age_hours=max_age_hours
        )
        return written

    # ------------------------------------------------------------------ approve

    def approve(
        self,
        batch_id: str,
        *,
        approve_all: bool = False,
        report_file: str | Path | None = None,
        max_age_hours: float = 24.0,
        now: datetime | None = None,
        notes: list[str] | None = None,
    ) -> tuple[list[int], list[int]]:
        """Record approvals; return (approved rows, skipped rows). ``--all`` approves the
        ``previewed`` rows only (a row the operator skipped stays skipped), and leaves out a
        catch-all row whose ``conv_ids`` rows are not approved (it would take their
        conversations). A report must be this batch's, with no cell changed but ``approved``
        and ``note``. A report row already submitted or finished is left as it is. ``notes``
        (if given) receives a line for everything left out or left as it was."""
        if approve_all == (report_file is not None):
            raise UsageError("say either --all or --report FILE")
        notes = notes if notes is not None else []
        rows = {r["row"]: r for r in self.ledger.rows(batch_id)}
        if approve_all:
            chosen = [n for n, r in rows.items() if r["state"] == PREVIEWED]
            skipped: list[int] = []
            how = "all"
            for catch_all, blocker in uncovered_catch_alls(rows.values(), chosen, skipped):
                chosen.remove(catch_all["row"])
                notes.append(f"row {catch_all['row']} is not approved: row {blocker['row']} of "
                             f"the same source {_why_not(blocker)}, and row "
                             f"{catch_all['row']} would move its conversations too")  # fmt: skip
        else:
            chosen, skipped = self._approvals_from_report(batch_id, rows, Path(report_file), notes)
            how = f"report {Path(report_file).name}"
        stale = stale_rows([rows[n] for n in chosen], max_age_hours, now)
        if stale:
            raise UsageError(
                f"the preview of row {stale[0]} is older than --max-age {max_age_hours:g} h: "
                f"preview it again (omi-batch preview --batch {batch_id}) and approve again"
            )
        if not chosen and not skipped:
            if any(r["state"] in (APPROVED, SKIPPED, *DECIDED) for r in rows.values()):
                return [], []  # decided before: nothing to record
            raise UsageError(f"batch {batch_id} has no previewed row to approve")
        self.ledger.approve(batch_id, approve=chosen, skip=skipped, by=who(), how=how)
        return chosen, skipped

    def _approvals_from_report(
        self, batch_id: str, rows: dict[int, dict], path: Path, notes: list[str]
    ) -> tuple[list[int], list[int]]:
        entries = reports.read_approvals(path)
        missing = [c for c in reports.REQUIRED_COLUMNS if entries and c not in entries[0]["cells"]]
        if missing:
            raise UsageError(f"{path.name} is not a preview report of batch {batch_id}: no "
                             f"column {', '.join(missing)}; nothing was approved")  # fmt: skip
        named = {e["cells"].get("batch", "") for e in entries}
        others = sorted(named - {batch_id, ""})
        if others:
            raise UsageError(f"{path.name} is the preview report of batch {', '.join(others)}, "
                             f"not of batch {batch_id}: nothing was approved")  # fmt: skip
        if entries and named == {""}:
            raise UsageError(f"{path.name} names no batch in its batch column: nothing was "
                             f"approved (the preview report of batch {batch_id} names it)")  # fmt: skip
        warnings = self.ledger.batch(batch_id).get("warnings") or []
        expected = reports.expected_cells(list(rows.values()), warnings)
        mismatches: list[str] = []
        refusals: list[str] = []
        chosen: list[int] = []
        skipped: list[int] = []
        seen: set[int] = set()
        for entry in entries:
            number = entry["row"]
            row = rows.get(number)
            if row is None:
                mismatches.append(f"row {number}: not in batch {batch_id} (rows were added)")
                continue
            if number in seen:
                mismatches.append(f"row {number}: in the report twice")
                continue
            seen.add(number)
            changed = reports.changed_cells(entry["cells"], expected[number])
            if changed:
                column, theirs, ours = changed[0]
                mismatches.append(f"row {number}: {column} is {theirs!r} in the report but "
                                  f"{ours!r} in the ledger: approve records only the approved "
                                  "and note columns")  # fmt: skip
                continue
            state = row["state"]
            if state in DECIDED:  # past approval: neither approved nor skipped again
                notes.append(f"row {number} is already {state}: left as it is")
            elif not entry["approved"]:
                if state in APPROVABLE:
                    skipped.append(number)
            elif state == PREVIEW_FAILED:
                refusals.append(f"row {number} failed its preview ({row['preview_error']}), so "
                                f"it cannot be approved: clear row {number}'s approved cell")  # fmt: skip
            elif state not in APPROVABLE:
                refusals.append(f"row {number} is {state}: only previewed rows can be approved; "
                                f"clear row {number}'s approved cell")  # fmt: skip
            else:
                chosen.append(number)
        if not mismatches:  # a mismatched row is not approved: that alone would refuse more
            for catch_all, blocker in uncovered_catch_alls(rows.values(), chosen, skipped):
                refusals.append(_uncovered(catch_all, blocker, batch_id))
        if mismatches or refusals:
            header = (f"{path.name} no longer matches batch {batch_id}" if mismatches
                      else f"{path.name} cannot be approved as it is")  # fmt: skip
            raise InputError(f"{header}: nothing was approved", mismatches + refusals)
        missing = [n for n, r in rows.items() if n not in seen and r["state"] in APPROVABLE]
        left = [n for n in missing if rows[n]["state"] != APPROVED]
        if left:
            notes.append(f"{_plural(len(left), 'row')} not in the report: "
                         f"{', '.join(map(str, left))} (not approved)")  # fmt: skip
        kept = [n for n in missing if rows[n]["state"] == APPROVED]
        if kept:
            notes.append(f"{_plural(len(kept), 'row')} not in the report but approved before: "
                         f"{', '.join(map(str, kept))} (left approved)")  # fmt: skip
        return chosen, skipped

    # ------------------------------------------------------------------ execute

    def execute(
        self,
        batch_id: str,
        *,
        confirm: Callable[[list[dict]], bool] | None = None,
        reports_dir: str | Path | None = None,
    ) -> Summary:
        """Submit approved, not yet confirmed rows; each source's rows in order, each confirmed
        before the next starts; wait for callbacks; never resubmit a confirmed row.

        Holds the batch lock from before the first request to the reports (BatchBusy when
        another process executes or reconciles it). ``confirm(rows due)`` may decline (nothing
        is sent). Stopped part-way (key refused, OMI unreachable) after some rows were sent,
        the summary says so in ``stopped`` (exit 1: the reports say which); stopped before
        anything was sent, the error is raised (exit 3). ``reports_dir``: the reports are
        written there either way. NothingApproved (exit 2, nothing sent) when no row was ever
        approved; its message names the command that approves, with the preview report in
        ``reports_dir`` when there is one."""
        self.ledger.batch(batch_id)  # NotFound early
        rows = self.ledger.rows(batch_id)
        if not any(r["state"] in TO_EXECUTE or r["state"] in DECIDED for r in rows):
            raise NothingApproved(batch_id, reports_dir)
        with BatchLock(self.ledger.path, batch_id):
            due = self.ledger.rows(batch_id, states=list(TO_EXECUTE))
            if due and confirm is not None and not confirm(due):
                return Summary(batch_id, due=len(due), declined=True)
            started = now_iso()
            try:
                summary = self._execute(batch_id)
            except OmiBatchError as error:
                written = self.write_reports(batch_id, reports_dir) if reports_dir else {}
                sent = [r for r in self.ledger.rows(batch_id)
                        if (r["submitted_at"] or "") >= started and r["state"] != APPROVED]  # fmt: skip
                if error.exit_code != EXIT_CONFIG or not sent:
                    raise
                return Summary(batch_id, reports=written, due=len(due), sent=len(sent),
                               stopped=error)  # fmt: skip
            summary.due = len(due)
            if reports_dir is not None:
                summary.reports = self.write_reports(batch_id, reports_dir)
            return summary

    def receiver_warning(self, count: int) -> str | None:
        """What to tell before ``count`` rows are submitted when OMI has nowhere to report
        their results (no webhook URL or secret): they will end unconfirmed."""
        if self.webhook_url and self.webhook_secret:
            return None
        return (f"no webhook receiver (set OMI_WEBHOOK_URL, or use --listen HOST:PORT): OMI "
                f"cannot report the results, so the {count} row(s) will end unconfirmed; "
                "omi-batch reconcile checks them afterwards")  # fmt: skip

    def _execute(self, batch_id: str) -> Summary:
        self._record_slow_downs(batch_id)
        every = self.ledger.rows(batch_id)
        rows = [r for r in every if r["state"] in TO_EXECUTE]
        by_source: dict[str, list[dict]] = {}
        sources = {r["source_email"] for r in rows}
        for row in every:  # every row, so that an earlier failed row of a source still holds
            if row["source_email"] in sources:
                by_source.setdefault(row["source_email"], []).append(row)
        if rows:
            self.preflight(
                rows[0], rows[1:]
            )  # a refused key or a dead API: exit 3, nothing changed
        self._pool("execute", len(rows), [
            lambda g=group: self._execute_source(batch_id, g) for group in by_source.values()
        ])  # fmt: skip
        return Summary(batch_id, counts=count_states(self.ledger.rows(batch_id)))

    def _execute_source(self, batch_id: str, group: list[dict]) -> None:
        """One source's rows in run order. A row that holds (``states.holds``: failed,
        preview_failed, or left unconfirmed now) holds the rows after it, and a ``conv_ids``
        row that will not run (skipped, not approved) holds its source's catch-all row, which
        would take its conversations (``states.uncovered_by``)."""
        blocker: dict | None = None
        for row in group:
            if self._stop.is_set():
                return
            if row["state"] not in TO_EXECUTE:
                if holds(row) and blocker is None:
                    blocker = row
                continue
            blocker = blocker or uncovered_by(group, row)
            if blocker is not None:
                self.ledger.update_row(batch_id, row["row"], event=HELD, error=held_error(blocker))
                self.progress.advance("execute")
                continue
            try:
                final = self._execute_row(batch_id, row)
            except (AuthError, TransportError) as error:
                if self._stop_reason is None:
                    self._stop_reason = error
                self.stop()
                return
            finally:
                self.progress.advance("execute")
            if holds(final):
                blocker = final

    def _execute_row(self, batch_id: str, row: dict) -> dict:
        """Save the intent, submit, then wait for the callback; returns the row as it ends."""
        number = row["row"]
        resubmit = row["state"] in ("submitted", "unconfirmed")
        reason = None
        if resubmit:
            reason = (f"the row was {row['state']} with request {row['request_id'] or 'unknown'}"
                      ": its outcome is unknown (no callback came); submitting again is safe, a "
                      "transfer applied twice moves nothing the second time")  # fmt: skip
        # The intent is saved before the request: a crash from here on leaves it submitted.
        self._step(batch_id, number, state="submitted",
                   event="resubmitted" if resubmit else "submitted", reason=reason,
                   expect=[row["state"]], submitted_at=now_iso(), request_id=None,
                   error=None)  # fmt: skip
        try:
            return self._submit_and_wait(batch_id, row)
        finally:
            self._flush_attempts()

    def _submit_and_wait(self, batch_id: str, row: dict) -> dict:
        number = row["row"]
        callback = self._callback(batch_id, number, "execute")
        try:
            result = self.client.transfer_conversations(
                row["source_email"], row["target_email"], preview=False,
                replace_existing_members=bool(row["replace_existing_members"]),
                conv_ids=row["conv_ids"] or None, callback=callback,
                context={"batch_id": batch_id, "row": number, "phase": "execute"},
            )  # fmt: skip
        except AuthError as error:
            if error.outcome_unknown:  # an earlier attempt may have been applied; still stop
                self._settle(batch_id, number, "unconfirmed", _unknown(error))
                raise
            self._unsubmit(batch_id, row, f"not started: OMI refused the key: {error}")
            raise
        except TransportError as error:
            if not error.outcome_unknown:  # never reached OMI: nothing started; stop (exit 3)
                self._unsubmit(batch_id, row, f"not sent: {error}")
                raise
            if not error.reached:  # an earlier attempt may have been applied; now unreachable
                self._settle(batch_id, number, "unconfirmed", _unknown(error))
                raise
            return self._settle(batch_id, number, "unconfirmed",
                                f"outcome unknown: {error}")  # fmt: skip
        except ApiError as error:
            if isinstance(error, RateLimited) and not error.outcome_unknown:
                return self._settle(batch_id, number, "failed", f"rate_limited: {error}")
            if error.retryable:  # retries ran out on 5xx: OMI may or may not have started it
                return self._settle(batch_id, number, "unconfirmed", f"outcome unknown: {error}")
            if error.outcome_unknown:  # a 4xx now, but an earlier attempt may have been applied
                return self._settle(batch_id, number, "unconfirmed", _unknown(error))
            return self._settle(batch_id, number, "failed", str(error))
        self._step(batch_id, number, event="accepted", phase="execute",
                   **({"request_id": result.request_id} if result.request_id else {}))  # fmt: skip
        if callback is None:
            return self._settle(batch_id, number, "unconfirmed",
                                "no webhook: OMI cannot report the result; run reconcile")  # fmt: skip
        done = self._wait_for(
            lambda: self._finished(batch_id, number), self.wait, (batch_id, number)
        )
        if done:
            return done
        if self._stop.is_set():  # interrupted: the row stays submitted; a re-run resumes it
            return self.ledger.row(batch_id, number)
        return self._settle(batch_id, number, "unconfirmed",
                            f"no callback within {self.wait:g} s")  # fmt: skip

    def _unsubmit(self, batch_id: str, row: dict, error: str) -> None:
        """OMI surely started nothing: put the row back where it was before this submit."""
        number, before = row["row"], row["state"]
        try:
            if before == "submitted":  # an earlier run's outcome is still unknown: keep saying so
                self._step(batch_id, number, event="submit_refused", error=error)
            else:
                self._step(batch_id, number, state=before, event="submit_refused",
                           expect=["submitted"], error=error)  # fmt: skip
        except IllegalTransition:  # a callback decided it meanwhile
            self._step(batch_id, number, event="submit_refused", error=error)

    def _finished(self, batch_id: str, number: int) -> dict | None:
        row = self.ledger.row(batch_id, number)
        return row if row["state"] != "submitted" else None

    def _settle(self, batch_id: str, number: int, state: str, error: str) -> dict:
        """Move a submitted row to ``state`` unless a callback decided it meanwhile."""
        done = {"completed_at": now_iso()} if state == "failed" else {}
        try:
            self._step(batch_id, number, state=state, event=state, expect=["submitted"],
                       error=error, **done)  # fmt: skip
        except IllegalTransition:
            self._flush_attempts()
        return self.ledger.row(batch_id, number)

    # ------------------------------------------------------------------ reconcile

    def reconcile(self, batch_id: str) -> Summary:
        """Preview unconfirmed rows again: nothing left to move means the transfer happened.
        Holds the batch lock, as :meth:`execute` does."""
        self.ledger.batch(batch_id)
        with BatchLock(self.ledger.path, batch_id):
            return self._reconcile(batch_id)

    def _reconcile(self, batch_id: str) -> Summary:
        self._record_slow_downs(batch_id)
        rows = self.ledger.rows(batch_id, states=["unconfirmed", "submitted"])
        if rows:
            self.preflight(
                rows[0], rows[1:]
            )  # a refused key or a dead API: exit 3, nothing changed
        self._map(lambda row: self._reconcile_row(batch_id, row), rows, "reconcile")
        return Summary(batch_id, counts=count_states(self.ledger.rows(batch_id)))

    def _reconcile_row(self, batch_id: str, row: dict) -> None:
        number = row["row"]
        try:
            count, error = self._preview_count(batch_id, row, "reconcile")
            if error is not None:
                self._step(batch_id, number, event="reconcile_failed",
                           error=f"reconcile: {error}")  # fmt: skip
            elif count == 0:
                try:
                    self._step(batch_id, number, state="succeeded", event="verified_by_preview",
                               expect=[row["state"]], verified_by="preview",
                               completed_at=now_iso(), error=None)  # fmt: skip
                except IllegalTransition:
                    pass  # a callback decided it meanwhile
            else:
                self._step(batch_id, number, event="reconcile_pending",
                           error=f"reconcile: {count} conversation(s) still to move")  # fmt: skip
        finally:
            self._flush_attempts()

    # ------------------------------------------------------------------ reports

    def write_reports(
        self,
        batch_id: str,
        reports_dir: str | Path,
        *,
        max_age_hours: float = 24.0,
        replace: bool = False,
    ) -> dict[str, Path]:
        """Every report the batch has reached: preview (CSV and workbook), then results. The
        preview report and workbook are written only when there are none (a person may have
        typed into them), or with ``replace`` (a folder only the program writes); the targets
        report gets ``moved`` once rows were executed."""
        from omi_batch import workbook

        rows = self.ledger.rows(batch_id)
        written = self._preview_reports(rows, batch_id, reports_dir, max_age_hours, replace)
        if any(r["state"] in STARTED for r in rows) or any(r["approved_at"] for r in rows):
            head = self.ledger.head()
            written |= reports.write_result_reports(rows, batch_id, reports_dir, head)
            written["results_xlsx"] = workbook.write_results_workbook(
                rows, self.ledger.batch(batch_id), workbook.results_path(reports_dir, batch_id),
                head=head,
            )  # fmt: skip
        return written


# ---------------------------------------------------------------------- helpers


def _slow_down(event: SlowDown) -> dict:
    """A slow-down as a ledger event's data."""
    return {
        "number": event.number,
        "rate_before": round(event.rate_before, 3),
        "rate_after": round(event.rate_after, 3),
        "retry_after": event.retry_after,
        "reason": event.reason,
    }


def rows_to_preview(
    rows: Iterable[dict], max_age_hours: float, now: datetime | None = None
) -> list[dict]:
    """The rows of a batch that ``preview --batch`` previews (again): planned, failed their
    preview, or previewed (approved or skipped since) longer than ``max_age_hours`` ago. Rows
    already submitted are never previewed again here (that is reconcile's work)."""
    rows = list(rows)
    stale = set(stale_rows([r for r in rows if r["state"] in APPROVABLE], max_age_hours, now))
    return [r for r in rows if r["state"] in (PLANNED, PREVIEW_FAILED) or r["row"] in stale]


def _unknown(error: ApiError) -> str:
    """The row error when the last attempt failed but an earlier one may have been applied."""
    return (f"outcome unknown: an earlier attempt may have reached OMI (timeout, reset or 5xx), "
            f"then {error}; run reconcile")  # fmt: skip


def _show(value: object) -> str:
    if isinstance(value, list):
        return repr(";".join(value))
    return repr(value)


def refuse_ticket_scopes(plan: Plan) -> None:
    """Refuse, before anything is sent, a plan that asks to move tickets: preview and execute
    move conversations only so far, and a row that says ``tickets`` must never end
    ``succeeded`` after a conversation transfer (issue 15)."""
    rows = [t for t in plan.transfers if t.scope != "conversations"]
    if rows:
        problems = [
            Problem(t.row, "scope_not_supported",
                    f"scope is {t.scope}: preview and execute move conversations only for now; "
                    "move this agent's tickets in OMI itself, and set scope to conversations "
                    "(or leave it blank) to move the conversations here")
            for t in rows
        ]  # fmt: skip
        raise InputError(
            f"{len(rows)} row(s) ask to move tickets, which omi-batch cannot do yet: "
            "nothing was sent",
            problems,
        )


def uncovered_catch_alls(
    rows: Iterable[dict], chosen: Iterable[int] = (), skipped: Iterable[int] = ()
) -> list[tuple[dict, dict]]:
    """``(catch-all row, conv_ids row)`` pairs where the catch-all row would be approved (with
    ``chosen`` approved and ``skipped`` skipped) while a ``conv_ids`` row of the same source
    would not run: OMI cannot leave conversations out of a transfer, so the catch-all row
    would move them to its own target."""
    rows = list(rows)
    after = {r["row"]: r["state"] for r in rows}
    after.update(dict.fromkeys(chosen, APPROVED))
    after.update(dict.fromkeys(skipped, SKIPPED))
    found = []
    for catch_all in rows:
        if catch_all["conv_ids"] or after[catch_all["row"]] != APPROVED:
            continue
        for other in rows:
            same = other["source_email"] == catch_all["source_email"] and other["conv_ids"]
            if same and not covers(after[other["row"]]):
                found.append((catch_all, dict(other, state=after[other["row"]])))
    return found


def _why_not(row: dict) -> str:
    return {PREVIEW_FAILED: "failed its preview", FAILED: "failed"}.get(
        row["state"], "is not approved"
    )


def _uncovered(catch_all: dict, blocker: dict, batch_id: str) -> str:
    """Why approving ``catch_all`` is refused while ``blocker`` would not run, and the fix."""
    n, b = catch_all["row"], blocker["row"]
    count = len(blocker["conv_ids"])
    what = _plural(count, "conversation")
    if blocker["state"] == PREVIEW_FAILED:
        fix = f"fix row {b} and preview it again (omi-batch preview --batch {batch_id}), or clear row {n}"
        why = "failed its preview"
    elif blocker["state"] == FAILED:
        fix = f"run row {b} again first, or clear row {n}"
        why = "failed"
    else:
        fix = f"approve row {b} too, or clear row {n}"
        why = "is not"
    return (f"row {n} ({catch_all['source_email']} → {catch_all['target_email']}, all the other "
            f"conversations) is approved but row {b} of the same source ({what} to "
            f"{blocker['target_email']}) {why}: OMI cannot leave conversations out of a "
            f"transfer, so row {n} would move those {what} to {catch_all['target_email']} too; "
            f"{fix}")  # fmt: skip


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"
