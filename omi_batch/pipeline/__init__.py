"""Preview, approve, execute, wait and reconcile over a batch.

Knows nothing of click or of report layout. Talks to OMI only through ``OmiClient`` and keeps
every step in the ``Ledger``; callbacks reach the ledger through the webhook receiver (in this
process with ``--listen``, or a separate ``webhook serve``), and this module reads them back.

Honesty rules: a row is ``succeeded`` only by a SUCCESS callback or by a verifying preview that
finds nothing left to move; a row whose callback never came is ``unconfirmed``.

The package: ``outcome`` (Summary, Progress, BatchLock, the errors), ``work`` (attempts, pool,
waits), ``preview`` (preflight, create_batch, preview), ``execute`` (execute, reconcile, result
reports), ``approvals`` (what a report may approve); ``Pipeline`` is the one façade callers use.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from omi_batch.errors import UsageError
from omi_batch.pipeline.approvals import (
    _rows_named,
    approval_lines,
    approvals_from_report,
    broken_chains,
    uncovered_catch_alls,
    why_not,
)
from omi_batch.pipeline.execute import Executing
from omi_batch.pipeline.outcome import (
    BatchBusy,
    BatchLock,
    EndpointMissing,
    NothingApproved,
    Progress,
    Summary,
    Unreachable,
)
from omi_batch.pipeline.preview import rows_to_preview
from omi_batch.pipeline.work import now_iso, who
from omi_batch.states import (
    APPROVABLE,
    APPROVED,
    DECIDED,
    PREVIEW_FAILED,
    PREVIEWED,
    SKIPPED,
    stale_rows,
)

__all__ = [
    "BatchBusy", "BatchLock", "EndpointMissing", "NothingApproved", "Pipeline", "Progress",
    "Summary", "Unreachable", "now_iso", "rows_to_preview",
    "broken_chains", "uncovered_catch_alls", "who",
]  # fmt: skip


class Pipeline(Executing):
    """One batch's work against OMI. Thread-safe; one instance per command."""

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
        self.ledger.refuse_cancelled(batch_id)
        transfers = self.ledger.rows(batch_id)
        rows = approval_lines(transfers)
        if approve_all:
            chosen = [n for n, r in rows.items() if PREVIEWED in _states(r)]
            skipped: list[int] = []
            how = "all"
            for catch_all, blocker in uncovered_catch_alls(rows.values(), chosen, skipped):
                chosen.remove(catch_all["row"])
                notes.append(f"row {catch_all['row']} is not approved: row {blocker['row']} of "
                             f"the same source {why_not(blocker)}, and row "
                             f"{catch_all['row']} would move its conversations too")  # fmt: skip
        else:
            warnings = self.ledger.batch(batch_id).get("warnings") or []
            chosen, skipped = approvals_from_report(batch_id, rows, Path(report_file), warnings,
                                                    notes)  # fmt: skip
            how = f"report {Path(report_file).name}"
        notes.extend(broken_chains(rows, chosen, skipped))
        wanted = (PREVIEWED,) if approve_all else APPROVABLE
        stale = stale_rows([t for n in chosen for t in rows[n]["transfers"].values()
                            if t["state"] in wanted], max_age_hours, now)  # fmt: skip
        if stale:
            raise UsageError(
                f"the preview of {_rows_named(stale)} is older than --max-age "
                f"{max_age_hours:g} h: "
                f"preview it again (omi-batch preview --batch {batch_id}) and approve again"
            )
        if not chosen and not skipped:
            if any(r["state"] in (APPROVED, SKIPPED, *DECIDED) for r in transfers):
                return [], []  # decided before: nothing to record
            raise UsageError(f"batch {batch_id} has no previewed row to approve")
        approve, skip = [], []
        for number in chosen:  # each transfer of an approved row that can be approved
            for kind, transfer in rows[number]["transfers"].items():
                if transfer["state"] in wanted:
                    approve.append((number, kind))
                elif transfer["state"] == PREVIEW_FAILED:
                    notes.append(f"row {number}'s {kind} failed their preview "
                                 f"({transfer['preview_error']}): not approved")  # fmt: skip
        for number in skipped:
            skip += [(number, k) for k, t in rows[number]["transfers"].items()
                     if t["state"] in APPROVABLE]  # fmt: skip
        self.ledger.approve(batch_id, approve=approve, skip=skip, by=who(), how=how)
        return chosen, skipped


def _states(line: dict) -> set[str]:
    """The states of a line's transfers."""
    return {t["state"] for t in line["transfers"].values()}
