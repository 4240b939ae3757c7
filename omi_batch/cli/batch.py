"""The batch commands: validate, preview, approve, execute, run, reconcile."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from omi_batch.cli.options import (
    json_option,
    ledger_option,
    limit_option,
    max_age_option,
    notify_option,
    pipeline_options,
    plan_choice,
    plan_options,
    scope_option,
    session_options,
)
from omi_batch.cli.output import (
    batch_json,
    echo_json,
    exit_for,
    print_plan,
    print_plan_summary,
    print_reports,
    print_results,
    print_summary,
    progress,
    resume_with,
)
from omi_batch.cli.status import open_ledger
from omi_batch.errors import EXIT_INCOMPLETE
from omi_batch.states import OUTCOME_UNKNOWN


def _parse_listen(listen: str) -> tuple[str, int]:
    from omi_batch.callbacks import parse_listen

    address = parse_listen(listen)
    if address is None:
        raise click.BadParameter(f"{listen!r} is not HOST:PORT", param_hint="--listen")
    return address


def _session(ledger_path: str, *, listen: str | None = None, create: bool = False,
             yes: bool = True) -> Any:  # fmt: skip
    """The runtime of a command (``omi_batch.session.Session``) with its --concurrency, --rate,
    --timeout and --wait, its messages on stderr."""
    from omi_batch.config import Settings
    from omi_batch.session import Session

    settings = Settings.from_env()
    settings.require_api()  # before anything is created: exit 3, nothing changed
    if not yes:
        _require_confirmation_means(yes)
    address = _parse_listen(listen) if listen else None
    ledger = open_ledger(ledger_path, create=create)
    metrics = None
    if address is not None:
        from omi_batch.metrics import make_metrics

        metrics = make_metrics(ledger)  # GET /metrics beside the callbacks
    return Session(settings, ledger, listen=address, say=lambda text: click.echo(text, err=True),
                   metrics=metrics, metrics_endpoint=True, progress=progress(),
                   **pipeline_options())  # fmt: skip


def _notifier(urls: tuple[str, ...]) -> Any:
    """The --notify notifier, checked before anything is created (exit 3 for an unset
    variable or an unknown service); None without --notify. No outbox: a failure is logged."""
    if not urls:
        return None
    from omi_batch.notify import notifier_for

    return notifier_for(urls)


def _require_confirmation_means(yes: bool) -> None:
    """Refuse, before anything is read or sent, to wait for an answer nobody can give."""
    if not yes and not sys.stdin.isatty():
        raise click.UsageError("not at a terminal: confirm with --yes")


def _start_execute(batch_id: str, yes: bool,
                   receiver_warning: Callable[[int], str | None]) -> Callable:  # fmt: skip
    """The ``confirm`` execute calls with the rows due: warns when their results cannot come
    back (``receiver_warning``: no receiver), asks (unless --yes), then says so."""

    def start(rows: list[dict]) -> bool:
        warning = receiver_warning(len(rows))
        if warning:
            click.echo(f"Warning: {warning}", err=True)
        conversations = sum(r["conversations_previewed"] or 0 for r in rows
                            if r["kind"] != "tickets")  # fmt: skip
        tickets = [r["conversations_previewed"] or 0 for r in rows if r["kind"] == "tickets"]
        what = f"{conversations} conversation(s)" + (f" and {sum(tickets)} ticket(s)"
                                                     if tickets else "")  # fmt: skip
        targets = len({r["target_email"] for r in rows})
        if not yes and not click.confirm(
            f"Execute {len(rows)} transfer(s): {what} to {targets} target agent(s)?", err=True,
        ):  # fmt: skip
            click.echo(f"Nothing executed. Run omi-batch execute {batch_id} when ready.", err=True)
            return False
        click.echo(f"Batch {batch_id}: executing {len({r['row'] for r in rows})} row(s)",
                   err=True)  # fmt: skip
        return True

    return start


def _show_execute(session: Any, summary: Any, approved_only: bool = True,
                  as_json: bool = False) -> None:  # fmt: skip
    """Render what execute did: stopped part-way, declined, nothing due, or the results."""
    batch_id = summary.batch_id
    if summary.stopped is not None:
        click.echo(f"Error: {summary.stopped}", err=True)
        click.echo(f"Stopped after {summary.sent} transfer(s) were sent; the reports say "
                   f"which. Run omi-batch execute {batch_id} again to resume.", err=True)  # fmt: skip
        sys.exit(EXIT_INCOMPLETE)
    if summary.declined:
        return
    if not summary.due:  # no row was ever approved: NothingApproved (exit 2) said so before
        click.echo(f"Batch {batch_id}: every approved row is done already: nothing to "
                   "execute.", err=True)  # fmt: skip
    _execute_done(session, batch_id, summary.reports, approved_only, as_json)


def _execute_done(session: Any, batch_id: str, written: dict,
                  approved_only: bool = True, as_json: bool = False) -> None:  # fmt: skip
    rows = session.ledger.rows(batch_id)
    if as_json:
        data = batch_json(session.ledger, batch_id, rows)
        echo_json({**data, "reports": {kind: str(path) for kind, path in written.items()}})
    else:
        print_results(rows)
    print_reports(written)
    print_summary(batch_id, rows)
    _notify_finished(session, batch_id, rows, written)
    exit_for(rows, approved_only)


def _notify_finished(session: Any, batch_id: str, rows: list, written: dict) -> None:
    """--notify: the batch finished (and needs attention when rows failed or are unconfirmed)."""
    notifier = getattr(session, "notifier", None)
    if notifier is None:
        return
    from omi_batch import notify

    attention = notify.rows_need_attention(batch_id, rows, retry_report=written.get("retry"))
    notifier.send(notify.batch_finished(batch_id, rows),
                  *([attention] if attention else []))  # fmt: skip


MAX_SHOWN = 100  # problems told on stderr; the rest are counted, and all are in the errors CSV


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@limit_option
@click.option(
    "--check-agents",
    is_flag=True,
    help="Also look every source and target up in OMI's agent directory (reads only: no "
    "transfer, no batch); a target missing, deactivated or deleted, or a source missing, is a "
    "problem (exit 2).",
)
@scope_option
@click.option(
    "--errors-csv",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Write every problem (row, code, message) to this CSV. Without it, a file with more "
    f"than {MAX_SHOWN} problems gets FILE-errors.csv beside it.",
)
@json_option
def validate(
    file: str,
    check_agents: bool,
    errors_csv: str | None,
    as_json: bool,
) -> None:
    """Read and validate FILE (CSV or .xlsx) and print the plan. Sends nothing.

    Each problem is told with its row number as Excel shows it (the header is row 1): the
    first 100 on stderr, then how many more, and every one in an errors CSV (its path is
    said). Any problem means exit 2. With --check-agents it reads OMI's agent directory too.

    \b
    Example:
        omi-batch validate departures.csv
        omi-batch validate departures.xlsx --json
        omi-batch validate departures.csv --scope both --errors-csv problems.csv
        omi-batch validate departures.csv --check-agents
    """
    plan = load_plan(file, errors_csv=errors_csv, **plan_choice())
    if check_agents:
        _check_agents(plan)
    if as_json:
        for piece in plan.iter_json():  # streamed: a big plan is never one huge string
            click.echo(piece, nl=False)
        return
    for warning in plan.warnings:
        click.echo(f"Warning: {warning}", err=True)
    print_plan(plan)


def load_plan(
    file: str, *, limit: int | None = None, scope: str | None = None, errors_csv: str | None = None
) -> Any:
    """``read_plan`` for a command. When the file has more problems than are told (or
    ``errors_csv`` is given), every one is written to ``errors_csv`` — else to
    ``<file>-errors.csv`` beside it — and the InputError names that file."""
    from omi_batch.errors import InputError
    from omi_batch.roster import read_plan

    source = Path(file)
    target = Path(errors_csv) if errors_csv else source.with_name(f"{source.stem}-errors.csv")
    spool: Path | None = target.with_name(f".{target.name}.tmp")  # a dot: folder scans skip it
    try:
        spool.touch()  # type: ignore[union-attr]
    except OSError:
        if errors_csv:
            raise
        spool = None  # a folder we cannot write: the problems are still told and counted
    try:
        return read_plan(file, limit=limit, scope=scope, errors_csv=spool,
                         max_problems=MAX_SHOWN)  # fmt: skip
    except InputError as error:
        if spool is not None and (errors_csv or error.total > len(error.problems)):
            spool.replace(target)
            error.errors_csv = str(target)
        raise
    finally:
        if spool is not None:
            spool.unlink(missing_ok=True)


def _check_agents(plan) -> None:
    """validate --check-agents: the directory check alone (InputError, exit 2, on problems)."""
    from omi_batch import directory
    from omi_batch.client import OmiClient
    from omi_batch.config import Settings
    from omi_batch.errors import InputError
    from omi_batch.ratelimit import AdaptiveLimiter

    settings = Settings.from_env()
    settings.require_api()
    limiter = AdaptiveLimiter()
    with OmiClient(settings.base_url, settings.api_key, auth=settings.auth,
                   limiter=limiter) as client:  # fmt: skip
        problems, warnings = directory.check_agents(plan, client, progress=progress())
    if problems:
        raise InputError(
            f"{len(problems)} problem(s) in OMI's agent directory: nothing was sent", problems
        )
    plan.warnings.extend(warnings)


@click.command()
@click.argument("file", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--batch",
    "batch_id",
    metavar="BATCH",
    default=None,
    help="Preview again the rows of this batch that are planned, failed their preview, or "
    "were previewed longer than --max-age ago (no new batch).",
)
@max_age_option("With --batch: hours after which a preview is previewed again.")
@plan_options
@session_options(60.0, check_agents=True)
@json_option
def preview(
    file: str | None,
    batch_id: str | None,
    max_age: float,
    ledger_path: str,
    reports_dir: str,
    check_agents: bool,
    listen: str | None,
    as_json: bool,
) -> None:
    """Validate FILE, create a batch, preview every transfer and write the preview reports.

    Nothing is moved: OMI only counts the conversations each transfer would change. Prints
    the batch id; review `<batch>-preview.csv` and fill its `approved` column. With --batch
    BATCH instead of FILE, the rows of that batch that still need a preview (planned, failed
    their preview, or older than --max-age) are previewed again; an edited preview report is
    kept, and the new one gets a new name.

    \b
    Example:
        omi-batch preview departures.csv --limit 5
        omi-batch preview --batch 20261125-093000-ab12 --max-age 12
    """
    if (file is None) == (batch_id is None):
        raise click.UsageError("say what to preview: a FILE, or --batch BATCH")
    if batch_id is not None:
        _preview_batch(batch_id, max_age, ledger_path, reports_dir, listen, as_json)
        return
    plan = _plan_told(file)
    with _session(ledger_path, listen=listen, create=True) as session:
        batch_id, summary = _create_and_preview(session, plan, "preview", check_agents,
                                                ledger_path, reports_dir, listen)  # fmt: skip
        rows = session.ledger.rows(batch_id)
    _preview_done(batch_id, rows, summary, as_json)


def _plan_told(file: str) -> Any:
    """The plan of FILE as --limit and --scope ask (see :func:`load_plan`), its warnings told
    on stderr."""
    plan = load_plan(file, **plan_choice())
    for warning in plan.warnings:
        click.echo(f"Warning: {warning}", err=True)
    return plan


def _create_and_preview(session: Any, plan: Any, command: str, check_agents: bool,
                        ledger_path: str, reports_dir: str,
                        listen: str | None) -> tuple[str, Any]:  # fmt: skip
    """A new batch of ``plan``, previewed (preview, run): its id and the preview's summary."""
    batch_id = session.pipeline.create_batch(
        plan, options={"command": command, **pipeline_options()}, check_agents=check_agents
    )
    resume_with("preview", "--batch", batch_id, ledger_path=ledger_path,
                reports_dir=reports_dir, listen=listen)  # fmt: skip
    click.echo(f"Batch {batch_id}: previewing {len(plan.transfers)} row(s)", err=True)
    session.pipeline.preview(batch_id)
    return batch_id, session.pipeline.preview_summary(batch_id, reports_dir)


