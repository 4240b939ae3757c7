"""The ``omi-batch`` command line: options, prompts, output and exit codes; nothing else.

Every library import happens inside the command that needs it, so ``omi-batch --help`` stays
light (no pandas, sqlite_utils, requests or waitress).
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

import click

from omi_batch.errors import EXIT_INTERRUPTED, OmiBatchError

DEFAULT_LEDGER = "data/ledger.db"
DEFAULT_REPORTS = "data/reports"

log = logging.getLogger("omi_batch")


# --------------------------------------------------------------------------- shared options


def ledger_option(f: Callable) -> Callable:
    return click.option(
        "--ledger",
        "ledger_path",
        default=DEFAULT_LEDGER,
        show_default=True,
        type=click.Path(dir_okay=False),
        envvar="OMI_BATCH_LEDGER",
        help="SQLite ledger file.",
    )(f)


def reports_option(f: Callable) -> Callable:
    return click.option(
        "--reports",
        "reports_dir",
        default=DEFAULT_REPORTS,
        show_default=True,
        type=click.Path(file_okay=False),
        help="Folder the reports are written to.",
    )(f)


def json_option(f: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")(f)


def limit_option(f: Callable) -> Callable:
    return click.option(
        "--limit",
        type=click.IntRange(min=1),
        default=None,
        help="Only the first N rows of the plan: try a batch small first.",
    )(f)


def http_options(f: Callable) -> Callable:
    """--concurrency, --rate and --timeout: how hard we talk to OMI."""
    f = click.option(
        "--timeout",
        type=click.FloatRange(min=0.1),
        default=30.0,
        show_default=True,
        help="Seconds to wait for each HTTP answer.",
    )(f)
    f = click.option(
        "--rate",
        type=click.FloatRange(min=0.01),
        default=5.0,
        show_default=True,
        help="At most this many requests per second.",
    )(f)
    f = click.option(
        "--concurrency",
        type=click.IntRange(1, 64),
        default=4,
        show_default=True,
        help="Transfers in flight at once.",
    )(f)
    return f


def listen_option(f: Callable) -> Callable:
    return click.option(
        "--listen",
        metavar="HOST:PORT",
        default=None,
        help="Run the webhook receiver inside this command (port 0 picks a free one).",
    )(f)


def wait_option(default: float) -> Callable:
    return click.option(
        "--wait",
        type=click.FloatRange(min=0),
        default=default,
        show_default=True,
        help="Seconds to wait for callbacks before calling a row unconfirmed.",
    )


def handle_errors(f: Callable) -> Callable:
    """Turn library errors into one line on stderr and the exit code they carry."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        verbose = click.get_current_context().find_root().params.get("verbose", 0)
        try:
            return f(*args, **kwargs)
        except OmiBatchError as error:
            if verbose:
                log.exception("traceback")
            click.echo(f"Error: {error}", err=True)
            for problem in getattr(error, "problems", []):
                click.echo(f"  {problem}", err=True)
            sys.exit(error.exit_code)
        except KeyboardInterrupt:
            click.echo(
                "Interrupted: state is saved; run the same command again to resume.", err=True
            )
            sys.exit(EXIT_INTERRUPTED)

    return wrapper


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, ensure_ascii=False, indent=2, default=str))


def setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


# --------------------------------------------------------------------------- the group


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="omi-batch")
@click.option("-v", "--verbose", count=True, help="More detail on stderr (-vv for debug).")
def cli(verbose: int) -> None:
    """Offboard contact-centre agents on OMICall.

    Validate a CSV of source → target agent emails, preview every transfer into a report,
    approve, execute, confirm each through OMI's callback, and keep every step in an audited
    SQLite ledger.

    \b
    Example:
        omi-batch validate departures.csv
        omi-batch run departures.csv --listen 127.0.0.1:8080
    """
    setup_logging(verbose)


def main() -> None:
    cli(prog_name="omi-batch")


# --------------------------------------------------------------------------- validate


