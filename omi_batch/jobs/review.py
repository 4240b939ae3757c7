"""A tick's work before execute: new files in the inbox become previewed batches, a batch is
put up for review, an approved report is recorded (or the batch previewed again)."""

from __future__ import annotations

import logging
from pathlib import Path

from omi_batch.errors import (
    EXIT_CONFIG,
    BatchCancelled,
    OmiBatchError,
    UsageError,
)
from omi_batch.jobs.files import _copy, _files, _free_name, _move, _write_errors
from omi_batch.jobs.jobfile import BATCH_ID
from omi_batch.states import (
    stale_rows,
)

log = logging.getLogger("omi_batch.jobs")


class Review:
    """The inbox, review and approved folders of a tick; ``Tick`` holds the job and runtime."""

    def _inbox(self) -> None:
        for path in _files(self.job.inbox):
            self._guarded(path.name, self._new_file, path)

    def _new_file(self, path: Path) -> None:
        """Validate a new file, make (or find again) its batch, preview it, file it away."""
        from omi_batch.roster import read_plan

        job = self.job
        log.info("job %s: new file %s", job.name, path.name)
        try:
            plan = read_plan(path)
        except UsageError as error:
            self._reject(path, error)
            return
        for warning in plan.warnings:
            log.warning("job %s: %s: %s", job.name, path.name, warning)
        batches = self._job_batches()
        same = [b for b in batches if b["source_sha256"] == plan.sha256]
        reuse = [b["id"] for b in same if not self._is_archived(b["id"])]
        if reuse:
            batch_id = reuse[0]
            log.info("job %s: %s is batch %s again (same content): resuming it",
                     job.name, path.name, batch_id)  # fmt: skip
        else:
            if same:
                log.warning("job %s: %s has the same content as finished batch %s: "
                            "running it again as a new batch", job.name, path.name, same[0]["id"])  # fmt: skip
            options = {"command": "job run", "job": job.name, "source_name": path.name,
                       "concurrency": job.concurrency, "rate": job.rate,
                       "timeout": job.timeout, "wait": job.wait}  # fmt: skip
            try:
                batch_id = self.pipeline.create_batch(plan, options=options,
                                                      check_agents=job.check_agents)  # fmt: skip
            except UsageError as error:
                self._reject(path, error)
                return
            self.result.sent = True
            self.result.created.append(batch_id)
            log.info("job %s: %s: batch %s created with %d row(s)",
                     job.name, path.name, batch_id, len(plan.transfers))  # fmt: skip
        self.touched.add(batch_id)
        self._preview(batch_id)  # an error leaves the file in the inbox: the next tick resumes
        _move(path, job.reports / f"{batch_id}-source-{path.name}")
        self._advance(batch_id)

    def _reject(self, path: Path, error: OmiBatchError) -> None:
        """Set a bad file aside in the rejected folder with ``<name>.errors.csv`` beside it."""
        target = _free_name(self.job.rejected / path.name)
        _move(path, target)
        problems = getattr(error, "problems", []) or []
        report = target.with_name(target.name + ".errors.csv")
        _write_errors(report, str(error), problems)
        self.result.rejected.append(target)
        log.error("job %s: %s rejected: %s (%d problem(s); see %s)", self.job.name, path.name,
                  error, len(problems), report)  # fmt: skip
        from omi_batch import notify

        self._notify(notify.file_rejected, path.name, str(error), problems, errors_report=report)
        self.ledger.log("job_file_rejected", job=self.job.name, file=path.name,
                        error=str(error), problems=len(problems))  # fmt: skip

    # ------------------------------------------------------------------ preview and review

    def _preview(self, batch_id: str) -> None:
        """Preview the batch's planned rows and write its preview reports."""
        planned = self.ledger.rows(batch_id, states=["planned"])
        if planned:
            log.info("job %s: batch %s: previewing %d row(s)", self.job.name, batch_id,
                     len(planned))  # fmt: skip
            self.result.sent = True
            self.pipeline.preview(batch_id, rows=planned)
        self.pipeline.preview_summary(
            batch_id, self.job.reports, max_age_hours=self.job.max_age_hours, replace=True
        )
        rows = self.ledger.rows(batch_id)  # one per transfer: counted per row of the file
        previewed = [r for r in rows if r["conversations_previewed"] is not None]
        failed = {r["row"] for r in rows if r["state"] == "preview_failed"}
        moving = sum(r["conversations_previewed"] for r in previewed if r["kind"] != "tickets")
        tickets = [r["conversations_previewed"] for r in previewed if r["kind"] == "tickets"]
        what = f"{moving} conversation(s)" + (f" and {sum(tickets)} ticket(s)" if tickets else "")
        log.info("job %s: batch %s: %d row(s) previewed, %s to move, %d failed their preview",
                 self.job.name, batch_id, len({r["row"] for r in previewed} - failed), what,
                 len(failed))  # fmt: skip

    def _to_review(self, batch_id: str, reason: str | None = None) -> None:
        """Put the review workbook and the preview and targets reports in the review folder
        (once) and say so."""
        job = self.job
        if batch_id not in self.result.waiting:
            self.result.waiting.append(batch_id)
        wanted = [job.reports / f"{batch_id}-review.xlsx"] + [
            job.reports / f"{batch_id}-{kind}.csv" for kind in ("preview", "targets")
        ]
        if all((job.review / p.name).exists() for p in wanted):
            log.info("job %s: batch %s: still waiting for review", job.name, batch_id)
            return
        for path in wanted:
            if not path.exists():
                self.pipeline.preview_summary(
                    batch_id, job.reports, max_age_hours=job.max_age_hours, replace=True
                )
            _copy(path, job.review / path.name)
        because = f" ({reason})" if reason else ""
        log.info("job %s: batch %s: waiting for review%s: fill the approved column of %s and "
                 "save it in %s", job.name, batch_id, because, job.review / wanted[0].name,
                 job.approved)  # fmt: skip
        from omi_batch import notify

        workbook = job.review / f"{batch_id}-review.xlsx"
        self._notify(
            notify.review_waiting, batch_id, self.ledger.rows(batch_id),
            file=self.ledger.batch(batch_id)["options"].get("source_name"),
            workbook=workbook,
            approve_command=f"fill the approved column and save the report in {job.approved} "
            f"(or: omi-batch approve {batch_id} --report FILE --ledger {job.ledger})",
        )  # fmt: skip
        self.ledger.log("job_review", batch_id=batch_id, job=job.name, reason=reason or "manual")

    def _ceiling(self, rows: list[dict]) -> str | None:
        """Why this batch may not be approved automatically, or None when it may."""
        job = self.job
        # the ceilings count conversations; a ticket transfer's count is tickets
        previewed = [r for r in rows if r["state"] == "previewed" and r["kind"] != "tickets"]
        if not previewed:
            return None
        biggest = max(previewed, key=lambda r: r["conversations_previewed"] or 0)
        if (biggest["conversations_previewed"] or 0) > job.max_conversations_per_row:
            return (f"row {biggest['row']} would move {biggest['conversations_previewed']} "
                    f"conversation(s), over the ceiling of {job.max_conversations_per_row} per "
                    "row (approval.max_conversations_per_row)")  # fmt: skip
        total = sum(r["conversations_previewed"] or 0 for r in previewed)
        if total > job.max_conversations_per_batch:
            return (f"the batch would move {total} conversation(s), over the ceiling of "
                    f"{job.max_conversations_per_batch} per batch "
                    "(approval.max_conversations_per_batch)")  # fmt: skip
        return None

    # ------------------------------------------------------------------ approved reports

    def _approved(self) -> None:
        for path in _files(self.job.approved):
            self._guarded(path.name, self._approved_report, path)

    def _approved_report(self, path: Path) -> None:
        """Record the approvals of one edited preview report, then execute its batch."""
        job = self.job
        match = BATCH_ID.match(path.name)
        open_ids = set(self._open_batches())
        if not match:
            self._reject(path, UsageError(
                f"{path.name}: the name of an approved report starts with its batch id, "
                "as the preview report's does (e.g. 20261125-093000-ab12-preview.csv)"))  # fmt: skip
            return
        batch_id = match.group(1)
        if batch_id not in open_ids:
            known = batch_id in {b["id"] for b in self._job_batches()}
            why = "is finished and archived" if known else f"is not a batch of job {job.name}"
            self._reject(path, UsageError(f"{path.name}: batch {batch_id} {why}"))
            return
        try:
            self.ledger.refuse_cancelled(batch_id)  # its archiving comes with the open batches
        except BatchCancelled as error:
            self._reject(path, error)
            return
        self.touched.add(batch_id)
        log.info("job %s: batch %s: approved report %s", job.name, batch_id, path.name)
        rows = self.ledger.rows(batch_id)
        waiting = [r for r in rows if r["state"] == "previewed"]
        if waiting:
            stale = stale_rows(waiting, job.max_age_hours)
            if stale:
                from omi_batch.pipeline import rows_to_preview

                self._preview_again(batch_id, rows_to_preview(rows, job.max_age_hours))
                self._reject(path, UsageError(
                    f"{path.name}: the preview of batch {batch_id} was older than "
                    f"{job.max_age_hours:g} h (approval.max_age_hours), so nothing was approved "
                    f"and the batch was previewed again: review the new "
                    f"{batch_id}-preview.csv in {job.review}"))  # fmt: skip
                return
            try:
                chosen, skipped = self.pipeline.approve(batch_id, report_file=path,
                                                        max_age_hours=job.max_age_hours)  # fmt: skip
            except OmiBatchError as error:
                if error.exit_code == EXIT_CONFIG:
                    raise
                self._reject(path, error)
                return
            log.info("job %s: batch %s: %d row(s) approved, %d skipped", job.name, batch_id,
                     len(chosen), len(skipped))  # fmt: skip
        else:
            log.info("job %s: batch %s: its approvals were already recorded", job.name, batch_id)
        _move(path, job.reports / f"{batch_id}-approved{path.suffix.lower()}")
        for copy in job.review.glob(f"{batch_id}-*"):
            copy.unlink(missing_ok=True)
        if batch_id in self.result.waiting:
            self.result.waiting.remove(batch_id)
        self._advance(batch_id)

    def _preview_again(self, batch_id: str, rows: list[dict]) -> None:
        log.info("job %s: batch %s: previewing %d row(s) again (the preview was too old)",
                 self.job.name, batch_id, len(rows))  # fmt: skip
        self.result.sent = True
        self.pipeline.preview_again(batch_id, rows)  # the code `preview --batch` runs
        self.pipeline.preview_summary(
            batch_id, self.job.reports, max_age_hours=self.job.max_age_hours, replace=True
        )
        for copy in self.job.review.glob(f"{batch_id}-*"):
            copy.unlink(missing_ok=True)
        self._to_review(batch_id, "previewed again")
