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


def verbosity() -> int:
    """How many -v were given, before the command (``omi-batch -v run``) or after it."""
    ctx = click.get_current_context()
    return max(ctx.find_root().params.get("verbose") or 0, ctx.meta.get("omi_batch.verbose", 0))


def _verbose_callback(ctx: click.Context, _param: click.Parameter, value: int) -> None:
    if value:
        ctx.meta["omi_batch.verbose"] = value
        setup_logging(max(value, ctx.find_root().params.get("verbose") or 0))


def _add_verbose_option(group: click.Group) -> None:
    """Every command takes -v too, as PRODUCT.md lists it among the common options."""
    for command in group.commands.values():
        if isinstance(command, click.Group):
            _add_verbose_option(command)
        elif not any(p.name == "verbose" for p in command.params):
            command.params.append(click.Option(
                ["-v", "--verbose"], count=True, expose_value=False, is_eager=True,
                callback=_verbose_callback, help="More detail on stderr (-vv for debug).",
            ))  # fmt: skip


def handle_errors(f: Callable) -> Callable:
    """Turn library errors into one line on stderr and the exit code they carry."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except click.Abort:  # Ctrl-C or end of input at a prompt
            click.echo("\nInterrupted: nothing more was done.", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except OmiBatchError as error:
            if verbosity():
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


def plural(count: int, word: str) -> str:
    """``1 row``, ``2 rows``."""
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


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


# --------------------------------------------------------------------------- pipeline plumbing


class _RichProgress:
    """Progress bars on stderr, only when stderr is a terminal (a job's log stays clean)."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        self._bars = Progress(
            "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=Console(stderr=True), transient=False,
        )  # fmt: skip
        self._tasks: dict[str, Any] = {}

    def start(self, phase: str, total: int) -> None:
        if not self._tasks:
            self._bars.start()
        self._tasks[phase] = self._bars.add_task(phase, total=total)

    def advance(self, phase: str, n: int = 1) -> None:
        if phase in self._tasks:
            self._bars.advance(self._tasks[phase], n)

    def done(self, phase: str) -> None:
        self._tasks.pop(phase, None)
        if not self._tasks:
            self._bars.stop()


def _progress():
    return _RichProgress() if sys.stderr.isatty() else None


def _open_ledger(path: str, *, create: bool = False):
    from pathlib import Path

    from omi_batch.errors import NotFound
    from omi_batch.ledger import Ledger

    if not create and not Path(path).exists():
        raise NotFound(f"no ledger at {path} (use --ledger, or preview a file first)")
    return Ledger(path)


def _parse_listen(listen: str) -> tuple[str, int]:
    from omi_batch.callbacks import parse_listen

    address = parse_listen(listen)
    if address is None:
        raise click.BadParameter(f"{listen!r} is not HOST:PORT", param_hint="--listen")
    return address


class _NotifyingLedger:
    """The ledger as an in-process receiver sees it: every stored callback calls
    ``notify(batch_id, row)``, and its write takes the pipeline's write lock. Given the
    pipeline's ``SerialLedger.write_lock``, callbacks join the pipeline's group commits (one
    fsync for the row steps and callbacks written at the same moment)."""

    def __init__(self, ledger: Any, notify: Callable[[str, int], None], lock: Any = None) -> None:
        import contextlib

        self._ledger = ledger
        self._notify = notify
        self._lock = lock or contextlib.nullcontext()  # the pipeline's write lock, if given
        self._serial = getattr(lock, "serial", None)  # its SerialLedger (pipeline.WriteLock)

    def receive_callback(self, **callback: Any) -> str:
        try:
            if self._serial is not None:
                verdict = self._serial.receive_callbacks([callback])[0]
                if isinstance(verdict, BaseException):
                    raise verdict
                return verdict
            with self._lock:
                return self._ledger.receive_callback(**callback)
        finally:
            self._wake([callback])

    def receive_callbacks(self, received: list[dict]) -> list[Any]:
        """``Ledger.receive_callbacks`` in one commit (shared with the pipeline's waiting row
        steps when it can be), then ``notify`` for each of its rows, stored or not."""
        try:
            if self._serial is not None:
                return self._serial.receive_callbacks(received)
            with self._lock:
                return self._ledger.receive_callbacks(received)
        finally:
            self._wake(received)

    def _wake(self, received: list[dict]) -> None:
        for callback in received:
            try:
                self._notify(callback.get("batch_id"), callback.get("row"))
            except AttributeError:  # a callback before the pipeline exists: nothing waits yet
                return

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)

    def __repr__(self) -> str:
        return repr(self._ledger)


