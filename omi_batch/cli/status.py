"""The commands about batches as a whole: status, cancel and report (their work is in
omi_batch.batches and the pipeline)."""

from __future__ import annotations

from typing import Any

import click

from omi_batch.cli.options import json_option, ledger_option, reports_option
from omi_batch.cli.output import batch_json, echo_json, print_reports, table


def open_ledger(path: str, *, create: bool = False, read_only: bool = False) -> Any:
    """The ledger at ``path``; ``read_only`` for commands that only read (they write nothing,
    so they work on a read-only mount or a full disk)."""
    from pathlib import Path

    from omi_batch.errors import NotFound
    from omi_batch.ledger import Ledger

    if not create and not Path(path).exists():
        raise NotFound(f"no ledger at {path} (use --ledger, or preview a file first)")
    return Ledger(path, read_only=read_only)


def receiver_configured() -> bool:
    """Whether OMI can call a receiver back without --listen (OMI_WEBHOOK_URL and its secret)."""
    from omi_batch.config import Settings

    settings = Settings.from_env()
    return bool(settings.webhook_url and settings.webhook_secret)


@click.command()
@click.argument("batch", required=False)
@click.option(
    "--state",
    metavar="STATE",
    default=None,
    help="Only the batches in STATE (planned, previewed, approved, executing, interrupted, "
    "unconfirmed, failed, succeeded, cancelled); with BATCH, only its rows in STATE (the "
    "words of the results report: succeeded, failed, unconfirmed, skipped, preview_failed, "
    "or planned, previewed, approved, cancelled).",
)
@ledger_option
@json_option
def status(batch: str | None, state: str | None, ledger_path: str, as_json: bool) -> None:
    """List the batches, newest first, or one BATCH's rows and states.

    Each batch shows its rows counted per state and how long ago it was previewed (its oldest
    row preview: approve refuses one older than --max-age). A batch with a row submitted and
    no process running it reads `interrupted`: execute resumes it. Reads only.

    \b
    Example:
        omi-batch status
        omi-batch status --state interrupted
        omi-batch status 20261125-093000-ab12 --state failed --json
    """
    from omi_batch import batches
    from omi_batch.states import row_word

    ledger = open_ledger(ledger_path, read_only=True)
    if batch is None:
        found = batches.overview(ledger, state)
        if as_json:
            keys = ("batch", "created_at", "row_count", "state", "counts", "previewed_at")
            echo_json({"batches": [{k: b[k] for k in keys} for b in found]})
            return
        table(["batch", "created_at", "rows", "state", "counts", "previewed", "file"],
              [[b["batch"], b["created_at"], b["row_count"], b["state"],
                batches.counts_text(b["counts"]), batches.age(b["previewed_at"]),
                b["source_file"]] for b in found], right=("rows",))  # fmt: skip
        return
    if state is not None:
        batches.check_row_word(state)
    every = rows = ledger.rows(batch)
    data = batch_json(ledger, batch, rows)
    if state is not None:
        keep = [row_word(r) == state for r in rows]
        rows = [r for r, kept in zip(rows, keep, strict=True) if kept]
        data["rows"] = [r for r, kept in zip(data["rows"], keep, strict=True) if kept]
    if as_json:
        echo_json(data)
        return
    table(["row", "source", "target", "state", "previewed", "updated", "request_id"],
          [[f"{r['row']} (tickets)" if r["kind"] == "tickets" else r["row"],
            r["source_email"], r["target_email"],
            shown["state"] + (" (needs review)" if r["needs_review"] else ""),
            r["conversations_previewed"], r["updated_records"], r["request_id"]]
           for r, shown in zip(rows, data["rows"], strict=True)],
          right=("row", "previewed", "updated"))  # fmt: skip
    info = ledger.batch(batch)
    previewed = batches.age(info.get("previewed_at"))
    click.echo(f"Batch {batch}: {data['state']} ({batches.counts_text(info['states'])})"
               + (f"; oldest preview {previewed}" if previewed else ""), err=True)  # fmt: skip
    hint = batches.next_step(batch, data["state"], every, receiver_configured())
    if hint:
        click.echo(hint, err=True)


@click.command()
@click.argument("batch")
@ledger_option
def cancel(batch: str, ledger_path: str) -> None:
    """Abandon BATCH: it will not be run. Every row becomes `cancelled`, in the ledger.

    Refused (exit 2, nothing changed) once any row was submitted to OMI: a transfer sent
    cannot be called back. A cancelled batch is never previewed, approved or executed again,
    by hand or by a job; its reports and its audit trail stay.

    \b
    Example:
        omi-batch cancel 20261125-093000-ab12
    """
    from omi_batch import batches
    from omi_batch.ledger import os_user

    ledger = open_ledger(ledger_path)
    try:
        count = batches.cancel(ledger, batch, by=os_user())
    finally:
        ledger.close()
    click.echo(f"Batch {batch} cancelled: nothing of it will be sent. {count} row(s) "
               f"recorded as cancelled in {ledger_path}.", err=True)  # fmt: skip


@click.command()
@click.argument("batch")
@ledger_option
@reports_option
def report(batch: str, ledger_path: str, reports_dir: str) -> None:
    """Write BATCH's reports again from the ledger.

    \b
    Example:
        omi-batch report 20261125-093000-ab12 --reports out/
    """
    from omi_batch.config import Settings
    from omi_batch.pipeline import Pipeline

    ledger = open_ledger(ledger_path, read_only=True)
    ledger.batch(batch)
    print_reports(Pipeline(ledger, Settings.from_env()).write_reports(batch, reports_dir))