def _preview_batch(batch_id: str, max_age: float, ledger_path: str, reports_dir: str,
                   listen: str | None, as_json: bool) -> None:  # fmt: skip
    """`preview --batch`: the rows of an existing batch that need a preview, previewed again."""
    from omi_batch.pipeline import rows_to_preview
    from omi_batch.states import APPROVED

    with _session(ledger_path, listen=listen) as session:
        before = session.ledger.rows(batch_id)
        for warning in session.ledger.batch(batch_id).get("warnings") or []:
            where = f"row {warning['row']}: " if warning.get("row") is not None else ""
            click.echo(f"Warning: {where}{warning['code']}: {warning['message']}", err=True)
        session.ledger.refuse_cancelled(batch_id)  # before saying anything is previewed
        due = rows_to_preview(before, max_age)
        resume_with("preview", "--batch", batch_id, ledger_path=ledger_path,
                    reports_dir=reports_dir, listen=listen)  # fmt: skip
        click.echo(f"Batch {batch_id}: previewing {len(due)} row(s) again", err=True)
        session.pipeline.preview_again(batch_id, due)
        approved = {r["row"] for r in due if r["state"] == APPROVED}
        if approved:  # said once they are: a refused key or a dead OMI changes nothing
            click.echo(f"Warning: {len(approved)} approved row(s) previewed again must be "
                       "approved again (the counts may have changed): their approvals were "
                       "withdrawn", err=True)  # fmt: skip
        summary = session.pipeline.preview_summary(batch_id, reports_dir, replace=before)
        rows = session.ledger.rows(batch_id)
    _preview_done(batch_id, rows, summary, as_json)