@cli.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@limit_option
@json_option
@handle_errors
def validate(file: str, limit: int | None, as_json: bool) -> None:
    """Read and validate FILE (CSV or .xlsx) and print the plan. Sends nothing.

    Every problem is listed with its row number as Excel shows it (the header is row 1);
    any problem means exit 2.

    \b
    Example:
        omi-batch validate departures.csv
        omi-batch validate departures.xlsx --json
    """
    raise click.ClickException("validate: not built yet (issue 3)")


# --------------------------------------------------------------------------- pipeline


@cli.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@limit_option
@ledger_option
@reports_option
@http_options
@listen_option
@wait_option(60.0)
@json_option
@handle_errors
def preview(
    file: str,
    limit: int | None,
    ledger_path: str,
    reports_dir: str,
    concurrency: int,
    rate: float,
    timeout: float,
    listen: str | None,
    wait: float,
    as_json: bool,
) -> None:
    """Validate FILE, create a batch, preview every transfer and write the preview reports.

    Nothing is moved: OMI only counts the conversations each transfer would change. Prints
    the batch id; review `<batch>-preview.csv` and fill its `approved` column.

    \b
    Example:
        omi-batch preview departures.csv --limit 5
    """
    raise click.ClickException("preview: not built yet (issue 5)")


@cli.command()
@click.argument("batch")
@click.option("--all", "approve_all", is_flag=True, help="Approve every row that previewed ok.")
@click.option(
    "--report",
    "report_file",
    type=click.Path(exists=True, dir_okay=False),
    help="A preview report whose `approved` column says yes / y / true / 1 / x.",
)
@click.option(
    "--max-age",
    type=click.FloatRange(min=0),
    default=24.0,
    show_default=True,
    help="Hours a preview stays fresh enough to approve.",
)
@ledger_option
@handle_errors
def approve(
    batch: str, approve_all: bool, report_file: str | None, max_age: float, ledger_path: str
) -> None:
    """Record approvals for BATCH: every previewed row (--all), or those marked in a report.

    \b
    Example:
        omi-batch approve 20261125-093000-ab12 --report data/reports/20261125-093000-ab12-preview.csv
        omi-batch approve 20261125-093000-ab12 --all
    """
    raise click.ClickException("approve: not built yet (issue 5)")


@cli.command()
@click.argument("batch")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@ledger_option
@reports_option
@http_options
@listen_option
@wait_option(300.0)
@handle_errors
def execute(
    batch: str,
    yes: bool,
    ledger_path: str,
    reports_dir: str,
    concurrency: int,
    rate: float,
    timeout: float,
    listen: str | None,
    wait: float,
) -> None:
    """Execute the approved, not yet confirmed transfers of BATCH and wait for their callbacks.

    Safe to run again: a confirmed row is never submitted twice; an interrupted run resumes.

    \b
    Example:
        omi-batch execute 20261125-093000-ab12 --listen 127.0.0.1:8080
    """
    raise click.ClickException("execute: not built yet (issue 5)")


@cli.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--yes", is_flag=True, help="Approve every row that previewed ok, without asking.")
@limit_option
@ledger_option
@reports_option
@http_options
@listen_option
@wait_option(300.0)
@handle_errors
def run(
    file: str,
    yes: bool,
    limit: int | None,
    ledger_path: str,
    reports_dir: str,
    concurrency: int,
    rate: float,
    timeout: float,
    listen: str | None,
    wait: float,
) -> None:
    """Validate, preview, confirm, execute and wait: the whole flow for FILE.

    \b
    Example:
        omi-batch run departures.csv --listen 127.0.0.1:8080
        omi-batch run departures.csv --yes --limit 3
    """
    raise click.ClickException("run: not built yet (issue 5)")


