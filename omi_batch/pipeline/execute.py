"""The execute side: submitting approved rows under the batch lock, waiting for their callbacks,
settling what never came, reconcile, and the result reports."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from omi_batch import reports
from omi_batch.client import ApiError, AuthError, RateLimited, TransportError
from omi_batch.errors import EXIT_CONFIG, IllegalTransition, OmiBatchError
from omi_batch.pipeline.outcome import BatchLock, NothingApproved, Summary
from omi_batch.pipeline.preview import Previewing
from omi_batch.pipeline.work import now_iso
from omi_batch.states import (
    ACCEPTED,
    APPROVED,
    CONVERSATIONS,
    DECIDED,
    HELD,
    NEEDS_REVIEW,
    STARTED,
    TICKETS,
    TO_EXECUTE,
    blocker_before,
    count_states,
    hold,
    holds,
    phase_of,
    uncovered_by,
)

SPOOL_SETTLE = 5.0  # seconds execute waits at its end for the batch's callbacks in the spool


class Executing(Previewing):
    """Execute (one source's rows in order, each confirmed before the next), reconcile, reports."""

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
        self.ledger.refuse_cancelled(batch_id)  # NotFound, BatchCancelled early
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
        # every transfer, so that an earlier failed row of a source still holds; a source's
        # ticket transfer after its conversation rows (sorted() keeps their run order)
        for row in sorted(every, key=lambda r: r["kind"] == TICKETS):
            if row["source_email"] in sources:
                by_source.setdefault(row["source_email"], []).append(row)
        if rows:
            self.preflight(
                rows[0], rows[1:]
            )  # a refused key or a dead API: exit 3, nothing changed
        feed = iter(list(by_source.values()))
        lock = threading.Lock()
        workers = min(self.concurrency, len(by_source))
        self._pool("execute", len(rows), [
            lambda: self._execute_groups(batch_id, _Ahead(feed, lock)) for _ in range(workers)
        ])  # fmt: skip
        self._await_spool(batch_id)
        return Summary(batch_id, counts=count_states(self.ledger.rows(batch_id)))

    def _await_spool(self, batch_id: str) -> None:
        """Wait (at most :data:`SPOOL_SETTLE` seconds) until the receiver's spool holds no
        callback of the batch: one held until its row's 202 was stored (the first attempt's,
        whose answer was lost, after the retry's own was applied) is applied within a second
        or so, and the reports must count what it moved, not end with it left behind."""
        from omi_batch.spool import Spool, spool_path

        spool = Spool(spool_path(self.ledger.path))
        try:
            deadline = time.monotonic() + SPOOL_SETTLE
            while spool.waiting_for(batch_id) and not self._stop.is_set():
                if time.monotonic() >= deadline:
                    return
                time.sleep(0.05)
        except (OSError, sqlite3.Error):  # a spool we cannot read: the receiver's to apply
            return
        finally:
            spool.close()

    def _execute_groups(self, batch_id: str, ahead: _Ahead) -> None:
        """One worker of execute: source after source from the shared feed, until none is
        left or the run stops. While a source's last row awaits its callback, the intent of
        the next source's first row is queued (``ahead``), so that it is committed with that
        callback instead of with an fsync of its own; a row whose intent was saved so but
        that was never sent (the run stopped) is put back as it was."""
        try:
            while not self._stop.is_set():
                group = ahead.take()
                if group is None:
                    return
                self._execute_source(batch_id, group, ahead)
        except BaseException:
            self.stop()  # the other workers stop too
            raise
        finally:
            if ahead.row is not None:  # its intent is saved, its request was never sent
                row, ahead.row = ahead.row, None
                with contextlib.suppress(OmiBatchError):
                    ahead.intent.result()
                    self._unsubmit(batch_id, row, "not sent: the run stopped before it")

    def _execute_source(self, batch_id: str, group: list[dict], ahead: _Ahead) -> None:
        """One source's rows in run order. A row that holds (``states.holds``: failed,
        preview_failed, or left unconfirmed now) holds the rows after it, and a ``conv_ids``
        row that will not run (skipped, not approved) holds its source's catch-all row, which
        would take its conversations (``states.uncovered_by``). The source's ticket transfer
        comes last and is held the same way."""
        blocker: dict | None = None
        for at, row in enumerate(group):
            if self._stop.is_set():
                return
            if row["state"] not in TO_EXECUTE:
                if holds(row) and blocker is None:
                    blocker = row
                continue
            blocker = blocker or uncovered_by(group, row)
            if blocker is not None:
                self.ledger.update_row(batch_id, row["row"], event=HELD, kind=row["kind"],
                                       **hold(blocker))  # fmt: skip
                self.progress.advance("execute")
                continue
            last = not any(r["state"] in TO_EXECUTE for r in group[at + 1 :])
            try:
                final = self._execute_row(batch_id, row, ahead, last)
            except (AuthError, TransportError) as error:
                if self._stop_reason is None:
                    self._stop_reason = error
                self.stop()
                return
            finally:
                self.progress.advance("execute")
            if holds(final):
                blocker = final

    def _execute_row(self, batch_id: str, row: dict, ahead: _Ahead, last: bool) -> dict:
        """Save the intent (or wait for the one saved ahead), submit, then wait for the
        callback; returns the row as it ends. ``last``: no later row of its source runs now,
        so the next source's first intent may be queued meanwhile."""
        # The intent is saved before the request: a crash from here on leaves it submitted.
        if ahead.row is row:
            ahead.row = None
            ahead.intent.result()  # committed (with a callback, mostly), or its refusal raised
        else:
            self._step(batch_id, row["row"], **_intent(row))
        try:
            return self._submit_and_wait(batch_id, row, ahead if last else None)
        finally:
            self._flush_attempts()

    def _intend_next(self, batch_id: str, ahead: _Ahead) -> None:
        """Take the worker's next source now and queue the intent of the row it will send
        first (none when that row would be held: its hold is written when it comes)."""
        group = ahead.take_now()
        row = _first_to_send(group) if group else None
        if row is not None:
            ahead.intent = self._step(batch_id, row["row"], soon=True, **_intent(row))
            ahead.row = row

    def _submit_and_wait(self, batch_id: str, row: dict, ahead: _Ahead | None = None) -> dict:
        number, kind = row["row"], row["kind"]
        has_callback = self._callback(batch_id, number, "execute") is not None
        try:
            result = self._send(row, preview=False, phase="execute", batch_id=batch_id,
                                callback=True)  # fmt: skip
        except AuthError as error:
            if error.outcome_unknown:  # an earlier attempt may have been applied; still stop
                self._settle(batch_id, row, "unconfirmed", _unknown(error))
                raise
            self._unsubmit(batch_id, row, f"not started: OMI refused the key: {error}")
            raise
        except TransportError as error:
            if not error.outcome_unknown:  # never reached OMI: nothing started; stop (exit 3)
                self._unsubmit(batch_id, row, f"not sent: {error}")
                raise
            if not error.reached:  # an earlier attempt may have been applied; now unreachable
                self._settle(batch_id, row, "unconfirmed", _unknown(error))
                raise
            return self._settle(batch_id, row, "unconfirmed", f"outcome unknown: {error}")
        except ApiError as error:
            if isinstance(error, RateLimited) and not error.outcome_unknown:
                return self._settle(batch_id, row, "failed", f"rate_limited: {error}")
            if error.retryable:  # retries ran out on 5xx: OMI may or may not have started it
                return self._settle(batch_id, row, "unconfirmed", f"outcome unknown: {error}")
            if error.outcome_unknown:  # a 4xx now, but an earlier attempt may have been applied
                return self._settle(batch_id, row, "unconfirmed", _unknown(error))
            # e.g. permission_denied on tickets: this transfer fails, the run goes on
            return self._settle(batch_id, row, "failed", str(error))
        # Nothing waits on the 202 but the callback: it joins the callback's commit, or the next.
        self._step(batch_id, number, event=ACCEPTED, phase=phase_of(kind, "execute"),
                   kind=kind, soon=True,
                   **({"request_id": result.request_id} if result.request_id else {}))  # fmt: skip
        if ahead is not None and has_callback:
            self._intend_next(batch_id, ahead)
        if not has_callback:
            return self._settle(batch_id, row, "unconfirmed",
                                "no webhook: OMI cannot report the result; run reconcile")  # fmt: skip
        done = self._wait_for(
            lambda: self._finished(batch_id, number, kind), self.wait, (batch_id, number)
        )
        if done:
            return done
        if self._stop.is_set():  # interrupted: the row stays submitted; a re-run resumes it
            return self.ledger.row(batch_id, number, kind)
        current = self.ledger.row(batch_id, number, kind)
        return self._settle(batch_id, row, "unconfirmed", self._no_callback(current), current)

    def _unsubmit(self, batch_id: str, row: dict, error: str) -> None:
        """OMI surely started nothing: put the row back where it was before this submit."""
        number, before, kind = row["row"], row["state"], row["kind"]
        try:
            if before == "submitted":  # an earlier run's outcome is still unknown: keep saying so
                self._step(batch_id, number, event="submit_refused", error=error, kind=kind)
            else:
                self._step(batch_id, number, state=before, event="submit_refused",
                           expect=["submitted"], error=error, kind=kind)  # fmt: skip
        except IllegalTransition:  # a callback decided it meanwhile
            self._step(batch_id, number, event="submit_refused", error=error, kind=kind)

    def _finished(self, batch_id: str, number: int, kind: str = CONVERSATIONS) -> dict | None:
        row = self.ledger.row(batch_id, number, kind)
        return row if row["state"] != "submitted" else None

    def _no_callback(self, current: dict) -> str:
        """Why the submitted row ``current`` (as stored now) is left unconfirmed after the
        wait: no callback came, or those that came since its submission (refused, or kept
        without being applied) are named by their verdicts."""
        text = f"no callback within {self.wait:g} s"
        came = self.ledger.verdicts_since(current["batch_id"], current["row"],
                                          phase_of(current["kind"], "execute"),
                                          current["submitted_at"])  # fmt: skip
        if came:
            text = (f"no callback within {self.wait:g} s could be applied: {len(came)} came, "
                    f"kept in the ledger ({', '.join(dict.fromkeys(came))})")  # fmt: skip
        return text

    def _settle(
        self, batch_id: str, row: dict, state: str, error: str, current: dict | None = None
    ) -> dict:
        """Move a submitted transfer to ``state`` unless a callback decided it meanwhile. A
        review note a callback left in the row's error (``needs review: …``) is kept first;
        ``current``: the row as just read, if the caller has it."""
        number, kind = row["row"], row["kind"]
        current = current or self.ledger.row(batch_id, number, kind)
        before = current["error"] or ""
        if before.startswith(f"{NEEDS_REVIEW}:"):
            error = f"{before}; {error}"
        done = {"completed_at": now_iso()} if state == "failed" else {}
        try:
            self._step(batch_id, number, state=state, event=state, expect=["submitted"],
                       error=error, kind=kind, **done)  # fmt: skip
        except IllegalTransition:
            self._flush_attempts()
        return self.ledger.row(batch_id, number, kind)

    # ------------------------------------------------------------------ reconcile

    def reconcile(self, batch_id: str) -> Summary:
        """Preview unconfirmed rows again: nothing left to move means the transfer happened
        (a ticket transfer too: no open ticket left to move). Holds the batch lock, as
        :meth:`execute` does."""
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
        number, kind = row["row"], row["kind"]
        try:
            count, error = self._preview_count(batch_id, row, "reconcile")
            if error is not None:
                self._step(batch_id, number, event="reconcile_failed", kind=kind,
                           error=f"reconcile: {error}")  # fmt: skip
            elif count == 0:
                try:
                    self._step(batch_id, number, state="succeeded", event="verified_by_preview",
                               expect=[row["state"]], verified_by="preview", kind=kind,
                               completed_at=now_iso(), error=None)  # fmt: skip
                except IllegalTransition:
                    pass  # a callback decided it meanwhile
            else:
                what = "ticket(s)" if kind == TICKETS else "conversation(s)"
                self._step(batch_id, number, event="reconcile_pending", kind=kind,
                           error=f"reconcile: {count} {what} still to move")  # fmt: skip
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


class _Ahead:
    """One execute worker's view of the shared feed of sources: the source it took ahead and
    the row of it whose intent is queued (``intent``: its :class:`Queued` step)."""

    def __init__(self, feed: Iterator[list[dict]], lock: threading.Lock):
        self._feed, self._lock = feed, lock
        self._next: list[dict] | None = None
        self.row: dict | None = None
        self.intent: Any = None

    def take_now(self) -> list[dict] | None:
        """The next source, taken from the feed now and kept for :meth:`take`."""
        if self._next is None:
            with self._lock:
                self._next = next(self._feed, None)
        return self._next

    def take(self) -> list[dict] | None:
        """The source to run next: the one taken ahead, else the feed's next."""
        group, self._next = self.take_now(), None
        return group


def _first_to_send(group: list[dict]) -> dict | None:
    """The row :meth:`Executing._execute_source` sends first for ``group``, or None when that
    row is held (``states.blocker_before``, read without writing)."""
    row = next((r for r in group if r["state"] in TO_EXECUTE), None)
    return row if row is not None and blocker_before(group, row) is None else None


def _intent(row: dict) -> dict:
    """The step that saves a row's intent before its request (``resubmitted`` when an earlier
    run's outcome is unknown)."""
    resubmit = row["state"] in ("submitted", "unconfirmed")
    reason = None
    if resubmit:
        reason = (f"the row was {row['state']} with request {row['request_id'] or 'unknown'}: "
                  "its outcome is unknown (no callback came); submitting again is safe, a "
                  "transfer applied twice moves nothing the second time")  # fmt: skip
    return {"state": "submitted", "event": "resubmitted" if resubmit else "submitted",
            "reason": reason, "expect": [row["state"]], "submitted_at": now_iso(),
            "request_id": None, "error": None, "held_by": None, "kind": row["kind"]}  # fmt: skip


def _unknown(error: ApiError) -> str:
    """The row error when the last attempt failed but an earlier one may have been applied."""
    return (f"outcome unknown: an earlier attempt may have reached OMI (timeout, reset or 5xx), "
            f"then {error}; run reconcile")  # fmt: skip
