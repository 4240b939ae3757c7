"""The preview side: the preflight, creating a batch, previewing rows and the preview reports."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

from omi_batch import reports
from omi_batch.client import ApiError, AuthError, TransportError
from omi_batch.config import PRODUCTION_URL, STAGING_URL
from omi_batch.errors import InputError, UsageError
from omi_batch.pipeline.outcome import EndpointMissing, Summary, Unreachable
from omi_batch.pipeline.work import Work, now_iso, transfer_kind, who
from omi_batch.roster import Plan
from omi_batch.states import (
    APPROVABLE,
    APPROVED,
    PLANNED,
    PREVIEW_FAILED,
    TICKETS,
    count_states,
    phase_of,
    stale_rows,
)

log = logging.getLogger("omi_batch.pipeline")
AGENT_CODES = ("user_not_found", "agent_not_found")  # a 404 about an agent, not the endpoint

PROBES = 2  # more previews a 404 is tried on before OMI_BASE_URL is called wrong


def _endpoint_missing(error: ApiError) -> bool:
    """A 404 for the endpoint itself, not an agent OMI does not know."""
    return error.http_status == 404 and error.code not in AGENT_CODES


class Previewing(Work):
    """Preflight, batch creation, preview (and preview again), the preview reports."""

    def create_batch(
        self, plan: Plan, *, options: dict | None = None, check_agents: bool = True
    ) -> str:
        """Check the key and that OMI answers (one preview, nothing moves), then (unless
        ``check_agents=False``, as the CLI's ``--no-check-agents``) every source and target in
        OMI's agent directory, then the batch. Directory problems raise InputError (exit 2): nothing sent, no batch."""
        self.settings.require_api()
        if not plan.transfers:
            raise UsageError("the plan has no transfers")
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
        for row, phase, data in early:  # the preflight's attempts belong to the audit trail too
            self.ledger.record_attempt(batch_id, row, phase, data)
        self._record_slow_downs(batch_id)
        return batch_id

    def check_agents(self, plan: Plan) -> list:
        """Look every source and target of ``plan`` up in OMI's agent directory: InputError
        (exit 2) listing each problem with its row; the one warning when the directory cannot
        be read is added to ``plan.warnings`` (and logged) and returned."""
        from omi_batch import directory

        problems, warnings = directory.check_agents(
            plan, self.client, context={"phase": "preflight", "batch_id": None, "row": None},
            progress=self.progress,
        )  # fmt: skip
        if problems:
            raise InputError(
                f"{len(problems)} problem(s) in OMI's agent directory: nothing was sent and no "
                "batch was created (fix the file, or --no-check-agents to skip this check)",
                problems,
            )
        for warning in warnings:  # logged once: the CLI shows the log, a job writes it
            log.warning("%s: %s", warning.code, warning.message)
            plan.warnings.append(warning)
        return warnings

    def preflight(self, row: dict, others: Iterable[dict] = ()) -> None:
        """One preview of ``row`` (nothing moves, nothing is written) to learn, before anything
        changes, that the key is accepted and OMI answers: AuthError or Unreachable (exit 3,
        naming the URL tried) otherwise. A 404 that is not about an agent is tried on up to
        PROBES of ``others``: 404 for each means OMI_BASE_URL names no OMI API (EndpointMissing,
        exit 3). Its attempts are kept in the ledger, phase
        ``preflight`` (``tickets-preflight`` for a ticket transfer): at once when ``row`` is a
        ledger row (it has a ``batch_id``), else by :meth:`create_batch` once the batch
        exists."""
        self.settings.require_api()
        kind = transfer_kind(row)
        context = {"phase": phase_of(kind, "preflight"), "batch_id": row.get("batch_id"),
                   "row": row.get("row")}  # fmt: skip
        try:  # the request itself here, not in a helper: execute's path to OMI stays short
            if kind == TICKETS:
                self.client.transfer_tickets(row["source_email"], row["target_email"],
                                             preview=True, context=context)  # fmt: skip
            else:
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
        try:
            self._send(row, preview=True, phase="preflight", batch_id=row.get("batch_id"))
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
        """Ask OMI how many conversations (or tickets, for a ticket transfer) this transfer would
        move: (count, error). A key without the tickets permission is this transfer's error."""
        kind = transfer_kind(row)
        try:
            result = self._send(row, preview=True, phase=phase, batch_id=batch_id, callback=True)
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
        self._step(batch_id, row["row"], event="preview_requested", kind=kind,
                   preview_request_id=result.request_id)  # fmt: skip
        if not self._callback(batch_id, row["row"], phase_of(kind, "preview")):
            return None, ("OMI sends this preview's count by callback, and no webhook is set "
                          "(set OMI_WEBHOOK_URL and OMI_WEBHOOK_SECRET, or use --listen)")  # fmt: skip
        found = self._wait_for(
            lambda: self.ledger.find_callback(
                batch_id, row["row"], phase_of(kind, "preview"), result.request_id
            ),
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
        self.ledger.refuse_cancelled(batch_id)
        if not rows:
            return
        self.preflight(rows[0], rows[1:])
        self.preview(batch_id, rows=rows)

    def _preview_row(self, batch_id: str, row: dict) -> None:
        # A count that changed is a new plan: what was approved on the old one is not kept.
        unapproved = ({"approved_at": None, "approved_by": None, "approved_how": None,
                       "held_by": None} if row["state"] == APPROVED else {})  # fmt: skip
        try:
            count, error = self._preview_count(batch_id, row, "preview")
            if error is None:
                self._step(batch_id, row["row"], state="previewed", event="previewed",
                           conversations_previewed=count, previewed_at=now_iso(),
                           preview_error=None, kind=row["kind"], soon=True,
                           **unapproved)  # fmt: skip
            else:
                self._step(batch_id, row["row"], state="preview_failed", event="preview_failed",
                           preview_error=error, previewed_at=now_iso(), kind=row["kind"],
                           soon=True, **unapproved)  # fmt: skip
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
        preview (``replace`` the rows before it), replaced when untouched (:func:`_edited`),
        else the new one gets a new name."""
        from omi_batch import workbook

        info = self.ledger.batch(batch_id)
        written = reports.write_preview_reports(rows, batch_id, reports_dir,
                                                info.get("warnings") or [], replace=replace)  # fmt: skip
        book = workbook.review_path(reports_dir, batch_id)
        if book.exists() and replace is not True:
            if replace is False:
                written["review_xlsx"] = book
                return written
            if _edited(book, replace, info.get("warnings") or []):
                book = reports.free_report_path(book)
        written["review_xlsx"] = workbook.write_review_workbook(
            rows, info, book, max_age_hours=max_age_hours
        )
        return written


def _edited(book: Path, before: list[dict], warnings: list) -> bool:
    """Whether the review workbook ``book``, written for the rows ``before``, may hold a
    person's work: a cell that no longer says what was written, an approval or a note typed,
    a row added or removed, or a file that cannot be read. An untouched one is replaced in
    place by a new preview, as an untouched preview report is."""
    try:
        entries = reports.read_approvals(book)
    except Exception:  # openpyxl raises many kinds: kept, as anything not known untouched
        return True
    expected = reports.expected_cells(before, warnings)
    if sorted(e["row"] for e in entries) != sorted(expected):
        return True
    for entry in entries:
        ours, theirs = expected[entry["row"]], entry["cells"]
        if reports.changed_cells(theirs, ours):
            return True
        for column in reports.EDITABLE_COLUMNS:
            if (theirs.get(column) or "").strip() != (ours.get(column) or "").strip():
                return True
    return False


def rows_to_preview(
    rows: Iterable[dict], max_age_hours: float, now: datetime | None = None
) -> list[dict]:
    """The rows of a batch that ``preview --batch`` previews (again): planned, failed their
    preview, or previewed (approved or skipped since) longer than ``max_age_hours`` ago. Rows
    already submitted are never previewed again here (that is reconcile's work)."""
    rows = list(rows)
    stale = set(stale_rows([r for r in rows if r["state"] in APPROVABLE], max_age_hours, now))
    return [r for r in rows if r["state"] in (PLANNED, PREVIEW_FAILED) or r["row"] in stale]
