"""One tick of a job: what is due, done once, under the job's lock, with its result."""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omi_batch.config import Settings
from omi_batch.errors import (
    EXIT_CONFIG,
    EXIT_INCOMPLETE,
    EXIT_OK,
    EXIT_USAGE,
    LockedError,
    OmiBatchError,
)
from omi_batch.jobs.files import _counts, _files, _freed, _move
from omi_batch.jobs.jobfile import PROBLEM_STATUSES, Job
from omi_batch.jobs.review import Review
from omi_batch.locks import ProcessLock
from omi_batch.states import (
    APPROVED,
    CANCELLED,
    is_held,
    result_status,
    stale_rows,
)

log = logging.getLogger("omi_batch.jobs")


@dataclass
class TickResult:
    """What one tick did, and so its exit code."""

    job: str
    created: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    executed: list[str] = field(default_factory=list)
    archived: list[str] = field(default_factory=list)
    rejected: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    sent: bool = False

    @property
    def exit_code(self) -> int:
        """0 all fine; 2 a bad file and nothing sent; 1 anything else that needs a person."""
        if self.rejected and not self.sent and not self.problems:
            return EXIT_USAGE
        if self.rejected or self.problems:
            return EXIT_INCOMPLETE
        return EXIT_OK

    def summary(self) -> str:
        return (f"tick done: {len(self.created)} new batch(es), {len(self.waiting)} waiting for "
                f"review, {len(self.executed)} executed, {len(self.archived)} archived, "
                f"{len(self.rejected)} file(s) rejected, {len(self.problems)} problem(s)")  # fmt: skip


class JobLock(ProcessLock):
    """The job's lock: a second tick says so and does nothing (exit 0)."""

    def __init__(self, path: Path, job: str):
        super().__init__(path)
        self.job = job

    def busy(self, holder: str) -> Exception:
        return LockedError(
            f"another tick of job {self.job} is running (it holds {self.path}): "
            "this one does nothing"
        )


def run_tick(job: Job, *, env: Mapping[str, str] | None = None) -> TickResult:
    """One tick of ``job``: check the configuration (ConfigError, exit 3), take the lock
    (LockedError, exit 0, when another tick holds it), then do whatever is due."""
    settings = job.settings(env)
    job.check_settings(settings, env)
    with JobLock(job.lock_path, job.name):
        tick = _Tick(job, settings, env)
        started = time.time()
        failed: OmiBatchError | None = None
        try:
            return tick.run()
        except OmiBatchError as error:
            failed = error
            raise
        finally:
            tick.finish(started, failed)