def _is_loopback(url: str | None) -> bool:
    from urllib.parse import urlsplit

    host = (urlsplit(url or "").hostname or "").lower()
    return host == "localhost" or host.startswith("127.") or host == "::1"


class _Session:
    """The settings, ledger, receiver (--listen) and pipeline one command works with."""

    def __init__(self, ledger_path: str, *, listen: str | None = None, create: bool = False,
                 yes: bool = True, **options: Any) -> None:  # fmt: skip
        import secrets

        from omi_batch.config import Secret, Settings
        from omi_batch.pipeline import Pipeline, SerialLedger

        self.settings = Settings.from_env()
        self.settings.require_api()  # before anything is created: exit 3, nothing changed
        if not yes:
            _require_confirmation_means(yes)
        self.ledger = _open_ledger(ledger_path, create=create)
        serial = SerialLedger(self.ledger)  # the pipeline and the receiver take turns writing
        lock = serial.write_lock
        self.receiver = None
        webhook_url, secret = self.settings.webhook_url, self.settings.webhook_secret
        if listen:
            from omi_batch import webhook

            host, port = _parse_listen(listen)
            if secret is None:
                secret = Secret(secrets.token_urlsafe(32))
                click.echo("OMI_WEBHOOK_SECRET is not set: using a one-off secret, so only this "
                           "command's receiver can check these callbacks.", err=True)  # fmt: skip
            # The receiver wakes the pipeline's waits the moment a callback is stored.
            notifying = _NotifyingLedger(self.ledger, lambda *key: self.pipeline.notify(*key), lock)
            self.receiver = webhook.start(webhook.make_app(notifying, secret), host, port)
            click.echo(f"Webhook receiver listening on {self.receiver.url}", err=True)
            if not webhook_url:
                webhook_url = self.receiver.url
                if not _is_loopback(self.settings.base_url):
                    click.echo(f"Warning: OMI_WEBHOOK_URL is not set, so OMI is told to call "
                               f"{webhook_url}, which it cannot reach from outside this "
                               "machine: set OMI_WEBHOOK_URL to the public address that "
                               "forwards to it.", err=True)  # fmt: skip
        elif webhook_url and secret is None:
            click.echo("Warning: OMI_WEBHOOK_URL is set but OMI_WEBHOOK_SECRET is not, so no "
                       "callback can be checked: transfers will end unconfirmed.", err=True)  # fmt: skip
        self.pipeline = Pipeline(serial, self.settings, webhook_url=webhook_url,
                                 webhook_secret=secret, progress=_progress(), **options)  # fmt: skip

    def __enter__(self) -> _Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.pipeline.close()
        if self.receiver is not None:
            self.receiver.stop()


def _print_plan_summary(rows: list[dict]) -> None:
    previewed = [r for r in rows if r["conversations_previewed"] is not None]
    targets = {r["target_email"] for r in previewed}
    total = sum(r["conversations_previewed"] for r in previewed)
    failed = [r for r in rows if r["state"] == "preview_failed"]
    click.echo(f"{len(previewed)} row(s) previewed: {total} conversation(s) to "
               f"{len(targets)} target agent(s); {len(failed)} failed their preview.", err=True)  # fmt: skip
    for row in failed:
        click.echo(f"  row {row['row']}: {row['source_email']} → {row['target_email']}: "
                   f"{row['preview_error']}", err=True)  # fmt: skip