@cli.command()
@click.argument("batch")
@ledger_option
@reports_option
@http_options
@listen_option
@wait_option(60.0)
@handle_errors
def reconcile(
    batch: str,
    ledger_path: str,
    reports_dir: str,
    concurrency: int,
    rate: float,
    timeout: float,
    listen: str | None,
    wait: float,
) -> None:
    """Preview the unconfirmed rows of BATCH again; nothing left to move means succeeded.

    \b
    Example:
        omi-batch reconcile 20261125-093000-ab12
    """
    raise click.ClickException("reconcile: not built yet (issue 5)")


@cli.command()
@click.argument("batch", required=False)
@ledger_option
@json_option
@handle_errors
def status(batch: str | None, ledger_path: str, as_json: bool) -> None:
    """List the batches, newest first, or one BATCH's rows and states.

    \b
    Example:
        omi-batch status
        omi-batch status 20261125-093000-ab12 --json
    """
    raise click.ClickException("status: not built yet (issue 5)")


@cli.command()
@click.argument("batch")
@ledger_option
@reports_option
@handle_errors
def report(batch: str, ledger_path: str, reports_dir: str) -> None:
    """Write BATCH's reports again from the ledger.

    \b
    Example:
        omi-batch report 20261125-093000-ab12 --reports out/
    """
    raise click.ClickException("report: not built yet (issue 5)")


# --------------------------------------------------------------------------- webhook


@cli.group()
def webhook() -> None:
    """The webhook receiver: where OMI reports each transfer's result."""


@webhook.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8080,
    show_default=True,
    help="Port to listen on (0 picks a free one).",
)
@click.option(
    "--threads", type=click.IntRange(1, 256), default=16, show_default=True, help="Worker threads."
)
@ledger_option
@handle_errors
def webhook_serve(host: str, port: int, threads: int, ledger_path: str) -> None:
    """Run the webhook receiver until SIGTERM or Ctrl-C. Needs OMI_WEBHOOK_SECRET.

    \b
    Example:
        OMI_WEBHOOK_SECRET=... omi-batch webhook serve --port 8080
    """
    raise click.ClickException("webhook serve: not built yet (issue 6)")


# --------------------------------------------------------------------------- ledger


@cli.group("ledger")
def ledger_group() -> None:
    """Check and export the audit ledger."""


@ledger_group.command("verify")
@ledger_option
@handle_errors
def ledger_verify(ledger_path: str) -> None:
    """Recompute the audit log's hash chain; exit 1 naming the first bad entry.

    \b
    Example:
        omi-batch ledger verify --ledger data/ledger.db
    """
    raise click.ClickException("ledger verify: not built yet (issue 4)")


@ledger_group.command("export")
@click.argument("batch")
@ledger_option
@handle_errors
def ledger_export(batch: str, ledger_path: str) -> None:
    """Print BATCH's whole audit trail as JSON lines.

    \b
    Example:
        omi-batch ledger export 20261125-093000-ab12 > trail.jsonl
    """
    raise click.ClickException("ledger export: not built yet (issue 4)")


# --------------------------------------------------------------------------- simulator


@cli.group()
def simulator() -> None:
    """The built-in OMI simulator, for demos and tests. Never talks to the real OMI."""


@simulator.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    help="Port to listen on (0 picks a free one).",
)
@click.option(
    "--fixture",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Agents and conversations (default: the built-in sample fixture).",
)
@handle_errors
def simulator_serve(host: str, port: int, fixture: str | None) -> None:
    """Run the OMI simulator and print the address it listens on.

    \b
    Example:
        omi-batch simulator serve --port 0
    """
    raise click.ClickException("simulator serve: not built yet (issue 2)")


# --------------------------------------------------------------------------- jobs


@cli.group()
def job() -> None:
    """Scheduled pipeline jobs (see jobs/)."""


@job.command("run")
@click.argument("jobfile", type=click.Path(exists=True, dir_okay=False))
@handle_errors
def job_run(jobfile: str) -> None:
    """Run one tick of the job JOBFILE: safe to run every few minutes.

    \b
    Example:
        omi-batch job run jobs/offboarding.toml
    """
    raise click.ClickException("job run: not built yet (issue 7)")