class _Tick(Review):
    """The work of one tick, holding the ledger, the receiver and the pipeline it opened."""

    def __init__(self, job: Job, settings: Settings, env: Mapping[str, str] | None = None):
        self.job = job
        self.settings = settings
        self.env = os.environ if env is None else env
        self.result = TickResult(job.name)
        self.touched: set[str] = set()
        self.messages: list[Any] = []  # notifications, sent once the tick's work is done
        self.metrics: Any = None

    # ------------------------------------------------------------------ the whole tick

    def run(self) -> TickResult:
        from omi_batch.ledger import Ledger

        job = self.job
        for folder in (job.inbox, job.review, job.approved, job.archive, job.rejected,
                       job.reports):  # fmt: skip
            folder.mkdir(parents=True, exist_ok=True)
        self.ledger = Ledger(job.ledger)
        if job.metrics_file is not None:
            from omi_batch.metrics import make_metrics

            self.metrics = make_metrics(self.ledger, job=job.name)
        session = None
        try:
            if not (_files(job.inbox) or _files(job.approved) or self._open_batches()):
                log.info("job %s: nothing to do", job.name)
                return self.result
            from omi_batch.session import Session

            # With listen, callbacks wake the waits and share commits, as `--listen` does.
            session = Session(
                self.settings, self.ledger, listen=job.listen, metrics=self.metrics,
                say=lambda text: log.info("job %s: %s", job.name, _lowered(text)),
                concurrency=job.concurrency, rate=job.rate, timeout=job.timeout, wait=job.wait,
            )  # fmt: skip
            self.pipeline = session.pipeline
            self._inbox()
            self._approved()
            for batch_id in self._open_batches():
                if batch_id not in self.touched:
                    self._guarded(batch_id, self._advance, batch_id)
        finally:
            if session is not None:
                session.close()
            self.ledger.close()
        log.info("job %s: %s", job.name, self.result.summary())
        return self.result

    def finish(self, started: float, failed: OmiBatchError | None) -> None:
        """Send the tick's notifications (the outbox first) and write its metrics file.
        Neither may fail the tick: a problem with either is logged."""
        job = self.job
        pending = None
        if job.notify:
            try:
                from omi_batch.notify import Notifier

                notifier = Notifier(job.notify, outbox=job.outbox_path, env=self.env)
                notifier.send(*self.messages)
                pending = len(notifier.pending())
            except Exception as error:  # noqa: BLE001 - notifications never fail a tick
                log.error("job %s: notifications not sent: %s", job.name,
                          f"{type(error).__name__}: {error}")  # fmt: skip
        if job.metrics_file is not None:
            try:
                from omi_batch.metrics import make_metrics, write_tick_metrics

                metrics = self.metrics or make_metrics(None)
                write_tick_metrics(job.metrics_file, job=job.name, result=self.result,
                                   started=started, metrics=metrics,
                                   exit_code=failed.exit_code if failed else None,
                                   notifications_pending=pending)  # fmt: skip
            except Exception as error:  # noqa: BLE001 - a metrics file never fails a tick
                log.error("job %s: metrics file %s not written: %s", job.name,
                          job.metrics_file, f"{type(error).__name__}: {error}")  # fmt: skip
            finally:
                if getattr(self, "ledger", None) is not None:
                    self.ledger.close()

    def _notify(self, build: Any, *args: Any, **options: Any) -> None:
        """Keep a notification for the end of the tick (when the job has notify URLs)."""
        if not self.job.notify:
            return
        try:
            message = build(*args, job=self.job.name, **options)
        except Exception as error:  # noqa: BLE001 - a notification never fails a tick
            log.error("job %s: notification not prepared: %s", self.job.name,
                      f"{type(error).__name__}: {error}")  # fmt: skip
            return
        if message is not None:
            self.messages.append(message)

    def _guarded(self, what: str, step: Any, *args: Any) -> None:
        """Run one step (about a batch or a file); an error about it is logged and the tick goes on.
        Configuration, authentication and an unreachable OMI stop the tick (exit 3)."""
        try:
            step(*args)
        except OmiBatchError as error:
            if error.exit_code == EXIT_CONFIG:
                raise
            log.error("job %s: %s: %s", self.job.name, what, error)
            self.result.problems.append(f"{what}: {error}")

    # ------------------------------------------------------------------ batches of the job

    def _job_batches(self) -> list[dict]:
        return [b for b in self.ledger.batches() if b["options"].get("job") == self.job.name]

    def _is_archived(self, batch_id: str) -> bool:
        return (self.job.archive / batch_id).is_dir()

    def _open_batches(self) -> list[str]:
        """This job's batches not yet in the archive, oldest first."""
        found = [b["id"] for b in self._job_batches() if not self._is_archived(b["id"])]
        return sorted(found)

    # ------------------------------------------------------------------ execute and archive

    def _advance(self, batch_id: str) -> None:
        """Take one batch as far as it can go this tick."""
        job = self.job
        rows = self.ledger.rows(batch_id)
        states = {r["state"] for r in rows}
        if CANCELLED in states:
            log.info("job %s: batch %s: cancelled (omi-batch cancel): nothing of it is sent",
                     job.name, batch_id)  # fmt: skip
            self._archive(batch_id)
            return
        if "planned" in states:  # a tick died while previewing
            self._preview(batch_id)
            rows = self.ledger.rows(batch_id)
            states = {r["state"] for r in rows}
        if "previewed" in states:
            reason = None
            if job.policy == "auto":
                reason = self._ceiling(rows)
                if reason is None and stale_rows(
                    [r for r in rows if r["state"] == "previewed"], job.max_age_hours
                ):
                    reason = f"the preview is older than {job.max_age_hours:g} h"
                if reason is None:
                    chosen, _ = self.pipeline.approve(batch_id, approve_all=True,
                                                      max_age_hours=job.max_age_hours)  # fmt: skip
                    log.info("job %s: batch %s: %d row(s) approved automatically (within the "
                             "ceilings)", job.name, batch_id, len(chosen))  # fmt: skip
                    self.ledger.log("job_auto_approved", batch_id=batch_id, job=job.name,
                                    rows=len(chosen))  # fmt: skip
                    rows = self.ledger.rows(batch_id)
            if any(r["state"] == "previewed" for r in rows):
                if reason:
                    log.warning("job %s: batch %s: left for review: %s", job.name, batch_id,
                                reason)  # fmt: skip
                self._to_review(batch_id, reason)
                return
        due = [r for r in rows if r["state"] == "submitted" or
               (r["state"] == APPROVED and not is_held(r))]  # fmt: skip
        if due:
            resumed = sum(r["state"] == "submitted" for r in due)
            log.info("job %s: batch %s: executing %d row(s)%s", job.name, batch_id, len(due),
                     f" ({resumed} resumed after an interrupted tick)" if resumed else "")  # fmt: skip
            self.result.sent = True
            summary = self.pipeline.execute(batch_id)
            if summary.stopped is not None:  # stopped part-way: the tick stops (exit 3)
                raise summary.stopped
            self.result.executed.append(batch_id)
            log.info("job %s: batch %s: executed: %s", job.name, batch_id,
                     _counts(summary.counts))  # fmt: skip
            rows = self.ledger.rows(batch_id)
        if any(r["state"] == "unconfirmed" for r in rows):
            log.info("job %s: batch %s: reconciling %d unconfirmed row(s)", job.name, batch_id,
                     sum(r["state"] == "unconfirmed" for r in rows))  # fmt: skip
            self.result.sent = True
            self.pipeline.reconcile(batch_id)
            rows = self.ledger.rows(batch_id)
            freed = _freed(rows)
            if freed:  # what held them is now succeeded: run them once before archiving
                log.info("job %s: batch %s: executing %d held row(s) now that the rows before "
                         "them succeeded", job.name, batch_id, len(freed))  # fmt: skip
                summary = self.pipeline.execute(batch_id)
                if summary.stopped is not None:  # stopped part-way: the tick stops (exit 3)
                    raise summary.stopped
                log.info("job %s: batch %s: executed: %s", job.name, batch_id,
                         _counts(summary.counts))  # fmt: skip
        self._archive(batch_id)

    def _archive(self, batch_id: str) -> None:
        """Move the finished batch's input file and reports to ``archive/<batch>/``."""
        job = self.job
        final = job.archive / batch_id
        partial = job.archive / f".{batch_id}.partial"
        partial.mkdir(parents=True, exist_ok=True)
        self.pipeline.write_reports(
            batch_id, job.reports, max_age_hours=job.max_age_hours, replace=True
        )
        for path in sorted(job.reports.glob(f"{batch_id}-*")):
            _move(path, partial / path.name)
        for path in job.review.glob(f"{batch_id}-*"):
            path.unlink(missing_ok=True)
        os.replace(partial, final)
        rows = self.ledger.rows(batch_id)
        statuses = Counter(result_status(r) for r in rows)
        held = [r for r in rows if r["state"] == APPROVED]
        self.result.archived.append(batch_id)
        self.ledger.log("job_archived", batch_id=batch_id, job=job.name, folder=str(final),
                        statuses=dict(statuses))  # fmt: skip
        log.info("job %s: batch %s: archived in %s: %s", job.name, batch_id, final,
                 _counts(statuses))  # fmt: skip
        from omi_batch import notify

        retry = final / f"{batch_id}-retry.csv"
        self._notify(notify.batch_finished, batch_id, rows)
        self._notify(notify.rows_need_attention, batch_id, rows,
                     retry_report=retry if retry.exists() else None)  # fmt: skip
        bad = {s: n for s, n in statuses.items() if s in PROBLEM_STATUSES}
        if bad or held:
            what = _counts(bad) + (f", {len(held)} held" if held else "")
            self.result.problems.append(f"batch {batch_id}: {what.strip(', ')}")
            log.warning("job %s: batch %s: %s: the retry report lists them", job.name, batch_id,
                        what.strip(", "))  # fmt: skip


def _lowered(text: str) -> str:
    """A sentence to follow "job NAME: ": its first letter small, unless it starts a name
    written in capitals (OMI_WEBHOOK_SECRET, OMI)."""
    return text if text[:2].isupper() else text[:1].lower() + text[1:]