def _print_results(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    from omi_batch.reports import result_status

    table = Table(title=None, show_edge=False)
    for column in ("row", "source", "target", "previewed", "status", "updated", "error"):
        table.add_column(column, overflow="fold")
    for r in rows:
        table.add_row(
            str(r["row"]), r["source_email"], r["target_email"],
            "" if r["conversations_previewed"] is None else str(r["conversations_previewed"]),
            result_status(r), "" if r["updated_records"] is None else str(r["updated_records"]),
            r["error"] or r["preview_error"] or "",
        )  # fmt: skip
    Console(width=160 if not sys.stdout.isatty() else None).print(table)


def _print_reports(written: dict) -> None:
    for kind, path in written.items():
        click.echo(f"{kind} report: {path}", err=True)


def _exit_for(rows: list[dict], approved_only: bool = True) -> None:
    from omi_batch.reports import result_status

    relevant = [r for r in rows if r["approved_at"]] if approved_only else rows
    if any(result_status(r) in ("failed", "unconfirmed", "preview_failed") or
           r["state"] == "approved" for r in relevant):  # fmt: skip
        sys.exit(1)
    if any(r.get("needs_review") for r in rows):  # conflicting callbacks: a person must look
        sys.exit(1)


def _require_confirmation_means(yes: bool) -> None:
    """Refuse, before anything is read or sent, to wait for an answer nobody can give."""
    if not yes and not sys.stdin.isatty():
        raise click.UsageError("not at a terminal: confirm with --yes")


def _execute(session: _Session, batch_id: str, reports_dir: str, yes: bool,
             approved_only: bool = True, as_json: bool = False) -> None:  # fmt: skip
    session.ledger.batch(batch_id)
    # Held from before the first request to the results: another execute or reconcile of this
    # batch is refused (exit 2, nothing sent) instead of resubmitting our in-flight rows.
    with session.pipeline.batch_lock(batch_id):
        _execute_locked(session, batch_id, reports_dir, yes, approved_only, as_json)


def _execute_locked(session: _Session, batch_id: str, reports_dir: str, yes: bool,
                    approved_only: bool, as_json: bool) -> None:  # fmt: skip
    from omi_batch.errors import EXIT_CONFIG, EXIT_INCOMPLETE, OmiBatchError
    from omi_batch.pipeline import now_iso

    rows = session.ledger.rows(batch_id, states=["approved", "submitted", "unconfirmed"])
    if not rows:
        click.echo(f"Batch {batch_id}: no row is approved or unconfirmed, so nothing to "
                   f"execute (approve first: omi-batch approve {batch_id} --all).", err=True)  # fmt: skip
        _execute_done(session, batch_id, reports_dir, approved_only, as_json)
        return
    conversations = sum(r["conversations_previewed"] or 0 for r in rows)
    targets = len({r["target_email"] for r in rows})
    if not yes and not click.confirm(
        f"Execute {len(rows)} transfer(s): {conversations} conversation(s) to {targets} "
        "target agent(s)?", err=True,
    ):  # fmt: skip
        click.echo(f"Nothing executed. Run omi-batch execute {batch_id} when ready.", err=True)
        return
    click.echo(f"Batch {batch_id}: executing {len(rows)} row(s)", err=True)
    started = now_iso()
    try:
        session.pipeline.execute(batch_id)
    except OmiBatchError as error:
        # Stopped part-way (key refused, OMI unreachable): still write what happened.
        session.pipeline.write_reports(batch_id, reports_dir)
        sent = [r for r in session.ledger.rows(batch_id)
                if (r["submitted_at"] or "") >= started and r["state"] != "approved"]  # fmt: skip
        if error.exit_code == EXIT_CONFIG and sent:
            click.echo(f"Error: {error}", err=True)
            click.echo(f"Stopped after {len(sent)} transfer(s) were sent; the reports say "
                       f"which. Run omi-batch execute {batch_id} again to resume.", err=True)  # fmt: skip
            sys.exit(EXIT_INCOMPLETE)
        raise
    _execute_done(session, batch_id, reports_dir, approved_only, as_json)


def _execute_done(session: _Session, batch_id: str, reports_dir: str,
                  approved_only: bool = True, as_json: bool = False) -> None:  # fmt: skip
    written = session.pipeline.write_reports(batch_id, reports_dir)
    rows = session.ledger.rows(batch_id)
    if as_json:
        data = _batch_json(session.ledger, batch_id, rows)
        echo_json({**data, "reports": {kind: str(path) for kind, path in written.items()}})
    else:
        _print_results(rows)
    _print_reports(written)
    _exit_for(rows, approved_only)


def _batch_json(ledger: Any, batch_id: str, rows: list[dict]) -> dict:
    """One batch as `status BATCH --json` prints it (PRODUCT.md's shape)."""
    from omi_batch.pipeline import batch_state
    from omi_batch.reports import result_status

    info = ledger.batch(batch_id)
    word = {"planned", "previewed", "approved"}  # before a row has a results status
    return {
        "batch": info["id"], "created_at": info["created_at"], "row_count": info["row_count"],
        "state": batch_state(info["states"]),
        "rows": [
            {"row": r["row"], "source_email": r["source_email"],
             "target_email": r["target_email"],
             "state": r["state"] if r["state"] in word else result_status(r),
             "request_id": r["request_id"],
             "conversations_previewed": r["conversations_previewed"],
             "updated_records": r["updated_records"]}
            for r in rows
        ],
    }  # fmt: skip


def _table(headers: list[str], rows: list[list]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(show_edge=False)
    for header in headers:
        table.add_column(header, overflow="fold")
    for row in rows:
        table.add_row(*["" if v is None else str(v) for v in row])
    Console(width=160 if not sys.stdout.isatty() else None).print(table)


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
    from omi_batch.roster import read_plan

    plan = read_plan(file, limit=limit)
    if as_json:
        for piece in plan.iter_json():  # streamed: a big plan is never one huge string
            click.echo(piece, nl=False)
        return
    for warning in plan.warnings:
        click.echo(f"Warning: {warning}", err=True)
    print_plan(plan)


PLAN_COLUMNS = ("row", "source_email", "target_email", "via", "conversations", "replace", "note")
RICH_TABLE_MAX = 2000  # rich takes ~0.5 ms a row: past this, plain columns print at once


def plan_rows(plan: Any) -> list[tuple[str, ...]]:
    """The cells of the plan table, one tuple of PLAN_COLUMNS per transfer."""

    def cut(text: str, most: int = 40) -> str:
        text = " ".join(text.split())
        return text if len(text) <= most else text[: most - 1] + "…"

    splitting = {t.source_email for t in plan.transfers if t.conv_ids}
    rows = []
    for t in plan.transfers:
        if t.conv_ids:
            more = len(t.conv_ids) - 3
            conversations = ", ".join(t.conv_ids[:3]) + (f" (+{more})" if more > 0 else "")
        else:
            conversations = "all the others" if t.source_email in splitting else "all"
        rows.append(
            (
                str(t.row),
                t.source_email,
                t.target_email,
                ", ".join(t.via),
                cut(conversations),
                "yes" if t.replace_existing_members else "no",
                cut(t.note),
            )
        )
    return rows


def print_plan(plan: Any) -> None:
    """A roster Plan as a table on stdout, then one summary line. rich draws it on a terminal;
    elsewhere (a pipe, a log) and for big plans it is plain aligned columns."""
    rows = plan_rows(plan)
    stdout = sys.stdout
    if stdout.isatty() and len(rows) <= RICH_TABLE_MAX:
        from rich import box
        from rich.console import Console
        from rich.table import Table

        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        for name in PLAN_COLUMNS:
            if name in ("source_email", "target_email", "via"):  # an email is never cut short
                table.add_column(name, overflow="fold", min_width=12)
            else:
                short = name in ("row", "replace")
                table.add_column(
                    name,
                    justify="right" if name == "row" else "left",
                    no_wrap=True,
                    min_width=len(name) if short else None,
                )
        for row in rows:
            table.add_row(*row)
        Console(file=stdout, highlight=False).print(table)
    else:
        widths = [
            max([len(name), *(len(row[i]) for row in rows)]) for i, name in enumerate(PLAN_COLUMNS)
        ]

        def line(cells: tuple[str, ...]) -> str:
            padded = [
                c.rjust(w) if i == 0 else c.ljust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            ]
            return "  ".join(padded).rstrip()

        lines = [line(PLAN_COLUMNS), "  ".join("-" * w for w in widths)]
        lines.extend(line(row) for row in rows)
        click.echo("\n".join(lines))
    total = plan.to_dict_head()["total_transfers"]
    shown = len(plan.transfers)
    counted = (
        f"the first {shown} of {plural(total, 'transfer')} (--limit)"
        if shown < total
        else plural(total, "transfer")
    )
    click.echo(
        f"{counted} from {plural(len(plan.sources()), 'source')} to "
        f"{plural(len(plan.targets()), 'target')}; {plural(plan.input_rows, 'row')} read, "
        f"{plural(len(plan.warnings), 'warning')}. Nothing was sent."
    )


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
    from omi_batch.roster import read_plan

    plan = read_plan(file, limit=limit)
    options = {"concurrency": concurrency, "rate": rate, "timeout": timeout, "wait": wait}
    with _Session(ledger_path, listen=listen, create=True, **options) as session:
        batch_id = session.pipeline.create_batch(plan, options={"command": "preview", **options})
        click.echo(f"Batch {batch_id}: previewing {len(plan.transfers)} row(s)", err=True)
        session.pipeline.preview(batch_id)
        summary = session.pipeline.preview_summary(batch_id, reports_dir)
        rows = session.ledger.rows(batch_id)
    _print_plan_summary(rows)
    _print_reports(summary.reports)
    if as_json:
        echo_json({"batch": batch_id, "counts": summary.counts,
                   "reports": {k: str(v) for k, v in summary.reports.items()}})  # fmt: skip
    else:
        click.echo(batch_id)
    click.echo(f"Next: fill the `approved` column, then omi-batch approve {batch_id} --report "
               f"{summary.reports['preview']}", err=True)  # fmt: skip
    _exit_for(rows, approved_only=False)


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
    from omi_batch.config import Settings
    from omi_batch.pipeline import Pipeline

    if approve_all and report_file:
        raise click.UsageError("--all and --report cannot be used together")
    if not approve_all and not report_file:
        raise click.UsageError("say which rows: --all, or --report FILE")
    ledger = _open_ledger(ledger_path)
    pipeline = Pipeline(ledger, Settings.from_env())
    notes: list[str] = []
    chosen, skipped = pipeline.approve(batch, approve_all=approve_all, report_file=report_file,
                                       max_age_hours=max_age, notes=notes)  # fmt: skip
    for note in notes:
        click.echo(note, err=True)
    click.echo(f"Batch {batch}: {len(chosen)} row(s) approved, {len(skipped)} skipped.", err=True)
    click.echo(f"Next: omi-batch execute {batch}", err=True)


@cli.command()
@click.argument("batch")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@ledger_option
@reports_option
@http_options
@listen_option
@wait_option(300.0)
@json_option
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
    as_json: bool,
) -> None:
    """Execute the approved, not yet confirmed transfers of BATCH and wait for their callbacks.

    Safe to run again: a confirmed row is never submitted twice; an interrupted run resumes.

    \b
    Example:
        omi-batch execute 20261125-093000-ab12 --listen 127.0.0.1:8080
    """
    options = {"concurrency": concurrency, "rate": rate, "timeout": timeout, "wait": wait}
    with _Session(ledger_path, listen=listen, yes=yes, **options) as session:
        _execute(session, batch, reports_dir, yes, as_json=as_json)


@cli.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--yes", is_flag=True, help="Approve every row that previewed ok, without asking.")
@limit_option
@ledger_option
@reports_option
@http_options
@listen_option
@wait_option(300.0)
@json_option
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
    as_json: bool,
) -> None:
    """Validate, preview, confirm, execute and wait: the whole flow for FILE.

    \b
    Example:
        omi-batch run departures.csv --listen 127.0.0.1:8080
        omi-batch run departures.csv --yes --limit 3
    """
    from omi_batch.roster import read_plan

    plan = read_plan(file, limit=limit)
    for warning in plan.warnings:
        click.echo(f"Warning: {warning}", err=True)
    options = {"concurrency": concurrency, "rate": rate, "timeout": timeout, "wait": wait}
    with _Session(ledger_path, listen=listen, create=True, yes=yes, **options) as session:
        pipeline = session.pipeline
        batch_id = pipeline.create_batch(plan, options={"command": "run", **options})
        click.echo(f"Batch {batch_id}: previewing {len(plan.transfers)} row(s)", err=True)
        pipeline.preview(batch_id)
        _print_reports(pipeline.preview_summary(batch_id, reports_dir).reports)
        rows = session.ledger.rows(batch_id)
        _print_plan_summary(rows)
        if not any(r["state"] == "previewed" for r in rows):
            click.echo("No row previewed ok: nothing to execute.", err=True)
            _execute_done(session, batch_id, reports_dir, approved_only=False, as_json=as_json)
            return
        if not yes and not click.confirm("Execute every row that previewed ok?", err=True):
            click.echo(f"Nothing executed. Approve later: omi-batch approve {batch_id}", err=True)
            return
        pipeline.approve(batch_id, approve_all=True)
        _execute(session, batch_id, reports_dir, yes=True, approved_only=False, as_json=as_json)