def _preview_done(batch_id: str, rows: list[dict], summary: Any, as_json: bool) -> None:
    """After a preview: what it found, its reports, the batch id, and what to do next."""
    from omi_batch.states import PREVIEWED

    print_plan_summary(rows)
    book = summary.reports.get("review_xlsx") or summary.reports["preview"]
    ready = any(r["state"] == PREVIEWED for r in rows)
    # The report to fill is in the Next line; printed alone only when there is none.
    print_reports({k: v for k, v in summary.reports.items() if v != book or not ready})
    if as_json:
        echo_json({"batch": batch_id, "counts": summary.counts,
                   "reports": {k: str(v) for k, v in summary.reports.items()}})  # fmt: skip
    else:
        click.echo(batch_id)
    if ready:
        click.echo(f"Next: fill the `approved` column of {Path(book).name} (or of the preview "
                   f"CSV), then omi-batch approve {batch_id} --report {book}", err=True)  # fmt: skip
    else:
        click.echo("Nothing to approve: no row previewed ok (see the errors above).", err=True)
    exit_for(rows, approved_only=False)


@click.command()
@click.argument("batch")
@click.option("--all", "approve_all", is_flag=True, help="Approve every row that previewed ok.")
@click.option(
    "--report",
    "report_file",
    type=click.Path(exists=True, dir_okay=False),
    help="A preview report whose `approved` column says yes / y / true / 1 / x.",
)
@max_age_option("Hours a preview stays fresh enough to approve.")
@ledger_option
def approve(
    batch: str, approve_all: bool, report_file: str | None, max_age: float, ledger_path: str
) -> None:
    """Record approvals for BATCH: every previewed row (--all), or those marked in a report.

    \b
    Example:
        omi-batch approve 20261125-093000-ab12 --report data/reports/20261125-093000-ab12-review.xlsx
        omi-batch approve 20261125-093000-ab12 --report data/reports/20261125-093000-ab12-preview.csv
        omi-batch approve 20261125-093000-ab12 --all
    """
    from omi_batch.config import Settings
    from omi_batch.pipeline import Pipeline

    if approve_all and report_file:
        raise click.UsageError("--all and --report cannot be used together")
    if not approve_all and not report_file:
        raise click.UsageError("say which rows: --all, or --report FILE")
    ledger = open_ledger(ledger_path)
    pipeline = Pipeline(ledger, Settings.from_env())
    notes: list[str] = []
    chosen, skipped = pipeline.approve(batch, approve_all=approve_all, report_file=report_file,
                                       max_age_hours=max_age, notes=notes)  # fmt: skip
    for note in notes:
        click.echo(note, err=True)
    click.echo(f"Batch {batch}: {len(chosen)} row(s) approved, {len(skipped)} skipped.", err=True)
    click.echo(_next_execute(ledger, batch, pipeline), err=True)