@cli.command()
@click.argument("batch")
@ledger_option
@reports_option
@http_options
@listen_option
@wait_option(60.0)
@json_option
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
    as_json: bool,
) -> None:
    """Preview the unconfirmed rows of BATCH again; nothing left to move means succeeded.

    \b
    Example:
        omi-batch reconcile 20261125-093000-ab12
    """
    options = {"concurrency": concurrency, "rate": rate, "timeout": timeout, "wait": wait}
    with _Session(ledger_path, listen=listen, **options) as session:
        session.ledger.batch(batch)
        with session.pipeline.batch_lock(batch):
            before = session.ledger.rows(batch, states=["unconfirmed", "submitted"])
            click.echo(f"Batch {batch}: reconciling {len(before)} unconfirmed row(s)", err=True)
            session.pipeline.reconcile(batch)
            _execute_done(session, batch, reports_dir, as_json=as_json)


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
    from omi_batch.pipeline import batch_state

    ledger = _open_ledger(ledger_path)
    if batch is None:
        batches = [
            {"batch": b["id"], "created_at": b["created_at"], "row_count": b["row_count"],
             "state": batch_state(b["states"]), "source_file": b["source_file"]}
            for b in ledger.batches()
        ]  # fmt: skip
        if as_json:
            keys = ("batch", "created_at", "row_count", "state")
            echo_json({"batches": [{k: b[k] for k in keys} for b in batches]})
            return
        _table(["batch", "created_at", "rows", "state", "file"],
               [[b["batch"], b["created_at"], b["row_count"], b["state"], b["source_file"]]
                for b in batches])  # fmt: skip
        return
    rows = ledger.rows(batch)
    data = _batch_json(ledger, batch, rows)
    if as_json:
        echo_json(data)
        return
    _table(["row", "source", "target", "state", "previewed", "updated", "request_id"],
           [[r["row"], r["source_email"], r["target_email"],
             r["state"] + (" (needs review)" if review else ""),
             r["conversations_previewed"], r["updated_records"], r["request_id"]]
            for r, review in zip(data["rows"], [x["needs_review"] for x in rows], strict=True)])  # fmt: skip


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
    from omi_batch.config import Settings
    from omi_batch.pipeline import Pipeline

    ledger = _open_ledger(ledger_path)
    ledger.batch(batch)
    _print_reports(Pipeline(ledger, Settings.from_env()).write_reports(batch, reports_dir))


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
    from omi_batch.config import Settings
    from omi_batch.ledger import Ledger
    from omi_batch.webhook import LOGGER_NAME, make_app, serve

    secret = Settings.from_env().require_webhook_secret()
    verbose = verbosity()
    # One line per callback is the service's log, so it shows without -v.
    logging.getLogger(LOGGER_NAME).setLevel(logging.DEBUG if verbose > 1 else logging.INFO)
    ledger = Ledger(ledger_path)
    serve(
        make_app(ledger, secret),
        host,
        port,
        threads=threads,
        ready=lambda url: click.echo(f"Webhook receiver listening on {url}"),
    )
    click.echo("Webhook receiver stopped.", err=True)


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
    from omi_batch.ledger import Ledger

    with Ledger(ledger_path, create=False) as led:
        result = led.verify()
    if not result.ok:
        click.echo(f"Ledger tampered: {result.problem}")
        sys.exit(1)
    if result.problem:
        click.echo(f"Warning: {result.problem}", err=True)
    head = result.head[:16] if result.head else "none"
    click.echo(f"Ledger intact: {result.events} events, head {head}")


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
    from omi_batch.ledger import Ledger

    with Ledger(ledger_path, create=False) as led:
        for item in led.export(batch):
            click.echo(json.dumps(item, ensure_ascii=False, sort_keys=True, default=str))


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
@click.option(
    "--api-key",
    envvar="OMI_API_KEY",
    default="sim-key",
    show_default=False,
    help="The only x-api-key accepted (default: sim-key, or OMI_API_KEY). Never printed.",
)
@click.option(
    "--preview-mode",
    type=click.Choice(["sync", "async"]),
    default="sync",
    show_default=True,
    help="sync: a preview's count is in the answer; async: 202, the count comes in a callback.",
)
@click.option(
    "--preview-field",
    type=click.Choice(["updatedRecords", "totalRecords", "total", "count", "number"]),
    default="updatedRecords",
    show_default=True,
    help="Where a sync preview puts its count (number: the payload is the count itself).",
)
@click.option(
    "--latency-ms", type=click.FloatRange(min=0), default=0, help="Added before every answer."
)
@click.option(
    "--error-rate",
    type=click.FloatRange(0, 1),
    default=0,
    help="Fraction of requests answered 500 or 503 (nothing applied).",
)
@click.option(
    "--rate-limit-rate",
    type=click.FloatRange(0, 1),
    default=0,
    help="Fraction of requests answered 429 with Retry-After (nothing applied).",
)
@click.option(
    "--retry-after",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Seconds put in Retry-After.",
)
@click.option(
    "--slow-rate",
    type=click.FloatRange(0, 1),
    default=0,
    help="Fraction answered only after --slow-seconds (the transfer is applied first).",
)
@click.option(
    "--slow-seconds",
    type=click.FloatRange(min=0),
    default=35.0,
    show_default=True,
    help="How late a slow answer is.",
)
@click.option(
    "--reset-rate",
    type=click.FloatRange(0, 1),
    default=0,
    help="Fraction of connections closed with no answer (nothing applied).",
)
@click.option(
    "--drop-callbacks",
    type=click.FloatRange(0, 1),
    default=0,
    help="Fraction of callbacks never sent.",
)
@click.option(
    "--duplicate-callbacks",
    type=click.FloatRange(0, 1),
    default=0,
    help="Fraction of callbacks sent twice.",
)
@click.option(
    "--callback-delay",
    type=click.FloatRange(min=0),
    default=0,
    help="Seconds before each callback is sent.",
)
@click.option(
    "--reorder-callbacks", is_flag=True, help="Hold callbacks back and send them shuffled."
)
@click.option(
    "--callback-error-rate",
    type=click.FloatRange(0, 1),
    default=0,
    help="Fraction of executes whose callback says ERROR (nothing moved).",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed of the random faults (repeatable)."
)
@click.option("-v", "--verbose", count=True, help="Log one line per request on stderr.")
@handle_errors
def simulator_serve(
    host: str,
    port: int,
    fixture: str | None,
    api_key: str,
    preview_mode: str,
    preview_field: str,
    latency_ms: float,
    error_rate: float,
    rate_limit_rate: float,
    retry_after: float,
    slow_rate: float,
    slow_seconds: float,
    reset_rate: float,
    drop_callbacks: float,
    duplicate_callbacks: float,
    callback_delay: float,
    reorder_callbacks: bool,
    callback_error_rate: float,
    seed: int,
    verbose: int,
) -> None:
    """Run the OMI simulator until Ctrl-C or SIGTERM; print the address it listens on.

    It answers OMI's endpoints (transfer, new_room, guest_send_message, message list) over a
    fixture of agents and conversations, and POSTs each transfer's callback like OMI does.
    Point OMI_BASE_URL at the printed address.

    \b
    Example:
        omi-batch simulator serve --port 0
        omi-batch simulator serve --port 9000 --rate-limit-rate 0.1 --drop-callbacks 0.05 -v
    """
    import signal

    from omi_batch.simulator import Faults, Simulator, serve

    faults = Faults(
        latency_ms=latency_ms,
        error_rate=error_rate,
        rate_limit_rate=rate_limit_rate,
        retry_after=retry_after,
        slow_rate=slow_rate,
        slow_seconds=slow_seconds,
        reset_rate=reset_rate,
        drop_callbacks=drop_callbacks,
        duplicate_callbacks=duplicate_callbacks,
        callback_delay=callback_delay,
        reorder_callbacks=reorder_callbacks,
        callback_error_rate=callback_error_rate,
    )
    sim = Simulator(
        fixture=fixture,
        api_key=api_key,
        preview_mode=preview_mode,
        preview_field=preview_field,
        faults=faults,
        seed=seed,
    )
    if verbose:
        logging.getLogger("omi_batch.simulator").setLevel(logging.INFO)

    def ready(url: str) -> None:
        click.echo(f"OMI simulator listening on {url}")
        sys.stdout.flush()

    def on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        serve(sim, host, port, ready=ready)
    finally:
        signal.signal(signal.SIGTERM, previous)
    click.echo("OMI simulator stopped.", err=True)


# --------------------------------------------------------------------------- jobs


@cli.group()
def job() -> None:
    """Scheduled pipeline jobs (see jobs/)."""


@job.command("run")
@click.argument("jobfile", type=click.Path(exists=True, dir_okay=False))
@handle_errors
def job_run(jobfile: str) -> None:
    """Run one tick of the job JOBFILE: safe to run every few minutes.

    New files in the inbox are validated and previewed (their reports go to the review
    folder, or are approved at once under an auto policy within its ceilings); edited preview
    reports in the approved folder are executed; finished batches move to the archive. One
    log line per step on stderr. A tick that finds another one running says so and exits 0.

    \b
    Example:
        omi-batch job run jobs/offboarding.toml
    """
    from omi_batch.errors import LockedError
    from omi_batch.jobs import load_job, run_tick

    verbose = verbosity()
    # The job's log is its one line per step, so it shows without -v.
    logging.getLogger("omi_batch.jobs").setLevel(logging.DEBUG if verbose > 1 else logging.INFO)
    job = load_job(jobfile)
    try:
        result = run_tick(job)
    except LockedError as busy:
        click.echo(str(busy), err=True)
        return
    if result.exit_code:
        sys.exit(result.exit_code)


_add_verbose_option(cli)