def _next_execute(ledger: Any, batch_id: str, pipeline: Any) -> str:
    """The Next line after approve: the execute that would run the approved rows (with a
    receiver when none is configured), or that there is nothing to execute."""
    from omi_batch.batches import execute_hint
    from omi_batch.states import TO_EXECUTE

    if not ledger.rows(batch_id, states=TO_EXECUTE):
        return "Nothing is approved, so there is nothing to execute."
    return execute_hint(batch_id, pipeline.receiver_warning(0) is None)


@click.command()
@click.argument("batch")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@session_options(300.0)
@notify_option
@json_option
def execute(
    batch: str,
    yes: bool,
    ledger_path: str,
    reports_dir: str,
    listen: str | None,
    notify_urls: tuple[str, ...],
    as_json: bool,
) -> None:
    """Execute the approved, not yet confirmed transfers of BATCH and wait for their callbacks.

    Safe to run again: a confirmed row is never submitted twice; an interrupted run resumes.

    \b
    Example:
        omi-batch execute 20261125-093000-ab12 --listen 127.0.0.1:8080
        omi-batch execute 20261125-093000-ab12 --notify 'json://hooks.example.vn/x?-token=${T}'
    """
    notifier = _notifier(notify_urls)
    # Everything this command does with BATCH before the one library call; the receiver
    # warning is the session's, looked up when execute asks (the session is open by then).
    confirm = _start_execute(batch, yes, lambda count: session.pipeline.receiver_warning(count))
    resume_with("execute", batch, *(["--yes"] if yes else []), ledger_path=ledger_path,
                reports_dir=reports_dir, listen=listen)  # fmt: skip
    with _session(ledger_path, listen=listen, yes=yes) as session:
        session.notifier = notifier
        summary = session.pipeline.execute(batch, confirm=confirm, reports_dir=reports_dir)
        _show_execute(session, summary, as_json=as_json)


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--yes", is_flag=True, help="Approve every row that previewed ok, without asking.")
@plan_options
@session_options(300.0, check_agents=True)
@notify_option
@json_option
def run(
    file: str,
    yes: bool,
    ledger_path: str,
    reports_dir: str,
    check_agents: bool,
    listen: str | None,
    notify_urls: tuple[str, ...],
    as_json: bool,
) -> None:
    """Validate, preview, confirm, execute and wait: the whole flow for FILE.

    \b
    Example:
        omi-batch run departures.csv --listen 127.0.0.1:8080
        omi-batch run departures.csv --yes --limit 3
        omi-batch run departures.csv --yes --notify 'mailto://bot:${SMTP_PASSWORD}@mail.example.vn'
    """
    plan = _plan_told(file)
    notifier = _notifier(notify_urls)
    with _session(ledger_path, listen=listen, create=True, yes=yes) as session:
        session.notifier = notifier
        pipeline = session.pipeline
        batch_id, summary = _create_and_preview(session, plan, "run", check_agents, ledger_path,
                                                reports_dir, listen)  # fmt: skip
        written = summary.reports
        print_reports(written)
        rows = session.ledger.rows(batch_id)
        print_plan_summary(rows)
        if not any(r["state"] == "previewed" for r in rows):
            click.echo("No row previewed ok: nothing to execute.", err=True)
            written = pipeline.write_reports(batch_id, reports_dir)
            _execute_done(session, batch_id, written, approved_only=False, as_json=as_json)
            return
        if not yes and not click.confirm("Execute every row that previewed ok?", err=True):
            click.echo(f"Nothing executed. Approve later: omi-batch approve {batch_id} --report "
                       f"{written['preview']}", err=True)  # fmt: skip
            if notifier is not None:
                from omi_batch import notify

                workbook = written.get("review_xlsx") or written.get("preview")
                notifier.send(notify.review_waiting(batch_id, rows, workbook=workbook,
                                                    file=Path(plan.source_file).name))  # fmt: skip
            return
        notes: list[str] = []
        pipeline.approve(batch_id, approve_all=True, notes=notes)
        for note in notes:
            click.echo(note, err=True)
        confirm = _start_execute(batch_id, True, pipeline.receiver_warning)
        resume_with("execute", batch_id, "--yes", ledger_path=ledger_path,
                    reports_dir=reports_dir, listen=listen)  # fmt: skip
        summary = pipeline.execute(batch_id, confirm=confirm, reports_dir=reports_dir)
        _show_execute(session, summary, approved_only=False, as_json=as_json)


@click.command()
@click.argument("batch")
@session_options(60.0)
@json_option
def reconcile(
    batch: str,
    ledger_path: str,
    reports_dir: str,
    listen: str | None,
    as_json: bool,
) -> None:
    """Preview the unconfirmed rows of BATCH again; nothing left to move means succeeded.

    \b
    Example:
        omi-batch reconcile 20261125-093000-ab12
    """
    resume_with("reconcile", batch, ledger_path=ledger_path, reports_dir=reports_dir,
                listen=listen)  # fmt: skip
    with _session(ledger_path, listen=listen) as session:
        before = session.ledger.rows(batch, states=list(OUTCOME_UNKNOWN))
        click.echo(f"Batch {batch}: reconciling {len(before)} unconfirmed row(s)", err=True)
        session.pipeline.reconcile(batch)
        written = session.pipeline.write_reports(batch, reports_dir)
        _execute_done(session, batch, written, as_json=as_json)
